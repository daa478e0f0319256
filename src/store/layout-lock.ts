/**
 * The lock of an OCI image layout, and the markers of processes writing into it.
 *
 * Node has no flock(), and flock does not work over every network filesystem anyway, so the lock
 * is a file, `<layout>/.ocichunk/lock`, holding its owner (pid, process start time, context: see
 * owner.ts), the host name and a nonce. It is written whole to a temp file first and published
 * with link(2), which fails if the lock exists: the lock file is never seen half-written. A
 * process that finds the lock taken retries with a growing, jittered delay (5 ms to 250 ms) until
 * `timeoutMs` (default 60 s, or $OCICHUNK_LOCK_TIMEOUT seconds), then fails with code ELOCKED
 * naming the holder. A lock whose holder is dead (checked exactly on this host, see owner.ts) is
 * taken over; a lock from another host or container is taken over only when its holder stopped
 * touching it (held locks are touched every 20 s) for 2 minutes. Takeover is serialized by a
 * second exclusive file, `lock.takeover`: under it the taker re-reads the lock and removes it only
 * if it still holds the same nonce, so two takers can never remove a lock a live process has just
 * taken. (A takeover file left by a process killed within those few microseconds is removed after
 * 10 s.)
 *
 * The lock is held only around read-modify-writes of index.json (and by gc), never for a whole
 * conversion. Writers additionally hold a marker `.ocichunk/writer-<owner>-<rand>` from the
 * sink's init() to its close(): see gc.ts for why.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { OcichunkError, type ErrorCode } from '../errors.js';
import { cleanStale, idleMs, keepFresh, ownerState, self, tempName, type Owner, type StaleFile } from './owner.js';

/** Stable code of "the layout is locked / busy": ELOCKED where this build knows it, else EIO. */
export const LOCKED_CODE: ErrorCode = 'ELOCKED';

export const DEFAULT_LOCK_TIMEOUT_MS = 60_000;
/** A lock (or writer marker) of an owner we cannot check, untouched this long, is stale. */
export const UNKNOWN_HOLDER_STALE_MS = 120_000;
const TAKEOVER_STALE_MS = 10_000;

export interface LockInfo extends Owner {
  host?: string;
  nonce?: string;
  since?: string;
  command?: string;
}

export interface LockOptions {
  /** How long to wait for the lock (default $OCICHUNK_LOCK_TIMEOUT seconds, else 60 s). */
  timeoutMs?: number;
}

export function stateDir(layout: string): string {
  return path.join(layout, '.ocichunk');
}

export function lockPath(layout: string): string {
  return path.join(stateDir(layout), 'lock');
}

function lockTimeout(opts: LockOptions): number {
  if (opts.timeoutMs !== undefined) return opts.timeoutMs;
  const env = Number(process.env.OCICHUNK_LOCK_TIMEOUT);
  return Number.isFinite(env) && env >= 0 ? env * 1000 : DEFAULT_LOCK_TIMEOUT_MS;
}

function describeHolder(h: LockInfo | undefined): string {
  if (!h) return 'an unknown process';
  return `pid ${h.pid}${h.host ? ` on ${h.host}` : ''}${h.command ? ` (ocichunk ${h.command})` : ''}${h.since ? ` since ${h.since}` : ''}`;
}

