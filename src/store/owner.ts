/**
 * Who owns a temp file, and whether that owner is gone.
 *
 * Every temp file, spool and lock ocichunk makes is named (or, for locks, filled) with an owner
 * tag `<pid>-<start>-<ctx>`: the process id, the process start time (clock ticks since boot, from
 * /proc/<pid>/stat, so a reused pid is told apart) and an 8-hex-digit context, a hash of
 * (hostname, boot id, pid namespace). Within one context a pid check is exact: a file whose owner
 * pid is not running, is a zombie, or runs with another start time belongs to a dead process and
 * is removed at once — no live process can still be writing it. A file from another context
 * (another host sharing the directory over NFS, another container, an earlier boot) or with an
 * older name without a context (`.tmp-<pid>-<rand>`) cannot be checked: it is removed only once
 * nobody has touched it for `unknownGraceMs` (default 1 hour) and no local process has its pid.
 * A live owner's files are never removed.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface Owner {
  pid: number;
  /** start time of the process in clock ticks since boot ('0' where unknown) */
  start?: string;
  /** hash of hostname, boot id and pid namespace; absent for names of older versions */
  ctx?: string;
}

export type OwnerState = 'alive' | 'dead' | 'unknown';

/** Files of owners that cannot be checked are removed after this long untouched. */
export const UNKNOWN_GRACE_MS = 60 * 60 * 1000;

function readText(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; undefined if unreadable. */
function procStat(pid: number): string[] | undefined {
  const s = readText(`/proc/${pid}/stat`);
  const close = s.lastIndexOf(')');
  if (close < 0) return undefined;
  return s.slice(close + 2).split(' ');
}

/** starttime (field 22 of /proc/<pid>/stat), or undefined if the process or /proc is not there. */
function startOf(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

let me: Required<Owner> | undefined;

/** This process as an owner. */
export function self(): Required<Owner> {
  if (!me) {
    let pidns = '';
    try {
      pidns = fs.readlinkSync('/proc/self/ns/pid');
    } catch {
      // not Linux, or /proc hidden: the hostname alone makes the context
    }
    const ctx = createHash('sha256')
      .update(`${os.hostname()}\0${readText('/proc/sys/kernel/random/boot_id')}\0${pidns}`)
      .digest('hex')
      .slice(0, 8);
    me = { pid: process.pid, start: startOf(process.pid) ?? '0', ctx };
  }
  return me;
}

/** `<pid>-<start>-<ctx>` of this process. */
export function ownerTag(): string {
  const o = self();
  return `${o.pid}-${o.start}-${o.ctx}`;
}

/** A fresh name `<prefix><owner tag>-<random>`. */
export function tempName(prefix: string): string {
  return `${prefix}${ownerTag()}-${randomBytes(6).toString('hex')}`;
}

const TAGGED = /^(\d+)-(\d+)-([0-9a-f]{8})-[0-9a-f]+$/;
const LEGACY = /^(\d+)-[0-9a-f]+$/;

/** The owner encoded in what follows `prefix` in a temp name; undefined if it is not one of ours. */
export function parseTempName(name: string, prefix: string): Owner | undefined {
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  let m = TAGGED.exec(rest);
  if (m) return { pid: Number(m[1]), start: m[2], ctx: m[3] };
  m = LEGACY.exec(rest);
  if (m) return { pid: Number(m[1]) };
  return undefined;
}

function pidRunning(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false; // kill(0) or kill(-n) would mean process groups
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  const st = procStat(pid)?.[0];
  return st !== 'Z' && st !== 'X'; // a zombie writes nothing
}

/** Whether the owner is running: exact in this context, 'unknown' for other contexts and older names. */
export function ownerState(o: Owner): OwnerState {
  const m = self();
  if (o.ctx === undefined || o.ctx !== m.ctx) return 'unknown';
  if (o.pid === m.pid) return o.start === m.start ? 'alive' : 'dead';
  if (!pidRunning(o.pid)) return 'dead';
  if (o.start && o.start !== '0' && m.start !== '0') {
    const now = startOf(o.pid);
    if (now !== undefined && now !== o.start) return 'dead'; // the pid was reused
  }
  return 'alive';
}

/** Milliseconds since the file was last written, linked or renamed. */
export function idleMs(st: fs.Stats, now = Date.now()): number {
  return now - Math.max(st.mtimeMs, st.ctimeMs);
}

/** Whether a file of `owner` may be removed: its owner is dead, or unknowable and the file long idle. */
export function isStale(owner: Owner, st: fs.Stats, opts: { unknownGraceMs?: number } = {}): boolean {
  const state = ownerState(owner);
  if (state === 'dead') return true;
  if (state === 'alive') return false;
  return idleMs(st) >= (opts.unknownGraceMs ?? UNKNOWN_GRACE_MS) && !pidRunning(owner.pid);
}

export interface StaleFile {
  path: string;
  size: number;
  owner: Owner;
}

/**
 * Remove (or, with dryRun, only list) the stale temp files in `dir` whose names start with one of
 * `prefixes` followed by an owner tag. Directories (spool directories of other versions) go whole.
 * Files that vanish meanwhile are skipped; a missing `dir` is empty.
 */
export async function cleanStale(dir: string, prefixes: string[], opts: { dryRun?: boolean; unknownGraceMs?: number } = {}): Promise<StaleFile[]> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return [];
  }
  const out: StaleFile[] = [];
  for (const name of names) {
    let owner: Owner | undefined;
    for (const p of prefixes) if ((owner = parseTempName(name, p))) break;
    if (!owner) continue;
    const file = path.join(dir, name);
    let st: fs.Stats;
    try {
      st = await fsp.lstat(file);
    } catch {
      continue;
    }
    if (!isStale(owner, st, opts)) continue;
    const size = st.isDirectory() ? await treeSize(file) : st.size;
    if (!opts.dryRun) {
      try {
        await fsp.rm(file, { recursive: true, force: true });
      } catch {
        continue;
      }
    }
    out.push({ path: file, size, owner });
  }
  return out;
}

async function treeSize(dir: string): Promise<number> {
  let n = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) n += await treeSize(p);
    else n += (await fsp.lstat(p).catch(() => undefined))?.size ?? 0;
  }
  return n;
}

/** Spool files (and directories) of `convert` in a temp dir. */
export const SPOOL_PREFIX = 'ocichunk-spool-';

/**
 * A new spool path in `tmpDir`, named for its owner; spools that dead processes left there are
 * removed first (best effort: a failure to clean never fails a conversion).
 */
export async function newSpoolPath(tmpDir: string): Promise<string> {
  await cleanStale(tmpDir, [SPOOL_PREFIX]).catch(() => []);
  return path.join(tmpDir, tempName(SPOOL_PREFIX));
}

const heartbeats = new Set<string>();
let heartbeatTimer: NodeJS.Timeout | undefined;
/** How often held locks and writer markers are touched (owners from other contexts are judged by it). */
export const HEARTBEAT_MS = 20_000;

/** Touch `file` every HEARTBEAT_MS until the returned function is called (does not keep the process alive). */
export function keepFresh(file: string): () => void {
  heartbeats.add(file);
  if (!heartbeatTimer) {
    heartbeatTimer = setInterval(() => {
      const now = new Date();
      for (const f of heartbeats) fsp.utimes(f, now, now).catch(() => heartbeats.delete(f));
    }, HEARTBEAT_MS);
    heartbeatTimer.unref();
  }
  return () => {
    heartbeats.delete(file);
    if (heartbeats.size === 0 && heartbeatTimer) {
      clearInterval(heartbeatTimer);
      heartbeatTimer = undefined;
    }
  };
}
