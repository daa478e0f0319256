/** Run commands (our CLI and third-party tools) and capture their output. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { REPO } from './env.js';

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** kill the command (SIGKILL) after this many milliseconds; it then fails with code -1 */
  timeout?: number;
}

/**
 * Run a command to its end and capture its output. Never synchronous: vitest's worker RPC times out
 * when the worker's event loop is blocked for 60 s, which fails the whole run ("Timeout calling
 * onTaskUpdate"), and on a slow machine any command can take that long.
 */
export function sh(cmd: string, args: string[], opts: RunOptions = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = opts.timeout ? setTimeout(() => child.kill('SIGKILL'), opts.timeout) : undefined;
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    // a command that exits before reading its input must not fail the run with EPIPE
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** Like sh(), but rejects with the tool's output when it fails. */
export async function must(cmd: string, args: string[], opts: RunOptions = {}): Promise<Ran> {
  const r = await sh(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r;
}

/** The real CLI, as a user runs it (bin/ocichunk.js over the built dist/). */
export function cli(args: string[], opts: RunOptions = {}): Promise<Ran> {
  return sh(process.execPath, [path.join(REPO, 'bin', 'ocichunk.js'), ...args], opts);
}

/** The CLI with --json; rejects with its stderr when it fails. */
export async function cliJson<T = Record<string, unknown>>(args: string[], opts: RunOptions = {}): Promise<T> {
  const r = await cli([...args, '--json'], opts);
  if (r.code !== 0) throw new Error(`ocichunk ${args.join(' ')} exited ${r.code}\n${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** A self-signed certificate and its key (openssl), valid two days, for test servers. */
export async function selfSignedCert(key: string, cert: string, subject: string, ...extra: string[]): Promise<void> {
  await must('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', subject, ...extra]);
}

/** SIGTERM a helper daemon, SIGKILL it if it is still there after 5 s. */
export async function stopProcess(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}
