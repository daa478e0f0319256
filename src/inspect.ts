/** Figures about chunked images: per image, and per layout (what images share). */
import { openChunked, resolveImage, type ChunkedImage } from './chunked/image.js';
import type { OcichunkError } from './errors.js';
import type { EntryType } from './layer/entry.js';
import { platformString, type Platform } from './oci/types.js';
import { parseRef, openSource, type TransportOptions } from './ref.js';
import { OciLayoutSource, readLayoutIndex, REF_ANNOTATION } from './transports/oci-layout.js';

export interface ImageStats {
  reference: string;
  platform: string;
  index: string;
  originalManifest?: string;
  chunkedManifest: string;
  originalLayers: number;
  originalLayerBytes: number;
  layers: number;
  entries: Partial<Record<EntryType, number>>;
  files: number;
  fileBytes: number;
  chunkRefs: number;
  uniqueChunks: number;
  uniqueChunkBytes: number;
  frames: number;
  /** Compressed bytes of the frames this image uses. */
  frameBytes: number;
  packs: number;
  packBytes: number;
  tocBytes: number;
  tocUncompressedBytes: number;
  /** the digest table blob (TOC version 2): 32 bytes per chunk, fetched by a lazy reader in sections */
  digestTableBytes: number;
  /** fileBytes / uniqueChunkBytes */
  dedupRatio: number;
  /** uniqueChunkBytes / frameBytes */
  compressionRatio: number;
  /** originalLayerBytes / (frameBytes + tocBytes + digestTableBytes) */
  sizeVsOriginal: number;
}

export interface LayoutStats {
  layout: string;
  images: ImageStats[];
  totals: {
    images: number;
    fileBytes: number;
    originalLayerBytes: number;
    uniqueChunks: number;
    uniqueChunkBytes: number;
    /** Chunks used by two or more images, and their bytes (counted once). */
    sharedChunks: number;
    sharedChunkBytes: number;
    packs: number;
    /** Bytes of distinct pack blobs on disk. */
    packBytes: number;
    tocBytes: number;
    digestTableBytes: number;
    dedupRatio: number;
  };
}

export function imageStats(c: ChunkedImage, reference: string): ImageStats {
  const toc = c.toc;
  const entries: Partial<Record<EntryType, number>> = {};
  let files = 0;
  let fileBytes = 0;
  let chunkRefs = 0;
  for (const l of toc.layers) {
    for (const e of l.entries) {
      entries[e.type] = (entries[e.type] ?? 0) + 1;
      if (e.type === 'reg') {
        files++;
        fileBytes += e.size ?? 0;
        chunkRefs += e.chunks?.length ?? 0;
      }
    }
  }
  const uniqueChunkBytes = toc.chunks.reduce((a, c) => a + c.length, 0);
  const frameBytes = toc.frames.reduce((a, f) => a + f.compressedLength, 0);
  const packBytes = c.packs.reduce((a, p) => a + p.size, 0);
  const orig = c.image.original;
  const originalLayerBytes = orig ? orig.manifest.layers.reduce((a, l) => a + l.size, 0) : 0;
  return {
    reference,
    platform: platformString(c.image.platform),
    index: c.image.top.digest,
    originalManifest: orig?.desc.digest,
    chunkedManifest: c.manifest.desc.digest,
    originalLayers: orig?.manifest.layers.length ?? 0,
    originalLayerBytes,
    layers: toc.layers.length,
    entries,
    files,
    fileBytes,
    chunkRefs,
    uniqueChunks: toc.chunks.length,
    uniqueChunkBytes,
    frames: toc.frames.length,
    frameBytes,
    packs: c.packs.length,
    packBytes,
    tocBytes: c.tocBytes,
    tocUncompressedBytes: Number(c.tocDesc.annotations?.['org.ocichunk.toc.uncompressed-size'] ?? 0),
    digestTableBytes: c.digestsDesc?.size ?? 0,
    dedupRatio: uniqueChunkBytes ? fileBytes / uniqueChunkBytes : 1,
    compressionRatio: frameBytes ? uniqueChunkBytes / frameBytes : 1,
    sizeVsOriginal: frameBytes + c.tocBytes ? originalLayerBytes / (frameBytes + c.tocBytes + (c.digestsDesc?.size ?? 0)) : 0,
  };
}

export async function inspectImage(ref: string, platform?: Platform, transport?: TransportOptions): Promise<ImageStats> {
  const src = await openSource(ref, transport);
  try {
    return imageStats(await openChunked(await resolveImage(src, platform)), src.name);
  } finally {
    await src.close();
  }
}

/** Every tagged chunked image of an OCI layout, and what they share. */
export async function inspectLayout(dir: string, platform?: Platform): Promise<LayoutStats> {
  const idx = await readLayoutIndex(dir);
  const tags = idx.manifests.map((m) => m.annotations?.[REF_ANNOTATION]).filter((t): t is string => !!t);
  const images: ImageStats[] = [];
  const chunkUse = new Map<string, { len: number; images: number }>();
  const packs = new Map<string, number>();
  let tocBytes = 0;
  let digestTableBytes = 0;
  for (const tag of [...new Set(tags)].sort()) {
    const src = new OciLayoutSource(dir, tag);
    let c: ChunkedImage;
    try {
      c = await openChunked(await resolveImage(src, platform));
    } catch (e) {
      if ((e as OcichunkError).code === 'ENOTFOUND') continue; // a tag that is not a chunked image
      throw e;
    }
    images.push(imageStats(c, src.name));
    tocBytes += c.tocBytes;
    digestTableBytes += c.digestsDesc?.size ?? 0;
    for (const p of c.packs) packs.set(p.digest, p.size);
    for (const { digest: hex, length: len } of c.toc.chunks) {
      const u = chunkUse.get(hex);
      if (u) u.images++;
      else chunkUse.set(hex, { len, images: 1 });
    }
  }
  let uniqueChunkBytes = 0;
  let sharedChunks = 0;
  let sharedChunkBytes = 0;
  for (const u of chunkUse.values()) {
    uniqueChunkBytes += u.len;
    if (u.images > 1) {
      sharedChunks++;
      sharedChunkBytes += u.len;
    }
  }
  const fileBytes = images.reduce((a, i) => a + i.fileBytes, 0);
  return {
    layout: dir,
    images,
    totals: {
      images: images.length,
      fileBytes,
      originalLayerBytes: images.reduce((a, i) => a + i.originalLayerBytes, 0),
      uniqueChunks: chunkUse.size,
      uniqueChunkBytes,
      sharedChunks,
      sharedChunkBytes,
      packs: packs.size,
      packBytes: [...packs.values()].reduce((a, b) => a + b, 0),
      tocBytes,
      digestTableBytes,
      dedupRatio: uniqueChunkBytes ? fileBytes / uniqueChunkBytes : 1,
    },
  };
}

/** `oci:DIR` without a reference inspects the whole layout; anything else one image. */
export async function inspect(ref: string, platform?: Platform, transport?: TransportOptions): Promise<{ image?: ImageStats; layout?: LayoutStats }> {
  const r = parseRef(ref);
  if (r.transport === 'oci' && r.ref === undefined) {
    const idx = await readLayoutIndex(r.path);
    if (idx.manifests.length !== 1) return { layout: await inspectLayout(r.path, platform) };
  }
  return { image: await inspectImage(ref, platform, transport) };
}
