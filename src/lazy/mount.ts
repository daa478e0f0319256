/**
 * The mount itself, as it runs inside the mount worker (mount-worker.ts): a read-only FUSE filesystem
 * (in the native addon) over a chunked image's merged tree. The addon answers metadata and cached
 * reads itself; for chunks missing from the cache it calls back here, and the reader fetches them
 * (ranges of pack blobs, verified) into the cache. Reads can be recorded as a trace (path, offset,
 * length) and a trace prefetched at mount time. Use MountedImage (mounted.ts) from other code.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { OcichunkError } from '../errors.js';
import { native, type NativeLazyMount } from '../native/index.js';
import { LazyImage, type LazyOpenOptions, type LazyStats } from './reader.js';
import type { Inode } from './tree.js';
import type { Toc } from '../chunked/toc.js';

export interface MountOptions extends LazyOpenOptions {
  /** Write the reads made through the mount to this file when it is unmounted. */
  recordTrace?: string;
  /**
   * Fetch the chunks of the reads listed in this trace file in the background; by default the
   * image's own prefetch list (convert --prefetch-list), if it has one; false: none.
   */
  prefetch?: string | false;
  /** Reports a failed background fetch (the read that needs it fetches again). */
  onWarning?: (msg: string) => void;
  /** Let other users enter the mount (FUSE allow_other). Off by default. */
  allowOther?: boolean;
  /** Honour setuid/setgid bits: trusts the image with root for whoever may enter. Off by default (nosuid). */
  allowSuid?: boolean;
  /** Let device nodes of the image be opened: trusts the image with the host's devices. Off by default (nodev). */
  allowDev?: boolean;
  /**
   * Show each layer as an overlayfs layer directory (`0`, `1`, ... lowest first: whiteouts as 0/0
   * character devices, `trusted.overlay.opaque` on replaced directories) instead of the merged
   * tree; overlayfs stacking them shows the merged tree (docs/format.md §4).
   */
  layers?: boolean;
  /**
   * Files of at most this many bytes are fetched whole, in the background, when first read
   * (default 16 MiB; 0: only the chunks reads need, and 1 MiB past each).
   */
  wholeFileBytes?: number;
  /**
   * When a second file of a directory is read, the directory's other files are fetched in the
   * background if they add up to at most this many bytes (default 0: off; it bought python3 on
   * py 4% of a cold start for 19% more bytes).
   */
  wholeDirBytes?: number;
  /**
   * Bytes of verified chunks the mount keeps in memory (default 64 MiB): pieces of a chunk read one
   * after another hash it once. Reads go through the kernel's page cache, so little is gained beyond
   * what concurrent reads of large chunks need.
   */
  memoryCacheBytes?: number;
}

export interface MountStats extends LazyStats {
  /** the mount point was busy at unmount and was detached (programs still in it lose it when we exit) */
  detached?: boolean;
  reads: number;
  fileBytesServed: number;
  fetchRequests: number;
  chunksRequested: number;
  /** chunks read from the cache and verified by the mount (each once while it stays in memory) */
  chunksHashed: number;
  /** chunks fetched, verified and handed to the mount's memory (not read back from the cache) */
  chunksProvided: number;
  prefetchedChunks: number;
  /** chunks fetched in the background because a file they belong to (or its directory) was being read */
  readAheadChunks: number;
  /** chunks waiting for a background fetch or being fetched (read-ahead and prefetch list) */
  readAheadPending: number;
}

/** What a layer holds, from its TOC entries: file bytes and entries (a snapshotter's Usage of the layer). */
export interface LayerUsage {
  size: number;
  inodes: number;
}

export interface TraceRead {
  path: string;
  offset: number;
  length: number;
}

export async function readTrace(file: string): Promise<TraceRead[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new OcichunkError('ENOTFOUND', `trace ${file}: ${(e as Error).message}`);
  }
  const out: TraceRead[] = [];
  for (const [i, line] of text.split('\n').entries()) {
    if (!line.trim() || line.startsWith('#')) continue;
    const parts = line.split('\t');
    const [offset, length] = [Number(parts[1] ?? 0), Number(parts[2] ?? Infinity)];
    if (parts.length > 3 || !Number.isFinite(offset) || offset < 0 || !(length >= 0)) {
      throw new OcichunkError('EUSAGE', `trace ${file} line ${i + 1}: expected PATH<TAB>OFFSET<TAB>LENGTH`);
    }
    out.push({ path: parts[0], offset, length });
  }
  return out;
}

