/**
 * A TOC blob written by hand from a model, the way any writer could (JSON, then zstd): tests use it
 * to give readers TOCs the converter would never write. The converter's own writer is
 * crates/core/src/format/build.rs.
 */
import type { Toc, TocWire } from '../../src/chunked/toc.js';
import type { EntryType } from '../../src/layer/entry.js';
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

/** For one path: whiteout, then the entry, then an opaque marker (docs/format.md §4). */
const RANK: Record<EntryType, number> = { whiteout: 0, reg: 1, dir: 1, symlink: 1, hardlink: 1, char: 1, block: 1, fifo: 1, opaque: 2 };

/** Canonical order, restated for tests: path bytes with '/' below every byte, then the rank. */
export function compareEntries(a: { path: string; type: EntryType }, b: { path: string; type: EntryType }): number {
  const key = (p: string) => (p === '.' ? Buffer.alloc(0) : Buffer.from(p.replaceAll('/', '\0')));
  return Buffer.compare(key(a.path), key(b.path)) || RANK[a.type] - RANK[b.type];
}
