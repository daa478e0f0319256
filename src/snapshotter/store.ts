/**
 * The snapshots of the ocichunk snapshotter: containerd's snapshotter semantics
 * (`snapshots.Snapshotter`) over directories, as containerd's own overlayfs snapshotter keeps them.
 *
 * Layout: `<root>` (mode 0700) holds `state.json` (every snapshot's record, see state.ts), `lock`,
 * and `snapshots/<id>/fs` (the snapshot's files: the upper dir of an active snapshot, the layer of
 * a committed one) with `snapshots/<id>/work` (overlayfs' work dir, active snapshots only). All
 * layers live under one directory so that containerd can shorten long `lowerdir=` options.
 *
 * Crash safety: a snapshot's directory is made (under a temp name, then renamed to its id) before
 * its record is written, and its record is removed before its directory is deleted; so a kill -9 at
 * any point leaves at worst a directory no record names, which the next start (or Cleanup) deletes.
 *
 * Keys (active snapshots, views) and names (committed snapshots) share one key space. Errors carry
 * the codes the gRPC server maps to containerd's: ENOTFOUND (NotFound), EEXIST (AlreadyExists),
 * EPRECONDITION (FailedPrecondition), EUSAGE (InvalidArgument).
 *
 * Remote layers: a LayerProvider (layers.ts) may take over an active snapshot's Prepare and serve
 * a layer lazily instead; the store then commits it at once, as remote snapshotters do.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { OcichunkError } from '../errors.js';
import { matcher } from './filters.js';
import type { LayerProvider, RemoteLayer } from './layers.js';
import { emptyState, fsyncDir, lockRoot, readState, writeState, type Kind, type SnapshotRecord, type StateFile, type Usage } from './state.js';

export type { Kind, Usage } from './state.js';

/** A snapshot as the API shows it. */
export interface Info {
  name: string;
  parent?: string;
  kind: Kind;
  labels: Record<string, string>;
  created: Date;
  updated: Date;
}

/** A mount for containerd to perform (`containerd.types.Mount`). */
export interface Mount {
  type: string;
  source: string;
  options: string[];
}

export interface StoreEvent {
  level: 'debug' | 'info' | 'warn';
  msg: string;
}

export interface StoreOptions {
  /** Serves remote (lazily fetched) layers; without it every snapshot is an ordinary directory. */
  layers?: LayerProvider;
  /** Where messages go (the library never prints). */
  onEvent?: (e: StoreEvent) => void;
}

/** The label containerd sets on a layer's Prepare: the name the committed layer will get (its chain id). */
export const LABEL_TARGET = 'containerd.io/snapshot.ref';

const SNAPSHOTS = 'snapshots';
const TEMP_PREFIX = 'new-';

/** Labels as containerd stores them: an empty value is no label. */
function nonEmpty(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== '') out[k] = v;
  return out;
}

function err(code: 'ENOTFOUND' | 'EEXIST' | 'EPRECONDITION' | 'EUSAGE', msg: string): OcichunkError {
  return new OcichunkError(code, msg);
}

/** Disk usage of a tree as containerd measures it (continuity `fs.DiskUsage`): allocated blocks × 512, each inode once. */
export async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (p: string): Promise<void> => {
    let st: fs.BigIntStats;
    try {
      st = await fsp.lstat(p, { bigint: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // removed meanwhile
      throw e;
    }
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = await fsp.readdir(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const n of names) await visit(path.join(p, n));
    }
  };
  await visit(dir);
  return { size, inodes: seen.size };
}

/** overlayfs takes `index=off` where the kernel has the parameter (containerd passes it then). */
function overlayIndexOff(): boolean {
  return fs.existsSync('/sys/module/overlay/parameters/index');
}

/**
 * Whether overlayfs needs `userxattr` (containerd's `NeedsUserXAttr`): only in a user namespace
 * (not the initial one), and not on tmpfs.
 */
function needsUserXattr(root: string): boolean {
  let map = '';
  try {
    map = fs.readFileSync('/proc/self/uid_map', 'utf8');
  } catch {
    return false;
  }
  const initial = /^\s*0\s+0\s+4294967295\s*$/.test(map);
  if (initial) return false;
  try {
    return fs.statfsSync(root).type !== 0x01021994; // TMPFS_MAGIC
  } catch {
    return true;
  }
}

