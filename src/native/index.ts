/** The only importer of the napi binding (crates/napi). Turns its errors (a stable `code`, errors.ts NativeError) into OcichunkErrors. */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { OcichunkError, withContext } from '../errors.js';

export interface ChunkerSpec {
  kind: 'cdc' | 'fixed' | 'file';
  min?: number;
  avg?: number;
  max?: number;
  size?: number;
}

export interface NativeLazyMount {
  complete(id: number, error?: string): void;
  /** Chunks fetched and verified against their digests: kept in the mount's memory (no cache file needed). */
  provide(chunks: Uint32Array, data: Buffer[]): void;
  stats(): {
    reads: number;
    bytesRead: number;
    fetchRequests: number;
    chunksRequested: number;
    cacheReads: number;
    chunksHashed: number;
    chunksProvided: number;
    errors: number;
    prefetchHints: number;
    chunksHinted: number;
  };
  takeTrace(): number[];
  /** true when the mount was busy and was detached (lazy unmount) */
  unmount(): boolean;
}

/** What shapes canonical entries (crates/core/src/format/canonical.rs). */
export interface CanonSpec {
  /** mtimes are clamped to at most this (seconds) ... */
  sourceDateEpoch: number;
  /** ... unless kept */
  keepMtime: boolean;
}

/** One batch of a layer scan: the headers parsed while it filled, file data and chunk digests. */
export interface ScanBatch {
  /** index of the pool buffer holding the batch's bytes; release it (done()) when finished with it */
  buffer: number;
  length: number;
  /** per tar header: its canonical entry (format/canonical.rs encode_entry; read by format/build.rs decode_entries), or with no `canon`, the raw header (tarscan.rs encode_header) */
  headers: Buffer;
  firstEntry: number;
  entries: number;
  /** (entry, start, len, eof) per file segment in the buffer */
  segs: Uint32Array;
  counts: Uint32Array;
  lengths: Uint32Array;
  digests: Buffer;
}

export interface ScanStep {
  batches: ScanBatch[];
  /** the input is all read (then finish()) */
  eof: boolean;
  /** push/end: the piece was taken; if not, offer it again after taking the batches */
  accepted: boolean;
}

interface NativeScanner {
  buffers(): Buffer[];
  openFile(path: string): void;
  openStream(): void;
  push(data: Buffer): Promise<ScanStep>;
  end(): Promise<ScanStep>;
  pull(): Promise<ScanStep>;
  finish(): Promise<ScanStep>;
  fileDigest(): { digest: string; size: number } | null;
  release(index: number): void;
  close(): void;
}

export interface NativeRestoreWriter {
  chunkSequence(): Uint32Array;
  write(chunks: Buffer[]): Promise<void>;
  /** create the directories, symlinks, devices and FIFOs (else the first write or `finish` does) */
  skeleton(): Promise<void>;
  /** read frames from these files (the TOC's packs, in order) when `prepare` is given none */
  openPacks(paths: string[]): void;
  /** the TOC frames chunks `start..end` of the sequence need, in pack order */
  frames(start: number, end: number): Uint32Array;
  /**
   * Fetch chunks `start..end` of the sequence natively: frames from `comp` (pairs of frame index and
   * offset in `framesAt`) or from the pack files, decompressed, every chunk compared with its
   * digest. -1: ready for `writePrepared(start)`; else the TOC index of a chunk that does not match.
   */
  prepare(start: number, end: number, comp: Buffer | undefined, framesAt: Uint32Array | undefined, threads: number): Promise<number>;
  writePrepared(start: number): Promise<void>;
  finish(): { entries: number; files: number; fileBytes: number; dirs: number; hardlinks: number };
}

