/**
 * Remote layers for the snapshotter (a LayerProvider, layers.ts): a layer whose Prepare names its
 * image and digest — CRI's `containerd.io/snapshot/cri.*` labels, or the
 * `containerd.io/snapshot/remote/stargz.*` ones `ctr-remote image rpull` attaches — is served from
 * the image's chunked manifest, lazily, instead of being downloaded and applied by containerd.
 *
 * How: the reference is resolved (its index → the chunked manifest paired with the original for
 * this platform, or the referrer form) within a time limit; `org.ocichunk.source.layers` gives the
 * layer's position in the TOC. The chunked manifest is mounted once, by digest, as per-layer
 * overlayfs directories by an `ocichunk mount --layers` process of its own (FUSE; chunks fetched
 * by Range requests into the chunk cache shared with `ocichunk mount`, verified) at
 * `<root>/images/<hex>`, and `<root>/images/<hex>/<i>` is bind-mounted on the snapshot's
 * `<dir>/fs`. So the store's mounts stay those of containerd's overlayfs snapshotter (every layer
 * under `<root>/snapshots`, which lets containerd shorten long `lowerdir=` options), a View or a
 * diff of the layer sees it at its usual path, and removing the snapshot is one unmount. An image
 * mount is shared by every snapshot of its layers (counted by snapshot directory) and stopped when
 * the last of them is released.
 *
 * Anything else — no labels, an image without a chunked manifest, a lookup that fails or takes too
 * long — answers undefined: containerd downloads and applies the layer as usual.
 *
 * Restarts: the mount processes are detached from the snapshotter (own session, `<hex>.json`
 * says their pid once mounted), so they outlive a stop or a kill -9 of it, and containers running
 * on their layers keep reading. At start (`start()`, with the root locked) the live ones are
 * adopted; every other mount under the root (a mount process that died: its FUSE mount and the
 * binds of its layers) is detached. `restore()` then keeps the binds that are there, mounts what
 * is missing again (by the chunked manifest's digest, so a moved tag changes nothing), and
 * `restored()` stops adopted mounts no snapshot uses (docs/snapshotter.md, "Restarts").
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { resolveImage } from '../chunked/image.js';
import { OcichunkError } from '../errors.js';
import { DEFAULT_CACHE_DIR, DEFAULT_CACHE_MAX } from '../lazy/cache.js';
import type { LayerUsage } from '../lazy/mounted.js';
import { ANN } from '../oci/chunked-media.js';
import { platformString, type Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import { parseDockerRef } from '../transports/docker-ref.js';
import type { LayerProvider, PrepareRequest, RemoteLayer } from './layers.js';

const run = promisify(execFile);
/**
 * Verified chunks a mount process keeps in memory by default (`ocichunk mount` alone keeps 64 MiB):
 * reads go through the kernel's page cache and seldom come back for a chunk, and 8 MiB holds what
 * the 16 read workers need for the largest CDC chunks (256 KiB) twice over. For python3 in the py
 * image it hashes as few chunks as 64 MiB does (135), and the mount process peaks ~8 MiB lower.
 */
export const DEFAULT_MOUNT_MEMORY_CACHE = 4 << 20;
/** the CLI the mount processes run (bin/ocichunk.js over dist/) */
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ocichunk.js');

/** The labels that name a layer's image and digest, per client. */
export const LABELS = {
  cri: {
    ref: 'containerd.io/snapshot/cri.image-ref',
    digest: 'containerd.io/snapshot/cri.layer-digest',
    layers: 'containerd.io/snapshot/cri.image-layers',
  },
  stargz: {
    ref: 'containerd.io/snapshot/remote/stargz.reference',
    digest: 'containerd.io/snapshot/remote/stargz.digest',
    layers: 'containerd.io/snapshot/remote/stargz.layers',
  },
} as const;

/** Set on a committed remote layer (as stargz-snapshotter marks its layers). */
export const LABEL_REMOTE = 'containerd.io/snapshot/remote';
/** Set on a committed remote layer: the chunked manifest serving it. */
export const LABEL_CHUNKED = 'org.ocichunk/snapshot.chunked-manifest';

