/**
 * Every chunk a conversion knows about, by digest: chunks already stored in the sink (found through
 * the TOCs of its chunked manifests) and chunks new in this conversion (spooled until packed).
 *
 * The table itself is the format's chunk dictionary in the Rust core (crates/core/src/format/dict.rs:
 * ids, lengths, locations and the packs they name, spool offsets: about 90 bytes a chunk off the JS
 * heap); this class adds what is the converter's business: pack sizes, the layers converted before,
 * and reading what a destination already stores.
 */
import { TOC_MAX_BLOB } from '../chunked/toc.js';
import { OcichunkError } from '../errors.js';
import { native, type DictFrameLocation, type NativeCheckedToc, type NativeChunkDict } from '../native/index.js';
import { ANN, CMT, isTocType } from '../oci/chunked-media.js';
import { parseManifestDoc } from '../oci/types.js';
import type { ImageSink } from '../transports/types.js';

/** Where a chunk's frame lives: a pack digest (stored) or the index of a pack written by this conversion. */
export interface Location {
  pack: string | number;
  off: number;
  clen: number;
  ulen: number;
  inner: number;
  /** the dictionary the frame was compressed with: where its frame is */
  dict?: DictFrameLocation;
}

/** A TOC a conversion wrote or found, kept for the layers it converted. */
export interface ConvertedToc {
  blob: Buffer;
  digestTable?: Buffer;
  what: string;
}

/** How many opened TOCs a chunk index keeps (the layers of one image mostly come from one). */
const OPENED_TOCS = 4;

export class ChunkIndex {
  /** the native dictionary (the pack writer places chunks in it) */
  readonly dict: NativeChunkDict = native.chunkDict();

  /** Sizes of stored packs, by digest. */
  readonly packSizes = new Map<string, number>();
  /** What the sink stores was read into this index (loadFromSink): later conversions into it add to it. */
  loaded = false;
  /**
   * Layers converted before with the same entry options: "<layer digest> <options>" -> candidates
   * (the TOC blob, compressed and decoded only when the layer comes again, and the layer's index in
   * it), the ones this process derived first.
   */
  readonly layerCache = new Map<string, Array<{ toc: ConvertedToc; layer: number; trusted: boolean }>>();

  private readonly opened = new Map<ConvertedToc, NativeCheckedToc>();

  /** The TOC checked, merged and its digest table loaded; the last few opened are kept. */
  openToc(c: ConvertedToc): NativeCheckedToc {
    let t = this.opened.get(c);
    if (!t) {
      t = native.openToc(c.blob, c.what);
      if (c.digestTable) t.loadDigests(c.digestTable);
    }
    return this.keepOpened(c, t);
  }

  private keepOpened(c: ConvertedToc, t: NativeCheckedToc): NativeCheckedToc {
    this.opened.delete(c);
    if (this.opened.size >= OPENED_TOCS) this.opened.delete(this.opened.keys().next().value!);
    this.opened.set(c, t);
    return t;
  }

  get size(): number {
    return this.dict.size;
  }

  /**
   * Ids of the chunks whose binary SHA-256s lie back to back in `digests` (added with `lengths`
   * when unknown), and which of them were unknown.
   */
  internAll(digests: Uint8Array, lengths: Uint32Array): { ids: Uint32Array; fresh: (k: number) => boolean } {
    let next = this.dict.size;
    const ids = this.dict.intern(digests, lengths);
    const fresh = new Uint8Array(ids.length);
    for (let k = 0; k < ids.length; k++) {
      if (ids[k] !== next) continue;
      fresh[k] = 1;
      next++;
    }
    return { ids, fresh: (k) => fresh[k] === 1 };
  }

  hex(id: number): string {
    return this.dict.hex(id);
  }

  length(id: number): number {
    return this.dict.length(id);
  }

  /** How trust records name its location (one owner: crates/core/src/format/dict.rs `location_key`). */
  locationKey(id: number): string {
    const k = this.dict.locationKey(id);
    if (k === null) throw new OcichunkError('EINTERNAL', `chunk ${this.hex(id)} is not placed`);
    return k;
  }

  /** The trust record lines of the chunks from `from` on placed in stored packs, by pack. */
  locationKeysFrom(from: number): Array<{ pack: string; keys: string[] }> {
    return this.dict.locationKeysFrom(from);
  }