/** A TOC checked and merged once (crates/core/src/format Checked); readers ask it where bytes are. */
export interface NativeCheckedToc {
  /** the TOC's JSON, handed over once (the native side does not keep it): undefined after the first call */
  takeJson(): Buffer | undefined;
  /** the merged view (crates/core/src/format/tree.rs TreeOut) as JSON */
  view(): Buffer;
  /** rows of [chunk, fromInChunk, toInChunk, atInOutput] for a read of a regular file */
  /** TOC chunks the reads (path, offset, length) of the merged tree need, in the order read, each once */
  planReads(paths: string[], offsets: Float64Array, lengths: Float64Array): Uint32Array;
  plan(ino: number, offset: number, length: number): Float64Array;
  /** the content digest of each layer: its entries with chunk digests for indices (crates/core/src/format/build.rs); needs every digest loaded */
  layerDigests(): string[];
  /** the image's content digest (over layerDigests) */
  contentDigest(): string;
  /** where the chunk digests are (crates/core/src/format/digests.rs): version 2 names the digest table blob */
  digestInfo(): DigestInfo;
  /** load the whole digest table (its blob digest checked by the caller); throws ECORRUPT if it is not the TOC's */
  loadDigests(table: Buffer): void;
  readonly layerCount: number;
  /** a stored image's TOC (digests loaded): its chunks not in `dict` yet, with the locations it claims, foreign until trusted; how many */
  addStoredChunks(dict: NativeChunkDict): number;
  /** load section `i` of the digest table, checked against the TOC (ECORRUPT if not); false if loaded before */
  addDigestSection(i: number, bytes: Buffer): boolean;
  /** the digest table sections, in order, holding digests of these chunks not loaded yet */
  missingDigestSections(chunks: Uint32Array): Uint32Array;
  /** [offset, length] of section `i` in the digest table blob */
  digestSectionSpan(i: number): [number, number];
  /** sha256 hex of section `i` (what the TOC says it hashes to) */
  digestSectionHash(i: number): string;
  /** load dictionary `i` of the TOC (decompressed from its frame; its length checked) */
  setDictionary(i: number, raw: Buffer): void;
  hasDictionary(i: number): boolean;
  /** decompress frames [offset, length, uncompressed length] of `data` that are TOC frames `tocFrames`, each with its (loaded) dictionary */
  decompressFrames(data: Buffer, frames: Uint32Array, tocFrames: Uint32Array, threads: number): Promise<Buffer>;
}

/** Where a TOC's chunk digests are (crates/core/src/format/digests.rs). */
export interface DigestInfo {
  version: number;
  /** version 2: sha256:<hex> of the digest table blob, its size, chunks per section, sections */
  blob?: string;
  blobSize: number;
  section: number;
  sections: number;
  /** every chunk digest is loaded */
  complete: boolean;
}

/** Figures of a converted layer's entries as the tar gave them. */
export interface DraftStats {
  entries: number;
  files: number;
  fileBytes: number;
  /** chunks of file contents, repeats counted */
  chunkRefs: number;
}

/**
 * One pass over a layer (crates/core/src/format/sequence.rs): the routes of a batch's tar headers
 * (0: placed now, 1: held) and, before each, how many held files are released (counted from the
 * batch's start); the released files' chunks in canonical order and where each file starts among
 * them. `late`: an entry one pass cannot place in canonical order (the layer takes two passes).
 */
export interface Routing {
  routes: Uint8Array;
  releasedBefore: Uint32Array;
  chunks: Uint32Array;
  fileStarts: Uint32Array;
  late?: string;
}

/** One layer being converted (crates/core/src/format/build.rs LayerDraft). */
export interface NativeLayerDraft {
  /** a scan batch's entries */
  addEntries(encoded: Buffer, count: number): void;
  /** one pass: routes of tar headers whose contents begin in the batch being placed (increasing) */
  route(headers: Uint32Array): Routing;
  /** one pass, at the layer's end: the files still held */
  releaseRest(): Routing;
  /** `counts[k]` ids of `ids`, in order, are chunks of tar header `headers[k]` */
  addChunks(headers: Uint32Array, counts: Uint32Array, ids: Uint32Array): void;
  readonly stats: DraftStats;
  /** takes the draft: its layer's content digest as a TOC built from it would give */
  contentDigest(dict: NativeChunkDict): string;
}

/** A TOC built from converted layers (crates/core/src/format/build.rs). */
export interface BuiltToc {
  json: Buffer;
  blob: Buffer;
  packs: string[];
  chunks: number;
  uniqueChunkBytes: number;
  reusedChunks: number;
  imageFrameBytes: number;
  /** the digest table blob (docs/format.md §3) and its sha256:<hex> */
  digestTable: Buffer;
  digestTableDigest: string;
  /** chunk ids whose location a destination claimed and that are not verified yet */
  foreign: Uint32Array;
  layerDigests: string[];
  contentDigest: string;
}

