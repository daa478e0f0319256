/**
 * Re-hash every blob and every chunk of a chunked image and check every reference; check the
 * content digest the chunked manifest states against its TOC, and (`againstOriginal`) against the
 * one the original image's layers give when derived again (docs/format.md §9).
 */
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { ChunkReader } from './chunked/content.js';
import { hintProblems, openChunked, resolveImage, type ChunkedImage } from './chunked/image.js';
import { OcichunkError } from './errors.js';
import { TocError } from './chunked/toc.js';
import { originalContentDigests } from './convert/content.js';
import { ANN } from './oci/chunked-media.js';
import type { Descriptor, Platform } from './oci/types.js';
import { openSource, type TransportOptions } from './ref.js';

export interface VerifyResult {
  reference: string;
  blobs: number;
  blobBytes: number;
  chunks: number;
  chunkBytes: number;
  files: number;
  /** the content digest of the files the TOC holds */
  contentDigest: string;
  /** whether the chunked manifest states it (images converted before it existed do not) */
  contentDigestStated: boolean;
  /** with againstOriginal: the original's layers, converted again, give the same content digest */
  matchesOriginal?: boolean;
  seconds: number;
}

export interface VerifyOptions {
  platform?: Platform;
  threads?: number;
  transport?: TransportOptions;
  /** derive the content digest from the original image's layers again and compare */
  againstOriginal?: boolean;
  signal?: AbortSignal;
  /** with againstOriginal: after each original layer */
  progress?: (layer: number, layers: number) => void;
}

export async function verify(ref: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const t0 = performance.now();
  const src = await openSource(ref, opts.transport);
  try {
    const img = await resolveImage(src, opts.platform);
    const c = await openChunked(img).catch((e: unknown) => {
      // every violation of the format's rules, not only the first
      throw e instanceof TocError ? new TocError(src.name, e.violations, e.more, true) : e;
    });
    const hints = hintProblems(img);
    if (hints.length) throw new OcichunkError('ECORRUPT', `${src.name}: ${hints.join('; ')}`);
    let blobs = 0;
    let blobBytes = 0;
    const seen = new Set<string>();
    const check = async (d: Descriptor, what: string) => {
      if (seen.has(d.digest)) return;
      seen.add(d.digest);
      const s = await src.openBlob(d, what);
      await pipeline(s, new Writable({ write: (_c, _e, cb) => cb() }));
      blobs++;
      blobBytes += d.size;
    };
    if (img.original) {
      await check(img.original.manifest.config, 'original config');
      for (const [i, l] of img.original.manifest.layers.entries()) await check(l, `original layer ${i}`);
    }
    await check(c.manifest.manifest.config, 'chunked config');
    for (const l of c.manifest.manifest.layers) await check(l, `chunked layer ${l.digest}`);
    // every chunk: decompress its frame and compare its digest
    const reader = new ChunkReader(c, opts.threads ?? 0);
    let chunkBytes = 0;
    try {
      const batch: number[] = [];
      let bytes = 0;
      for (let i = 0; i < c.toc.chunks.length; i++) {
        batch.push(i);
        bytes += c.toc.chunks[i].length;
        if (bytes >= 32 << 20 || i === c.toc.chunks.length - 1) {
          const got = await reader.fetch(batch);
          for (const b of got.values()) chunkBytes += b.length;
          batch.length = 0;
          bytes = 0;
        }
      }
    } finally {
      await reader.close();
    }
    const files = c.toc.layers.reduce((a, l) => a + l.entries.filter((e) => e.type === 'reg').length, 0);
    if (c.toc.chunks.length && chunkBytes !== c.toc.chunks.reduce((a, x) => a + x.length, 0)) {
      throw new OcichunkError('ECORRUPT', `${src.name}: chunk byte count mismatch`);
    }
    const content = checkContent(c, src.name);
    let matchesOriginal: boolean | undefined;
    if (opts.againstOriginal) {
      await againstOriginal(c, src.name, opts);
      matchesOriginal = true;
    }
    return {
      reference: src.name,
      blobs,
      blobBytes,
      chunks: c.toc.chunks.length,
      chunkBytes,
      files,
      ...content,
      ...(matchesOriginal !== undefined ? { matchesOriginal } : {}),
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await src.close();
  }
}

/** The TOC's content digest, and the manifest's statement of it if any (which must agree). */
function checkContent(c: ChunkedImage, name: string): { contentDigest: string; contentDigestStated: boolean } {
  const contentDigest = c.checked.contentDigest();
  const stated = c.manifest.manifest.annotations?.[ANN.contentDigest];
  if (stated !== undefined && stated !== contentDigest) {
    throw new OcichunkError('EDIGEST', `${name}: the chunked manifest states content digest ${stated}, its TOC holds files of content digest ${contentDigest}`);
  }
  return { contentDigest, contentDigestStated: stated !== undefined };
}

/**
 * The chunked image holds the original's files, exactly: its layers are derived again from the
 * original image's layers with the options the conversion recorded (the TOC's chunker, the mtime
 * clamp) and each layer's content digest compared.
 */
async function againstOriginal(c: ChunkedImage, name: string, opts: VerifyOptions): Promise<void> {
  const original = c.image.original;
  if (!original) throw new OcichunkError('ENOTFOUND', `${name}: no original image beside the chunked manifest to verify against`);
  const ann = c.manifest.manifest.annotations ?? {};
  const layers = original.manifest.layers;
  const stated = ann[ANN.sourceLayers];
  if (stated !== JSON.stringify(layers.map((l) => l.digest))) {
    throw new OcichunkError('EDIGEST', `${name}: the chunked manifest names source layers ${stated ?? '(none)'}, not the original's layers`);
  }
  if (layers.length !== c.toc.layers.length) {
    throw new OcichunkError('EDIGEST', `${name}: the TOC has ${c.toc.layers.length} layers, the original ${layers.length}`);
  }
  const epoch = ann[ANN.sourceDateEpoch];
  if (epoch !== undefined && !/^(0|[1-9][0-9]{0,15})$/.test(epoch))
    throw new OcichunkError('ECORRUPT', `${name}: source date epoch ${JSON.stringify(epoch)} is not a time`);
  const derived = await originalContentDigests(c.image.source, layers, {
    chunker: c.toc.chunker,
    ...(epoch !== undefined ? { sourceDateEpoch: Number(epoch) } : {}),
    threads: opts.threads,
    signal: opts.signal,
    progress: opts.progress,
  });
  const mine = c.checked.layerDigests();
  for (const [i, d] of derived.layers.entries()) {
    if (d !== mine[i]) {
      throw new OcichunkError(
        'EDIGEST',
        `${name}: layer ${i} (${layers[i].digest}): the TOC's files (content digest ${mine[i]}) are not the original layer's (${d})`,
      );
    }
  }
}
