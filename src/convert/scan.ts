/**
 * Pass 1 over a layer: the native scan (crates/core/src/tarscan.rs) undoes compression, parses the
 * tar into canonical entries and cuts and hashes file contents in batches; the layer's draft
 * (crates/core/src/format/build.rs) collects entries and chunks, and here chunks are deduplicated.
 * In sorted mode (one pass) new chunks go straight to the packer, but those of files the layer's
 * order puts before canonically smaller ones wait in the spool until their turn; otherwise they go
 * to a spool file and pass 2 packs them in canonical order.
 */
import fs from 'node:fs';
import { OcichunkError } from '../errors.js';
import type { Readable } from 'node:stream';
import type { CanonOptions } from '../layer/entry.js';
import { native, type ChunkerSpec, type NativeLayerDraft, type PageBuffers, type Routing, type ScanBatch, type ScanStep } from '../native/index.js';
import type { Packer } from './packer.js';
import type { ChunkIndex } from './chunk-index.js';
import { throwIfAborted } from '../util/abort.js';

/**
 * Bytes of file contents per scan batch and per batch of frames compressed together. Memory is a
 * few batches deep (the scan's buffers, the frames being compressed and written), so this sets
 * convert's memory; output never depends on it. 1 MiB batches, up to PIPELINE_BATCHES of them in
 * flight at each stage, converted `big` as fast as 2 MiB ones two deep and peaked 8 MiB lower
 * (118 against 127 MiB; 8 MiB batches were no faster and peaked 80 MiB higher: benchmarks/rss.sh).
 */
export const DEFAULT_BATCH_BYTES = 1 << 20;

/** Scan batches absorbed ahead of the one placed, and compressed batches outstanding (compressing or being written). */
export const PIPELINE_BATCHES = 4;

/** Thrown in sorted mode when an entry arrives that one pass cannot place in canonical order. */
export class OutOfOrder extends Error {
  constructor(readonly path: string) {
    super(`entry ${path} is out of canonical order`);
  }
}

/** A layer blob as a stream, or as a local file the native scan reads (and verifies) itself. */
export type LayerInput = { stream: Readable } | { file: string; digest: string; size: number };

interface Seg {
  /** the tar header (of the layer) whose content it is */
  header: number;
  start: number;
  len: number;
  /** the file's content ends here */
  eof: boolean;
}

/** A scan batch's chunks: how many per segment, their lengths and binary SHA-256s, in order. */
interface ChunkRows {
  counts: Uint32Array;
  lengths: Uint32Array;
  digests: Buffer;
}

interface Batch {
  buf: Buffer;
  segs: Seg[];
}

export interface ScanOptions extends CanonOptions {
  chunker: ChunkerSpec;
  threads: number;
  batchBytes: number;
  /** the size from which a chunk is its own frame (spool mode may compress those at once) */
  groupBelow: number;
  /** checked between batches: a canceled scan stops within one batch */
  signal?: AbortSignal;
}

/** How the options shape canonical entries: mtimes kept, unless clamped to `sourceDateEpoch`. */
export function canonOf(sourceDateEpoch: number | undefined): CanonOptions {
  return { sourceDateEpoch: sourceDateEpoch ?? 0, keepMtime: sourceDateEpoch === undefined };
}

export class Spool {
  private fd: number;
  size = 0;
  constructor(readonly file: string) {
    this.fd = fs.openSync(file, 'w+', 0o600);
  }
  /** Reserve room at the end and write there on a libuv thread; buf must stay untouched until it resolves. */
  append(buf: Buffer, off: number, len: number): { at: number; written: Promise<void> } {
    const at = this.size;
    this.size += len;
    const written = (async () => {
      let done = 0;
      while (done < len) {
        const n = await new Promise<number>((resolve, reject) =>
          fs.write(this.fd, buf, off + done, len - done, at + done, (e, w) => (e ? reject(e) : resolve(w))),
        );
        done += n;
      }
    })();
    return { at, written };
  }
  readInto(buf: Buffer, off: number, len: number, pos: number): void {
    let done = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, buf, off + done, len - done, pos + done);
      if (n === 0) throw new OcichunkError('EIO', `spool ${this.file}: short read`);
      done += n;
    }
  }
  close(): void {
    fs.closeSync(this.fd);
    fs.rmSync(this.file, { force: true });
  }
}

export interface ScanStats {
  newChunks: number;
  newChunkBytes: number;
}

