/** `ocichunk snapshotter` as a user runs it (bin/ocichunk.js over dist/), started, stopped and killed by a test. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Containerd } from './containerd.js';
import { REPO } from './env.js';

export class SnapshotterProc {
  proc?: ChildProcess;
  readonly log: string;
  constructor(
    readonly root: string,
    readonly sock: string,
    logDir: string,
  ) {
    this.log = path.join(logDir, 'snapshotter.log');
  }

  /** The proxy plugin section of containerd's config for this snapshotter. */
  containerdConfig(name = 'ocichunk'): string[] {
    return ['[proxy_plugins]', `  [proxy_plugins.${name}]`, '    type = "snapshot"', `    address = "${this.sock}"`];
  }

  private connects(): Promise<boolean> {
    return new Promise((resolve) => {
      const c = net.connect(this.sock, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
  }

  /** Start it and wait until it accepts connections on its socket. */
  async start(extraArgs: string[] = []): Promise<void> {
    const out = fs.openSync(this.log, 'a');
    const p = spawn(
      process.execPath,
      [path.join(REPO, 'bin', 'ocichunk.js'), 'snapshotter', '--root', this.root, '--address', this.sock, '--log-level', 'debug', ...extraArgs],
      {
        stdio: ['ignore', out, out],
      },
    );
    fs.closeSync(out);
    this.proc = p;
    for (let i = 0; i < 200; i++) {
      if (p.exitCode !== null) break;
      if (fs.existsSync(this.sock) && (await this.connects())) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the snapshotter did not start:\n${this.logText().slice(-3000)}`);
  }

  logText(): string {
    return fs.existsSync(this.log) ? fs.readFileSync(this.log, 'utf8') : '';
  }

  /** Send a signal and wait for the exit; returns the exit code (or the signal's name). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | string> {
    const p = this.proc;
    if (!p) return -1;
    this.proc = undefined;
    if (p.exitCode !== null || p.signalCode !== null) return p.exitCode ?? p.signalCode!;
    const exited = new Promise<number | string>((resolve) => p.once('exit', (code, sig) => resolve(code ?? sig ?? -1)));
    p.kill(signal);
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
    const r = await exited;
    clearTimeout(t);
    return r;
  }
}

/**
 * What the containerd tests of the snapshotter do with `ctr` against a private containerd and a
 * snapshotter: checked calls (a failure shows the snapshotter's log), its snapshot listing and
 * state, waits for containerd's background work, container ids unique to the run.
 */
export class CtrSession {
  /** container ids unique to this run (runc's state lives in /run, outside the private containerd) */
  private readonly run = Math.random().toString(36).slice(2, 8);
  constructor(
    private readonly ctrd: () => Containerd,
    private readonly snap: () => SnapshotterProc,
  ) {}

  cid(name: string): string {
    return `${name}-${this.run}`;
  }

  /** `ctr` (or `ctr-remote`) that must succeed; its stdout. */
  async ok(args: string[], remote = false): Promise<string> {
    const c = this.ctrd();
    const r = remote ? await c.ctrRemote(args) : await c.ctr(args);
    if (r.code !== 0)
      throw new Error(
        `${remote ? 'ctr-remote' : 'ctr'} ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}\n--- snapshotter log ---\n${this.snap().logText().slice(-5000)}`,
      );
    return r.stdout;
  }

  /** `ctr snapshots ls` of the ocichunk snapshotter, sorted lines without the header. */
  async snapshotList(): Promise<string[]> {
    const out = await this.ok(['snapshots', '--snapshotter', 'ocichunk', 'ls']);
    return out
      .split('\n')
      .slice(1)
      .map((l) => l.trim().replace(/\s+/g, ' '))
      .filter(Boolean)
      .sort();
  }

  /**
   * After a snapshotter restart: containerd's calls to it fail (unavailable) until its gRPC
   * reconnect backoff dials the new process (a few seconds at most, longer on a loaded machine).
   */
  async reconnected(): Promise<void> {
    await settled(async () => (await this.ctrd().ctr(['snapshots', '--snapshotter', 'ocichunk', 'ls'])).code === 0, 150);
  }

  /** Kill a container's task and remove it and the container. */
  async removeContainer(id: string): Promise<void> {
    await this.ok(['task', 'kill', '--signal', 'SIGKILL', id]);
    await settled(async () => (await this.ctrd().ctr(['task', 'rm', id])).code === 0);
    await this.ok(['containers', 'rm', id]);
  }

  /** Every task and container a failed test may have left (a running shim would outlive containerd). */
  async removeAll(): Promise<void> {
    const c = this.ctrd();
    for (const t of (await c.ctr(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) {
      await c.ctr(['task', 'kill', '--signal', 'SIGKILL', t]);
      await settled(async () => (await c.ctr(['task', 'rm', t])).code === 0);
    }
    for (const id of (await c.ctr(['containers', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await c.ctr(['containers', 'rm', id]);
  }
}

/** Wait (up to tries x 100 ms) until containerd's background work caught up. */
export async function settled(check: () => boolean | Promise<boolean>, tries = 100): Promise<void> {
  for (let i = 0; i < tries && !(await check()); i++) await new Promise((r) => setTimeout(r, 100));
}

/** Mount points at or below `dir`, from /proc/self/mountinfo. */
export function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && (m === dir || m.startsWith(dir + '/')));
}

/** The snapshotter's own records, read from its state file (none before the first change). */
export function snapshotState<T = { id: string; kind: string; parent?: string }>(root: string): Record<string, T> {
  const file = path.join(root, 'state.json');
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')).snapshots : {};
}
