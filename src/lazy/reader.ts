/**
 * Read a chunked image without pulling it: open any transport, fetch the TOC once, then serve
 * readdir/stat/readlink/getxattr/read on the merged view of its layers, fetching only the chunks a
 * read needs (ranges of pack blobs, adjacent frames coalesced, digests verified) through a local
 * chunk cache shared by every image.
 */
import { ChunkReader } from '../chunked/content.js';
import { openChunked, resolveImage, type ChunkedImage } from '../chunked/image.js';
import { OcichunkError } from '../errors.js';
import { throwIfAborted } from '../util/abort.js';
import type { Descriptor, Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import type { ImageSource, TransferReport } from '../transports/types.js';
import { ChunkCache, DEFAULT_CACHE_DIR, DEFAULT_CACHE_MAX } from './cache.js';
import { MergedTree, type Inode } from './tree.js';

export interface LazyOpenOptions {
  platform?: Platform;
  transport?: TransportOptions;
  /** Chunk cache directory (default ~/.cache/ocichunk/chunks); `false`: no cache. */
  cacheDir?: string | false;
  cacheMaxBytes?: number;
  /** HTTP range requests in flight at once. */
  concurrency?: number;
  /** Cancels the reader: reads after it fail with ECANCELED. */
  signal?: AbortSignal;
  /**
   * The source already opened for `ref`, its top document being fetched (the mount worker starts
   * that before it loads the rest of its modules); closed by the reader.
   */
  opened?: Promise<{ source: ImageSource; top: Promise<{ desc: Descriptor; bytes: Buffer }> }>;
}

/** What stat() tells of a node of the merged tree. */
export type LazyStat = Pick<Inode, 'ino' | 'type' | 'mode' | 'uid' | 'gid' | 'size' | 'mtime' | 'nlink' | 'link' | 'devMajor' | 'devMinor'>;

export interface LazyStats {
  /** compressed bytes fetched from pack blobs, and the TOC's size */
  packBytesFetched: number;
  tocBytes: number;
  /** bytes of the digest table fetched (its sections the reads needed) */
  digestBytesFetched: number;
  chunksFetched: number;
  /** file bytes returned by read() */
  bytesRead: number;
  /** chunks read from the cache (each is hashed then), not from the verified ones kept in memory */
  cacheHits: number;
  transfer?: TransferReport;
}

const MAX_LINKS = 40;
/** Bytes of verified chunks kept in memory (at least the last one, whatever its size). */
const VERIFIED_BYTES = 64 << 20;

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export class LazyImage {
  private merged: MergedTree | undefined;
  private readonly chunks: ChunkReader;
  private readonly inflight = new Map<number, Promise<Buffer>>();
  /**
   * Verified chunks are handed here as soon as they are (the mount keeps them in memory) and then
   * written to the cache in the background; unset, a fetch is done once its chunks are in the cache.
   */
  onVerified: ((chunks: number[], bufs: Buffer[]) => void) | undefined;
  /** A background cache write failed (the chunks stay usable; a later run fetches them again). */
  onCacheError: ((e: Error) => void) | undefined;
  /** chunks handed to onVerified whose cache files are not written yet */
  private readonly unwritten = new Map<number, Buffer>();
  private readonly writes = new Set<Promise<void>>();
  /** verified chunks, least recently used first: pieces of one chunk read one after another hash it once */
  private readonly verified = new Map<number, Buffer>();
  private verifiedBytes = 0;
  private bytesRead = 0;
  private chunksFetched = 0;

  private constructor(
    readonly image: ChunkedImage,
    private readonly src: ImageSource,
    readonly cache: ChunkCache | undefined,
    concurrency: number,
    private readonly signal?: AbortSignal,
  ) {
    this.chunks = new ChunkReader(image, 0, concurrency);
    // digest table sections are content-addressed: kept in the chunk cache too
    this.chunks.sectionCache = cache?.sections;
    this.chunks.onSectionCacheError = (e) => this.onCacheError?.(e);
  }

  static async open(ref: string, opts: LazyOpenOptions = {}): Promise<LazyImage> {
    const early = await opts.opened;
    const src = early?.source ?? (await openSource(ref, opts.transport));
    try {
      const top = await early?.top;
      const img = await openChunked(await resolveImage(src, opts.platform, top, { readToc: true }), { lazyDigests: true });
      const cache = opts.cacheDir === false ? undefined : await ChunkCache.open(opts.cacheDir ?? DEFAULT_CACHE_DIR, opts.cacheMaxBytes ?? DEFAULT_CACHE_MAX);
      return new LazyImage(img, src, cache, opts.concurrency ?? 8, opts.signal);
    } catch (e) {
      await src.close();
      throw e;
    }
  }

  /**
   * The merged tree as JavaScript objects, made on first use: a mount serves every FUSE call from
   * the native tree, and needs this one only to name a trace's paths or to plan a prefetch.
   */
  get tree(): MergedTree {
    this.merged ??= new MergedTree(this.image.toc, this.image.checked);
    return this.merged;
  }

  /** Drop the JavaScript tree (made again if asked for). */
  releaseTree(): void {
    this.merged = undefined;
  }

  get name(): string {
    return this.src.name;
  }

  /**
   * The inode at `p`, symlinks on the way followed inside the image (as in a chroot: absolute targets
   * start at its root, '..' stops there); the last one too when `follow`.
   */
  private node(p: string, follow: boolean): Inode {
    const todo = p.split('/').reverse();
    const stack: Inode[] = [this.tree.root];
    let links = 0;
    while (todo.length) {
      const c = todo.pop()!;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = stack[stack.length - 1];
      const n = dir.type === 'dir' ? dir.children!.get(c) : undefined;
      if (!n) throw new OcichunkError('ENOTFOUND', `${this.name}: ${p}: no such file or directory`);
      const last = !todo.some((x) => x !== '' && x !== '.');
      if (n.type === 'symlink' && (!last || follow)) {
        if (++links > MAX_LINKS) throw new OcichunkError('EUNSUPPORTED', `${this.name}: ${p}: too many levels of symbolic links`);
        if (n.link!.startsWith('/')) stack.length = 1;
        todo.push(...n.link!.split('/').reverse());
        continue;
      }
      if (!last && n.type !== 'dir') throw new OcichunkError('ENOTFOUND', `${this.name}: ${p}: not a directory`);
      stack.push(n);
    }
    return stack[stack.length - 1];
  }

  stat(p: string, opts: { follow?: boolean } = {}): LazyStat {
    const n = this.node(p, !!opts.follow);
    const s: LazyStat = { ino: n.ino, type: n.type, mode: n.mode, uid: n.uid, gid: n.gid, size: n.size, mtime: n.mtime, nlink: n.nlink };
    if (n.link !== undefined) s.link = n.link;
    if (n.devMajor !== undefined) {
      s.devMajor = n.devMajor;
      s.devMinor = n.devMinor;
    }
    return s;
  }

  readdir(p: string): string[] {
    const n = this.node(p, true);
    if (n.type !== 'dir') throw new OcichunkError('EUSAGE', `${this.name}: ${p}: not a directory`);
    return [...n.children!.keys()].sort();
  }

  readlink(p: string): string {
    const n = this.node(p, false);
    if (n.type !== 'symlink') throw new OcichunkError('EUSAGE', `${this.name}: ${p}: not a symbolic link`);
    return n.link!;
  }

  listxattr(p: string): string[] {
    return Object.keys(this.node(p, false).xattrs ?? {}).sort();
  }

  getxattr(p: string, name: string): Buffer | undefined {
    const v = this.node(p, false).xattrs?.[name];
    return v === undefined ? undefined : Buffer.from(v, 'base64');
  }

  /** Regular files (symlinks followed) and their sizes; a path that is none fails them all. */
  regularFiles(paths: string[]): Array<{ path: string; size: number }> {
    return paths.map((p) => {
      const n = this.node(p, true);
      if (n.type !== 'reg') throw new OcichunkError('EUSAGE', `${this.name}: ${p}: not a regular file`);
      return { path: p, size: n.size };
    });
  }

  /**
   * The files' bytes one after another (as cat(1) writes them), in pieces of at most 8 MiB, up to
   * 4 pieces read ahead: the fetches of many small files overlap.
   */
  async *readFiles(files: Array<{ path: string; size: number }>): AsyncGenerator<Buffer> {
    const piece = 8 << 20;
    const plan = files.flatMap((f) => Array.from({ length: Math.max(1, Math.ceil(f.size / piece)) }, (_, k) => [f.path, k * piece] as const));
    const ahead: Array<Promise<Buffer>> = [];
    for (let k = 0; k < plan.length; k++) {
      while (ahead.length < 4 && k + ahead.length < plan.length) {
        const [p, off] = plan[k + ahead.length];
        const r = this.read(p, off, piece);
        r.catch(() => {}); // awaited in order below
        ahead.push(r);
      }
      yield await ahead.shift()!;
    }
  }

  /** Bytes [offset, offset+length) of a regular file (symlinks followed); short at end of file. */
  async read(p: string, offset = 0, length = Infinity): Promise<Buffer> {
    const n = this.node(p, true);
    if (n.type !== 'reg') throw new OcichunkError('EUSAGE', `${this.name}: ${p}: not a regular file`);
    return this.readInode(n, offset, length);
  }

  async readInode(n: Inode, offset: number, length: number): Promise<Buffer> {
    throwIfAborted(this.signal, this.name);
    const end = Math.min(n.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const pieces = this.tree.plan(n, offset, end - offset);
    const bufs = await this.chunkBytes(pieces.map((p) => p.chunk));
    const out = Buffer.allocUnsafe(end - offset);
    pieces.forEach((p, k) => bufs[k].copy(out, p.at, p.from, p.to));
    this.bytesRead += out.length;
    return out;
  }

  /** The sha256 hex digests of TOC chunks (their digest table sections loaded where needed). */
  async chunkDigests(idxs: number[]): Promise<string[]> {
    await this.chunks.loadDigests(idxs);
    return idxs.map((c) => this.image.toc.chunks[c].digest);
  }

  /** Bytes of TOC chunks, from the cache or fetched together (one batch of range requests). */
  async chunkBytes(idxs: number[]): Promise<Buffer[]> {
    const toc = this.image.toc;
    const result = new Array<Buffer | Promise<Buffer> | undefined>(idxs.length);
    const missing = new Set<number>();
    // digests known from the sections cached locally; the others are fetched with their frames
    await this.chunks.loadDigests(
      idxs.filter((c) => !this.verified.has(c)),
      true,
    );
    for (const [k, c] of idxs.entries()) {
      const kept = this.verified.get(c);
      if (kept) {
        this.verified.delete(c);
        this.verified.set(c, kept);
        result[k] = kept;
        continue;
      }
      const hex = toc.chunks[c].digest;
      const cached = this.inflight.get(c) ?? (missing.has(c) || !hex ? undefined : await this.cache?.get(hex));
      if (cached) result[k] = cached;
      else missing.add(c);
    }
    if (missing.size) this.fetchMissing(missing);
    idxs.forEach((c, k) => (result[k] ??= this.inflight.get(c)));
    const bufs = await Promise.all(result as Array<Buffer | Promise<Buffer>>);
    idxs.forEach((c, k) => this.keep(c, bufs[k]));
    return bufs;
  }

  /**
   * Make sure chunks are in the cache, for the mount, which reads (and verifies) them from there:
   * those whose cache file is missing are fetched and written to it. Never answered from the
   * chunks kept in memory (a chunk evicted from the cache since would stay missing for the mount),
   * and keeps nothing in memory (the mount keeps what it verified). With `onVerified`, resolves
   * once each chunk was handed to it (again, for one whose cache file is still being written).
   */
  async cacheChunks(idxs: number[]): Promise<void> {
    throwIfAborted(this.signal, this.name);
    const cache = this.cache;
    if (!cache) throw new OcichunkError('EINTERNAL', 'cacheChunks needs a chunk cache');
    const toc = this.image.toc;
    const waits: Array<Promise<Buffer>> = [];
    const missing = new Set<number>();
    const wanted = new Set(idxs);
    await this.chunks.loadDigests(wanted, true);
    const again: number[] = [];
    for (const c of wanted) {
      const p = this.inflight.get(c);
      const hex = toc.chunks[c].digest;
      if (p) waits.push(p);
      else if (this.onVerified && this.unwritten.has(c)) again.push(c);
      else if (!hex || !cache.has(hex)) missing.add(c);
    }
    if (again.length)
      this.onVerified?.(
        again,
        again.map((c) => this.unwritten.get(c)!),
      );
    if (missing.size) {
      this.fetchMissing(missing);
      for (const c of missing) waits.push(this.inflight.get(c)!);
    }
    await Promise.all(waits);
  }

  /**
   * Background fetch into the cache (the mount's read-ahead): the chunks neither cached nor being
   * fetched already, in one batch. Waits for nothing else; resolves with the chunks it fetched.
   */
  async prefetchChunks(idxs: Iterable<number>): Promise<number> {
    throwIfAborted(this.signal, this.name);
    const cache = this.cache;
    if (!cache) throw new OcichunkError('EINTERNAL', 'prefetchChunks needs a chunk cache');
    const toc = this.image.toc;
    const wanted = new Set<number>();
    for (const c of idxs) if (!this.inflight.has(c)) wanted.add(c);
    await this.chunks.loadDigests(wanted, true);
    const missing = new Set<number>();
    for (const c of wanted) {
      const hex = toc.chunks[c].digest;
      if (!this.inflight.has(c) && !this.unwritten.has(c) && (!hex || !cache.has(hex))) missing.add(c);
    }
    if (!missing.size) return 0;
    this.fetchMissing(missing);
    await Promise.all([...missing].map((c) => this.inflight.get(c)));
    return missing.size;
  }

  /**
   * Fetch chunks in one batch and put them into the cache (if any); until then `inflight` holds a
   * promise of each (resolved once the batch is in the cache).
   */
  private fetchMissing(missing: Set<number>): void {
    const toc = this.image.toc;
    // the other chunks of the frames fetched come along (same bytes over the wire): small files
    // share frames with their neighbours in the directory, which are likely read next
    const want = new Set(missing);
    if (this.cache)
      for (const c of missing) for (const s of this.frameChunks(toc.chunks[c].frame)) if (!this.inflight.has(s) && !this.unwritten.has(s)) want.add(s);
    const batch = this.chunks.fetch(want);
    const cache = this.cache;
    // each chunk is ready once it is in the cache: those asked for are stored first (a frame of
    // small files may bring hundreds along), a few at a time
    const order = [...missing, ...[...want].filter((c) => !missing.has(c))];
    const stored = new Map(order.map((c) => [c, deferred<Buffer>()]));
    batch.then(
      async (got) => {
        if (!cache) {
          for (const c of order) {
            if (missing.has(c)) this.chunksFetched++;
            stored.get(c)!.resolve(got.get(c)!);
          }
          return;
        }
        if (this.onVerified) {
          // usable at once (the mount keeps them in memory); the cache files follow
          const bufs = order.map((c) => got.get(c)!);
          this.onVerified(order, bufs);
          order.forEach((c, k) => {
            this.unwritten.set(c, bufs[k]);
            stored.get(c)!.resolve(bufs[k]);
          });
          const w = cache
            .putMany(
              order.map((c) => toc.chunks[c].digest),
              bufs,
            )
            .then(
              (fresh) => {
                this.chunksFetched += fresh.filter(Boolean).length;
              },
              (e: Error) => this.onCacheError?.(e),
            )
            .finally(() => {
              for (const c of order) this.unwritten.delete(c);
              this.writes.delete(w);
            });
          this.writes.add(w);
          return;
        }
        // written off this thread, those asked for first, then what came along
        for (const part of [[...missing], order.slice(missing.size)]) {
          try {
            const bufs = part.map((c) => got.get(c)!);
            const fresh = await cache.putMany(
              part.map((c) => toc.chunks[c].digest),
              bufs,
            );
            // counted: chunks that were fetched and were not cached before
            this.chunksFetched += fresh.filter(Boolean).length;
            part.forEach((c, k) => stored.get(c)!.resolve(bufs[k]));
          } catch (e) {
            for (const c of part) stored.get(c)!.reject(e);
          }
        }
      },
      (e) => {
        for (const d of stored.values()) d.reject(e);
      },
    );
    for (const [c, { promise }] of stored) {
      this.inflight.set(c, promise);
      promise.catch(() => {}).finally(() => this.inflight.delete(c));
    }
  }

  private keep(c: number, b: Buffer): void {
    if (this.verified.has(c)) return;
    this.verified.set(c, b);
    this.verifiedBytes += b.length;
    for (const [old, ob] of this.verified) {
      if (this.verifiedBytes <= VERIFIED_BYTES || this.verified.size === 1) break;
      this.verified.delete(old);
      this.verifiedBytes -= ob.length;
    }
  }

  private byFrame: Map<number, number[]> | undefined;

  /** TOC chunk indexes held by a frame. */
  private frameChunks(frame: number): number[] {
    if (!this.byFrame) {
      this.byFrame = new Map();
      this.image.toc.chunks.forEach((c, i) => {
        const l = this.byFrame!.get(c.frame);
        if (l) l.push(i);
        else this.byFrame!.set(c.frame, [i]);
      });
    }
    return this.byFrame.get(frame) ?? [];
  }

  stats(): LazyStats {
    return {
      packBytesFetched: this.chunks.bytesRead,
      tocBytes: this.image.tocBytes,
      digestBytesFetched: this.chunks.digestBytesRead,
      chunksFetched: this.chunksFetched,
      bytesRead: this.bytesRead,
      cacheHits: this.cache?.stats.hits ?? 0,
      ...(this.src.transferReport ? { transfer: this.src.transferReport() } : {}),
    };
  }

  /** Wait for the background cache writes (see onVerified) under way. */
  async settle(): Promise<void> {
    while (this.writes.size) await Promise.all(this.writes);
    await this.chunks.settle();
  }

  async close(): Promise<void> {
    await this.settle();
    await this.chunks.close();
    await this.src.close();
  }
}