/** A Prepare whose key is held while its provider looks the layer up (see `SnapshotStore.prepare`). */
interface Hold {
  parent?: string;
  /** the snapshot directory's id, once made */
  id?: string;
}

/** Thrown inside a section once a layer is committed as remote: answered AlreadyExists. */
class Remote {}

export class SnapshotStore {
  private state: StateFile = emptyState();
  private queue: Promise<unknown> = Promise.resolve();
  /** keys of Prepares whose lookup is under way (see `prepare`) */
  private pending = new Set<string>();
  /** those Prepares */
  private holds = new Set<Hold>();
  /** layers (target names) being prepared by such a Prepare: settles when it is done */
  private preparing = new Map<string, Promise<void>>();
  private unlock?: () => void;
  private readonly indexOff = overlayIndexOff();
  private userxattr = false;
  private closed = false;

  private constructor(
    readonly root: string,
    private readonly opts: StoreOptions,
  ) {}

  /**
   * Open (or create) a snapshotter root: take its lock, read the state, delete directories no
   * record names (a crash's leftovers), and let the layer provider serve its remote layers again.
   */
  static async open(root: string, opts: StoreOptions = {}): Promise<SnapshotStore> {
    const abs = path.resolve(root);
    try {
      await fsp.mkdir(path.join(abs, SNAPSHOTS), { recursive: true, mode: 0o700 });
      await fsp.chmod(abs, 0o700);
    } catch (e) {
      throw new OcichunkError('EIO', `snapshotter root ${abs}: ${(e as Error).message}`, { cause: e });
    }
    const s = new SnapshotStore(abs, opts);
    s.unlock = lockRoot(abs);
    try {
      s.state = await readState(abs);
      await fsp.rm(path.join(abs, 'state.json.tmp'), { force: true });
      s.userxattr = needsUserXattr(abs);
      await opts.layers?.start?.();
      const removed = await s.removeOrphans();
      if (removed.length)
        s.event('info', `removed ${removed.length} snapshot director${removed.length === 1 ? 'y' : 'ies'} no snapshot uses: ${removed.join(', ')}`);
      for (const [name, r] of Object.entries(s.state.snapshots)) {
        if (!r.remote) continue;
        if (!opts.layers) s.event('warn', `snapshot ${name} is a remote layer, but no layer provider is configured: its directory is empty`);
        else await opts.layers.restore({ name, dir: s.dirOf(r.id), labels: r.labels, remote: r.remote });
      }
      await opts.layers?.restored?.();
    } catch (e) {
      await opts.layers?.close?.().catch(() => undefined);
      s.unlock();
      throw e;
    }
    return s;
  }

  /** Release the root (state is always persisted: nothing to flush). Waits for running changes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue.catch(() => undefined);
    try {
      await this.opts.layers?.close?.();
    } finally {
      this.unlock?.();
    }
  }

  private event(level: StoreEvent['level'], msg: string): void {
    this.opts.onEvent?.({ level, msg });
  }

  private dirOf(id: string): string {
    return path.join(this.root, SNAPSHOTS, id);
  }

  private fsOf(id: string): string {
    return path.join(this.dirOf(id), 'fs');
  }

  private workOf(id: string): string {
    return path.join(this.dirOf(id), 'work');
  }

  /** Run one change at a time (changes read-modify-write the state). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new OcichunkError('ECANCELED', 'the snapshotter is stopping'));
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Persist a new state, then adopt it (a failed write leaves the old state in memory and on disk). */
  private async commitState(next: StateFile): Promise<void> {
    await writeState(this.root, next);
    this.state = next;
  }

  private copyState(): StateFile {
    return { version: 1, nextId: this.state.nextId, snapshots: { ...this.state.snapshots } };
  }

  private record(key: string): SnapshotRecord {
    if (!key) throw err('EUSAGE', 'no snapshot key given');
    const r = Object.hasOwn(this.state.snapshots, key) ? this.state.snapshots[key] : undefined;
    if (!r) throw err('ENOTFOUND', `snapshot ${key} does not exist`);
    return r;
  }

