/** Re-hash every blob and every chunk of a chunked image and check every reference. */
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { ChunkReader } from './chunked/content.js';
import { openChunked, resolveImage } from './chunked/image.js';
import { OcichunkError } from './errors.js';
import { TocError } from './chunked/toc.js';
import type { Descriptor, Platform } from './oci/types.js';
import { openSource, type TransportOptions } from './ref.js';

export interface VerifyResult {
  reference: string;
  blobs: number;
  blobBytes: number;
  chunks: number;
  chunkBytes: number;
  files: number;
  seconds: number;
}

export async function verify(ref: string, opts: { platform?: Platform; threads?: number; transport?: TransportOptions } = {}): Promise<VerifyResult> {
  const t0 = performance.now();
  const src = await openSource(ref, opts.transport);
  try {
    const img = await resolveImage(src, opts.platform);
    const c = await openChunked(img).catch((e: unknown) => {
      // every violation of the format's rules, not only the first
      throw e instanceof TocError ? new TocError(src.name, e.violations, e.more, true) : e;
    });
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
    return { reference: src.name, blobs, blobBytes, chunks: c.toc.chunks.length, chunkBytes, files, seconds: (performance.now() - t0) / 1000 };
  } finally {
    await src.close();
  }
}
