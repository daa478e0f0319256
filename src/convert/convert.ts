/**
 * image -> chunked image. Per layer: pass 1 streams the tar, canonicalizes entries and chunks,
 * hashes and deduplicates contents (new chunk bytes spooled); pass 2 packs new chunks in canonical
 * order. Then the TOC, the chunked manifest and an index holding [original, chunked] are written;
 * the tag is set last.
 */
import os from 'node:os';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { blobHintValue, CONFIG_HINT_MAX, resolveImage, type ResolvedImage } from '../chunked/image.js';
import { FRAME_MAX } from '../chunked/toc.js';
import { sha256Digest } from '../store/blobstore.js';
import { newSpoolPath } from '../store/owner.js';
import { OcichunkError, withContext } from '../errors.js';
import {
  native,
  type BuiltToc,
  type ChunkerSpec,
  type DictFrameLocation,
  type NativeCheckedToc,
  type NativeLayerDraft,
  type NativeTocBuilder,
} from '../native/index.js';
import { ANN, CHUNKED_PLATFORM, CMT, FORMAT_VERSION } from '../oci/chunked-media.js';
import {
  MT,
  isIndexType,
  isManifestType,
  layerCompression,
  parseManifestDoc,
  platformString,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  type Platform,
} from '../oci/types.js';
import { openSink, openSource } from '../ref.js';
import type { BlobWriter } from '../store/blobstore.js';
import type { ImageSink, ImageSource, TransferReport } from '../transports/types.js';
import type { TransportOptions } from '../ref.js';
import { Packer } from './packer.js';
import { ConvertTrust } from './trust.js';
import { ChunkIndex } from './chunk-index.js';
import { throwIfAborted } from '../util/abort.js';
import { canonOf, DEFAULT_BATCH_BYTES, LayerScanner, OutOfOrder, Spool, type LayerInput } from './scan.js';

/**
 * Chunks below DEFAULT_GROUP_BELOW (small files, file tails) share zstd frames of about
 * DEFAULT_FRAME_SIZE bytes; larger ones get a frame each, unless run frames are asked for (the
 * larger chunks of one file sharing frames of up to that many bytes: 0.5% less stored with 256 KiB,
 * 5-10% more fetched by cold lazy starts, so off by default). Chosen by benchmarks/frames.sh and
 * benchmarks/peers.sh: storage against the bytes a lazy reader fetches per read.
 */
export const DEFAULT_FRAME_SIZE = 64 << 10;
export const DEFAULT_GROUP_BELOW = 32 << 10;
export const DEFAULT_RUN_FRAME_SIZE = 0;
/** zstd level of frames. */
export const DEFAULT_ZSTD_LEVEL = 6;
/**
 * Bytes of each layer's zstd dictionary (docs/format.md §5), trained from the layer's first
 * DICT_SAMPLE_FACTOR times as many bytes of new chunks: small frames compress almost as well as
 * big ones (benchmarks/peers.sh: the corpus stored, and cold starts).
 */
