/**
 * The snapshotter's persistent state: one JSON file, `<root>/state.json`, replaced whole on every
 * change (written to `state.json.tmp`, fsync'd, renamed over the old file, the directory fsync'd),
 * so a reader — the next start after a kill -9 or a power cut — sees either the old state or the
 * new one, never a torn one. And the root's lock, `<root>/lock`, so that two snapshotters never
 * share a root.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { OcichunkError } from '../errors.js';
import { ownerState, self, type Owner } from '../store/owner.js';

export type Kind = 'active' | 'view' | 'committed';

export interface Usage {
  /** bytes of disk used (allocated blocks, each inode counted once) */
  size: number;
  inodes: number;
}

/** A snapshot as persisted, under its key (active, view) or name (committed). */
export interface SnapshotRecord {
  /** its directory: `<root>/snapshots/<id>` */
  id: string;
  kind: Kind;
  /** the parent's name (a committed snapshot) */
  parent?: string;
  labels: Record<string, string>;
  /** ISO 8601 times */
  created: string;
  updated: string;
  /** committed: measured at commit (or given by the layer provider) */
  usage?: Usage;
  /**
   * Set for a committed snapshot whose `fs` a LayerProvider serves (a lazily mounted layer): what
   * the provider needs to serve it again after a restart. Opaque to the store.
   */
  remote?: Record<string, unknown>;
}

export interface StateFile {
  version: 1;
  /** the next snapshot id to hand out (ids are never reused) */
  nextId: number;
  snapshots: Record<string, SnapshotRecord>;
}

export const STATE_FILE = 'state.json';
const KINDS = new Set<Kind>(['active', 'view', 'committed']);

export function emptyState(): StateFile {
  return { version: 1, nextId: 1, snapshots: {} };
}

function corrupt(file: string, why: string): never {
  throw new OcichunkError('ECORRUPT', `snapshotter state ${file}: ${why} (move it away to start with no snapshots)`);
}

/** Check what was read: a damaged or foreign file stops the start with a clear error instead of losing snapshots. */
function validate(file: string, raw: unknown): StateFile {
  const o = raw as Partial<StateFile>;
  if (!o || typeof o !== 'object' || o.version !== 1) corrupt(file, 'not a version 1 state file');
  if (!Number.isSafeInteger(o.nextId) || (o.nextId as number) < 1) corrupt(file, 'bad nextId');
  if (!o.snapshots || typeof o.snapshots !== 'object') corrupt(file, 'no snapshots table');
  const ids = new Set<string>();
  for (const [key, r] of Object.entries(o.snapshots)) {
    if (!r || typeof r !== 'object' || typeof r.id !== 'string' || !/^[0-9]+$/.test(r.id)) corrupt(file, `snapshot ${JSON.stringify(key)}: bad id`);
    if (ids.has(r.id)) corrupt(file, `snapshot ${JSON.stringify(key)}: id ${r.id} used twice`);
    ids.add(r.id);
    if (!KINDS.has(r.kind)) corrupt(file, `snapshot ${JSON.stringify(key)}: bad kind`);
    if (r.parent !== undefined && o.snapshots[r.parent]?.kind !== 'committed')
      corrupt(file, `snapshot ${JSON.stringify(key)}: parent is not a committed snapshot`);
    if (!r.labels || typeof r.labels !== 'object') corrupt(file, `snapshot ${JSON.stringify(key)}: bad labels`);
  }
  return o as StateFile;
}

/** Read the state; a root without one starts empty. */
export async function readState(root: string): Promise<StateFile> {
  const file = path.join(root, STATE_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw new OcichunkError('EIO', `snapshotter state ${file}: ${(e as Error).message}`, { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    corrupt(file, `not JSON (${(e as Error).message})`);
  }
  return validate(file, raw);
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/** Replace the state atomically (see the file's comment). */
export async function writeState(root: string, state: StateFile): Promise<void> {
  const file = path.join(root, STATE_FILE);
  const tmp = `${file}.tmp`;
  const h = await fsp.open(tmp, 'w', 0o600);
  try {
    await h.writeFile(JSON.stringify(state, null, 1) + '\n');
    await h.sync();
  } finally {
    await h.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(root);
}

export { fsyncDir };

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Take `<root>/lock` (created exclusively, holding this process as its owner). A lock whose
 * holder is dead — killed, or from before a reboot and no such pid runs — is taken over; one held
 * by a live process fails with ELOCKED. Returns the release function.
 */
export function lockRoot(root: string): () => void {
  const file = path.join(root, 'lock');
  const me = self();
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify({ ...me, since: new Date().toISOString() }) + '\n', { flag: 'wx', mode: 0o600 });
      return () => {
        try {
          const o = JSON.parse(fs.readFileSync(file, 'utf8')) as Owner;
          if (o.pid === me.pid && o.start === me.start) fs.rmSync(file, { force: true });
        } catch {
          // gone or replaced: not ours to remove
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new OcichunkError('EIO', `lock ${file}: ${(e as Error).message}`, { cause: e });
    }
    let holder: (Owner & { since?: string }) | undefined;
    try {
      holder = JSON.parse(fs.readFileSync(file, 'utf8')) as Owner;
    } catch {
      holder = undefined; // half-written by a process killed at that instant, or removed meanwhile
    }
    const state = holder && Number.isSafeInteger(holder.pid) ? ownerState(holder) : 'dead';
    if (state === 'alive' || (state === 'unknown' && holder && running(holder.pid))) {
      throw new OcichunkError('ELOCKED', `${root} is in use by another snapshotter (pid ${holder?.pid}${holder?.since ? ` since ${holder.since}` : ''})`);
    }
    fs.rmSync(file, { force: true });
  }
  throw new OcichunkError('ELOCKED', `could not take the lock ${file}`);
}