export interface LayerLabels {
  /** the image reference, as the client gave it (HOST/REPO:TAG, docker.io names shortened or not) */
  ref: string;
  /** the original layer's digest */
  digest: string;
  /** the image's layers from this one on (may be cut short by the label size limit) */
  layers?: string[];
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

/** The image and layer a Prepare's labels name (CRI's first, then ctr-remote's), if any. */
export function layerLabels(labels: Record<string, string>): LayerLabels | undefined {
  for (const set of [LABELS.cri, LABELS.stargz]) {
    const ref = labels[set.ref];
    const digest = labels[set.digest];
    if (!ref || !digest || !DIGEST_RE.test(digest)) continue;
    const layers = labels[set.layers]
      ?.split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    return { ref, digest, ...(layers?.length ? { layers } : {}) };
  }
  return undefined;
}

/**
 * The TOC layer of `digest` among the image's layers: its position, the one whose following layers
 * match the label's list where the digest occurs more than once (an image may repeat a layer).
 */
export function layerIndex(sourceLayers: string[], digest: string, following?: string[]): number {
  const at: number[] = [];
  sourceLayers.forEach((d, i) => d === digest && at.push(i));
  if (at.length <= 1 || !following?.length) return at.length ? at[0] : -1;
  const rest = following[0] === digest ? following : [digest, ...following];
  const exact = at.find((i) => rest.every((d, k) => sourceLayers[i + k] === d));
  // the label's list runs from this layer to the last one (unless cut short): the end decides
  const byCount = at.find((i) => sourceLayers.length - i === rest.length);
  return byCount ?? exact ?? at[0];
}

/** The mount table (/proc/self/mountinfo): each mount's device (major:minor) and mount point (decoded), in mount order. */
export function mountTable(): Array<{ dev: string; point: string }> {
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length > 4)
    .map((f) => ({ dev: f[2], point: f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) }));
}

export function mountPoints(): string[] {
  return mountTable().map((m) => m.point);
}