export class LayerScanner {
  /** Every batch taken so far has been absorbed (chunks interned, placed or spooled), in order. */
  private placed: Promise<void> = Promise.resolve();
  readonly stats: ScanStats = { newChunks: 0, newChunkBytes: 0 };
  /** spool mode: where a batch's big chunks are compressed, reused batch after batch (absorbed one at a time) */
  private frames: PageBuffers | undefined;
  /** the layer's entries and their chunks (canonical order checked in sorted mode) */
  readonly draft: NativeLayerDraft;
  /** sorted mode: the last segment absorbed ended its file (the next chunk begins another) */
  private fileEnded = false;
  /** sorted mode: the tar header of the last segment absorbed, and whether its content is held */
  private current = -1;
  private heldNow = false;

  /**
   * sorted mode (packer and spool given): the layer is expected in canonical order or in the byte
   * order of whole paths; new chunks go straight to the packer or wait in the spool until the draft
   * releases them (crates/core/src/format/sequence.rs), and OutOfOrder is thrown at the first entry
   * one pass cannot place in canonical order. spool mode (no packer): new chunks are spooled for a
   * second pass in canonical order. Neither: chunks are only hashed and named (what a content
   * digest needs).
   */
  constructor(
    private readonly opts: ScanOptions,
    private readonly chunkIndex: ChunkIndex,
    private readonly spool?: Spool,
    private readonly packer?: Packer,
    /** spool mode: compresses big chunks at once, as their frames will be (else they are spooled raw) */
    private readonly ahead?: Pick<Packer, 'compressAlone'>,
  ) {
    this.draft = native.layerDraft(!!packer);
  }

  /**
   * Read a layer blob (tar, gzip'd or zstd'd). The native scan undoes compression, parses the tar,
   * cuts and hashes file contents off the JS thread; batches come back in order and are absorbed
   * here while the next ones are read.
   */
  async scan(input: LayerInput, layer: string): Promise<NativeLayerDraft> {
    const inFlight: Array<Promise<void>> = [];
    const scanner = native.layerScanner('auto', this.opts.chunker, this.opts.batchBytes, this.opts.threads, undefined, {
      sourceDateEpoch: this.opts.sourceDateEpoch,
      keepMtime: this.opts.keepMtime,
    });
    const take = (b: ScanBatch) => {
      this.draft.addEntries(b.headers, b.entries);
      const segs: Seg[] = [];
      for (let i = 0; i < b.segs.length; i += 4) segs.push({ header: b.segs[i], start: b.segs[i + 1], len: b.segs[i + 2], eof: b.segs[i + 3] === 1 });
      const buf = scanner.bytes(b);
      const batch: Batch = { buf, segs };
      const done = this.placed.then(() => this.absorb(batch, b)).then(() => scanner.done(b));
      done.catch(() => {}); // surfaced by the awaits below
      this.placed = done;
      inFlight.push(done);
    };
    type Sized = { digest: string; size: number };
    const mismatch = (want: Sized, got: Sized) =>
      new OcichunkError(
        'EDIGEST',
        `${layer}: digest mismatch: expected ${want.digest} (${want.size} bytes), content hashes to ${got.digest} (${got.size} bytes)`,
      );
    const pace = async (batches: ScanBatch[]) => {
      throwIfAborted(this.opts.signal, layer);
      for (const b of batches) take(b);
      while (inFlight.length > PIPELINE_BATCHES) await inFlight.shift();
    };
    try {
      if ('file' in input) {
        // the native scan reads and hashes the file itself, on its own thread
        try {
          scanner.openFile(input.file);
        } catch (e) {
          if ((e as OcichunkError).code === 'ENOTFOUND') throw new OcichunkError('ENOTFOUND', `${layer}: blob ${input.digest} is missing (${input.file})`);
          throw e;
        }
      } else {
        scanner.openStream();
        // a piece not accepted waits for the batches returned with it to be released
        const offer = async (f: () => Promise<ScanStep>) => {
          for (let r = await f(); ; r = await f()) {
            await pace(r.batches);
            if (r.accepted) return;
          }
        };
        for await (const piece of input.stream as AsyncIterable<Buffer>) await offer(() => scanner.push(piece));
        await offer(() => scanner.end());
      }
      for (let eof = false; !eof; ) {
        const r = await scanner.pull();
        await pace(r.batches);
        eof = r.eof;
      }
      if ('file' in input) {
        const got = scanner.fileDigest()!;
        if (got.size !== input.size) {
          throw new OcichunkError(
            'EDIGEST',
            `${layer}: blob ${input.digest} ${got.size < input.size ? 'is truncated' : 'is larger than its descriptor'}: ${got.size} of ${input.size} bytes`,
          );
        }
        if (got.digest !== input.digest) throw mismatch(input, got);
      }
      for (const b of (await scanner.finish()).batches) take(b);
      await this.placed;
      if (this.packer) {
        // one pass: what is still held leaves at the layer's end
        const rest = this.draft.releaseRest();
        if (rest.late !== undefined) throw new OutOfOrder(rest.late);
        await this.release(rest, 0, rest.fileStarts.length);
      }
      return this.draft;
    } catch (e) {
      await this.placed.catch(() => {});
      // content that does not parse may simply not be the blob the descriptor names: say so
      if ('file' in input && !(e instanceof OcichunkError && e.code === 'EDIGEST') && !(e instanceof OutOfOrder)) {
        const h = await native.hashFile(input.file).catch(() => undefined);
        if (h && (h.digest !== input.digest || h.size !== input.size)) throw mismatch(input, h);
      }
      throw e;
    } finally {
      scanner.close();
      this.frames?.release();
      if ('stream' in input && !input.stream.destroyed) input.stream.destroy();
    }
  }

