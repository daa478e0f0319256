/**
 * Every chunk a conversion knows about, by digest: chunks already stored in the sink (found through
 * the TOCs of its chunked manifests) and chunks new in this conversion (spooled until packed).
 *
 * Kept off the JS heap in typed arrays (about 70 bytes per chunk: the 32-byte digest, length,
 * location, spool offsets and an open-addressing hash slot), so that millions of chunks, which
 * `analyze` meets on large corpora, cost neither a Map entry and a hex string each nor GC time.
 */
import { decodeToc, TOC_MAX_BLOB, type Toc } from '../chunked/toc.js';
import { OcichunkError } from '../errors.js';
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

const EMPTY = -1;
const TOMB = -2;
/** locPack values below 0 */
const NO_LOC = -1;
const CLAIMED = -2;

function grow<T extends Uint8Array | Uint32Array | Int32Array | Float64Array>(a: T, n: number, fill?: number): T {
  if (a.length >= n) return a;
  let cap = Math.max(1024, a.length);
  while (cap < n) cap *= 2;
  const b = new (a.constructor as new (n: number) => T)(cap);
  b.set(a);
  if (fill !== undefined) b.fill(fill, a.length);
  return b;
}

export class ChunkIndex {
  private n = 0;
  private dig = new Uint8Array(0);
  private len = new Uint32Array(0);
  private locPack = new Int32Array(0);
  private locOff = new Float64Array(0);
  private locClen = new Uint32Array(0);
  private locUlen = new Uint32Array(0);
  private locInner = new Uint32Array(0);
  private spoolAt = new Float64Array(0);
  private spoolC = new Int32Array(0);
  /** slot -> id, EMPTY or TOMB; keyed by the digest's first 4 bytes */
  private slots = new Int32Array(1 << 12).fill(EMPTY);
  private used = 0;
  /** Pack table: digests of stored packs, or indexes of packs this conversion writes (until resolved). */
  private packs: Array<string | number> = [];
  private packKey = new Map<string | number, number>();
  private scratch = Buffer.alloc(32);
  /** 1: the location was read from a destination's TOC and is not known good yet (convert/trust.ts) */
  private foreign = new Uint8Array(0);

  /** Sizes of stored packs, by digest. */
  readonly packSizes = new Map<string, number>();
  storedChunks = 0;
  /**
   * Layers converted before with the same entry options: "<layer digest> <options>" -> candidates
   * (the TOC blob, compressed and decoded only when the layer comes again, and the layer's index in
   * it), the ones this process derived first.
   */
  readonly layerCache = new Map<string, Array<{ tocBlob: Buffer; layer: number; what: string; trusted: boolean }>>();

  get size(): number {
    return this.n;
  }

  /** Home slot of a digest: its first 4 bytes (uniformly random) masked to the table size. */
  private home(d: Uint8Array, off: number): number {
    return (d[off] | (d[off + 1] << 8) | (d[off + 2] << 16) | (d[off + 3] << 24)) & (this.slots.length - 1);
  }

  private find(d: Uint8Array, off: number): number {
    const mask = this.slots.length - 1;
    let s = this.home(d, off);
    for (;;) {
      const id = this.slots[s];
      if (id === EMPTY) return -1 - s;
      if (id !== TOMB) {
        const o = id * 32;
        let k = 0;
        while (k < 32 && this.dig[o + k] === d[off + k]) k++;
        if (k === 32) return id;
      }
      s = (s + 1) & mask;
    }
  }

  private rehash(cap: number): void {
    this.slots = new Int32Array(cap).fill(EMPTY);
    this.used = 0;
    for (let id = 0; id < this.n; id++) {
      const f = this.find(this.dig, id * 32);
      this.slots[-1 - f] = id;
      this.used++;
    }
  }

  /** Look up or add a chunk by its binary SHA-256 at d[off, off+32); returns its id and whether it was unknown. */
  internRaw(d: Uint8Array, off: number, length: number): { id: number; fresh: boolean } {
    const f = this.find(d, off);
    if (f >= 0) return { id: f, fresh: false };
    if ((this.used + 1) * 2 > this.slots.length) {
      this.rehash(this.slots.length * 2);
      return this.internRaw(d, off, length);
    }
    const id = this.n++;
    this.dig = grow(this.dig, this.n * 32);
    this.dig.set(d.subarray(off, off + 32), id * 32);
    this.len = grow(this.len, this.n);
    this.locPack = grow(this.locPack, this.n, NO_LOC);
    this.locOff = grow(this.locOff, this.n);
    this.locClen = grow(this.locClen, this.n);
    this.locUlen = grow(this.locUlen, this.n);
    this.locInner = grow(this.locInner, this.n);
    this.spoolAt = grow(this.spoolAt, this.n, -1);
    this.foreign = grow(this.foreign, this.n);
    this.foreign[id] = 0;
    this.spoolC = grow(this.spoolC, this.n, -1);
    this.len[id] = length;
    this.locPack[id] = NO_LOC;
    this.spoolAt[id] = -1;
    this.spoolC[id] = -1;
    this.slots[-1 - f] = id;
    this.used++;
    return { id, fresh: true };
  }

  /** Look up or add a chunk by hex digest. */
  intern(hex: string, length: number): { id: number; fresh: boolean } {
    if (this.scratch.write(hex, 'hex') !== 32) throw new OcichunkError('ECORRUPT', `invalid chunk digest ${JSON.stringify(hex)}`);
    return this.internRaw(this.scratch, 0, length);
  }

