/**
 * A TOC blob written by hand from a model, the way any writer could (JSON, then zstd): tests use it
 * to give readers TOCs the converter would never write. The converter's own writer is
 * crates/core/src/format/build.rs.
 */
import type { Toc, TocWire } from '../../src/chunked/toc.js';
import { native } from '../../src/native/index.js';

export function tocBlob(t: Toc, level = 3): Buffer {
  const wire: TocWire = {
    version: t.version,
    chunker: t.chunker,
    packs: t.packs,
    frames: t.frames.map((f) => [f.pack, f.offset, f.compressedLength, f.length]),
    chunks: t.chunks.map((c) => [c.digest, c.frame, c.offset, c.length]),
    layers: t.layers,
    ...(t.prefetch ? { prefetch: t.prefetch } : {}),
  };
  return native.compressSync(Buffer.from(JSON.stringify(wire)), level);
}
