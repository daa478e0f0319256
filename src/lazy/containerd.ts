/**
 * lazy-bench's containerd scenarios: the command run by `ctr run` in a private containerd (own
 * root, state and socket; CRI off), after `ctr images pull` (its overlayfs snapshotter: every layer
 * downloaded and unpacked) or after `ctr-remote image rpull --snapshotter ocichunk` with the
 * ocichunk snapshotter registered as a proxy plugin (layers mounted lazily by its mount processes).
 * containerd, the snapshotter and the mount processes all reach the registry at the address the
 * caller gives (the simulated link). Each run gets a containerd and a snapshotter of its own, in a
 * directory of its own; only the chunk cache carries over from one run to the next.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OcichunkError } from '../errors.js';
import { platformString, type Platform } from '../oci/types.js';
import type { TransportOptions } from '../ref.js';
import { detachUnder } from '../snapshotter/remote.js';

/** the CLI the snapshotter runs as (bin/ocichunk.js over dist/) */
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ocichunk.js');
const NAMESPACE = 'ocichunk-bench';

/** Peak resident memory (VmHWM, MiB) of the processes of a run. */
export interface PeakRss {
  containerd?: number;
  /** the ocichunk snapshotter */
  snapshotter?: number;
  /** its mount processes, added up (one per image) */
  mounts?: number;
  mountProcesses?: number;
}

export interface ContainerdRunOptions {
  /** a directory of this run's own (made; its mounts are detached afterwards, its content kept) */
  dir: string;
  /** HOST/REPO:TAG (or @digest) as containerd and the snapshotter reach it */
  ref: string;
  /** run with /bin/sh -c in the container */
  run: string;
  /** lazy layers from the ocichunk snapshotter with this chunk cache; undefined: containerd pulls and unpacks every layer (overlayfs) */
  lazy?: { cacheDir: string; prefetch?: string | false };
  platform?: Platform;
  /** credentials and auth file (the link itself is plain HTTP) */
  transport?: TransportOptions;
  onProgress?: (msg: string) => void;
}

export interface ContainerdRun {
  code: number;
  /** the command's output (stdout, then stderr) */
  out: string;
  /** performance.now() at the first byte of the command's output */
  firstOutputAt?: number;
  /** performance.now() when `ctr run` returned (before the teardown) */
  endAt: number;
  rss: PeakRss;
}

interface Exec {
  code: number;
  out: string;
  firstOutputAt?: number;
}

function exec(cmd: string, args: string[]): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let firstOutputAt: number | undefined;
    p.stdout.on('data', (d: Buffer) => {
      firstOutputAt ??= performance.now();
      out += d;
    });
    p.stderr.on('data', (d: Buffer) => {
      firstOutputAt ??= performance.now();
      err += d;
    });
    p.on('error', (e) => reject(new OcichunkError('ENOTFOUND', `${cmd}: ${e.message}`)));
    p.on('close', (code) => resolve({ code: code ?? -1, out: out + err, firstOutputAt }));
  });
}

/** VmHWM of a process, MiB (undefined: gone). */
function peakRss(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
}

/** SIGTERM, SIGKILL after 10 s; resolves when it is gone. */
async function stop(pid: number | undefined): Promise<void> {
  if (!pid || !alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; alive(pid); i++) {
    if (i === 400) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 25));
  }
}

const logTail = (file: string) => {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-8).join('\n');
  } catch {
    return '';
  }
};