/** Compressed bytes of one background batch (one range request of adjacent frames; at least one frame). */
const BACKGROUND_BATCH_BYTES = 256 << 10;
/**
 * Compressed bytes of the background batches in flight at once: several times what keeps a link
 * busy (100 Mbit/s with 50 ms round trips holds 625 KB), since a batch's frames wait for their
 * digest table sections and a batch done frees its share only then; bounded so that a long
 * prefetch list neither holds its whole compressed size in memory nor starves reads that miss
 * (python on py, 50 ms / 100 Mbit/s: 1 MiB 1.0-1.1 s, 4 MiB 0.91-0.99 s, 8 MiB 0.91-1.07 s).
 */
const BACKGROUND_WINDOW_BYTES = 4 << 20;
/** Two frames of a pack at most this far apart go in one batch (the gap is fetched and dropped). */
const BACKGROUND_GAP_BYTES = 16 << 10;
/**
 * The prefetch list is planned whole (planListBatches), in batches of at most this many compressed
 * bytes (python on py, 50 ms / 100 Mbit/s: 76 requests when the list was taken in its order in
 * batches of BACKGROUND_BATCH_BYTES, 58 planned, for the same bytes).
 */
const LIST_BATCH_BYTES = 1 << 20;

interface Batch {
  chunks: number[];
  bytes: number;
}

/**
 * The prefetch list in batches of one range request each: the frames of its chunks in pack order,
 * runs of frames at most BACKGROUND_GAP_BYTES apart (as the chunk reader joins them) and
 * LIST_BATCH_BYTES long, each batch the list's chunks in those frames; the batches in the order
 * the list first needs them (the order the files were read). Adjacent frames that the list needs
 * at different times so go in one request.
 */
export function planListBatches(list: number[], toc: Pick<Toc, 'chunks' | 'frames'>): Batch[] {
  const byFrame = new Map<number, number[]>();
  const firstNeed = new Map<number, number>();
  list.forEach((c, i) => {
    const f = toc.chunks[c].frame;
    const cs = byFrame.get(f);
    if (cs) cs.push(c);
    else {
      byFrame.set(f, [c]);
      firstNeed.set(f, i);
    }
  });
  const order = [...byFrame.keys()].sort((a, b) => toc.frames[a].pack - toc.frames[b].pack || toc.frames[a].offset - toc.frames[b].offset);
  const runs: Array<{ pack: number; lo: number; hi: number; frames: number[]; bytes: number; first: number }> = [];
  for (const f of order) {
    const { pack, offset, compressedLength } = toc.frames[f];
    const end = offset + compressedLength;
    const run = runs[runs.length - 1];
    if (run && run.pack === pack && offset >= run.hi && offset - run.hi <= BACKGROUND_GAP_BYTES && end - run.lo <= LIST_BATCH_BYTES) {
      run.hi = end;
      run.frames.push(f);
      run.bytes += compressedLength;
      run.first = Math.min(run.first, firstNeed.get(f)!);
    } else runs.push({ pack, lo: offset, hi: end, frames: [f], bytes: compressedLength, first: firstNeed.get(f)! });
  }
  runs.sort((a, b) => a.first - b.first);
  return runs.map((r) => ({ chunks: r.frames.flatMap((f) => byFrame.get(f)!), bytes: r.bytes }));
}

/**
 * The mount's background fetches: chunks likely read soon, fetched into the cache while programs
 * read: the prefetch list, then what the mount hints at (the rest of a file being read, the other
 * files of a directory).
 * In batches of adjacent frames (one range request each), up to BACKGROUND_WINDOW_BYTES in flight,
 * each handed over as soon as it is in: a read that waits for a chunk of a batch waits for that
 * batch only, and reads that miss are fetched at once, beside these, never queued behind them.
 */
class Background {
  private readonly hints: number[] = [];
  /** the prefetch list, planned (planListBatches) */
  private list: Batch[] = [];
  private listChunks = 0;
  /** compressed bytes of the batches running */
  private running = 0;
  private batches = 0;
  private closed = false;
  private listDone: (() => void) | undefined;
  private drained: (() => void) | undefined;
  /** chunks of the hints and of the list fetched in the background */
  hinted = 0;
  listed = 0;
  /** chunks queued or in batches running */
  private inBatches = 0;

  get pending(): number {
    return this.hints.length + this.listChunks + this.inBatches;
  }

  constructor(
    private readonly image: LazyImage,
    private readonly onBatch: () => void,
    private readonly onError: (msg: string) => void,
  ) {}

  hint(chunks: number[]): void {
    if (this.closed) return;
    for (const c of chunks) this.hints.push(c);
    this.pump();
  }