/** A TOC being assembled: layers in order, then build (crates/core/src/format/build.rs TocBuilder). */
export interface NativeTocBuilder {
  /** takes the draft in canonical order; its files' chunk ids in that order, and where each file's begin */
  addDraft(draft: NativeLayerDraft): { chunks: Uint32Array; fileStarts: Uint32Array };
  /** layer `layer` of an earlier conversion's TOC as it is, its chunks interned in `dict` */
  addTocLayer(dict: NativeChunkDict, toc: NativeCheckedToc, layer: number): DraftStats;
  /** `written[n]`: digest of this conversion's pack n; ids below storedBefore count as reused */
  build(dict: NativeChunkDict, written: string[], storedBefore: number, level: number): BuiltToc;
}

/** Where a chunk's frame is: `inner` bytes into the frame at `offset` in pack `pack` (a stored pack's digest, or the number of a pack being written). */
export interface ChunkLocation {
  pack: string | number;
  offset: number;
  compressedLen: number;
  len: number;
  inner: number;
  /** the frame's dictionary, if it was compressed with one: where its frame is */
  dict?: DictFrameLocation | null;
}

/** Where a dictionary's zstd frame is (docs/format.md §5). */
export interface DictFrameLocation {
  pack: string | number;
  offset: number;
  compressedLen: number;
  len: number;
}

/** The chunk dictionary of a conversion (crates/core/src/format/dict.rs): ids are ranks of arrival. */
export interface NativeChunkDict {
  readonly size: number;
  /** ids of digests.length / 32 binary SHA-256s; a new chunk's id is the size before the call plus the new ones before it */
  intern(digests: Uint8Array, lengths: Uint32Array): Uint32Array;
  /** -1 when unknown */
  lookup(digest: Uint8Array): number;
  hex(id: number): string;
  length(id: number): number;
  unplaced(id: number): boolean;
  claim(id: number): void;
  unclaim(id: number): void;
  setLocation(id: number, at: ChunkLocation): void;
  setForeign(id: number, at: ChunkLocation): void;
  location(id: number): ChunkLocation | null;
  isForeign(id: number): boolean;
  /** the trust record line of its location (crates/core/src/format/dict.rs `location_key`), null if not placed */
  locationKey(id: number): string | null;
  /** the trust record lines of the chunks from `from` on placed in stored packs, by pack */
  locationKeysFrom(from: number): Array<{ pack: string; keys: string[] }>;
  trust(id: number): void;
  /** compressedLength -1: raw bytes */
  setSpooled(id: number, offset: number, compressedLength: number): void;
  /** [offset, compressedLength or -1] */
  spooled(id: number): number[] | null;
  /** pass 2 of an unsorted layer: the chunks to place in order, where the spool holds them (crates/core/src/format/dict.rs `spool_plan`) */
  spoolPlan(chunks: Uint32Array, fileStarts: Uint32Array): { ids: Uint32Array; offsets: Float64Array; lens: Uint32Array; raw: Uint8Array; starts: Uint8Array };
  truncate(mark: number): void;
  /** pack `number` of the conversion under way was committed as `digest` */
  resolveWritten(number: number, digest: string): void;
}

/** A compressed batch of frames: back to back in `data` (absent: in the buffer given to compressNext); `frames` holds [compressedLength, length, chunks] per frame, `ids` their chunks. */
export interface CompressedBatch {
  data?: Buffer | null;
  frames: Uint32Array;
  ids: Uint32Array;
}

/** The frame and pack writer (crates/core/src/format/pack.rs). */
export interface NativePackWriter {
  beginImage(): void;
  beginLayer(): void;
  /** a file boundary before each chunk whose index is in `starts`; returns how many sealed batches wait for compressNext */
  place(dict: NativeChunkDict, data: Uint8Array, ids: Uint32Array, positions: Uint32Array, starts: Uint32Array): number;
  /** whether this layer's run frames use a dictionary carried from a lower layer */
  readonly carriesDictionary: boolean;
  /** each `[offset, length]` of `data` a frame of its own, as this layer's run frames are compressed, into `out`; resolves to their lengths */
  compressAlone(data: Buffer, parts: Uint32Array, out: Buffer): Promise<Uint32Array>;
  placeCompressed(dict: NativeChunkDict, id: number, frame: Uint8Array): number;
  finishLayer(): number;
  /** into `out` when the frames fit (untouched until it resolves) */
  compressNext(out?: Buffer): Promise<CompressedBatch>;
  /** rows [flags (1: commit the open pack first, 2: open pack `pack` first), pack, start, length] */
  land(dict: NativeChunkDict, frames: Uint32Array, ids: Uint32Array): Uint32Array;
  packClosed(): void;
  rollbackLayer(dict: NativeChunkDict): void;
}