  /** Id of a known chunk (hex digest), or undefined. */
  lookup(hex: string): number | undefined {
    if (this.scratch.write(hex, 'hex') !== 32) return undefined;
    const f = this.find(this.scratch, 0);
    return f >= 0 ? f : undefined;
  }

  hex(id: number): string {
    return Buffer.from(this.dig.buffer, this.dig.byteOffset + id * 32, 32).toString('hex');
  }

  length(id: number): number {
    return this.len[id];
  }

  /** Not placed yet (neither stored nor claimed by this conversion). */
  unplaced(id: number): boolean {
    return this.locPack[id] === NO_LOC;
  }

  /** Taken by this conversion: its frame is being written. */
  claim(id: number): void {
    this.locPack[id] = CLAIMED;
  }

  unclaim(id: number): void {
    this.locPack[id] = NO_LOC;
  }

  private packRef(p: string | number): number {
    let i = this.packKey.get(p);
    if (i === undefined) {
      i = this.packs.length;
      this.packs.push(p);
      this.packKey.set(p, i);
    }
    return i;
  }

  setLoc(id: number, loc: Location): void {
    this.locPack[id] = this.packRef(loc.pack);
    this.locOff[id] = loc.off;
    this.locClen[id] = loc.clen;
    this.locUlen[id] = loc.ulen;
    this.locInner[id] = loc.inner;
  }

  /** The chunk's location came from a destination's TOC and was not verified yet. */
  isForeign(id: number): boolean {
    return this.foreign[id] === 1;
  }

  /** Its location is known good now. */
  trustLoc(id: number): void {
    this.foreign[id] = 0;
  }

  /** Where the chunk's frame is, or undefined if it is not placed (or only claimed). */
  loc(id: number): Location | undefined {
    const p = this.locPack[id];
    if (p < 0) return undefined;
    return { pack: this.packs[p], off: this.locOff[id], clen: this.locClen[id], ulen: this.locUlen[id], inner: this.locInner[id] };
  }

  spoolOff(id: number): number {
    return this.spoolAt[id];
  }
  spoolClen(id: number): number {
    return this.spoolC[id];
  }
  setSpool(id: number, off: number, clen = -1): void {
    this.spoolAt[id] = off;
    this.spoolC[id] = clen;
  }

  /** Packs written by a conversion got their digests: later conversions see them as stored. */
  resolvePacks(written: Array<{ digest: string; size: number }>): void {
    written.forEach((p, n) => {
      const i = this.packKey.get(n);
      if (i === undefined) return;
      this.packKey.delete(n);
      const existing = this.packKey.get(p.digest);
      this.packs[i] = p.digest;
      if (existing === undefined) this.packKey.set(p.digest, i);
      this.packSizes.set(p.digest, p.size);
    });
  }

  /** Current size, to roll back to with truncate(). */
  mark(): number {
    return this.n;
  }

  /** Forget every chunk interned after `mark`. */
  truncate(mark: number): void {
    for (let id = mark; id < this.n; id++) {
      this.slots[this.slotOf(id)] = TOMB;
    }
    this.n = Math.min(this.n, mark);
  }

  private slotOf(id: number): number {
    const mask = this.slots.length - 1;
    let s = this.home(this.dig, id * 32);
    while (this.slots[s] !== id) s = (s + 1) & mask;
    return s;
  }

  /**
   * Remember a converted layer, so that the same layer digest need not be read again. `trusted`:
   * this process derived it from the layer (else a converter checks it first: layer-trust.ts).
   */
  rememberLayers(layerDigests: string[], entryOptions: string, tocBlob: Buffer, what: string, trusted: boolean): void {
    layerDigests.forEach((d, j) => {
      const key = `${d} ${entryOptions}`;
      const c = { tocBlob, layer: j, what, trusted };
      const list = this.layerCache.get(key);
      if (!list) this.layerCache.set(key, [c]);
      else if (trusted) list.unshift(c);
      else list.push(c);
    });
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
      if (tocDesc.size > TOC_MAX_BLOB) continue;
      const tocBlob = await src.readBlob(tocDesc, `${what} TOC`, TOC_MAX_BLOB);
      let toc: Toc;
      try {
        toc = decodeToc(tocBlob, `${what} TOC`);
      } catch {
        continue; // a TOC that breaks the format's rules contributes nothing
      }
      const ann = parsed.doc.annotations ?? {};
      try {
        const layers = JSON.parse(ann[ANN.sourceLayers] ?? '[]') as string[];
        if (Array.isArray(layers) && layers.length === toc.layers.length && ann[ANN.entryOptions] && layers.every((d) => typeof d === 'string')) {
          this.rememberLayers(layers, ann[ANN.entryOptions], tocBlob, `${what} TOC`, false);
        }
      } catch {
        // a manifest without a usable layer list only contributes its chunks
      }
      for (const { digest: hex, frame: fi, offset: inner, length: len } of toc.chunks) {
        const { id, fresh } = this.intern(hex, len);
        if (!fresh) continue;
        const { pack: pi, offset: off, compressedLength: clen, length: ulen } = toc.frames[fi];
        this.setLoc(id, { pack: toc.packs[pi], off, clen, ulen, inner });
        this.foreign[id] = 1;
        this.storedChunks++;
      }
    }
    return this.storedChunks;
  }
}