export const DEFAULT_DICT_SIZE = 112 << 10;
export const DICT_SAMPLE_FACTOR = 100;
export const DEFAULT_CHUNKER: ChunkerSpec = { kind: 'cdc', min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

export interface ConvertProgress {
  phase: 'resolve' | 'scan' | 'pack' | 'write' | 'upload' | 'done';
  /** the platform being converted (os/arch[/variant]) */
  platform?: string;
  layer?: number;
  layers?: number;
  bytes?: number;
  totalBytes?: number;
}

export interface ConvertOptions {
  /** Cancels the conversion (ECANCELED): what it wrote is removed, the destination's tags are untouched. */
  signal?: AbortSignal;
  platform?: Platform;
  chunker?: ChunkerSpec;
  zstdLevel?: number;
  threads?: number;
  /**
   * Clamp every mtime to at most this (seconds since the epoch), as reproducible builds do: a
   * change of the files (tools that trust mtimes, Python's bytecode among them, see other
   * files). Default: mtimes are kept (whole seconds).
   */
  sourceDateEpoch?: number;
  tmpDir?: string;
  groupBelow?: number;
  groupTarget?: number;
  /** Bytes of a run frame (a file's consecutive chunks of groupBelow bytes or more); default DEFAULT_RUN_FRAME_SIZE, 0: a frame per chunk. */
  runTarget?: number;
  /** Bytes of each layer's zstd dictionary (0: none); default DEFAULT_DICT_SIZE. */
  dictSize?: number;
  /**
   * The chunk index of `sink`, kept by a caller that converts many images into one sink (analyze,
   * convert --batch): the sink's TOCs are read into it once, by the first conversion. It must
   * describe everything the sink stores; after a failed conversion, start a new one.
   */
  chunkIndex?: ChunkIndex;
  /**
   * Record the chunk locations this conversion wrote in the trust directory (default true; analyze's
   * in-memory sink, whose packs are stored nowhere, turns it off).
   */
  recordTrust?: boolean;
  /** Reads to store in the TOC for lazy readers to fetch first: [path, offset, length] (a mount's --record-trace). */
  prefetch?: Array<[string, number, number]>;
  packTarget?: number;
  batchBytes?: number;
  /** Convert every platform of a multi-platform source into one index (original, chunked per platform). */
  allPlatforms?: boolean;
  /**
   * 'index' (default): the tag points to an index holding the original manifest and the chunked one.
   * 'referrer': the tag keeps pointing to the original; the chunked manifest is attached to it as an
   * OCI 1.1 referrer (its `subject` is the original manifest).
   */
  attach?: 'index' | 'referrer';
  /** Registry options (credentials, plain HTTP, retries, upload concurrency) for docker:// references. */
  transport?: TransportOptions;
  /**
   * Where this user's conversions record what they wrote (default ~/.cache/ocichunk/trust): a TOC
   * layer or chunk location found in the destination is reused only if it matches, or, for chunk
   * locations, once it was read and verified (src/convert/trust.ts).
   */
  trustDir?: string;
  onProgress?: (p: ConvertProgress) => void;
}

/** What one platform's conversion did. */
export interface PlatformResult {
  platform: string;
  originalManifest: Descriptor;
  chunkedManifest: Descriptor;
  /** the image's content digest (its files, whatever frames, packs or destination hold them; the chunked manifest's annotation) */
  contentDigest: string;
  layers: number;
  entries: number;
  files: number;
  /** Uncompressed bytes of regular file contents, over all layers. */
  fileBytes: number;
  /** Compressed bytes of the original layers. */
  bytesIn: number;
  chunkRefs: number;
  uniqueChunks: number;
  uniqueChunkBytes: number;
  newChunks: number;
  reusedChunks: number;
  newFrames: number;
  newPacks: number;
  /** Bytes of new pack blobs written by this conversion. */
  bytesStored: number;
  /** Compressed bytes of all frames this image references (shared ones included). */
  imageFrameBytes: number;
  tocBytes: number;
  tocUncompressedBytes: number;
  /** the digest table blob (docs/format.md §3 "Chunk digests"): 32 bytes per chunk of the TOC */
  digestTableBytes: number;
  /** Layers that arrived in canonical order and were packed in one pass (the others were read twice, spooled). */
  onePassLayers: number;
  /** Layers not read at all: the sink holds a conversion of the same layer blob with the same entry options. */
  reusedLayers: number;
  /** chunk locations found in the destination that were read and verified before being used */
  chunksVerified: number;
  /** fileBytes / uniqueChunkBytes */
  dedupRatio: number;
}

export interface ConvertResult extends PlatformResult {
  source: string;
  destination: string;
  /** What the destination tag points to: the new index, or (with attach 'referrer') the original. */
  index: Descriptor;
  attach: 'index' | 'referrer';
  /** With attach 'referrer': how the referrer was recorded (referrers API, referrers tag schema, layout entry). */
  attachedVia?: 'api' | 'tag' | 'layout';
  /** One entry per converted platform (the top-level figures are their sums). */
  platforms: PlatformResult[];
  /** Registry figures: blobs/bytes uploaded, skipped because present, mounted; bytes downloaded. */
  transfer?: TransferReport;
  seconds: number;
}

function teeInto(writer: BlobWriter): Transform {
  return new Transform({
    transform(chunk: Buffer, _e, cb: TransformCallback) {
      writer.write(chunk).then(() => cb(null, chunk), cb);
    },
  });
}

/**
 * A converted layer that may stand in for reading `layerDigest` again: one this process derived, or
 * one found in the destination whose content this user's own earlier conversion recorded.
 */
async function trustedLayer(ctx: Ctx, layerDigest: string): Promise<{ toc: NativeCheckedToc; layer: number } | undefined> {
  for (const c of ctx.chunkIndex.layerCache.get(`${layerDigest} ${ctx.entryOptions}`) ?? []) {
    const toc = ctx.chunkIndex.openToc(c.toc);
    if (c.trusted || (await ctx.trust.trustsLayer(layerDigest, ctx.entryOptions, toc.layerDigests()[c.layer]))) return { toc, layer: c.layer };
  }
  return undefined;
}

/**
 * Chunk locations read from a destination's TOCs that this image uses: each is trusted if this
 * user's conversions wrote or verified it before, else its frame is read from the destination and
 * the chunk hashed; a location that does not hold its chunk refuses the conversion. Returns how
 * many were read.
 */
async function checkForeignLocations(ctx: Ctx, ids: number[]): Promise<number> {
  const { chunkIndex, trust } = ctx;
  const byPack = new Map<string, number[]>();
  for (const id of ids) {
    const loc = chunkIndex.loc(id)!;
    const pack = loc.pack as string;
    if (await trust.knowsLocation(pack, chunkIndex.locationKey(id))) chunkIndex.trustLoc(id);
    else byPack.set(pack, [...(byPack.get(pack) ?? []), id]);
  }
  let verified = 0;
  const dst = ctx.sink.asSource();
  for (const [pack, list] of byPack) {
    const size = chunkIndex.packSizes.get(pack);
    if (size === undefined) throw new OcichunkError('EINTERNAL', `size of pack ${pack} unknown`);
    const reader = await dst.openRanges({ mediaType: CMT.pack, digest: pack, size });
    try {
      for (let i = 0; i < list.length; i += 1024) {
        const part = list.slice(i, i + 1024);
        const frames = new Map<number, { clen: number; ulen: number; dict?: DictFrameLocation }>();
        for (const id of part) {
          const l = chunkIndex.loc(id)!;
          frames.set(l.off, { clen: l.clen, ulen: l.ulen, ...(l.dict ? { dict: l.dict } : {}) });
        }
        // the dictionaries of those frames, read from where the destination's TOCs say they are
        const dictKey = (d: DictFrameLocation) => `${d.pack}@${d.offset}`;
        const dictIx = new Map<string, number>();
        const dicts: Buffer[] = [];
        for (const f of frames.values()) {
          if (!f.dict || dictIx.has(dictKey(f.dict))) continue;
          const d = f.dict;
          const dsize = chunkIndex.packSizes.get(String(d.pack));
          if (dsize === undefined) throw new OcichunkError('EINTERNAL', `size of pack ${d.pack} unknown`);
          const r = d.pack === pack ? reader : await dst.openRanges({ mediaType: CMT.pack, digest: String(d.pack), size: dsize });
          try {
            const comp = await r.read(d.offset, d.compressedLen);
            dicts.push(await native.decompressFrames(comp, Uint32Array.of(0, d.compressedLen, d.len), 0));
          } catch (e) {
            throw new OcichunkError(
              'EDIGEST',
              `${ctx.sink.name}: pack ${d.pack} does not hold the dictionary a chunked manifest there claims (${(e as Error).message})`,
            );
          } finally {
            if (r !== reader) await r.close();
          }
          dictIx.set(dictKey(d), dicts.length - 1);
        }
        const offs = [...frames.keys()];
        const comp = await Promise.all(offs.map((o) => reader.read(o, frames.get(o)!.clen)));
        const triplets = new Uint32Array(offs.length * 3);
        const outAt = new Map<number, number>();
        let cpos = 0;
        let upos = 0;
        offs.forEach((o, k) => {
          const f = frames.get(o)!;
          triplets.set([cpos, f.clen, f.ulen], k * 3);
          outAt.set(o, upos);
          cpos += f.clen;
          upos += f.ulen;
        });
        const what = `${ctx.sink.name}: pack ${pack}`;
        const frameDicts = Int32Array.from(
          offs.map((o) => {
            const d = frames.get(o)!.dict;
            return d ? dictIx.get(dictKey(d))! : -1;
          }),
        );
        const out = await native.decompressFrames(Buffer.concat(comp), triplets, 0, dicts, frameDicts).catch((e: unknown) => {
          throw new OcichunkError(
            'EDIGEST',
            `${what} does not hold the frames a chunked manifest there claims (${(e as Error).message}); remove that image (ocichunk gc) or convert into another destination`,
          );
        });
        const ranges = new Uint32Array(part.length * 2);
        part.forEach((id, k) => {
          const l = chunkIndex.loc(id)!;
          ranges.set([outAt.get(l.off)! + l.inner, chunkIndex.length(id)], k * 2);
        });
        const digests = await native.hashRanges(out, ranges, 0);
        const good: string[] = [];
        part.forEach((id, k) => {
          const hex = chunkIndex.hex(id);
          if (digests.toString('hex', k * 32, k * 32 + 32) !== hex) {
            throw new OcichunkError(
              'EDIGEST',
              `${what} does not hold chunk sha256:${hex} where a chunked manifest there claims it is; remove that image (ocichunk gc) or convert into another destination`,
            );
          }
          good.push(chunkIndex.locationKey(id));
          chunkIndex.trustLoc(id);
        });
        verified += part.length;
        await trust.recordLocations(pack, good);
      }
    } finally {
      await reader.close();
    }
  }
  return verified;
}

/** Record the chunk locations this conversion wrote (ids from `firstNew` on; packs have digests now). */
async function recordWritten(ctx: Ctx, firstNew: number): Promise<void> {
  for (const { pack, keys } of ctx.chunkIndex.locationKeysFrom(firstNew)) await ctx.trust.recordLocations(pack, keys);
}

/** Whether the sink holds the blob, or got it from the source without a copy (a registry mount). */
async function sinkHasOrMounts(src: ImageSource, sink: ImageSink, desc: Descriptor): Promise<boolean> {
  return (await sink.hasBlob(desc)) || !!(await sink.mountFrom?.(src, desc));
}

/** Whether the sink holds a manifest (registries keep manifests apart from blobs). */
function sinkHasManifest(sink: ImageSink, desc: Descriptor): Promise<boolean> {
  return sink.hasManifest ? sink.hasManifest(desc) : sink.hasBlob(desc);
}

/** Copy an original layer blob into the sink as it is (when the sink lacks it), verifying it. */
async function copyBlob(src: ImageSource, sink: ImageSink, layer: Descriptor, what: string): Promise<void> {
  if (await sinkHasOrMounts(src, sink, layer)) return;
  const file = src.blobFile?.(layer);
  if (file && sink.stageBlobFile) {
    const staged = await sink.stageBlobFile(file, layer);
    try {
      const s = await src.openBlob(layer, what);
      for await (const _ of s) void _; // verify the content we link
      await staged.commit();
    } catch (e) {
      await staged.abort();
      throw withContext(e, what, 'EDIGEST');
    }
    return;
  }
  const w = await sink.createBlobWriter();
  try {
    for await (const c of await src.openBlob(layer, what)) await w.write(c as Buffer);
    await w.commit({ digest: layer.digest, size: layer.size });
  } catch (e) {
    await w.abort();
    throw withContext(e, what, 'EDIGEST');
  }
}

/** Copy a manifest or index with everything it references into the sink (when it lacks it). */
async function copyManifestTree(src: ImageSource, sink: ImageSink, desc: Descriptor, depth = 0): Promise<void> {
  const what = `${src.name} ${desc.mediaType} ${desc.digest}`;
  if (!isIndexType(desc.mediaType) && !isManifestType(desc.mediaType)) {
    await copyBlob(src, sink, desc, what);
    return;
  }
  if (await sinkHasManifest(sink, desc)) return;
  if (depth > 4) throw new OcichunkError('EUNSUPPORTED', `${what}: indexes nested too deep`);
  const bytes = await src.readBlob(desc, what);
  const p = parseManifestDoc(bytes, desc.mediaType, what);
  if (p.kind === 'index') for (const c of p.doc.manifests) await copyManifestTree(src, sink, c, depth + 1);
  else for (const d of [p.doc.config, ...p.doc.layers]) await copyBlob(src, sink, d, `${what} blob ${d.digest}`);
  await sink.putManifest(bytes, desc.mediaType);
}

/** Read one layer through a scanner, copying the original blob into the sink when it lacks it. */
async function scanLayer(src: ImageSource, sink: ImageSink, layer: Descriptor, what: string, scanner: LayerScanner): Promise<NativeLayerDraft> {
  const present = await sinkHasOrMounts(src, sink, layer);
  const file = src.blobFile?.(layer);
  // A local blob is linked or copied by the kernel while we read it; its content is verified by
  // our own read. Other blobs are copied as they stream by.
  const staged = !present && file && sink.stageBlobFile ? sink.stageBlobFile(file, layer) : undefined;
  staged?.catch(() => {});
  const copy = present || staged ? undefined : await sink.createBlobWriter();
  try {
    let input: LayerInput;
    if (file && !copy) {
      input = { file, digest: layer.digest, size: layer.size };
    } else {
      let blob: Readable = await src.openBlob(layer, what);
      if (copy) {
        const verified = blob;
        const tee = teeInto(copy);
        verified.on('error', (e) => tee.destroy(e));
        blob = verified.pipe(tee);
      }
      input = { stream: blob };
    }
    // digest and size are verified by the end of the read, before scan() returns
    const scanned = await scanner.scan(input, what);
    if (copy) await copy.commit({ digest: layer.digest, size: layer.size });
    if (staged) await (await staged).commit();
    return scanned;
  } catch (e) {
    await copy?.abort();
    await staged?.then(
      (s) => s.abort(),
      () => {},
    );
    if (e instanceof OutOfOrder) throw e;
    throw withContext(e, what, 'ECORRUPT');
  }
}

export async function convert(srcRef: string, dstRef: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  // a usage error is told before anything is opened or created
  checkFrameOptions(opts);
  const src = await openSource(srcRef, opts.transport);
  try {
    const sink = await openSink(dstRef, opts.transport);
    try {
      return await convertImage(src, sink, opts);
    } catch (e) {
      await sink.abort?.();
      throw e;
    }
  } finally {
    await src.close();
  }
}

interface Ctx {
  signal?: AbortSignal;
  src: ImageSource;
  sink: ImageSink;
  chunkIndex: ChunkIndex;
  packer: Packer;
  spool: Spool;
  scanOpts: ConstructorParameters<typeof LayerScanner>[0];
  entryOptions: string;
  chunker: ChunkerSpec;
  level: number;
  attach: 'index' | 'referrer';
  progress: (p: ConvertProgress) => void;
  prefetch?: Array<[string, number, number]>;
  trust: ConvertTrust;
}

/** The platforms a multi-platform conversion covers: every image manifest of the top index but chunked ones and attestations. */
async function platformsOf(src: ImageSource): Promise<{ top: { desc: Descriptor; bytes: Buffer }; index?: ImageIndex; platforms: Platform[] }> {
  const top = await src.getTop();
  const parsed = parseManifestDoc(top.bytes, top.desc.mediaType, src.name);
  if (parsed.kind === 'manifest') return { top, platforms: [] };
  const platforms: Platform[] = [];
  for (const d of parsed.doc.manifests) {
    if (isIndexType(d.mediaType) || d.artifactType === CMT.artifact || !d.platform) continue;
    if (d.platform.os === 'unknown' || d.platform.architecture === 'unknown') continue; // attestations
    if (!platforms.some((p) => platformString(p) === platformString(d.platform))) platforms.push(d.platform);
  }
  return { top, index: parsed.doc, platforms };
}

/** Platform choice: the images to convert (one, or every platform of an index), each checked convertible. */
async function imagesToConvert(src: ImageSource, opts: ConvertOptions): Promise<{ images: ResolvedImage[] } & Awaited<ReturnType<typeof platformsOf>>> {
  const found = await platformsOf(src);
  const { top, index: topIndex, platforms } = found;
  const images: ResolvedImage[] = [];
  if (opts.allPlatforms && topIndex && platforms.length > 0) {
    for (const p of platforms) images.push(await resolveImage(src, p, top));
  } else {
    images.push(await resolveImage(src, opts.platform, top));
  }
  for (const img of images) {
    if (!img.original) {
      throw new OcichunkError('EUNSUPPORTED', `${src.name}: no original image manifest for ${platformString(img.platform)}`);
    }
    for (const [i, l] of img.original.manifest.layers.entries()) {
      if (layerCompression(l.mediaType) === undefined) {
        throw new OcichunkError('EUNSUPPORTED', `${src.name}: layer ${i} (${l.digest}) has unsupported media type ${l.mediaType}`);
      }
    }
  }
  return { images, ...found };
}

/** The frame options within their limits (EUSAGE otherwise), with their defaults. */
export function checkFrameOptions(opts: ConvertOptions): { dictSize: number; runTarget: number } {
  const dictSize = opts.dictSize ?? DEFAULT_DICT_SIZE;
  if (dictSize !== 0 && (dictSize < 1024 || dictSize > 1 << 20)) throw new OcichunkError('EUSAGE', `dictionary size ${dictSize}: 0 (none) or 1 KiB to 1 MiB`);
  if ((opts.groupTarget ?? 0) > FRAME_MAX) throw new OcichunkError('EUSAGE', `frame size ${opts.groupTarget} is over the format's limit of ${FRAME_MAX} bytes`);
  const runTarget = opts.runTarget ?? DEFAULT_RUN_FRAME_SIZE;
  if (runTarget > FRAME_MAX) throw new OcichunkError('EUSAGE', `run frame size ${runTarget} is over the format's limit of ${FRAME_MAX} bytes`);
  return { dictSize, runTarget };
}

/** The conversion's context: the chunk index of the sink, the packer, the spool, the options that shape entries. */
async function conversionContext(src: ImageSource, sink: ImageSink, opts: ConvertOptions, progress: (p: ConvertProgress) => void): Promise<Ctx> {
  const chunker = opts.chunker ?? DEFAULT_CHUNKER;
  const level = opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
  const { dictSize, runTarget } = checkFrameOptions(opts);
  const threads = opts.threads ?? 0;
  // a caller converting many images into one sink (analyze) keeps the chunk index between calls
  const chunkIndex = opts.chunkIndex ?? new ChunkIndex();
  if (!chunkIndex.loaded) await chunkIndex.loadFromSink(sink);
  // named for its owner; spools dead processes left in the temp dir are removed first (store/owner.ts)
  const spool = new Spool(await newSpoolPath(opts.tmpDir ?? os.tmpdir()));
  const batchBytes = opts.batchBytes ?? DEFAULT_BATCH_BYTES;
  const groupBelow = opts.groupBelow ?? DEFAULT_GROUP_BELOW;
  const packer = new Packer(sink, chunkIndex, {
    level,
    threads,
    groupBelow,
    groupTarget: opts.groupTarget ?? DEFAULT_FRAME_SIZE,
    runTarget,
    packTarget: opts.packTarget ?? 64 << 20,
    batchBytes,
    dictSize,
    dictSample: dictSize * DICT_SAMPLE_FACTOR,
  });
  const scanOpts = {
    chunker,
    threads,
    batchBytes,
    groupBelow,
    ...canonOf(opts.sourceDateEpoch),
    signal: opts.signal,
  };
  // what shapes TOC entries and chunk digests: a layer converted before with these is not read again
  const entryOptions = sha256Digest(
    JSON.stringify({ chunker, sourceDateEpoch: scanOpts.sourceDateEpoch, keepMtime: scanOpts.keepMtime, version: FORMAT_VERSION }),
  ).slice(7, 39);
  const trust = new ConvertTrust(opts.trustDir);
  return {
    signal: opts.signal,
    src,
    sink,
    chunkIndex,
    packer,
    spool,
    scanOpts,
    entryOptions,
    chunker,
    level,
    attach: opts.attach ?? 'index',
    progress,
    prefetch: opts.prefetch,
    trust,
  };
}

/**
 * Index assembly: what the destination tag points to. With attach 'index', a new index listing each
 * original manifest followed by its chunked one (every other entry of a kept top index in its
 * place); with 'referrer', the original top manifest, the chunked manifests attached as referrers.
 */
async function assembleIndex(
  ctx: Ctx,
  found: Awaited<ReturnType<typeof imagesToConvert>>,
  results: PlatformResult[],
): Promise<{ tag: Descriptor; attachedVia?: ConvertResult['attachedVia'] }> {
  const { src, sink } = ctx;
  const { top, index: topIndex, images } = found;
  // what the new (or kept) top index lists but was not converted (attestations, other entries) comes along
  // (single-platform conversions write their own index, or keep a top index the sink already holds)
  if (topIndex && images.length > 1) {
    const converted = new Set(results.map((r) => r.originalManifest.digest));
    for (const d of topIndex.manifests) if (!converted.has(d.digest) && d.artifactType !== CMT.artifact) await copyManifestTree(src, sink, d);
  }
  if (ctx.attach === 'referrer') {
    if (!sink.putReferrer) throw new OcichunkError('EUNSUPPORTED', `${sink.name}: cannot hold referrers`);
    // the tag keeps (or, in another repository, gets) the original top manifest; chunked manifests refer to it
    // (in place, the tag stays as it is; elsewhere, a partly converted index gives way to the platform's manifest)
    const whole = !topIndex || images.length > 1 || (await sinkHasManifest(sink, top.desc));
    if (whole) await sink.putManifest(top.bytes, top.desc.mediaType);
    let attachedVia: ConvertResult['attachedVia'];
    for (const r of results) attachedVia = (await sink.putReferrer(r.chunkedManifest, r.originalManifest)).via;
    return { tag: whole ? top.desc : results[0].originalManifest, attachedVia };
  }
  let manifests: Descriptor[];
  let annotations: Record<string, string> | undefined;
  if (images.length > 1 && topIndex) {
    // every entry of the original index, in its order, each converted one followed by its chunked manifest
    manifests = [];
    for (const d of topIndex.manifests) {
      if (d.artifactType === CMT.artifact) continue; // a previous conversion's, replaced below
      manifests.push(d);
      const r = results.find((x) => x.originalManifest.digest === d.digest);
      if (r) manifests.push(r.chunkedManifest);
    }
    annotations = topIndex.annotations;
  } else {
    manifests = [results[0].originalManifest, results[0].chunkedManifest];
  }
  const index: ImageIndex = { schemaVersion: 2, mediaType: MT.ociIndex, manifests, ...(annotations ? { annotations } : {}) };
  const stored = await sink.putManifest(Buffer.from(JSON.stringify(index)), MT.ociIndex);
  return { tag: { mediaType: MT.ociIndex, digest: stored.digest, size: stored.size } };
}

/** Statistics: the figures of every platform added up (the first platform's descriptors on top). */
function totals(results: PlatformResult[]): PlatformResult {
  const sum = (k: keyof PlatformResult) => results.reduce((a, r) => a + (r[k] as number), 0);
  const fileBytes = sum('fileBytes');
  const uniqueChunkBytes = sum('uniqueChunkBytes');
  return {
    ...results[0],
    platform: results.map((r) => r.platform).join(','),
    layers: sum('layers'),
    entries: sum('entries'),
    files: sum('files'),
    fileBytes,
    bytesIn: sum('bytesIn'),
    chunkRefs: sum('chunkRefs'),
    uniqueChunks: sum('uniqueChunks'),
    uniqueChunkBytes,
    newChunks: sum('newChunks'),
    reusedChunks: sum('reusedChunks'),
    newFrames: sum('newFrames'),
    newPacks: sum('newPacks'),
    bytesStored: sum('bytesStored'),
    imageFrameBytes: sum('imageFrameBytes'),
    tocBytes: sum('tocBytes'),
    tocUncompressedBytes: sum('tocUncompressedBytes'),
    digestTableBytes: sum('digestTableBytes'),
    onePassLayers: sum('onePassLayers'),
    reusedLayers: sum('reusedLayers'),
    chunksVerified: sum('chunksVerified'),
    dedupRatio: uniqueChunkBytes ? fileBytes / uniqueChunkBytes : 1,
  };
}

export async function convertImage(src: ImageSource, sink: ImageSink, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const t0 = performance.now();
  const progress = opts.onProgress ?? (() => {});
  throwIfAborted(opts.signal, `convert ${src.name}`);
  progress({ phase: 'resolve' });
  const found = await imagesToConvert(src, opts);
  const ctx = await conversionContext(src, sink, opts, progress);
  const firstNew = ctx.chunkIndex.mark();
  const results: PlatformResult[] = [];
  try {
    for (const img of found.images) results.push(await convertPlatform(img, ctx));
  } catch (e) {
    await ctx.packer.abort();
    throw e;
  } finally {
    ctx.spool.close();
  }
  throwIfAborted(opts.signal, `convert ${src.name}`); // last chance: after this the tag is written
  ctx.chunkIndex.resolvePacks(ctx.packer.packs);
  // what this conversion wrote is known good: later conversions reuse it without reading it
  if (opts.recordTrust !== false) await recordWritten(ctx, firstNew);
  progress({ phase: 'upload' });
  const { tag, attachedVia } = await assembleIndex(ctx, found, results);
  // the tag is written last, after every blob and manifest it leads to
  await sink.setTag(tag);
  await sink.close();
  progress({ phase: 'done' });
  return {
    source: src.name,
    destination: sink.name,
    ...totals(results),
    index: tag,
    attach: ctx.attach,
    ...(attachedVia ? { attachedVia } : {}),
    platforms: results,
    ...(sink.transferReport || src.transferReport ? { transfer: mergeReports(src.transferReport?.(), sink.transferReport?.()) } : {}),
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Source and sink figures; network counters are added up unless both talk to one registry (one client). */
function mergeReports(a: TransferReport | undefined, b: TransferReport | undefined): TransferReport {
  if (!a || !b) return { ...a, ...b };
  const same = a.endpoint !== undefined && a.endpoint === b.endpoint;
  const add = (k: 'bytesDownloaded' | 'requests' | 'retries') => (same ? (b[k] ?? 0) : (a[k] ?? 0) + (b[k] ?? 0));
  return { ...b, bytesDownloaded: add('bytesDownloaded'), requests: add('requests'), retries: add('retries') };
}

/** One platform: scan and pack every layer, write the TOC, the chunked manifest and the original's blobs. */
/** What the layers of one image came to: their canonical entries (in the TOC builder), and figures for the result. */
interface ConvertedLayers {
  toc: NativeTocBuilder;
  /** indexes of the layers taken from an earlier conversion (not read) */
  reused: Set<number>;
  entries: number;
  files: number;
  fileBytes: number;
  chunkRefs: number;
  onePassLayers: number;
}

/**
 * Layer conversion: each layer of the image either taken from a trusted earlier conversion or
 * scanned (chunks packed as they stream by when the layer is in canonical order, else read again
 * with a spool) into canonical entries.
 */
async function convertLayers(img: ResolvedImage, ctx: Ctx, progress: (p: ConvertProgress) => void): Promise<ConvertedLayers> {
  const { src, sink, chunkIndex, packer, spool, scanOpts } = ctx;
  const manifest = img.original!.manifest;
  const toc = native.tocBuilder(FORMAT_VERSION, ctx.chunker, ctx.prefetch);
  packer.beginImage();
  const out: ConvertedLayers = { toc, reused: new Set(), entries: 0, files: 0, fileBytes: 0, chunkRefs: 0, onePassLayers: 0 };
  const count = (s: { entries: number; files: number; fileBytes: number; chunkRefs: number }) => {
    out.entries += s.entries;
    out.files += s.files;
    out.fileBytes += s.fileBytes;
    out.chunkRefs += s.chunkRefs;
  };
  for (const [i, layer] of manifest.layers.entries()) {
    const what = `${src.name} layer ${i} (${layer.digest})`;
    throwIfAborted(ctx.signal, `convert ${src.name}`);
    progress({ phase: 'scan', layer: i, layers: manifest.layers.length, bytes: 0, totalBytes: layer.size });
    const reuse = await trustedLayer(ctx, layer.digest);
    if (reuse) {
      out.reused.add(i);
      count(toc.addTocLayer(chunkIndex.dict, reuse.toc, reuse.layer));
      await copyBlob(src, sink, layer, what);
      continue;
    }
    // Most layers arrive in canonical order (tar --sort=name, directory walks) or in the byte order
    // of whole paths (sorted diffs): chunks are packed as they stream by, those of files that come
    // before canonically smaller ones held in the spool until their turn. If an entry breaks the
    // order even so, the layer is read again with a spool.
    const mark = chunkIndex.mark();
    packer.beginLayer();
    let draft: NativeLayerDraft;
    try {
      // (held files' big chunks are spooled raw: compressing them ahead measured no faster and
      // peaked 12 MiB higher on `big`)
      draft = await scanLayer(src, sink, layer, what, new LayerScanner(scanOpts, chunkIndex, spool, packer));
      count(draft.stats);
      toc.addDraft(draft);
      out.onePassLayers++;
    } catch (e) {
      if (!(e instanceof OutOfOrder)) throw e;
      await packer.rollbackLayer();
      chunkIndex.truncate(mark);
      // big chunks compressed in this pass where their frames do not wait for the layer's dictionary
      const ahead = packer.compressesBigChunksAhead ? packer : undefined;
      draft = await scanLayer(src, sink, layer, what, new LayerScanner(scanOpts, chunkIndex, spool, undefined, ahead));
      count(draft.stats);
      const ordered = toc.addDraft(draft);
      progress({ phase: 'pack', layer: i, layers: manifest.layers.length });
      await packer.placeFromSpool(ordered.chunks, ordered.fileStarts, spool);
    }
    await packer.finishLayer();
    native.releaseFreeMemory();
  }
  return out;
}

/**
 * Publishing one platform: the TOC blob (remembered for reuse, its layers recorded as trusted), the
 * original config and manifest byte-identical, then the chunked manifest; the two descriptors the
 * index will list.
 */
async function publishPlatform(
  img: ResolvedImage,
  ctx: Ctx,
  built: BuiltToc,
  reused: Set<number>,
): Promise<{ originalManifest: Descriptor; chunkedManifest: Descriptor; tocBytes: number; tocUncompressedBytes: number; digestTableBytes: number }> {
  const { src, sink, chunkIndex, packer, entryOptions } = ctx;
  const original = img.original!;
  const manifest = original.manifest;
  const { json, blob } = built;
  const tocStored = await sink.putBlob(blob);
  const tableStored = await sink.putBlob(built.digestTable);
  if (tableStored.digest !== built.digestTableDigest) {
    throw new OcichunkError('EINTERNAL', `digest table stored as ${tableStored.digest}, the TOC names ${built.digestTableDigest}`);
  }
  chunkIndex.rememberLayers(
    manifest.layers.map((l) => l.digest),
    entryOptions,
    { blob, digestTable: built.digestTable, what: `${src.name} chunked TOC ${tocStored.digest}` },
    true,
  );
  for (const [i, l] of manifest.layers.entries()) {
    if (!reused.has(i)) await ctx.trust.recordLayer(l.digest, entryOptions, built.layerDigests[i]);
  }
  const packSize = (d: string) => {
    const mine = packer.packs.find((p) => p.digest === d);
    const size = mine?.size ?? chunkIndex.packSizes.get(d);
    if (size === undefined) throw new OcichunkError('EINTERNAL', `size of pack ${d} unknown`);
    return size;
  };
  const chunkedManifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    artifactType: CMT.artifact,
    config: { mediaType: CMT.config, digest: img.config.desc.digest, size: img.config.desc.size },
    layers: [
      {
        mediaType: CMT.toc,
        digest: tocStored.digest,
        size: tocStored.size,
        annotations: { [ANN.tocUncompressedSize]: String(json.length) },
      },
      { mediaType: CMT.digests, digest: tableStored.digest, size: tableStored.size },
      ...built.packs.map((d) => ({ mediaType: CMT.pack, digest: d, size: packSize(d) })),
    ],
    ...(ctx.attach === 'referrer' ? { subject: { mediaType: original.desc.mediaType, digest: original.desc.digest, size: original.desc.size } } : {}),
    annotations: {
      [ANN.version]: String(FORMAT_VERSION),
      [ANN.entryOptions]: entryOptions,
      [ANN.sourceLayers]: JSON.stringify(manifest.layers.map((l) => l.digest)),
      [ANN.contentDigest]: built.contentDigest,
      ...(ctx.scanOpts.keepMtime ? {} : { [ANN.sourceDateEpoch]: String(ctx.scanOpts.sourceDateEpoch) }),
    },
  };
  // Original blobs first (config, manifest byte-identical), then the chunked manifest.
  await sink.putBlob(img.config.bytes);
  await sink.putManifest(original.bytes, original.desc.mediaType);
  const chunkedBytes = Buffer.from(JSON.stringify(chunkedManifest));
  const chunkedStored = await sink.putManifest(chunkedBytes, MT.ociManifest);
  const platform = original.desc.platform ?? img.platform;
  // Platform unknown/unknown (as BuildKit does for attestations): platform-matching clients
  // (containerd fetches every manifest that matches) never pull packs; readers pair it with the
  // original through the source annotation.
  return {
    originalManifest: { mediaType: original.desc.mediaType, digest: original.desc.digest, size: original.desc.size, platform },
    chunkedManifest: {
      mediaType: MT.ociManifest,
      digest: chunkedStored.digest,
      size: chunkedStored.size,
      platform: { ...CHUNKED_PLATFORM },
      artifactType: CMT.artifact,
      annotations: {
        [ANN.source]: original.desc.digest,
        [ANN.platform]: platformString(platform),
        [ANN.tocHint]: blobHintValue(tocStored),
        ...(img.config.desc.size <= CONFIG_HINT_MAX ? { [ANN.configHint]: blobHintValue(img.config.desc) } : {}),
      },
    },
    tocBytes: blob.length,
    tocUncompressedBytes: json.length,
    digestTableBytes: built.digestTable.length,
  };
}

/** One platform of an image: its layers converted, its TOC built and checked, everything published. */
async function convertPlatform(img: ResolvedImage, ctx: Ctx): Promise<PlatformResult> {
  const { chunkIndex, packer } = ctx;
  const original = img.original!;
  const platformName = platformString(original.desc.platform ?? img.platform);
  const progress = (p: ConvertProgress) => ctx.progress({ ...p, platform: platformName });
  const before = { chunks: chunkIndex.mark(), packs: packer.packs.length, frames: packer.frameCount, bytes: packer.storedBytes };
  const layers = await convertLayers(img, ctx, progress);
  progress({ phase: 'write' });
  // the TOC: packs, frames and chunks numbered in order of first reference (crates/core/src/format/build.rs)
  const built = layers.toc.build(
    chunkIndex.dict,
    packer.packs.map((p) => p.digest),
    before.chunks,
    Math.max(ctx.level, 10),
  );
  const chunksVerified = await checkForeignLocations(ctx, Array.from(built.foreign));
  const published = await publishPlatform(img, ctx, built, layers.reused);
  progress({ phase: 'write' });
  return {
    platform: platformString(original.desc.platform ?? img.platform),
    originalManifest: published.originalManifest,
    chunkedManifest: published.chunkedManifest,
    contentDigest: built.contentDigest,
    layers: original.manifest.layers.length,
    entries: layers.entries,
    files: layers.files,
    fileBytes: layers.fileBytes,
    bytesIn: original.manifest.layers.reduce((a, l) => a + l.size, 0),
    chunkRefs: layers.chunkRefs,
    uniqueChunks: built.chunks,
    uniqueChunkBytes: built.uniqueChunkBytes,
    newChunks: built.chunks - built.reusedChunks,
    reusedChunks: built.reusedChunks,
    newFrames: packer.frameCount - before.frames,
    newPacks: packer.packs.length - before.packs,
    bytesStored: packer.storedBytes - before.bytes,
    imageFrameBytes: built.imageFrameBytes,
    tocBytes: published.tocBytes,
    tocUncompressedBytes: published.tocUncompressedBytes,
    digestTableBytes: published.digestTableBytes,
    onePassLayers: layers.onePassLayers,
    reusedLayers: layers.reused.size,
    chunksVerified,
    dedupRatio: built.uniqueChunkBytes ? layers.fileBytes / built.uniqueChunkBytes : 1,
  };
}