  /** The batch's chunks in the chunk index: their ids, and which of them it did not know. */
  private intern(b: Batch, r: ChunkRows): ReturnType<ChunkIndex['internAll']> {
    let n = 0;
    for (let si = 0; si < b.segs.length; si++) n += r.counts[si];
    const interned = this.chunkIndex.internAll(r.digests.subarray(0, n * 32), r.lengths.subarray(0, n));
    // each file's chunks, in order (batches are absorbed in order)
    this.draft.addChunks(
      Uint32Array.from(b.segs, (s) => s.header),
      r.counts.subarray(0, b.segs.length),
      interned.ids,
    );
    return interned;
  }

  private async absorb(b: Batch, r: ChunkRows): Promise<void> {
    if (this.packer) return this.absorbSorted(b, r);
    if (!this.spool) {
      this.intern(b, r);
      return;
    }
    const { ids, fresh } = this.intern(b, r);
    const all: Array<[number, number]> = [];
    for (let si = 0, ci = 0; si < b.segs.length; ci += r.counts[si], si++) all.push([si, ci]);
    await this.spoolSegs(b, r, ids, fresh, all);
  }

  /**
   * Spool the new chunks of segments `segs` (`[segment, index of its first chunk]`): large ones
   * become frames of their own whatever the order, so they are compressed now (while the scan goes
   * on) when `ahead` is given, and their frames spooled; small ones are spooled raw, to be grouped
   * when they are placed.
   */
  private async spoolSegs(b: Batch, r: ChunkRows, ids: Uint32Array, fresh: (ci: number) => boolean, segs: Array<[number, number]>): Promise<void> {
    if (!segs.length) return;
    const spool = this.spool!;
    const writes: Array<Promise<void>> = [];
    const bigParts: number[] = [];
    const bigIds: number[] = [];
    for (const [si, first] of segs) {
      const s = b.segs[si];
      let ci = first;
      let pos = s.start;
      let runStart = -1;
      let runLen = 0;
      const pendingIds: number[] = [];
      const flushRun = () => {
        if (runLen > 0) {
          const { at, written } = spool.append(b.buf, runStart, runLen);
          writes.push(written);
          // assign spool offsets to the chunks in this run
          let o = at;
          for (const id of pendingIds) {
            this.chunkIndex.setSpool(id, o);
            o += this.chunkIndex.length(id);
          }
        }
        pendingIds.length = 0;
        runStart = -1;
        runLen = 0;
      };
      for (let k = 0; k < r.counts[si]; k++, ci++) {
        const len = r.lengths[ci];
        const id = ids[ci];
        if (fresh(ci) && len >= this.opts.groupBelow && this.ahead) {
          this.stats.newChunks++;
          this.stats.newChunkBytes += len;
          bigParts.push(pos, len);
          bigIds.push(id);
        } else if (fresh(ci)) {
          this.stats.newChunks++;
          this.stats.newChunkBytes += len;
          if (runStart === -1 || runStart + runLen !== pos) {
            flushRun();
            runStart = pos;
          }
          runLen += len;
          pendingIds.push(id);
        }
        pos += len;
      }
      flushRun();
    }
    if (bigIds.length) {
      const parts = new Uint32Array(bigParts);
      // zstd's bound for each frame, with room to spare
      let bound = 0;
      for (let k = 1; k < bigParts.length; k += 2) bound += bigParts[k] + (bigParts[k] >>> 7) + 1024;
      if (!this.frames || this.frames.buffers[0].length < bound) {
        this.frames?.release();
        this.frames = native.pageBuffers(1, Math.max(bound, this.opts.batchBytes + (this.opts.batchBytes >>> 7)));
      }
      const out = this.frames.buffers[0];
      const sizes = await this.ahead!.compressAlone(b.buf, parts, out);
      const total = sizes.reduce((a, n) => a + n, 0);
      const { at, written } = spool.append(out, 0, total);
      writes.push(written);
      let o = at;
      bigIds.forEach((id, k) => {
        this.chunkIndex.setSpool(id, o, sizes[k]);
        o += sizes[k];
      });
    }
    await Promise.all(writes);
  }

