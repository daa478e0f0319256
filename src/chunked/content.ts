/**
 * Reads chunk bytes out of pack blobs: adjacent frames are read with one positional read, frames are
 * decompressed in one native batch, and every chunk is re-hashed and compared with its digest before
 * anyone sees it.
 */
import { OcichunkError } from '../errors.js';
import { native } from '../native/index.js';
import { mapLimit } from '../util/limit.js';
import type { RangeReader } from '../store/blobstore.js';
import type { ChunkedImage } from './image.js';
import { addDigestSection } from './toc.js';

/** Where a lazy reader keeps digest table sections: content-addressed, like chunks (the chunk cache). */
export interface SectionCache {
  get(hex: string): Promise<Buffer | undefined>;
  /** store sections (checked by the caller), off this thread */
  putMany(hexes: string[], bytes: Buffer[]): Promise<unknown>;
}

/** Digest table sections that may lie between two wanted ones in one range (read and used too). */
const SECTION_GAP = 2;

export class ChunkReader {
  private readers = new Map<number, Promise<RangeReader>>();
  private digestReader: Promise<RangeReader> | undefined;
  /**
   * sections being loaded: a second read of the same section waits for the first; `local` settles
   * once the section cache was asked, `done` once the section is loaded (or fetched)
   */
  private sectionsLoading = new Map<number, { local: Promise<void>; done: Promise<void> }>();
  bytesRead = 0;
  framesRead = 0;
  /** digest table bytes fetched (sections; a lazy reader's) */
  digestBytesRead = 0;
  /** bytes of dictionary frames read (counted in bytesRead too) */
  dictBytesRead = 0;
  private dictsLoading = new Map<number, Promise<void>>();
  /** where digest table sections are kept between runs (a lazy reader's chunk cache) */
  sectionCache: SectionCache | undefined;
  /** a section cache write failed (they run in the background: reads never wait for them) */
  onSectionCacheError: ((e: Error) => void) | undefined;
  /** section cache writes under way (settle() waits for them) */
  private readonly sectionWrites = new Set<Promise<unknown>>();

  constructor(
    private readonly img: ChunkedImage,
    private readonly threads = 0,
    /** Positional reads in flight at once (they are HTTP requests for registry sources). */
    private readonly concurrency = 8,
    /** Bytes between two wanted frames of a pack that may be read to save a request. */
    // (16 KiB: a quarter of a frame; wider gaps cost more bytes than a request in parallel saves)
    private readonly maxGap = img.image.source.remote ? 16 << 10 : 0,
  ) {}

  private reader(pi: number): Promise<RangeReader> {
    let r = this.readers.get(pi);
    if (!r) {
      r = this.img.image.source.openRanges(this.img.packs[pi]);
      this.readers.set(pi, r);
    }
    return r;
  }

  /**
   * Read the compressed bytes of the given frames (TOC frame indices, in pack order): adjacent
   * frames of a pack with one positional read. `at[k]`: where frame `frames[k]` starts in `comp`.
   */
  async readFrames(frames: ArrayLike<number>): Promise<{ comp: Buffer; at: Uint32Array }> {
    const toc = this.img.toc;
    const at = new Uint32Array(frames.length);
    let cpos = 0;
    // coalesce reads of frames adjacent in the same pack; run the reads concurrently (remote packs)
    const runs: Array<{ pi: number; off: number; end: number; cpos: number }> = [];
    let i = 0;
    while (i < frames.length) {
      const { pack: pi, offset: off } = toc.frames[frames[i]];
      let j = i;
      let end = off;
      // frames that follow within `maxGap` bytes join the run (the gap is read and dropped): one
      // request instead of several for remote packs
      while (j < frames.length && toc.frames[frames[j]].pack === pi) {
        const { offset: fo, compressedLength: fc } = toc.frames[frames[j]];
        if (fo < end || fo - end > (j === i ? 0 : this.maxGap)) break;
        end = fo + fc;
        j++;
      }
      if (j === i) {
        // overlapping or duplicate offsets: read this frame alone
        end = off + toc.frames[frames[i]].compressedLength;
        j = i + 1;
      }
      runs.push({ pi, off, end, cpos });
      for (let k = i; k < j; k++) at[k] = cpos + (toc.frames[frames[k]].offset - off);
      cpos += end - off;
      i = j;
    }
    const comp = Buffer.allocUnsafe(cpos);
    await mapLimit(runs, this.concurrency, async (run) => {
      const r = await this.reader(run.pi);
      const data = await r.read(run.off, run.end - run.off);
      data.copy(comp, run.cpos);
      this.bytesRead += data.length;
    });
    this.framesRead += frames.length;
    return { comp, at };
  }