/** Detach (umount -l) every mount at or under `dir`, deepest first; the mount points detached. */
export async function detachUnder(dir: string, keep: (m: { dev: string; point: string }) => boolean = () => false): Promise<string[]> {
  const under = mountTable()
    .filter((m) => (m.point === dir || m.point.startsWith(dir + '/')) && !keep(m))
    .map((m) => m.point);
  const out: string[] = [];
  // the last mounted first (stacked mounts), deeper paths before their parents
  for (const m of [...new Set(under.reverse())].sort((a, b) => b.length - a.length)) {
    try {
      await run('umount', ['-l', '--', m]);
      out.push(m);
    } catch (e) {
      throw new OcichunkError('EIO', `cannot unmount ${m}: ${((e as { stderr?: string }).stderr || (e as Error).message).trim()}`, { cause: e });
    }
  }
  return out;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  if (!(ms > 0) || !Number.isFinite(ms)) return p;
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new OcichunkError('ENETWORK', `${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

export interface RemoteLayersOptions {
  /** the snapshotter's root (images are mounted under `<root>/images`) */
  root: string;
  /** chunk cache shared with `ocichunk mount` (default ~/.cache/ocichunk/chunks) */
  cacheDir?: string;
  cacheMaxBytes?: number;
  /** verified chunks each mount process keeps in memory (`ocichunk mount --memory-cache`); default 8 MiB */
  mountMemoryCacheBytes?: number;
  /** the mount processes' prefetch: a trace file for every image (`ocichunk mount --prefetch`), or false for none; default the image's own prefetch list */
  prefetch?: string | false;
  /** registry options: credentials (default: as the other commands find them), plain HTTP, TLS */
  transport?: TransportOptions;
  /** the platform to pick from an index (default this host's) */
  platform?: Platform;
  /** time limit of a layer's lookup (resolve the image, mount it) before containerd applies it itself; default 20 s */
  lookupTimeoutMs?: number;
  /** how long a tag's resolution is reused for the other layers of the same pull; default 60 s */
  resolveTtlMs?: number;
  onEvent?: (e: { level: 'debug' | 'info' | 'warn'; msg: string }) => void;
}

interface Resolved {
  /** `docker://HOST/REPO@<chunked manifest digest>` */
  mountRef: string;
  chunked: string;
  sourceLayers: string[];
}

/** A running mount process, as its ready file tells. */
export interface MountInfo {
  pid: number;
  layerCount: number;
  layerUsage: LayerUsage[];
  tocBytes: number;
}

interface ImageMount {
  chunked: string;
  ref: string;
  mounted: Promise<MountInfo>;
  /** snapshot directories whose fs is bound to one of its layers */
  users: Set<string>;
  /** Prepares waiting for the mount */
  pending: number;
  /** the FUSE mount's device (major:minor), once known */
  dev?: string;
}

/** The record persisted with a remote snapshot (the store keeps it opaque). */
export interface RemoteRecord {
  ref: string;
  chunked: string;
  layer: number;
  digest: string;
}

function isRecord(r: Record<string, unknown>): r is Record<string, unknown> & RemoteRecord {
  return (
    typeof r.ref === 'string' && typeof r.chunked === 'string' && DIGEST_RE.test(r.chunked) && Number.isSafeInteger(r.layer) && typeof r.digest === 'string'
  );
}

export class RemoteLayers implements LayerProvider {
  private readonly images = new Map<string, ImageMount>();
  /** snapshot dir → chunked manifest digest of the image its fs is bound to */
  private readonly binds = new Map<string, string>();
  private readonly resolved = new Map<string, { at: number; value: Promise<Resolved | undefined> }>();
  private readonly imagesDir: string;

  constructor(private readonly opts: RemoteLayersOptions) {
    this.imagesDir = path.join(path.resolve(opts.root), 'images');
  }

  private event(level: 'debug' | 'info' | 'warn', msg: string): void {
    this.opts.onEvent?.({ level, msg });
  }

  /** The images mounted now: chunked manifest digest, mount process, snapshots using it. */
  async mounted(): Promise<Array<{ chunked: string; pid?: number; users: number }>> {
    const out = [];
    for (const m of this.images.values()) {
      const info = await m.mounted.catch(() => undefined);
      out.push({ chunked: m.chunked, ...(info ? { pid: info.pid } : {}), users: m.users.size });
    }
    return out;
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.imagesDir, { recursive: true, mode: 0o700 });
    const table = mountTable();
    // mount processes of earlier runs that still serve their image: adopted
    const live = new Map<string, { info: MountInfo; dev: string }>();
    for (const f of await fsp.readdir(this.imagesDir)) {
      const m = /^([a-f0-9]{64})\.json$/.exec(f);
      if (!m) continue;
      const mnt = path.join(this.imagesDir, m[1]);
      const info = await readInfo(`${mnt}.json`);
      const mount = table.find((t) => t.point === mnt);
      if (info && mount && serving(info.pid, mnt)) live.set(m[1], { info, dev: mount.dev });
      else if (info && serving(info.pid, mnt)) await stopProcess(info.pid); // up, but its mount is gone
    }
    const devs = new Set([...live.values()].map((l) => l.dev));
    // the rest is what dead ones left: their FUSE mounts (ENOTCONN) and the binds of their layers
    const gone = await detachUnder(path.resolve(this.opts.root), (t) => devs.has(t.dev));
    if (gone.length) this.event('info', `detached ${gone.length} mount(s) left under ${this.opts.root} by mount processes that are gone`);
    for (const f of await fsp.readdir(this.imagesDir)) {
      if (!live.has(f.slice(0, 64))) await fsp.rm(path.join(this.imagesDir, f), { recursive: true, force: true });
    }
    for (const [hex, { info }] of live) {
      const chunked = `sha256:${hex}`;
      this.images.set(chunked, { chunked, ref: chunked, mounted: Promise.resolve(info), users: new Set(), pending: 0, dev: live.get(hex)!.dev });
    }
    if (live.size) this.event('info', `adopted ${live.size} running image mount(s): ${[...live.values()].map((l) => `pid ${l.info.pid}`).join(', ')}`);
  }

  async restored(): Promise<void> {
    // adopted mounts no snapshot uses any more
    for (const m of [...this.images.values()]) await this.dropIfUnused(m).catch((e: unknown) => this.event('warn', (e as Error).message));
  }

  /** The chunked manifest of an image reference (undefined: not converted), reused for a minute. */
  private resolve(ref: string): Promise<Resolved | undefined> {
    const now = Date.now();
    const hit = this.resolved.get(ref);
    if (hit && now - hit.at < (this.opts.resolveTtlMs ?? 60_000)) return hit.value;
    const value = (async (): Promise<Resolved | undefined> => {
      const d = parseDockerRef(ref);
      const src = await openSource(`docker://${ref}`, this.opts.transport);
      try {
        const img = await resolveImage(src, this.opts.platform);
        if (!img.chunked) return undefined;
        const raw = img.chunked.manifest.annotations?.[ANN.sourceLayers];
        let sourceLayers: unknown;
        try {
          sourceLayers = raw ? JSON.parse(raw) : undefined;
        } catch {
          sourceLayers = undefined;
        }
        if (!Array.isArray(sourceLayers) || !sourceLayers.every((x) => typeof x === 'string')) {
          throw new OcichunkError('ECORRUPT', `${ref}: chunked manifest ${img.chunked.desc.digest} has no valid ${ANN.sourceLayers} annotation`);
        }
        return { mountRef: `docker://${d.host}/${d.repo}@${img.chunked.desc.digest}`, chunked: img.chunked.desc.digest, sourceLayers };
      } finally {
        await src.close();
      }
    })();
    this.resolved.set(ref, { at: now, value });
    value.catch(() => this.resolved.delete(ref)); // failures are not remembered
    return value;
  }

  private mountpointOf(chunked: string): string {
    return path.join(this.imagesDir, chunked.replace(/^sha256:/, ''));
  }

  /** The image's mount, made on first use (shared by all its layers' snapshots). */
  private image(chunked: string, ref: string): ImageMount {
    const m = this.images.get(chunked);
    if (m) {
      if (m.ref === chunked) m.ref = ref; // adopted: now we know its name
      return m;
    }
    const mnt = this.mountpointOf(chunked);
    const mm: ImageMount = { chunked, ref, mounted: Promise.resolve() as unknown as Promise<MountInfo>, users: new Set(), pending: 0 };
    mm.mounted = (async () => {
      const t0 = performance.now();
      const info = await this.spawnMount(ref, mnt);
      mm.dev = mountTable().find((t) => t.point === mnt)?.dev;
      this.event(
        'info',
        `mounted ${ref} (${info.layerCount} layers, TOC ${info.tocBytes} B) at ${mnt} in ${Math.round(performance.now() - t0)} ms: pid ${info.pid}`,
      );
      return info;
    })();
    this.images.set(chunked, mm);
    mm.mounted.catch(() => {
      if (this.images.get(chunked) === mm) this.images.delete(chunked);
    });
    return mm;
  }

  /**
   * Start `ocichunk mount REF MNT --layers` in a session of its own (it outlives this process) and
   * wait for its ready file. Its log is `<mnt>.log`.
   */
  private async spawnMount(ref: string, mnt: string): Promise<MountInfo> {
    const o = this.opts;
    const t = o.transport ?? {};
    await fsp.mkdir(mnt, { recursive: true, mode: 0o700 });
    const ready = `${mnt}.json`;
    await fsp.rm(ready, { force: true });
    const args = [BIN, 'mount', ref, mnt, '--layers', '--allow-other', '--allow-suid', '--allow-dev', '--json'];
    args.push('--cache', o.cacheDir ?? DEFAULT_CACHE_DIR, '--cache-max', String(o.cacheMaxBytes ?? DEFAULT_CACHE_MAX), '--ready-file', ready);
    args.push('--memory-cache', String(o.mountMemoryCacheBytes ?? DEFAULT_MOUNT_MEMORY_CACHE));
    if (o.prefetch === false) args.push('--no-prefetch');
    else if (o.prefetch) args.push('--prefetch', path.resolve(o.prefetch));
    if (t.authfile) args.push('--authfile', t.authfile);
    if (t.plainHttp) args.push('--plain-http');
    if (t.insecure) args.push('--insecure');
    if (t.retries !== undefined) args.push('--retries', String(t.retries));
    if (t.timeoutMs !== undefined) args.push('--timeout', String(t.timeoutMs / 1000));
    if (o.platform) args.push('--platform', platformString(o.platform));
    const log = fs.openSync(`${mnt}.log`, 'a');
    const env = { MALLOC_ARENA_MAX: '2', ...process.env, ...(t.creds ? { OCICHUNK_CREDS: t.creds } : {}) };
    // as containerd does with its shims: the mount must outlive a restart of the snapshotter
    // a small young generation, few malloc arenas and a collection after fetches (--expose-gc:
    // MountCore collects when they pause): python3 in the py image peaks at ~95-105 MiB instead of
    // ~180 (OCICHUNK_MOUNT_NODE_FLAGS replaces the flags; adding --lite-mode: ~85 MiB, ~0.2 s slower)
    const flags = (process.env.OCICHUNK_MOUNT_NODE_FLAGS ?? '--max-semi-space-size=1 --expose-gc').split(' ').filter(Boolean);
    const child = spawn(process.execPath, [...flags, ...args], {
      detached: true,
      stdio: ['ignore', log, log],
      env,
    });
    fs.closeSync(log);
    child.unref();
    let exited: string | undefined;
    child.once('exit', (code, sig) => (exited = sig ?? String(code)));
    child.once('error', (e) => (exited = e.message));
    for (;;) {
      const info = await readInfo(ready);
      if (info) return info;
      if (exited !== undefined) {
        const tail = (await fsp.readFile(`${mnt}.log`, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' / ');
        await fsp.rm(mnt, { recursive: true, force: true }).catch(() => undefined);
        throw new OcichunkError('EIO', `mounting ${ref} failed (exit ${exited}): ${tail}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Stop an image's mount process when no snapshot uses it any more. */
  private async dropIfUnused(m: ImageMount): Promise<void> {
    if (m.users.size || m.pending || this.images.get(m.chunked) !== m) return;
    this.images.delete(m.chunked);
    const info = await m.mounted.catch(() => undefined);
    if (!info) return;
    const mnt = this.mountpointOf(m.chunked);
    await stopProcess(info.pid);
    await detachUnder(mnt); // a process that had to be killed leaves its mount
    for (const f of [mnt, `${mnt}.json`, `${mnt}.log`]) await fsp.rm(f, { recursive: true, force: true }).catch(() => undefined);
    this.event('info', `unmounted ${m.ref} (pid ${info.pid} stopped)`);
  }

  /** Bind layer `layer` of the image on `<dir>/fs` and count the snapshot as a user. */
  private async bind(m: ImageMount, layer: number, dir: string): Promise<MountInfo> {
    const img = await m.mounted;
    const fsDir = path.join(dir, 'fs');
    // there already (a restart): the bind of a mount we adopted
    if (m.dev && mountTable().some((t) => t.point === fsDir && t.dev === m.dev)) {
      m.users.add(dir);
      this.binds.set(dir, m.chunked);
      return img;
    }
    if (layer >= img.layerCount) throw new OcichunkError('ECORRUPT', `${m.ref}: the TOC has ${img.layerCount} layers, not ${layer + 1}`);
    m.users.add(dir);
    try {
      await run('mount', ['--bind', '--', path.join(this.mountpointOf(m.chunked), String(layer)), path.join(dir, 'fs')]);
    } catch (e) {
      m.users.delete(dir);
      throw new OcichunkError('EIO', `bind mount of layer ${layer} on ${dir}/fs: ${((e as { stderr?: string }).stderr || (e as Error).message).trim()}`, {
        cause: e,
      });
    }
    this.binds.set(dir, m.chunked);
    return img;
  }

  async prepare(req: PrepareRequest): Promise<RemoteLayer | undefined> {
    const l = layerLabels(req.labels);
    if (!l) return undefined;
    const limit = this.opts.lookupTimeoutMs ?? 20_000;
    const t0 = performance.now();
    const r = await withTimeout(this.resolve(l.ref), limit, `looking up ${l.ref}`);
    if (!r) {
      this.event('info', `${l.ref} has no chunked manifest: containerd applies layer ${l.digest}`);
      return undefined;
    }
    const layer = layerIndex(r.sourceLayers, l.digest, l.layers);
    if (layer < 0) throw new OcichunkError('ENOTFOUND', `${l.ref}: layer ${l.digest} is not one of the chunked manifest ${r.chunked}'s layers`);
    const m = this.image(r.chunked, r.mountRef);
    m.pending++;
    try {
      await withTimeout(m.mounted, Math.max(1, limit - (performance.now() - t0)), `mounting ${r.mountRef}`);
    } catch (e) {
      // a mount that completes after the time limit is not used (the store applies the layer in
      // this directory now): unmounted then, unless another snapshot took it meanwhile
      m.pending--;
      void m.mounted.then(() => this.dropIfUnused(m)).catch(() => undefined);
      throw e;
    }
    m.pending--;
    const img = await this.bind(m, layer, req.dir);
    const usage = img.layerUsage[layer] ?? { size: 0, inodes: 0 };
    this.event('info', `layer ${layer} of ${r.mountRef} (${l.digest}) is served lazily at ${req.dir}/fs (${Math.round(performance.now() - t0)} ms)`);
    const record: RemoteRecord = { ref: r.mountRef, chunked: r.chunked, layer, digest: l.digest };
    return { labels: { [LABEL_REMOTE]: 'remote snapshot', [LABEL_CHUNKED]: r.chunked }, remote: { ...record }, usage };
  }

  async restore(s: { name: string; dir: string; labels: Record<string, string>; remote: Record<string, unknown> }): Promise<void> {
    if (!isRecord(s.remote)) {
      this.event('warn', `snapshot ${s.name}: unreadable remote record ${JSON.stringify(s.remote)}: its directory stays empty`);
      return;
    }
    const { chunked, ref, layer } = s.remote;
    const m = this.image(chunked, ref);
    m.pending++;
    const done = m.mounted.then(() => this.bind(m, layer, path.resolve(s.dir))).finally(() => m.pending--);
    const failed = (e: unknown) => {
      this.event('warn', `snapshot ${s.name}: cannot serve layer ${layer} of ${ref} again: ${(e as Error).message}`);
      return this.dropIfUnused(m).catch(() => undefined);
    };
    try {
      // the snapshotter starts anyway (containerd needs it for every other snapshot): a slow
      // registry binds the layer when its mount is up, a failing one leaves it empty until a restart
      await withTimeout(done, this.opts.lookupTimeoutMs ?? 20_000, `mounting ${ref}`);
    } catch (e) {
      if (e instanceof OcichunkError && e.code === 'ENETWORK' && /no answer within/.test(e.message)) {
        this.event('warn', `snapshot ${s.name}: ${e.message}; its layer is served once the mount is up`);
        done.catch(failed);
      } else await failed(e);
    }
  }

  async release(dir: string): Promise<void> {
    const abs = path.resolve(dir);
    await detachUnder(abs);
    const chunked = this.binds.get(abs);
    if (chunked === undefined) return;
    this.binds.delete(abs);
    const m = this.images.get(chunked);
    if (!m) return;
    m.users.delete(abs);
    await this.dropIfUnused(m);
  }

  async close(): Promise<void> {
    // the mount processes and binds stay: containers running on them keep reading, and the next
    // start adopts them
    this.images.clear();
    this.binds.clear();
  }
}

/** The ready file of a mount process, if it is there and readable. */
async function readInfo(file: string): Promise<MountInfo | undefined> {
  try {
    const o = JSON.parse(await fsp.readFile(file, 'utf8')) as MountInfo;
    return Number.isSafeInteger(o.pid) && Array.isArray(o.layerUsage) ? o : undefined;
  } catch {
    return undefined;
  }
}

/** Is `pid` an ocichunk mount process serving `mnt`? (a pid file outlives its process; pids are reused) */
function serving(pid: number, mnt: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(mnt);
  } catch {
    return false;
  }
}

/** SIGTERM (it unmounts and exits), then SIGKILL after 10 s; resolves when it is gone. */
async function stopProcess(pid: number): Promise<void> {
  const alive = () => {
    try {
      process.kill(pid, 0);
      return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
    } catch {
      return false;
    }
  };
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; alive(); i++) {
    if (i === 400) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 25));
  }
}