  /** Queue the prefetch list; resolves once it is fetched (or the mount closes). */
  prefetch(chunks: number[]): Promise<void> {
    for (const b of planListBatches(chunks, this.image.image.toc)) this.list.push(b);
    this.listChunks += chunks.length;
    const done = new Promise<void>((resolve) => (this.listDone = resolve));
    this.pump();
    return done;
  }

  /**
   * Take the next batch, the prefetch list first (it was recorded in the order the files are
   * read), then the hints: the next chunks in order while their frames are one run of a pack (or
   * frames the batch has already), up to BACKGROUND_BATCH_BYTES.
   */
  private take(): { chunks: number[]; listed: boolean; bytes: number } | undefined {
    const planned = this.list.shift();
    if (planned) {
      this.listChunks -= planned.chunks.length;
      return { ...planned, listed: true };
    }
    const q = this.hints;
    if (!q.length) return undefined;
    const { chunks, frames } = this.image.image.toc;
    const seen = new Set<number>();
    let pack = -1;
    let lo = 0;
    let hi = 0;
    let bytes = 0;
    let n = 0;
    while (n < q.length && n < 256) {
      const f = chunks[q[n]].frame;
      if (!seen.has(f)) {
        const { pack: p, offset, compressedLength } = frames[f];
        if (seen.size) {
          const near = p === pack && offset + compressedLength + BACKGROUND_GAP_BYTES >= lo && offset <= hi + BACKGROUND_GAP_BYTES;
          if (!near || Math.max(hi, offset + compressedLength) - Math.min(lo, offset) > BACKGROUND_BATCH_BYTES) break;
          lo = Math.min(lo, offset);
          hi = Math.max(hi, offset + compressedLength);
        } else {
          [pack, lo, hi] = [p, offset, offset + compressedLength];
        }
        seen.add(f);
        bytes += compressedLength;
      }
      n++;
    }
    return { chunks: q.splice(0, n), listed: false, bytes };
  }

  private pump(): void {
    while (!this.closed && (this.batches === 0 || this.running < BACKGROUND_WINDOW_BYTES)) {
      const batch = this.take();
      if (!batch) break;
      this.running += batch.bytes;
      this.batches++;
      this.inBatches += batch.chunks.length;
      this.image
        .prefetchChunks(batch.chunks)
        .then(
          () => {
            if (batch.listed) this.listed += batch.chunks.length;
            else this.hinted += batch.chunks.length;
          },
          (e: Error) => {
            if (!this.closed) this.onError(`${batch.listed ? 'prefetch' : 'background fetch'}: ${e.message}`);
          },
        )
        .finally(() => {
          this.running -= batch.bytes;
          this.batches--;
          this.inBatches -= batch.chunks.length;
          this.onBatch();
          this.pump();
        });
    }
    if (!this.batches && (this.closed || !this.list.length)) {
      this.listDone?.();
      this.listDone = undefined;
    }
    if (!this.batches && this.closed) this.drained?.();
  }

  /**
   * Start no more batches (an unmount: nobody is waiting for them); resolves once those running
   * are over (at most BACKGROUND_WINDOW_BYTES of them), their failures unreported.
   */
  close(): Promise<void> {
    this.closed = true;
    this.hints.length = 0;
    this.list = [];
    this.listChunks = 0;
    this.listDone?.();
    this.listDone = undefined;
    return this.batches ? new Promise((resolve) => (this.drained = resolve)) : Promise.resolve();
  }
}

export class MountCore {
  private readonly paths = new Map<number, string>();
  private trace: TraceRead[] = [];
  private handle: NativeLazyMount | undefined;
  private readonly background: Background;
  /** per layer of the TOC: file bytes and entries */
  readonly layerUsage: LayerUsage[];
  private tmpCache: string | undefined;
  /** Resolves when the background prefetch is done. */
  prefetchDone: Promise<void> = Promise.resolve();

  private constructor(
    readonly image: LazyImage,
    readonly mountpoint: string,
    private readonly opts: MountOptions,
  ) {
    const toc = image.image.toc;
    this.layerUsage = toc.layers.map((l) => ({
      size: l.entries.reduce((a, e) => a + (e.type === 'reg' ? (e.size ?? 0) : 0), 0),
      inodes: l.entries.length,
    }));
    // the native side serves every call from its own checked TOC, and the JavaScript tree (a
    // trace's paths, a prefetch) comes from it too: the decoded entries are not needed any more
    toc.layers = toc.layers.map(() => ({ entries: [] }));
    this.background = new Background(
      image,
      () => this.collectSoon(),
      (msg) => opts.onWarning?.(msg),
    );
    // fetched chunks go to the mount's memory at once: reads never wait for cache files
    image.onVerified = (chunks, bufs) => this.provide(chunks, bufs);
    image.onCacheError = (e) => opts.onWarning?.(`chunk cache: ${e.message}`);
  }