  /**
   * Load the digests of these chunks where they are not loaded (a version 2 TOC opened with
   * `lazyDigests`): their digest table sections from the section cache, else (unless `localOnly`)
   * fetched from the digest table blob, adjacent sections in one range, each checked against the
   * TOC before use. Returns the chunks whose digest is still unknown (only with `localOnly`).
   */
  async loadDigests(chunkIdxs: Iterable<number>, localOnly = false): Promise<number[]> {
    const { checked } = this.img;
    const chunks = Uint32Array.from(chunkIdxs);
    for (;;) {
      const others: Array<Promise<void>> = [];
      const todo: number[] = [];
      for (const i of checked.missingDigestSections(chunks)) {
        const p = this.sectionsLoading.get(i);
        // a local look-up never waits for a fetch: its caller fetches the chunks (and waits there)
        if (p) others.push(localOnly ? p.local : p.done);
        else todo.push(i);
      }
      const waits = [...others];
      if (todo.length) {
        const { local, done } = this.loadSections(todo, localOnly);
        for (const i of todo) {
          const p = { local: local.catch(() => {}), done: done.then(() => {}) };
          this.sectionsLoading.set(i, p);
          p.done.catch(() => {}).finally(() => this.sectionsLoading.delete(i));
        }
        waits.push(done);
      }
      await Promise.all(waits);
      // a load this one waited for may have looked in the section cache only: fetch what it left
      if (localOnly || !others.length) break;
    }
    return localOnly ? [...chunks].filter((c) => !this.img.toc.chunks[c].digest) : [];
  }

  private loadSections(sections: number[], localOnly: boolean): { local: Promise<void>; done: Promise<void> } {
    const img = this.img;
    const opened = { checked: img.checked, toc: img.toc };
    const local = (async () => {
      const cache = this.sectionCache;
      const kept = cache ? await Promise.all(sections.map((i) => cache.get(img.checked.digestSectionHash(i)))) : [];
      const fetch: number[] = [];
      sections.forEach((i, k) => {
        if (kept[k]) addDigestSection(opened, i, kept[k]);
        else fetch.push(i);
      });
      return fetch;
    })();
    const done = local.then((fetch) => (fetch.length && !localOnly ? this.fetchSections(fetch) : undefined));
    return { local: local.then(() => {}), done };
  }

  private async fetchSections(fetch: number[]): Promise<void> {
    const img = this.img;
    const opened = { checked: img.checked, toc: img.toc };
    if (!img.digestsDesc) throw new OcichunkError('EINTERNAL', `${img.image.source.name}: chunk digests missing and no digest table`);
    this.digestReader ??= img.image.source.openRanges(img.digestsDesc);
    const reader = await this.digestReader;
    // sections in one range where at most SECTION_GAP others lie between them (read and dropped:
    // a section is 1 KiB, and every chunk of a batch waits for its section); all ranges at once
    const sorted = [...fetch].sort((a, b) => a - b);
    const runs: Array<[number, number]> = [];
    for (const i of sorted) {
      const last = runs[runs.length - 1];
      if (last && i - last[1] <= SECTION_GAP + 1) last[1] = i;
      else runs.push([i, i]);
    }
    await mapLimit(runs, Math.max(this.concurrency, 32), async ([first, lastSection]) => {
      const [off] = img.checked.digestSectionSpan(first);
      const [lastOff, lastLen] = img.checked.digestSectionSpan(lastSection);
      const data = await reader.read(off, lastOff + lastLen - off);
      this.digestBytesRead += data.length;
      const hexes: string[] = [];
      const kept: Buffer[] = [];
      for (let i = first; i <= lastSection; i++) {
        const [o, l] = img.checked.digestSectionSpan(i);
        const bytes = data.subarray(o - off, o - off + l);
        // every section read is checked and kept (those between came with the range)
        addDigestSection(opened, i, bytes);
        hexes.push(img.checked.digestSectionHash(i));
        kept.push(bytes);
      }
      // into the cache in the background: the chunks waiting for these digests do not wait for
      // the files (one native call, off this thread)
      if (this.sectionCache) {
        const w = this.sectionCache
          .putMany(hexes, kept)
          .catch((e: Error) => this.onSectionCacheError?.(e))
          .finally(() => this.sectionWrites.delete(w));
        this.sectionWrites.add(w);
      }
    });
  }