async function until(what: string, log: string, proc: ChildProcess, ok: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (await ok()) return;
    if (proc.exitCode !== null || proc.signalCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new OcichunkError('EIO', `${what} did not start:\n${logTail(log)}`);
}

const connects = (sock: string) =>
  new Promise<boolean>((resolve) => {
    const c = net.connect(sock, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });

/** The pids of the snapshotter's mount processes (their ready files). */
function mountPids(snapRoot: string): number[] {
  const dir = path.join(snapRoot, 'images');
  const out: number[] = [];
  for (const f of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    if (!f.endsWith('.json')) continue;
    try {
      const pid = (JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as { pid?: unknown }).pid;
      if (Number.isSafeInteger(pid)) out.push(pid as number);
    } catch {
      // not written yet
    }
  }
  return out;
}

/**
 * Start containerd (and the snapshotter for lazy layers), pull `ref` and run the command; stop
 * everything and detach what they mounted. `t0.at` is set when the pull starts (containerd and the
 * snapshotter are up then): the time to `firstOutputAt` and to `endAt` is what a user waits for.
 */
export async function runInContainerd(o: ContainerdRunOptions, t0: { at?: number } = {}): Promise<ContainerdRun> {
  const dir = path.resolve(o.dir);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const sock = path.join(dir, 'containerd.sock');
  const snapSock = path.join(dir, 'snapshotter.sock');
  const snapRoot = path.join(dir, 'snapshotter');
  const ctrdLog = path.join(dir, 'containerd.log');
  const snapLog = path.join(dir, 'snapshotter.log');
  const t = o.transport ?? {};
  let ctrd: ChildProcess | undefined;
  let snap: ChildProcess | undefined;
  const ctr = (tool: 'ctr' | 'ctr-remote', args: string[]) => exec(tool, ['--address', sock, '--namespace', NAMESPACE, ...args]);
  const must = async (tool: 'ctr' | 'ctr-remote', args: string[]) => {
    const r = await ctr(tool, args);
    if (r.code !== 0) {
      const logs = o.lazy ? `\n--- snapshotter ---\n${logTail(snapLog)}` : '';
      throw new OcichunkError('EIO', `${tool} ${args.join(' ')} exited ${r.code}: ${r.out.trim()}${logs}\n--- containerd ---\n${logTail(ctrdLog)}`);
    }
    return r;
  };
  try {
    if (o.lazy) {
      o.onProgress?.('starting the ocichunk snapshotter');
      const args = [BIN, 'snapshotter', '--root', snapRoot, '--address', snapSock, '--cache', o.lazy.cacheDir, '--plain-http'];
      if (o.lazy.prefetch === false) args.push('--no-prefetch');
      else if (o.lazy.prefetch) args.push('--prefetch', o.lazy.prefetch);
      if (o.platform) args.push('--platform', platformString(o.platform));
      if (t.authfile) args.push('--authfile', t.authfile);
      const out = fs.openSync(snapLog, 'a');
      snap = spawn(process.execPath, args, { stdio: ['ignore', out, out], env: { ...process.env, ...(t.creds ? { OCICHUNK_CREDS: t.creds } : {}) } });
      fs.closeSync(out);
      snap.on('error', () => undefined);
      await until('ocichunk snapshotter', snapLog, snap, () => fs.existsSync(snapSock) && connects(snapSock));
    }
    o.onProgress?.('starting containerd');
    const cfg = path.join(dir, 'config.toml');
    const q = (s: string) => JSON.stringify(s);
    await fsp.writeFile(
      cfg,
      [
        'version = 2',
        `root = ${q(path.join(dir, 'root'))}`,
        `state = ${q(path.join(dir, 'state'))}`,
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = ${q(sock)}`,
        '[ttrpc]',
        `  address = ${q(`${sock}.ttrpc`)}`,
        '[debug]',
        `  address = ${q(`${sock}.debug`)}`,
        ...(o.lazy ? ['[proxy_plugins]', '  [proxy_plugins.ocichunk]', '    type = "snapshot"', `    address = ${q(snapSock)}`] : []),
        '',
      ].join('\n'),
    );
    const out = fs.openSync(ctrdLog, 'a');
    ctrd = spawn('containerd', ['--config', cfg], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const spawnError = new Promise<Error>((resolve) => ctrd!.once('error', resolve));
    const started = until('containerd', ctrdLog, ctrd, async () => fs.existsSync(sock) && (await ctr('ctr', ['version'])).code === 0);
    await Promise.race([
      started,
      spawnError.then((e) => {
        throw new OcichunkError('ENOTFOUND', `containerd: ${e.message}`);
      }),
    ]);

    // what the caller times: the pull, then the command until its output
    t0.at = performance.now();
    const user = t.creds ? ['--user', t.creds] : [];
    if (o.lazy) {
      o.onProgress?.('ctr-remote image rpull --snapshotter ocichunk');
      await must('ctr-remote', ['image', 'rpull', '--snapshotter', 'ocichunk', '--plain-http', ...user, o.ref]);
    } else {
      o.onProgress?.('ctr images pull');
      await must('ctr', ['images', 'pull', '--plain-http', ...user, ...(o.platform ? ['--platform', platformString(o.platform)] : []), o.ref]);
    }
    o.onProgress?.('ctr run');
    const snapshotter = o.lazy ? ['--snapshotter', 'ocichunk'] : [];
    const r = await ctr('ctr', ['run', ...snapshotter, '--rm', o.ref, `bench-${process.pid}`, '/bin/sh', '-c', o.run]);
    const endAt = performance.now();
    const mounts = o.lazy ? mountPids(snapRoot) : [];
    const peaks = mounts.map(peakRss).filter((x): x is number => x !== undefined);
    const rss: PeakRss = {
      containerd: peakRss(ctrd.pid),
      ...(o.lazy ? { snapshotter: peakRss(snap?.pid), mounts: peaks.reduce((a, b) => a + b, 0), mountProcesses: peaks.length } : {}),
    };
    return { code: r.code, out: r.out, firstOutputAt: r.firstOutputAt, endAt, rss };
  } finally {
    o.onProgress?.('stopping containerd');
    const pids = o.lazy ? mountPids(snapRoot) : [];
    await stop(ctrd?.pid);
    await stop(snap?.pid);
    // the mount processes outlive the snapshotter (by design: containers keep reading)
    for (const pid of pids) await stop(pid);
    await detachUnder(dir).catch(() => undefined);
  }
}