export interface PackSpec {
  /** zstd level */
  level: number;
  /** compression threads (0: the default pool) */
  threads: number;
  /** Chunks shorter than this are grouped with their neighbours. */
  groupBelow: number;
  /** A group frame is closed once it reaches this many bytes. */
  groupTarget: number;
  /** A file's consecutive chunks of groupBelow bytes or more share frames of up to this many bytes (absent or less than groupBelow: a frame each). */
  runTarget?: number;
  /** Packs are cut before a frame that would take them past this size. */
  packTarget: number;
  /** Uncompressed bytes per compression batch. */
  batchBytes: number;
  /** Bytes of each layer's zstd dictionary (0: none), and of the sample it is trained from. */
  dictSize?: number;
  dictSample?: number;
}

/** Buffers whose memory release() gives back at once (native.pageBuffers). */
export interface PageBuffers {
  buffers: Buffer[];
  release: () => void;
}

interface Binding {
  ChunkDict: new () => NativeChunkDict;
  PackWriter: new (o: PackSpec) => NativePackWriter;
  CheckedToc: new (blob: Buffer) => NativeCheckedToc;
  LayerDraft: new (onePass: boolean) => NativeLayerDraft;
  TocBuilder: new (version: number, chunker: ChunkerSpec, prefetchPaths?: string[] | null, prefetchRanges?: Float64Array | null) => NativeTocBuilder;
  chunkCachePath(dir: string, hex: string): string;
  cachePutMany(dir: string, hexes: string[], chunks: Buffer[]): Promise<Uint8Array>;
  imageContentDigest(layerDigests: string[]): string;
  checkToc(blob: Buffer): {
    json?: Buffer | null;
    violations: Array<{ code: string; layer?: number | null; path?: string | null; message: string }>;
    more: number;
  };
  RestoreWriter: new (target: string, toc: NativeCheckedToc) => NativeRestoreWriter;
  LayerScanner: new (
    compression: string,
    chunker: ChunkerSpec,
    batchBytes: number,
    threads: number,
    buffers: number,
    canon?: CanonSpec | null,
  ) => NativeScanner;
  compressFrames(
    data: Buffer,
    parts: Uint32Array,
    framePartCounts: Uint32Array,
    level: number,
    threads: number,
    out?: Buffer,
  ): Promise<{ data?: Buffer | null; sizes: Uint32Array }>;
  decompressFrames(data: Buffer, frames: Uint32Array, threads: number, dicts?: Buffer[] | null, frameDicts?: Int32Array | null): Promise<Buffer>;
  hashRanges(data: Buffer, ranges: Uint32Array, threads: number): Promise<Buffer>;
  hashFile(p: string): Promise<string>;
  compressSync(data: Buffer, level: number): Buffer;
  decompressSync(data: Buffer, maxLen: number): Buffer;
  mknod(p: string, kind: 'char' | 'block' | 'fifo', mode: number, major: number, minor: number): void;
  lsetxattr(p: string, name: string, value: Buffer): void;
  llistxattr(p: string): string[];
  lgetxattr(p: string, name: string): Buffer;
  coreVersion(): string;
  errorCodes(): string[];
  tuneAllocator(): void;
  releaseFreeMemory(): void;
  PageBuffers: new (count: number, size: number) => { buffers(): Buffer[]; release(): void };
  mountLazy(
    toc: NativeCheckedToc,
    mountpoint: string,
    cacheDir: string,
    record: boolean,
    flags: MountFlags,
    fetch: (msg: number[]) => void,
  ): Promise<NativeLazyMount>;
}

/** What a mount lets an image do beyond being read; each trusts the image, none is on by default. */
export interface MountFlags {
  /** other users may enter the mount */
  allowOther: boolean;
  /** setuid/setgid bits take effect (else nosuid) */
  allowSuid: boolean;
  /** device nodes can be opened (else nodev) */
  allowDev: boolean;
  /** each layer as an overlayfs layer directory instead of the merged tree */
  layers?: boolean;
  /** bytes of verified chunks the mount keeps in memory (default 64 MiB) */
  verifiedBytes?: number;
  /** files of at most this many bytes are fetched whole, in the background, when first read (default 16 MiB; 0: off) */
  wholeFileBytes?: number;
  /** when a second file of a directory is read, its other files are fetched in the background if they add up to at most this (default 0: off) */
  wholeDirBytes?: number;
}