  /** Wait for the section cache writes under way. */
  async settle(): Promise<void> {
    while (this.sectionWrites.size) await Promise.all(this.sectionWrites);
  }

  /**
   * Load the dictionaries these TOC frames were compressed with (docs/format.md §5): each one's
   * frame read from its pack and decompressed, once per reader.
   */
  async loadDictionaries(frames: Iterable<number>): Promise<void> {
    const { toc, checked } = this.img;
    const waits: Array<Promise<void>> = [];
    const seen = new Set<number>();
    for (const f of frames) {
      const d = toc.frames[f].dict;
      if (d === undefined || seen.has(d) || checked.hasDictionary(d)) continue;
      seen.add(d);
      let p = this.dictsLoading.get(d);
      if (!p) {
        const { pack, offset, compressedLength, length } = toc.dicts![d];
        p = (async () => {
          const comp = await (await this.reader(pack)).read(offset, compressedLength);
          this.dictBytesRead += comp.length;
          this.bytesRead += comp.length; // pack bytes too
          let raw: Buffer;
          try {
            raw = await native.decompressFrames(comp, Uint32Array.of(0, compressedLength, length), 0);
          } catch (e) {
            throw new OcichunkError('ECORRUPT', `${this.img.image.source.name}: dictionary ${d} in pack ${toc.packs[pack]}: ${(e as Error).message}`, {
              cause: e,
            });
          }
          checked.setDictionary(d, raw);
        })();
        this.dictsLoading.set(d, p);
        p.catch(() => this.dictsLoading.delete(d));
      }
      waits.push(p);
    }
    await Promise.all(waits);
  }

  /** Fetch, decompress and verify the given chunks (TOC chunk indices). */
  async fetch(chunkIdxs: Iterable<number>): Promise<Map<number, Buffer>> {
    const toc = this.img.toc;
    const frameSet = new Set<number>();
    const wanted = [...new Set(chunkIdxs)];
    for (const c of wanted) frameSet.add(toc.chunks[c].frame);
    const frames = [...frameSet].sort((a, b) => {
      const fa = toc.frames[a];
      const fb = toc.frames[b];
      return fa.pack - fb.pack || fa.offset - fb.offset;
    });
    let totalU = 0;
    for (const f of frames) totalU += toc.frames[f].length;
    // the digests these chunks are checked against, fetched with the frames (one round trip)
    const [{ comp, at }] = await Promise.all([this.readFrames(frames), this.loadDigests(wanted), this.loadDictionaries(frames)]);
    const triplets = new Uint32Array(frames.length * 3);
    const outOff = new Map<number, number>();
    let upos = 0;
    frames.forEach((fi, k) => {
      const f = toc.frames[fi];
      triplets[k * 3] = at[k];
      triplets[k * 3 + 1] = f.compressedLength;
      triplets[k * 3 + 2] = f.length;
      outOff.set(fi, upos);
      upos += f.length;
    });
    let out: Buffer;
    try {
      out = await this.img.checked.decompressFrames(comp, triplets, Uint32Array.from(frames), this.threads);
    } catch (e) {
      throw new OcichunkError('ECORRUPT', `${this.img.image.source.name}: ${(e as Error).message}`, { cause: e });
    }
    if (out.length !== totalU)
      throw new OcichunkError('ECORRUPT', `${this.img.image.source.name}: frames decompressed to ${out.length} bytes, expected ${totalU}`);
    const ranges = new Uint32Array(wanted.length * 2);
    wanted.forEach((c, k) => {
      const { frame: fi, offset: inner, length: len } = toc.chunks[c];
      ranges[k * 2] = outOff.get(fi)! + inner;
      ranges[k * 2 + 1] = len;
    });
    const digests = await native.hashRanges(out, ranges, this.threads);
    const result = new Map<number, Buffer>();
    wanted.forEach((c, k) => {
      const { digest: hex, frame: fi } = toc.chunks[c];
      if (digests.toString('hex', k * 32, k * 32 + 32) !== hex) {
        const pack = this.img.toc.packs[toc.frames[fi].pack];
        throw new OcichunkError('EDIGEST', `${this.img.image.source.name}: chunk sha256:${hex} in pack ${pack} does not match its digest`);
      }
      result.set(c, out.subarray(ranges[k * 2], ranges[k * 2] + ranges[k * 2 + 1]));
    });
    return result;
  }

  async close(): Promise<void> {
    await this.settle();
    for (const r of this.readers.values()) await (await r).close();
    this.readers.clear();
    if (this.digestReader) await (await this.digestReader).close();
    this.digestReader = undefined;
  }
}