async function readInfo(file: string): Promise<{ info: LockInfo | undefined; idle: number } | undefined> {
  try {
    const [raw, st] = await Promise.all([fsp.readFile(file, 'utf8'), fsp.stat(file)]);
    let info: LockInfo | undefined;
    try {
      const o = JSON.parse(raw) as LockInfo;
      if (o && Number.isSafeInteger(o.pid)) info = o;
    } catch {
      info = undefined; // written by the non-link fallback and not finished, or damaged
    }
    return { info, idle: idleMs(st) };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/** Whether what a lock or marker file says about its holder makes it removable. */
function holderGone(r: { info: LockInfo | undefined; idle: number }): boolean {
  const state = r.info ? ownerState(r.info) : 'unknown';
  if (state !== 'unknown') return state === 'dead';
  return r.idle >= UNKNOWN_HOLDER_STALE_MS;
}

function myInfo(): LockInfo {
  const me = self();
  return {
    pid: me.pid,
    start: me.start,
    ctx: me.ctx,
    host: os.hostname(),
    nonce: randomBytes(8).toString('hex'),
    since: new Date().toISOString(),
    // the command, when this is the CLI (a library user's argv means nothing here)
    command: /ocichunk(\.js)?$/.test(process.argv[1] ?? '') ? process.argv[2] : undefined,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Remove a stale lock, if it is still the one we judged stale (see the module comment). */
async function takeOver(layout: string, stale: LockInfo | undefined, staleIdle: number): Promise<boolean> {
  const lock = lockPath(layout);
  const guard = path.join(stateDir(layout), 'lock.takeover');
  try {
    await fsp.writeFile(guard, String(process.pid), { flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    const st = await fsp.stat(guard).catch(() => undefined);
    if (st && idleMs(st) > TAKEOVER_STALE_MS) await fsp.rm(guard, { force: true });
    return false;
  }
  try {
    const now = await readInfo(lock);
    if (!now) return true;
    const same = stale?.nonce !== undefined ? now.info?.nonce === stale.nonce : !now.info && now.idle >= staleIdle;
    if (!same || !holderGone(now)) return true; // someone else took it over: try again
    await fsp.rm(lock, { force: true });
    return true;
  } finally {
    await fsp.rm(guard, { force: true });
  }
}

export interface LayoutLock {
  readonly path: string;
  release(): Promise<void>;
}

/** Take the layout's lock, waiting up to the timeout; fails with code LOCKED_CODE naming the holder. */
export async function lockLayout(layout: string, opts: LockOptions = {}): Promise<LayoutLock> {
  const dir = stateDir(layout);
  await fsp.mkdir(dir, { recursive: true });
  const lock = lockPath(layout);
  const info = myInfo();
  const tmp = path.join(dir, tempName('.tmp-'));
  await fsp.writeFile(tmp, JSON.stringify(info) + '\n');
  const deadline = Date.now() + lockTimeout(opts);
  let delay = 5;
  let holder: LockInfo | undefined;
  try {
    for (;;) {
      try {
        await fsp.link(tmp, lock);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EEXIST') {
          // no hard links here (some FUSE and SMB mounts): exclusive create, content written after
          try {
            await fsp.writeFile(lock, JSON.stringify(info) + '\n', { flag: 'wx' });
            break;
          } catch (e2) {
            if ((e2 as NodeJS.ErrnoException).code !== 'EEXIST') throw e2;
          }
        }
      }
      const cur = await readInfo(lock);
      if (!cur) continue; // released meanwhile
      holder = cur.info;
      if (holderGone(cur) && (await takeOver(layout, cur.info, cur.idle))) continue;
      if (Date.now() >= deadline) {
        throw new OcichunkError(
          LOCKED_CODE,
          `${layout} is locked by ${describeHolder(holder)}: gave up after ${(lockTimeout(opts) / 1000).toFixed(1)} s ` +
            `(if that process is gone for good, remove ${lock})`,
        );
      }
      await sleep(Math.min(delay, Math.max(1, deadline - Date.now())) * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 250);
    }
  } finally {
    await fsp.rm(tmp, { force: true });
  }
  const stop = keepFresh(lock);
  let released = false;
  return {
    path: lock,
    async release() {
      if (released) return;
      released = true;
      stop();
      const cur = await readInfo(lock);
      // never remove a lock that is not ours (it can only have been taken over if we were judged dead)
      if (cur?.info?.nonce === info.nonce) await fsp.rm(lock, { force: true });
    },
  };
}

/** Run `fn` holding the layout's lock. */
export async function withLayoutLock<T>(layout: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const l = await lockLayout(layout, opts);
  try {
    return await fn();
  } finally {
    await l.release();
  }
}

const WRITER_PREFIX = 'writer-';

/** A process writing into the layout, as its marker says. */
export interface Writer extends LockInfo {
  file: string;
}

/** Markers of this process, removed at exit if nobody closed their sink (e.g. a conversion that failed). */
const myMarkers = new Set<string>();
let exitHook = false;

/**
 * Mark this process as writing into the layout (call it holding the lock). Returns the function
 * that removes the marker.
 */
export async function registerWriter(layout: string, what: string): Promise<() => Promise<void>> {
  const dir = stateDir(layout);
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, tempName(WRITER_PREFIX));
  await fsp.writeFile(file, JSON.stringify({ ...myInfo(), ref: what }) + '\n');
  const stop = keepFresh(file);
  myMarkers.add(file);
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const f of myMarkers) fs.rmSync(f, { force: true });
    });
  }
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    stop();
    myMarkers.delete(file);
    await fsp.rm(file, { force: true });
  };
}

/** Writers whose markers are not stale (stale markers are removed unless dryRun). */
export async function liveWriters(layout: string, opts: { dryRun?: boolean } = {}): Promise<{ live: Writer[]; stale: StaleFile[] }> {
  const dir = stateDir(layout);
  const live: Writer[] = [];
  const stale: StaleFile[] = [];
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return { live, stale };
  }
  for (const n of names) {
    if (!n.startsWith(WRITER_PREFIX)) continue;
    const file = path.join(dir, n);
    const r = await readInfo(file);
    if (!r) continue;
    if (holderGone(r)) {
      const size = (await fsp.stat(file).catch(() => undefined))?.size ?? 0;
      if (!opts.dryRun) await fsp.rm(file, { force: true });
      stale.push({ path: file, size, owner: r.info ?? { pid: 0 } });
    } else {
      live.push({ ...(r.info ?? { pid: 0 }), file });
    }
  }
  return { live, stale };
}

/**
 * Remove what dead processes left in a layout: blob temp files, index.json/oci-layout temp files,
 * lock temp files and writer markers. Safe without the lock (only files of dead owners go).
 */
export async function cleanLayoutTemps(layout: string, opts: { dryRun?: boolean; unknownGraceMs?: number } = {}): Promise<StaleFile[]> {
  const out: StaleFile[] = [];
  out.push(...(await cleanStale(path.join(layout, 'blobs', 'sha256'), ['.tmp-'], opts)));
  out.push(...(await cleanStale(layout, ['index.json.tmp-', 'oci-layout.tmp-'], opts)));
  out.push(...(await cleanStale(stateDir(layout), ['.tmp-'], opts)));
  out.push(...(await liveWriters(layout, opts)).stale);
  return out;
}