/** The binding's own object behind a wrapper (native calls that take a CheckedToc need it). */
const RAW = Symbol('native');
function raw<T extends object>(t: T): T {
  const r = (t as T & { [RAW]?: T })[RAW];
  if (!r) throw new OcichunkError('EINTERNAL', 'not an object made by native');
  return r;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const bindingPath = path.resolve(here, '..', '..', 'native', 'ocichunk.node');

let binding: Binding | undefined;
function load(): Binding {
  if (!binding) {
    try {
      binding = createRequire(import.meta.url)(bindingPath) as Binding;
      binding.tuneAllocator();
    } catch (e) {
      throw new OcichunkError('EINTERNAL', `native core not built (${bindingPath}): run "npm run build" (${(e as Error).message})`);
    }
  }
  return binding;
}

function wrapSync<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw withContext(e, what);
  }
}

async function wrapAsync<T>(what: string, p: () => Promise<T>): Promise<T> {
  try {
    return await p();
  } catch (e) {
    throw withContext(e, what);
  }
}

export const native = {
  /** An empty chunk dictionary (its methods throw EINVAL only for ids it never handed out). */
  chunkDict: (): NativeChunkDict => new (load().ChunkDict)(),
  packWriter: (o: PackSpec): NativePackWriter => wrapSync('pack writer', () => new (load().PackWriter)(o)),
  /**
   * A layer scan on a native thread of its own: it reads a file itself (openFile, then pull until
   * eof) or takes pushed pieces (openStream, push... end, then pull until eof); finish() gives the
   * last batches or the error that ends the stream. Batch bytes live in `buffers` reused from batch
   * to batch: bytes(b) until done(b); the scan waits when none is free.
   */
  layerScanner: (compression: 'auto' | 'none' | 'gzip' | 'zstd', chunker: ChunkerSpec, batchBytes: number, threads: number, buffers = 6, canon?: CanonSpec) => {
    const s = wrapSync('layer scan', () => new (load().LayerScanner)(compression, chunker, batchBytes, threads, buffers, canon ?? null));
    const pool = s.buffers();
    const step = (f: () => Promise<ScanStep>) => wrapAsync('layer scan', f);
    return {
      openFile: (p: string) => wrapSync('layer scan', () => s.openFile(p)),
      openStream: () => wrapSync('layer scan', () => s.openStream()),
      push: (data: Buffer) => step(() => s.push(data)),
      end: () => step(() => s.end()),
      pull: () => step(() => s.pull()),
      finish: () => step(() => s.finish()),
      fileDigest: () => s.fileDigest(),
      bytes: (b: ScanBatch): Buffer => pool[b.buffer].subarray(0, b.length),
      done: (b: ScanBatch): void => s.release(b.buffer),
      close: () => s.close(),
    };
  },
  compressFrames: async (data: Buffer, parts: Uint32Array, counts: Uint32Array, level: number, threads: number, out?: Buffer) => {
    const r = await wrapAsync('compression', () => load().compressFrames(data, parts, counts, level, threads, out));
    return {
      data:
        r.data ??
        out!.subarray(
          0,
          r.sizes.reduce((a, b) => a + b, 0),
        ),
      sizes: r.sizes,
    };
  },
  /** Frame `i` with `dicts[frameDicts[i]]` where that is not -1. */
  decompressFrames: (data: Buffer, frames: Uint32Array, threads: number, dicts?: Buffer[], frameDicts?: Int32Array) =>
    wrapAsync('decompression', () => load().decompressFrames(data, frames, threads, dicts ?? null, frameDicts ?? null)),
  hashRanges: (data: Buffer, ranges: Uint32Array, threads: number) => wrapAsync('hashing', () => load().hashRanges(data, ranges, threads)),
  /** SHA-256 digest and size of a file, computed off the JS thread. */
  hashFile: async (p: string): Promise<{ digest: string; size: number }> => {
    const r = await wrapAsync(`hashing ${p}`, () => load().hashFile(p));
    const i = r.lastIndexOf(':');
    return { digest: r.slice(0, i), size: Number(r.slice(i + 1)) };
  },
  compressSync: (data: Buffer, level: number) => wrapSync('compression', () => load().compressSync(data, level)),
  decompressSync: (data: Buffer, maxLen: number) => wrapSync('decompression', () => load().decompressSync(data, maxLen)),
  mknod: (p: string, kind: 'char' | 'block' | 'fifo', mode: number, major: number, minor: number) =>
    wrapSync(`mknod ${p}`, () => load().mknod(p, kind, mode, major, minor)),
  lsetxattr: (p: string, name: string, value: Buffer) => wrapSync(`setxattr ${p} ${name}`, () => load().lsetxattr(p, name, value)),
  llistxattr: (p: string) => wrapSync(`listxattr ${p}`, () => load().llistxattr(p)),
  lgetxattr: (p: string, name: string) => wrapSync(`getxattr ${p} ${name}`, () => load().lgetxattr(p, name)),
  coreVersion: () => load().coreVersion(),
  /**
   * `count` Buffers of `size` bytes whose memory release() gives back to the system at once (V8
   * frees a Buffer's memory only when it collects it); they read as zeros after, and can be used again.
   */
  pageBuffers: (count: number, size: number): PageBuffers => {
    const p = wrapSync('buffers', () => new (load().PageBuffers)(count, size));
    return { buffers: p.buffers(), release: () => p.release() };
  },
  /** Return memory freed by native code to the system (between the stages of a conversion). */
  releaseFreeMemory: () => load().releaseFreeMemory(),
  /** Every code the core's errors can carry (errors.ts NATIVE_CODES maps them). */
  errorCodes: () => load().errorCodes(),
  /** Decode a TOC under the format's limits and check every rule (crates/core/src/format). */
  checkToc: (blob: Buffer) => {
    const r = wrapSync('TOC check', () => load().checkToc(blob));
    return {
      json: r.json ?? undefined,
      violations: r.violations.map((v) => ({
        code: v.code,
        message: v.message,
        ...(v.layer != null ? { layer: v.layer } : {}),
        ...(v.path != null ? { path: v.path } : {}),
      })),
      more: r.more,
    };
  },
  /** Check a TOC (throws its first violation; checkToc lists them all) and merge its layers, once for every reader. */
  openToc: (blob: Buffer, what: string): NativeCheckedToc => {
    const t = wrapSync(what, () => new (load().CheckedToc)(blob));
    return {
      takeJson: () => t.takeJson() ?? undefined,
      view: () => wrapSync(what, () => t.view()),
      planReads: (paths: string[], offsets: Float64Array, lengths: Float64Array) => wrapSync(what, () => t.planReads(paths, offsets, lengths)),
      plan: (ino: number, offset: number, length: number) => wrapSync(what, () => t.plan(ino, offset, length)),
      layerDigests: () => wrapSync(what, () => t.layerDigests()),
      contentDigest: () => wrapSync(what, () => t.contentDigest()),
      digestInfo: () => {
        const d = t.digestInfo();
        return { ...d, blob: d.blob ?? undefined };
      },
      loadDigests: (table: Buffer) => wrapSync(`${what}: digest table`, () => t.loadDigests(table)),
      layerCount: t.layerCount,
      addStoredChunks: (dict: NativeChunkDict) => wrapSync(what, () => t.addStoredChunks(dict)),
      addDigestSection: (i: number, bytes: Buffer) => wrapSync(`${what}: digest table`, () => t.addDigestSection(i, bytes)),
      missingDigestSections: (chunks: Uint32Array) => t.missingDigestSections(chunks),
      digestSectionSpan: (i: number) => t.digestSectionSpan(i) as [number, number],
      digestSectionHash: (i: number) => t.digestSectionHash(i),
      setDictionary: (i: number, raw: Buffer) => wrapSync(`${what}: dictionary ${i}`, () => t.setDictionary(i, raw)),
      hasDictionary: (i: number) => t.hasDictionary(i),
      decompressFrames: (data: Buffer, frames: Uint32Array, tocFrames: Uint32Array, threads: number) =>
        wrapAsync(what, () => t.decompressFrames(data, frames, tocFrames, threads)),
      [RAW]: t,
    } as NativeCheckedToc;
  },
  /** One layer being converted: the scan's entries and chunks, in canonical order for a TocBuilder. */
  layerDraft: (onePass: boolean): NativeLayerDraft => {
    const d = new (load().LayerDraft)(onePass);
    return {
      addEntries: (encoded: Buffer, count: number) => wrapSync('layer entries', () => d.addEntries(encoded, count)),
      route: (headers: Uint32Array) => wrapSync('layer routes', () => d.route(headers)),
      releaseRest: () => wrapSync('layer routes', () => d.releaseRest()),
      addChunks: (headers: Uint32Array, counts: Uint32Array, ids: Uint32Array) => wrapSync('layer chunks', () => d.addChunks(headers, counts, ids)),
      get stats() {
        return d.stats;
      },
      contentDigest: (dict: NativeChunkDict) => wrapSync('layer content digest', () => d.contentDigest(dict)),
      [RAW]: d,
    } as NativeLayerDraft;
  },
  /** A TOC of converted layers (the format's one writer: canonical order, numbering, JSON). */
  tocBuilder: (version: number, chunker: ChunkerSpec, prefetch?: Array<[string, number, number]>): NativeTocBuilder => {
    const b = wrapSync('TOC', () =>
      prefetch?.length
        ? new (load().TocBuilder)(
            version,
            chunker,
            prefetch.map((p) => p[0]),
            Float64Array.from(prefetch.flatMap((p) => [p[1], p[2]])),
          )
        : new (load().TocBuilder)(version, chunker, null, null),
    );
    return {
      addDraft: (d: NativeLayerDraft) => wrapSync('TOC', () => b.addDraft(raw(d))),
      addTocLayer: (dict: NativeChunkDict, toc: NativeCheckedToc, layer: number) => wrapSync('TOC', () => b.addTocLayer(dict, raw(toc), layer)),
      build: (dict: NativeChunkDict, written: string[], storedBefore: number, level: number) =>
        wrapSync('TOC', () => b.build(dict, written, storedBefore, level)),
    };
  },
  /** The image content digest of its layers' content digests (crates/core/src/format/build.rs). */
  imageContentDigest: (layerDigests: string[]) => load().imageContentDigest(layerDigests),
  /** The cache file of a chunk (crates/core/src/cache.rs owns the layout). */
  chunkCachePath: (dir: string, hex: string) => wrapSync('chunk cache', () => load().chunkCachePath(dir, hex)),
  /** Store verified chunks in the cache at `dir` off this thread; 1 per chunk this call stored. */
  cachePutMany: (dir: string, hexes: string[], chunks: Buffer[]) => wrapAsync('chunk cache', () => load().cachePutMany(dir, hexes, chunks)),
  /** Write a checked TOC's tree into an empty or absent `target` (made now; the rest by the writer). */
  restoreWriter: (target: string, toc: NativeCheckedToc): NativeRestoreWriter => {
    const w = wrapSync(`restore into ${target}`, () => new (load().RestoreWriter)(target, raw(toc)));
    return {
      chunkSequence: () => wrapSync('restore', () => w.chunkSequence()),
      write: (chunks: Buffer[]) => wrapAsync('restore', () => w.write(chunks)),
      skeleton: () => wrapAsync('restore', () => w.skeleton()),
      openPacks: (paths: string[]) => wrapSync('restore', () => w.openPacks(paths)),
      frames: (start: number, end: number) => wrapSync('restore', () => w.frames(start, end)),
      prepare: (start: number, end: number, comp: Buffer | undefined, framesAt: Uint32Array | undefined, threads: number) =>
        wrapAsync('restore', () => w.prepare(start, end, comp, framesAt, threads)),
      writePrepared: (start: number) => wrapAsync('restore', () => w.writePrepared(start)),
      finish: () => wrapSync('restore', () => w.finish()),
    };
  },
  /**
   * Mount a TOC's merged tree read-only with FUSE (the tree is built and mounted off this thread);
   * `fetch([id, ...chunks])` is called for chunks missing from the cache.
   */
  mountLazy: (
    toc: NativeCheckedToc,
    mountpoint: string,
    cacheDir: string,
    record: boolean,
    flags: MountFlags,
    fetch: (msg: number[]) => void,
  ): Promise<NativeLazyMount> => wrapAsync(`mount ${mountpoint}`, () => load().mountLazy(raw(toc), mountpoint, cacheDir, record, flags, fetch)),
};