  /**
   * One pass: a batch's chunks are placed as they come, but those of files the layer's order puts
   * before canonically smaller ones are held in the spool until the draft releases them
   * (crates/core/src/format/sequence.rs), then placed from there, so that placements follow
   * canonical order.
   */
  private async absorbSorted(b: Batch, r: ChunkRows): Promise<void> {
    const { ids, fresh } = this.intern(b, r);
    // the headers whose contents begin in this batch (not a file continued from the batch before)
    const begun: number[] = [];
    for (let si = 0, prev = this.current; si < b.segs.length; si++) {
      if (b.segs[si].header !== prev) begun.push((prev = b.segs[si].header));
    }
    const routing = this.draft.route(Uint32Array.from(begun));
    if (routing.late !== undefined) throw new OutOfOrder(routing.late);
    // placed now: chunk ids and their positions in the batch (`from` to `n` not placed yet), and
    // the indices of files' first chunks among those
    const now = new Uint32Array(ids.length);
    const positions = new Uint32Array(ids.length);
    let from = 0;
    let n = 0;
    let starts: number[] = [];
    const placeNow = async () => {
      if (n === from) return;
      const [a, p, st] = [now.subarray(from, n), positions.subarray(from, n), Uint32Array.from(starts)];
      from = n;
      starts = [];
      await this.packer!.placeAll(a, p, b.buf, st);
    };
    const held: Array<[number, number]> = [];
    let released = 0;
    let ci = 0;
    for (let si = 0, ni = -1; si < b.segs.length; ci += r.counts[si], si++) {
      const s = b.segs[si];
      if (s.header !== this.current) {
        ni++;
        this.current = s.header;
        this.heldNow = routing.routes[ni] === 1;
        const upTo = routing.releasedBefore[ni];
        if (upTo > released) {
          // what this batch held so far goes to the spool first: a release may take it
          await placeNow();
          await this.spoolSegs(b, r, ids, fresh, held.splice(0));
          await this.release(routing, released, upTo);
          released = upTo;
        }
      }
      if (this.heldNow) {
        held.push([si, ci]);
        continue;
      }
      let pos = s.start;
      // a file's first chunk (a segment after one that ended its file) follows a file boundary
      if (this.fileEnded && r.counts[si] > 0) {
        starts.push(n - from);
        this.fileEnded = false;
      }
      if (s.eof) this.fileEnded = true;
      for (let k = 0, c = ci; k < r.counts[si]; k++, c++) {
        const len = r.lengths[c];
        if (fresh(c)) {
          this.stats.newChunks++;
          this.stats.newChunkBytes += len;
        }
        now[n] = ids[c];
        positions[n++] = pos;
        pos += len;
      }
    }
    // the pack writer takes the chunks it has not placed yet, in order
    await placeNow();
    await this.spoolSegs(b, r, ids, fresh, held);
  }

  /** One pass: place released files `from` to `to` of `routing` from the spool. */
  private async release(routing: Routing, from: number, to: number): Promise<void> {
    if (to <= from) return;
    const base = routing.fileStarts[from];
    const end = to < routing.fileStarts.length ? routing.fileStarts[to] : routing.chunks.length;
    const starts = routing.fileStarts.slice(from, to).map((x) => x - base);
    await this.packer!.placeFromSpool(routing.chunks.subarray(base, end), starts, this.spool!);
    // the next file placed as it comes follows a boundary
    this.fileEnded = true;
  }
}