  private info(name: string, r: SnapshotRecord): Info {
    return {
      name,
      ...(r.parent !== undefined ? { parent: r.parent } : {}),
      kind: r.kind,
      labels: { ...r.labels },
      created: new Date(r.created),
      updated: new Date(r.updated),
    };
  }

  /** Ids of a snapshot's parents, nearest first. */
  private parentIds(r: SnapshotRecord): string[] {
    const ids: string[] = [];
    for (let p = r.parent; p !== undefined; ) {
      const pr = this.state.snapshots[p];
      if (!pr) throw new OcichunkError('EINTERNAL', `parent ${p} is missing from the state`);
      ids.push(pr.id);
      p = pr.parent;
    }
    return ids;
  }

  /** The mounts of an active snapshot or a view, exactly as containerd's overlayfs snapshotter gives them. */
  private mountsOf(r: SnapshotRecord): Mount[] {
    const parents = this.parentIds(r);
    if (parents.length === 0) {
      return [{ type: 'bind', source: this.fsOf(r.id), options: [r.kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    const options: string[] = [];
    if (this.indexOff) options.push('index=off');
    if (this.userxattr) options.push('userxattr');
    if (r.kind === 'active') options.push(`workdir=${this.workOf(r.id)}`, `upperdir=${this.fsOf(r.id)}`);
    else if (parents.length === 1) return [{ type: 'bind', source: this.fsOf(parents[0]), options: ['ro', 'rbind'] }];
    options.push(`lowerdir=${parents.map((id) => this.fsOf(id)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  stat(key: string): Info {
    return this.info(key, this.record(key));
  }

  /** Snapshots matching any of the filters (containerd's filter syntax, filters.ts). */
  list(filters: string[] = []): Info[] {
    const match = matcher(filters);
    const out: Info[] = [];
    for (const [name, r] of Object.entries(this.state.snapshots)) {
      const x = { name, parent: r.parent, kind: r.kind, labels: r.labels };
      if (match(x)) out.push(this.info(name, r));
    }
    return out;
  }

  mounts(key: string): Mount[] {
    const r = this.record(key);
    if (r.kind === 'committed') throw err('EPRECONDITION', `snapshot ${key} is committed: only active snapshots and views have mounts`);
    return this.mountsOf(r);
  }

  /** Usage: measured now for an active snapshot, as recorded for the others. */
  async usage(key: string): Promise<Usage> {
    const r = this.record(key);
    if (r.kind === 'active') return diskUsage(this.fsOf(r.id));
    return r.usage ?? { size: 0, inodes: 0 };
  }

  prepare(key: string, parent: string | undefined, labels: Record<string, string> = {}): Promise<Mount[]> {
    const p = parent || undefined;
    const target = nonEmpty(labels)[LABEL_TARGET];
    if (!target || !this.opts.layers) return this.exclusive(() => this.create('active', key, p, labels));
    // a layer a provider may serve: its lookup (which may take up to the provider's time limit)
    // runs outside the one-change-at-a-time section, so other calls go on meanwhile. The key is
    // held until it is done, and a second Prepare of the same layer waits for the first (then
    // finds the layer committed, or prepares it the ordinary way)
    const busy = this.preparing.get(target);
    if (busy) return busy.then(() => this.prepare(key, parent, labels));
    const run = this.exclusive(async () => this.reserve(key, p)).then(async (hold) => {
      this.holds.add(hold);
      try {
        return await this.create('active', key, p, labels, hold);
      } finally {
        this.pending.delete(key);
        this.holds.delete(hold);
      }
    });
    const done = run.then(
      () => undefined,
      () => undefined,
    );
    this.preparing.set(target, done);
    void done.then(() => this.preparing.delete(target));
    return run;
  }

  view(key: string, parent: string | undefined, labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.exclusive(() => this.create('view', key, parent || undefined, labels));
  }

  private checkNew(key: string, parent: string | undefined): void {
    if (!key) throw err('EUSAGE', 'no snapshot key given');
    if (parent !== undefined) {
      const p = this.record(parent);
      if (p.kind !== 'committed') throw err('EUSAGE', `parent ${parent} is not a committed snapshot`);
    }
    if (Object.hasOwn(this.state.snapshots, key) || this.pending.has(key)) throw err('EEXIST', `snapshot ${key} already exists`);
  }

  /** The first half of a Prepare a provider may serve: the checks, and the key held. */
  private async reserve(key: string, parent: string | undefined): Promise<Hold> {
    this.checkNew(key, parent);
    this.pending.add(key);
    return { parent };
  }

  /** A free id (skipping directories a crash left behind, in case they are still there). */
  private allocId(next: StateFile): string {
    let n = next.nextId;
    while (fs.existsSync(this.dirOf(String(n)))) n++;
    next.nextId = n + 1;
    return String(n);
  }

  /** Make `snapshots/new-XXXX/{fs,work}`; `fs` takes the owner of the parent's `fs`. */
  private async makeDir(kind: Kind, parent: SnapshotRecord | undefined): Promise<string> {
    const td = await fsp.mkdtemp(path.join(this.root, SNAPSHOTS, TEMP_PREFIX));
    try {
      await fsp.mkdir(path.join(td, 'fs'), { mode: 0o755 });
      await fsp.chmod(path.join(td, 'fs'), 0o755); // whatever the umask
      if (kind === 'active') {
        await fsp.mkdir(path.join(td, 'work'), { mode: 0o711 });
        await fsp.chmod(path.join(td, 'work'), 0o711);
      }
      if (parent) {
        const st = await fsp.stat(this.fsOf(parent.id));
        await fsp.lchown(path.join(td, 'fs'), st.uid, st.gid);
      }
      return td;
    } catch (e) {
      await fsp.rm(td, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * Make a snapshot. Without `hold`, all of it runs in the caller's exclusive section. With one
   * (a reserved Prepare, see `prepare`), the provider's lookup runs outside it, and the state is
   * read and changed in exclusive sections before and after.
   */
  private async create(kind: Kind, key: string, parent: string | undefined, given: Record<string, string>, hold?: Hold): Promise<Mount[]> {
    if (!hold) this.checkNew(key, parent);
    const labels = nonEmpty(given);
    const parentRec = parent !== undefined ? this.state.snapshots[parent] : undefined;
    const target = labels[LABEL_TARGET];
    let provider = kind === 'active' && target ? this.opts.layers : undefined;
    if (provider && Object.hasOwn(this.state.snapshots, target)) {
      // the layer is there already (another namespace unpacked it, or a retry): as remote snapshotters answer
      const t = this.state.snapshots[target];
      if (t.kind === 'committed' && t.parent === parent) throw err('EEXIST', `target snapshot ${target} already exists`);
      provider = undefined; // something else holds that name: the ordinary path
    }
    // in a held Prepare, the sections that read or change the state
    const section = <T>(fn: () => Promise<T>): Promise<T> => (hold ? this.exclusive(fn) : fn());
    const { td, id, dir, parentDirs } = await section(async () => {
      const td = await this.makeDir(kind, parentRec);
      // the id is taken now: nextId moves on in memory (and on disk with the next change)
      const id = this.allocId(this.state);
      if (hold) hold.id = id; // its directory is in use (Cleanup leaves it) until the Prepare is done
      const dir = this.dirOf(id);
      const parentDirs = parentRec ? [parentRec.id, ...this.parentIds(parentRec)].map((i) => this.dirOf(i)) : [];
      await fsp.rename(td, dir);
      await fsyncDir(path.join(this.root, SNAPSHOTS));
      return { td, id, dir, parentDirs };
    });
    const now = new Date().toISOString();
    let remote: RemoteLayer | undefined;
    try {
      if (provider) {
        remote = await provider.prepare({ key, parent, labels, dir, parentDirs }).catch((e: unknown) => {
          this.event('warn', `layer ${target}: not remote (${(e as Error).message}); containerd applies it`);
          return undefined;
        });
      }
      return await section(async () => {
        // the parent may not have gone meanwhile (a held key and target cannot have been taken)
        if (hold && parent !== undefined && !Object.hasOwn(this.state.snapshots, parent)) throw err('ENOTFOUND', `snapshot ${parent} does not exist`);
        const next = this.copyState();
        if (!remote) {
          const rec: SnapshotRecord = { id, kind, ...(parent !== undefined ? { parent } : {}), labels, created: now, updated: now };
          next.snapshots[key] = rec;
          await this.commitState(next);
          return this.mountsOf(rec);
        }
        next.snapshots[target] = {
          id,
          kind: 'committed',
          ...(parent !== undefined ? { parent } : {}),
          labels: nonEmpty({ ...labels, ...remote.labels }),
          created: now,
          updated: now,
          usage: remote.usage,
          remote: remote.remote,
        };
        await this.commitState(next);
        this.event('info', `layer ${target} is remote: committed at once`);
        throw new Remote();
      });
    } catch (e) {
      if (e instanceof Remote) throw err('EEXIST', `target snapshot ${target} already exists`);
      if (remote) await provider?.release(dir).catch(() => undefined);
      await fsp.rm(td, { recursive: true, force: true });
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /** Commit an active snapshot as `name` (its labels: the ones given here, as containerd's storage does). */
  commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    return this.exclusive(async () => {
      if (!name) throw err('EUSAGE', 'no name given to commit to');
      if (Object.hasOwn(this.state.snapshots, name)) throw err('EEXIST', `snapshot ${name} already exists`);
      const r = this.record(key);
      if (r.kind !== 'active') throw err('EPRECONDITION', `snapshot ${key} is not active`);
      const usage = await diskUsage(this.fsOf(r.id));
      const next = this.copyState();
      delete next.snapshots[key];
      const now = new Date().toISOString();
      next.snapshots[name] = {
        id: r.id,
        kind: 'committed',
        ...(r.parent !== undefined ? { parent: r.parent } : {}),
        labels: nonEmpty(labels),
        created: now,
        updated: now,
        usage,
      };
      await this.commitState(next);
    });
  }

  /** Remove a snapshot that has no children, and delete its directory. */
  remove(key: string): Promise<void> {
    return this.exclusive(async () => {
      const r = this.record(key);
      for (const [child, c] of Object.entries(this.state.snapshots)) {
        if (c.parent === key) throw err('EPRECONDITION', `cannot remove snapshot ${key}: it has a child (${child})`);
      }
      const next = this.copyState();
      delete next.snapshots[key];
      await this.commitState(next);
      await this.deleteDir(this.dirOf(r.id), key);
    });
  }

  private async deleteDir(dir: string, what: string): Promise<void> {
    try {
      if (this.opts.layers) await this.opts.layers.release(dir);
      await fsp.rm(dir, { recursive: true, force: true });
    } catch (e) {
      // the record is gone: Cleanup (or the next start) retries
      this.event('warn', `could not delete ${dir} (${what}): ${(e as Error).message}`);
    }
  }

  /**
   * Change labels: `paths` as containerd's field mask (`labels` replaces all of them,
   * `labels.<key>` sets or, with no value given, deletes one key); no paths replaces all labels.
   */
  update(name: string, labels: Record<string, string>, paths: string[] = []): Promise<Info> {
    return this.exclusive(async () => {
      const r = this.record(name);
      let nextLabels = { ...r.labels };
      if (paths.length === 0) nextLabels = { ...labels };
      for (const p of paths) {
        if (p === 'labels') nextLabels = { ...labels };
        else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (Object.hasOwn(labels, k)) nextLabels[k] = labels[k];
          else delete nextLabels[k];
        } else throw err('EUSAGE', `cannot update ${JSON.stringify(p)} field on snapshot ${name}`);
      }
      const next = this.copyState();
      const rec = { ...r, labels: nonEmpty(nextLabels), updated: new Date().toISOString() };
      next.snapshots[name] = rec;
      await this.commitState(next);
      return this.info(name, rec);
    });
  }

  /** Delete the directories no snapshot uses (removed snapshots, a crash's leftovers). */
  cleanup(): Promise<string[]> {
    return this.exclusive(() => this.removeOrphans());
  }

  private async removeOrphans(): Promise<string[]> {
    const used = new Set(Object.values(this.state.snapshots).map((r) => r.id));
    for (const h of this.holds) if (h.id) used.add(h.id);
    const removed: string[] = [];
    for (const d of await fsp.readdir(path.join(this.root, SNAPSHOTS))) {
      if (used.has(d)) continue;
      await this.deleteDir(path.join(this.root, SNAPSHOTS, d), 'unused');
      removed.push(d);
    }
    return removed;
  }
}
