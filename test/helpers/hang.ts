/**
 * Evidence of a child process that hangs, taken before it is killed: what each of its threads
 * waits for (the kernel's view in /proc, every thread's native stack from gdb where it is
 * installed) and its open files, written to a file whose path is returned. A hang that happens
 * once in a hundred runs is root-caused from this, not from a rerun.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function run(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve(err ? `${cmd}: ${err.message}\n${stdout}${stderr}` : stdout + stderr),
    );
  });
}

function read(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch (e) {
    return `(${(e as NodeJS.ErrnoException).code ?? e})`;
  }
}

/** Threads of `pid` as the kernel sees them: name, state, wait channel, kernel stack (root only). */
export function procThreads(pid: number): string {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return `/proc/${pid}: gone\n`;
  }
  return tids
    .map((t) => {
      const dir = `/proc/${pid}/task/${t}`;
      const state = read(`${dir}/stat`)
        .replace(/^.*\) /, '')
        .split(' ')[0];
      return `-- thread ${t} ${read(`${dir}/comm`)} state ${state} wchan ${read(`${dir}/wchan`)}\n${read(`${dir}/stack`)}\n`;
    })
    .join('');
}

/** Write what `pid` is doing to a file (under $OCICHUNK_HANG_DIR, else the temp dir); its path. */
export async function captureHang(pid: number, what: string): Promise<string> {
  const dir = process.env.OCICHUNK_HANG_DIR ?? os.tmpdir();
  const file = path.join(dir, `ocichunk-hang-${pid}-${Date.now()}.txt`);
  const parts = [
    `${what}\npid ${pid}\n`,
    `== status\n${read(`/proc/${pid}/status`)}\n`,
    `== threads (kernel)\n${procThreads(pid)}`,
    `== open files\n${await run('ls', ['-l', `/proc/${pid}/fd`], 10_000)}`,
    `== gdb: thread apply all bt\n${await run('gdb', ['-p', String(pid), '-batch', '-ex', 'thread apply all bt'], 120_000)}`,
  ];
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(file, parts.join('\n'));
  return file;
}

export interface WatchedRun {
  code: number;
  stdout: Buffer;
  stderr: string;
  /** the run did not end in `hungMs`: `evidence` is the file captureHang wrote before the kill */
  hung: boolean;
  evidence?: string;
  /** the process had exited when the run was given up: something else held its stdout/stderr open */
  exitedButOpen?: boolean;
}

/**
 * Run `cmd` (stdin ignored, stdout as bytes); one that has not ended (exited and closed its
 * stdout and stderr) after `hungMs` is given up: its threads' stacks are captured, then it is
 * killed. One that exited but whose pipes some other process keeps open is given up too (a kill
 * would change nothing there, and 'close' might never come).
 */
export function runWatched(cmd: string, args: string[], hungMs: number, what = `${cmd} ${args.join(' ')}`): Promise<WatchedRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    let exited: number | null | undefined;
    let givenUp = false;
    let closed = false;
    let done = false;
    const finish = (r: WatchedRun) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(r);
    };
    const giveUp = (extra: Partial<WatchedRun>) => {
      const r = () => ({ code: exited ?? -1, stdout: Buffer.concat(out), stderr, hung: true, ...extra });
      if (closed) return finish(r());
      child.once('close', () => finish(r()));
      // 'close' waits for the pipes, whoever holds them: let go of them after a grace period
      setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        finish(r());
      }, 5_000).unref();
    };
    const timer = setTimeout(async () => {
      givenUp = true;
      if (exited !== undefined) return giveUp({ exitedButOpen: true });
      // what the process waits for, before it is killed: the next hang is root-caused from this
      const evidence = await captureHang(child.pid!, `${what}: no end after ${hungMs / 1000} s`).catch((e) => `(not captured: ${e})`);
      child.kill('SIGKILL');
      giveUp({ evidence });
    }, hungMs);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (exited = code));
    child.on('close', (code) => {
      closed = true;
      if (!givenUp) finish({ code: code ?? -1, stdout: Buffer.concat(out), stderr, hung: false });
    });
  });
}