  /** Chunks fetched before the mount's handle existed (the prefetch list goes out first). */
  private earlyChunks: Array<[number[], Buffer[]]> | undefined = [];

  private provide(chunks: number[], bufs: Buffer[]): void {
    if (!this.handle) {
      this.earlyChunks?.push([chunks, bufs]);
      return;
    }
    try {
      this.handle.provide(Uint32Array.from(chunks), bufs);
    } catch (e) {
      // the mount then reads them from the cache, once written
      this.opts.onWarning?.(`mount: ${(e as Error).message}`);
    }
  }

  static async mount(ref: string, mountpoint: string, opts: MountOptions = {}): Promise<MountCore> {
    let tmpCache: string | undefined;
    if (opts.cacheDir === false) tmpCache = await fs.mkdtemp(path.join(os.tmpdir(), 'ocichunk-mount-cache-'));
    const image = await LazyImage.open(ref, { ...opts, cacheDir: tmpCache ?? opts.cacheDir });
    const m = new MountCore(image, mountpoint, opts);
    m.tmpCache = tmpCache;
    let reads: TraceRead[];
    try {
      reads =
        typeof opts.prefetch === 'string'
          ? await readTrace(opts.prefetch)
          : opts.prefetch === false
            ? []
            : (image.image.toc.prefetch ?? []).map(([p, offset, length]) => ({ path: p, offset, length }));
      const st = await fs.stat(mountpoint).catch(() => undefined);
      if (!st?.isDirectory()) throw new OcichunkError('EUSAGE', `mount point ${mountpoint} is not a directory`);
      // a trace names paths of the merged tree, which the layer view does not number
      if (opts.recordTrace && opts.layers) throw new OcichunkError('EUSAGE', 'a read trace is recorded from the merged tree, not from --layers');
      if (opts.recordTrace) m.notePaths();
      const flags = {
        allowOther: !!opts.allowOther,
        allowSuid: !!opts.allowSuid,
        allowDev: !!opts.allowDev,
        layers: !!opts.layers,
        ...(opts.memoryCacheBytes !== undefined ? { verifiedBytes: opts.memoryCacheBytes } : {}),
        ...(opts.wholeFileBytes !== undefined ? { wholeFileBytes: opts.wholeFileBytes } : {}),
        ...(opts.wholeDirBytes !== undefined ? { wholeDirBytes: opts.wholeDirBytes } : {}),
      };
      // the prefetch list's requests go out first: they are in flight while the native tree is
      // built and mounted (off this thread)
      if (reads.length) m.prefetchDone = m.prefetchReads(reads).catch((e) => opts.onWarning?.(`prefetch: ${(e as Error).message}`));
      // the addon merges the TOC with the format module itself (the same tree ls and cat read)
      m.handle = await native.mountLazy(image.image.checked, path.resolve(mountpoint), image.cache!.dir, !!opts.recordTrace, flags, (msg) => m.onFetch(msg));
      m.flushCompletions();
    } catch (e) {
      await m.background.close();
      await m.prefetchDone;
      await image.close();
      if (tmpCache) await fs.rm(tmpCache, { recursive: true, force: true });
      throw e;
    }
    return m;
  }

  /** Answers to fetch requests that came before the mount's handle (a read during mounting). */
  private early: Array<[number, string | undefined]> | undefined = [];

  private complete(id: number, error?: string): void {
    if (this.handle) this.handle.complete(id, error);
    // (after an unmount nobody waits any more)
    else this.early?.push([id, error]);
  }

  private flushCompletions(): void {
    const chunks = this.earlyChunks ?? [];
    this.earlyChunks = undefined;
    for (const [c, b] of chunks) this.provide(c, b);
    const early = this.early ?? [];
    this.early = undefined;
    for (const [id, error] of early) this.handle!.complete(id, error);
  }

  /** A path of every inode (its first name), for the trace. */
  private notePaths(): void {
    const visit = (n: Inode, p: string) => {
      if (this.paths.has(n.ino)) return;
      this.paths.set(n.ino, p);
      for (const [name, c] of n.children ?? []) visit(c, p === '/' ? `/${name}` : `${p}/${name}`);
    };
    visit(this.image.tree.root, '/');
  }

