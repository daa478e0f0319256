/** Run commands (our CLI and third-party tools) and capture their output. */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import path from 'node:path';
import { REPO } from './env.js';

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

export function sh(cmd: string, args: string[], opts: SpawnSyncOptions = {}): Ran {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  const s = (Date.now() - t0) / 1000;
  // a blocked worker fails the whole run once it reaches 60 s (see shAsync): name the culprit early
  if (s > 30) console.warn(`[run] ${cmd} ${args.slice(0, 3).join(' ')} blocked the test worker for ${s.toFixed(0)} s: use shAsync/cliAsync`);
  if (r.error) throw r.error;
  return { code: r.status ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/**
 * sh() without blocking this process: for anything that may run long (vitest's worker RPC times out
 * when its event loop is blocked for 60 s, which fails the run with "Timeout calling onTaskUpdate").
 */
export function shAsync(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** Like shAsync(), but rejects with the tool's output when it fails. */
export async function mustAsync(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  const r = await shAsync(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r;
}

/** Like sh(), but throws with the tool's output when it fails. */
export function must(cmd: string, args: string[], opts: SpawnSyncOptions = {}): Ran {
  const r = sh(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r;
}

/** The real CLI, as a user runs it (bin/ocichunk.js over the built dist/). */
export function cli(args: string[], opts: SpawnSyncOptions = {}): Ran {
  return sh(process.execPath, [path.join(REPO, 'bin', 'ocichunk.js'), ...args], opts);
}

export function cliJson<T = Record<string, unknown>>(args: string[]): T {
  const r = cli([...args, '--json']);
  if (r.code !== 0) throw new Error(`ocichunk ${args.join(' ')} exited ${r.code}\n${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** The CLI without blocking this process (needed when this process serves something the CLI talks to). */
export function cliAsync(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'ocichunk.js'), ...args], { env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** cliJson without blocking this process: long runs must not stall vitest's worker (its RPC times out after 60 s). */
export async function cliJsonAsync<T = Record<string, unknown>>(args: string[]): Promise<T> {
  const r = await cliAsync([...args, '--json']);
  if (r.code !== 0) throw new Error(`ocichunk ${args.join(' ')} exited ${r.code}\n${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** SIGTERM a helper daemon, SIGKILL it if it is still there after 5 s. */
export async function stopProcess(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}