  /** Its location is known good now. */
  trustLoc(id: number): void {
    this.dict.trust(id);
  }

  /** Where the chunk's frame is, or undefined if it is not placed (or only claimed). */
  loc(id: number): Location | undefined {
    const l = this.dict.location(id);
    return l ? { pack: l.pack, off: l.offset, clen: l.compressedLen, ulen: l.len, inner: l.inner, ...(l.dict ? { dict: l.dict } : {}) } : undefined;
  }

  setSpool(id: number, off: number, clen = -1): void {
    this.dict.setSpooled(id, off, clen);
  }

  /** Packs written by a conversion got their digests: later conversions see them as stored. */
  resolvePacks(written: Array<{ digest: string; size: number }>): void {
    written.forEach((p, n) => {
      this.dict.resolveWritten(n, p.digest);
      this.packSizes.set(p.digest, p.size);
    });
  }

  /** Current size, to roll back to with truncate(). */
  mark(): number {
    return this.dict.size;
  }

  /** Forget every chunk interned after `mark`. */
  truncate(mark: number): void {
    this.dict.truncate(mark);
  }

  /**
   * Remember a converted layer, so that the same layer digest need not be read again. `trusted`:
   * this process derived it from the layer (else a converter checks it first: layer-trust.ts).
   */
  rememberLayers(layerDigests: string[], entryOptions: string, toc: ConvertedToc, trusted: boolean): void {
    layerDigests.forEach((d, j) => {
      const key = `${d} ${entryOptions}`;
      const c = { toc, layer: j, trusted };
      const list = this.layerCache.get(key);
      if (!list) this.layerCache.set(key, [c]);
      else if (trusted) list.unshift(c);
      else list.push(c);
    });
  }

  /** Load the chunks of every chunked image already in the sink (first location wins). */
  async loadFromSink(sink: ImageSink): Promise<void> {
    this.loaded = true;
    const src = sink.asSource();
    for (const desc of await sink.chunkedManifests()) {
      const what = `chunked manifest ${desc.digest}`;
      const parsed = parseManifestDoc(await src.readBlob(desc, what), desc.mediaType, what);
      if (parsed.kind !== 'manifest') continue;
      const tocDesc = parsed.doc.layers[0];
      if (!tocDesc || !isTocType(tocDesc.mediaType)) continue;
      const tableDesc = parsed.doc.layers.find((l) => l.mediaType === CMT.digests);
      const packs = parsed.doc.layers.filter((l) => l.mediaType === CMT.pack);
      let complete = true;
      for (const p of packs) if (!(await sink.hasBlob(p))) complete = false;
      if (!complete || !(await sink.hasBlob(tocDesc)) || (tableDesc && !(await sink.hasBlob(tableDesc)))) continue;
      for (const p of packs) this.packSizes.set(p.digest, p.size);
      if (tocDesc.size > TOC_MAX_BLOB || (tableDesc && tableDesc.size > TOC_MAX_BLOB)) continue;
      const tocBlob = await src.readBlob(tocDesc, `${what} TOC`, TOC_MAX_BLOB);
      const digestTable = tableDesc ? await src.readBlob(tableDesc, `${what} digest table`, TOC_MAX_BLOB) : undefined;
      let toc: NativeCheckedToc;
      try {
        // every rule of the format checked; a version 2 TOC needs its digest table: the chunks are
        // known by their digests
        toc = native.openToc(tocBlob, `${what} TOC`);
        if (digestTable) toc.loadDigests(digestTable);
        toc.addStoredChunks(this.dict);
      } catch {
        continue; // a TOC that breaks the format's rules contributes nothing
      }
      const ann = parsed.doc.annotations ?? {};
      try {
        const layers = JSON.parse(ann[ANN.sourceLayers] ?? '[]') as string[];
        if (Array.isArray(layers) && layers.length === toc.layerCount && ann[ANN.entryOptions] && layers.every((d) => typeof d === 'string')) {
          const converted = { blob: tocBlob, ...(digestTable ? { digestTable } : {}), what: `${what} TOC` };
          this.rememberLayers(layers, ann[ANN.entryOptions], converted, false);
          this.keepOpened(converted, toc);
        }
      } catch {
        // a manifest without a usable layer list only contributes its chunks
      }
    }
  }
}