  private onFetch(msg: number[]): void {
    const [id, ...chunks] = msg;
    // id 0: a hint (chunks likely read soon), fetched in the background
    if (id === 0) {
      this.background.hint(chunks);
      return;
    }
    // into the cache, which the addon reads: answers from memory alone would leave it missing there
    this.image
      .cacheChunks(chunks)
      .then(
        () => this.complete(id),
        (e: Error) => this.complete(id, e.message),
      )
      .finally(() => this.collectSoon());
  }

  private gcTimer: NodeJS.Timeout | undefined;

  /**
   * With --expose-gc (the snapshotter's mount processes): a full collection once fetches have
   * paused for a moment. The buffers of a fetch (compressed ranges, decompressed frames) outlive
   * it until V8 collects the objects that hold them, which it does late for memory outside its
   * heap: without this a mount process grows by ~20 MiB during a container's start.
   */
  private collectSoon(): void {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return;
    clearTimeout(this.gcTimer);
    this.gcTimer = setTimeout(gc, 100);
    this.gcTimer.unref();
  }

  private async prefetchReads(reads: TraceRead[]): Promise<void> {
    // planned by the format module (no JavaScript tree: the requests go out sooner)
    const want = this.image.image.checked.planReads(
      reads.map((r) => r.path),
      Float64Array.from(reads, (r) => r.offset),
      Float64Array.from(reads, (r) => r.length),
    );
    // the digests of the whole list first, in as few ranges as its sections allow: the batches'
    // frames go out beside them and check their chunks once they are in
    this.image.chunkDigests([...want]).catch(() => {});
    // in the background, in batches: reads arriving meanwhile are not queued behind one huge
    // fetch, and a batch's buffers (its frames, fetched and decompressed whole) stay small
    await this.background.prefetch([...want]);
  }

  /** Reads made through the mount so far (recording on). */
  private collectTrace(): void {
    const t = this.handle?.takeTrace() ?? [];
    for (let i = 0; i < t.length; i += 3) {
      const p = this.paths.get(t[i]);
      if (p) this.trace.push({ path: p, offset: t[i + 1], length: t[i + 2] });
    }
  }

  /** The native figures of the mount once unmounted (the handle gone). */
  private lastNative: ReturnType<NativeLazyMount['stats']> | undefined;

  stats(): MountStats {
    const n = this.handle?.stats() ?? this.lastNative;
    return {
      ...this.image.stats(),
      reads: n?.reads ?? 0,
      fileBytesServed: n?.bytesRead ?? 0,
      fetchRequests: n?.fetchRequests ?? 0,
      chunksRequested: n?.chunksRequested ?? 0,
      chunksHashed: n?.chunksHashed ?? 0,
      chunksProvided: n?.chunksProvided ?? 0,
      prefetchedChunks: this.background.listed,
      readAheadChunks: this.background.hinted,
      readAheadPending: this.background.pending,
    };
  }

  /** Unmount, write the trace, close the image. Returns the final figures. */
  async unmount(): Promise<MountStats> {
    const h = this.handle;
    if (!h) return this.stats();
    this.collectTrace();
    this.lastNative = h.stats();
    const detached = h.unmount();
    this.handle = undefined;
    // the figures include what the background fetches in flight brought
    await this.background.close();
    await this.prefetchDone;
    // and the cache files of what was fetched (a warm cache holds them all)
    await this.image.settle();
    const stats = this.stats();
    if (detached) stats.detached = true;
    if (this.opts.recordTrace) {
      // per path, overlapping and adjacent reads merged; paths in the order first read
      const byPath = new Map<string, Array<[number, number]>>();
      for (const r of this.trace) {
        const list = byPath.get(r.path) ?? byPath.set(r.path, []).get(r.path)!;
        list.push([r.offset, r.offset + r.length]);
      }
      const lines: string[] = [];
      for (const [p, list] of byPath) {
        list.sort((a, b) => a[0] - b[0]);
        let [s, e] = list[0];
        for (const [a, b] of list.slice(1)) {
          if (a <= e) e = Math.max(e, b);
          else {
            lines.push(`${p}\t${s}\t${e - s}`);
            [s, e] = [a, b];
          }
        }
        lines.push(`${p}\t${s}\t${e - s}`);
      }
      await fs.writeFile(this.opts.recordTrace, `# ocichunk read trace of ${this.image.name}: path, offset, length\n${lines.join('\n')}\n`);
    }
    await this.image.close();
    if (this.tmpCache) await fs.rm(this.tmpCache, { recursive: true, force: true });
    return stats;
  }
}
