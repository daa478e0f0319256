/**
 * Every chunk a conversion knows about, by digest: chunks already stored in the sink (found through
 * the TOCs of its chunked manifests) and chunks new in this conversion (spooled until packed).
 */
import { decodeToc, type Toc } from '../chunked/toc.js';
import { ANN, CMT } from '../oci/chunked-media.js';
import { parseManifestDoc } from '../oci/types.js';
import type { ImageSink } from '../transports/types.js';

/** Where a chunk's frame lives: a pack digest (stored) or the index of a pack written by this conversion. */
export interface Location {
  pack: string | number;
  off: number;
  clen: number;
  ulen: number;
  inner: number;
}

export class ChunkRegistry {
  readonly ids = new Map<string, number>();
  readonly digests: string[] = [];
  readonly lengths: number[] = [];
  readonly loc: Array<Location | undefined> = [];
  /** Offset in the spool of a new chunk's bytes (-1 for chunks that were already stored). */
  readonly spoolOff: number[] = [];
  /** Compressed length of a new chunk spooled as a finished zstd frame, or -1 if spooled raw. */
  readonly spoolClen: number[] = [];
  /** Sizes of stored packs, by digest. */
  readonly packSizes = new Map<string, number>();
  storedChunks = 0;
  /** Layers converted before with the same entry options: "<layer digest> <options>" -> TOC and layer index. */
  readonly layerCache = new Map<string, { toc: Toc; layer: number }>();

  /** Look up or add a chunk; returns its id and whether it was unknown. */
  intern(hex: string, len: number): { id: number; fresh: boolean } {
    const id = this.ids.get(hex);
    if (id !== undefined) return { id, fresh: false };
    const nid = this.digests.length;
    this.ids.set(hex, nid);
    this.digests.push(hex);
    this.lengths.push(len);
    this.loc.push(undefined);
    this.spoolOff.push(-1);
    this.spoolClen.push(-1);
    return { id: nid, fresh: true };
  }

  /** Current size, to roll back to with truncate(). */
  mark(): number {
    return this.digests.length;
  }

  /** Forget every chunk interned after `mark`. */
  truncate(mark: number): void {
    for (let i = mark; i < this.digests.length; i++) this.ids.delete(this.digests[i]);
    this.digests.length = mark;
    this.lengths.length = mark;
    this.loc.length = mark;
    this.spoolOff.length = mark;
    this.spoolClen.length = mark;
  }

  /** Load the chunks of every chunked image already in the sink (first location wins). */
  async loadFromSink(sink: ImageSink): Promise<number> {
    const src = sink.asSource();
    for (const desc of await sink.chunkedManifests()) {
      const what = `chunked manifest ${desc.digest}`;
      const parsed = parseManifestDoc(await src.readBlob(desc, what), desc.mediaType, what);
      if (parsed.kind !== 'manifest') continue;
      const tocDesc = parsed.doc.layers.find((l) => l.mediaType === CMT.toc);
      if (!tocDesc) continue;
      const packs = parsed.doc.layers.filter((l) => l.mediaType === CMT.pack);
      let complete = true;
      for (const p of packs) if (!(await sink.hasBlob(p))) complete = false;
      if (!complete || !(await sink.hasBlob(tocDesc))) continue;
      for (const p of packs) this.packSizes.set(p.digest, p.size);
      const toc = decodeToc(await src.readBlob(tocDesc, `${what} TOC`, 1 << 30), `${what} TOC`);
      const ann = parsed.doc.annotations ?? {};
      try {
        const layers = JSON.parse(ann[ANN.sourceLayers] ?? '[]') as string[];
        if (Array.isArray(layers) && layers.length === toc.layers.length && ann[ANN.entryOptions]) {
          layers.forEach((d, j) => {
            const key = `${d} ${ann[ANN.entryOptions]}`;
            if (typeof d === 'string' && !this.layerCache.has(key)) this.layerCache.set(key, { toc, layer: j });
          });
        }
      } catch {
        // a manifest without a usable layer list only contributes its chunks
      }
      for (const [hex, fi, inner, len] of toc.chunks) {
        if (this.ids.has(hex)) continue;
        const [pi, off, clen, ulen] = toc.frames[fi];
        const { id } = this.intern(hex, len);
        this.loc[id] = { pack: toc.packs[pi], off, clen, ulen, inner };
        this.storedChunks++;
      }
    }
    return this.storedChunks;
  }
}
