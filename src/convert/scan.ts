/**
 * Pass 1 over a layer: canonicalize entries and cut, hash and deduplicate file contents in native
 * batches, double-buffered so JavaScript parses the next batch while Rust chunks the previous one.
 * New chunk bytes go to a spool file; pass 2 packs them in canonical order.
 */
import fs from 'node:fs';
import { OcichunkError } from '../errors.js';
import { canonicalize, type CanonOptions } from '../layer/canonical.js';
import { TYPE_ORDER, pathKey, type Entry } from '../layer/entry.js';
import type { TarEntry } from '../layer/tar.js';
import { native, type ChunkerSpec } from '../native/index.js';
import type { Packer } from './packer.js';
import type { ChunkRegistry } from './registry.js';

/** Thrown in sorted mode when an entry arrives out of canonical order. */
export class OutOfOrder extends Error {
  constructor(readonly path: string) {
    super(`entry ${path} is out of canonical order`);
  }
}

export interface ScannedEntry {
  entry: Entry;
  /** Chunk ids in file order (regular files). */
  chunks?: number[];
}

interface Seg {
  file: ScannedEntry;
  start: number;
  len: number;
  eof: boolean;
}

interface Batch {
  buf: Buffer;
  fill: number;
  segs: Seg[];
}

export interface ScanOptions extends CanonOptions {
  chunker: ChunkerSpec;
  threads: number;
  batchBytes: number;
  /** zstd level, and the size from which a chunk is its own frame (spool mode compresses those at once). */
  level: number;
  groupBelow: number;
}

export function maxChunkLength(c: ChunkerSpec): number {
  if (c.kind === 'fixed') return c.size ?? 1 << 20;
  if (c.kind === 'file') return c.max ?? 64 << 20;
  return c.max ?? 256 << 10;
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
  entries: number;
  files: number;
  fileBytes: number;
  chunkRefs: number;
  newChunks: number;
  newChunkBytes: number;
}

export class LayerScanner {
  private readonly headroom: number;
  /** A ring of batch buffers: one filling, the others being chunked/hashed or placed. */
  private readonly batches: Batch[];
  private cur = 0;
  /** The previous batch's unfinished tail has been carried into the current buffer. */
  private cut: Promise<void> = Promise.resolve();
  /** Every submitted batch has been absorbed (chunks interned, placed or spooled), in order. */
  private placed: Promise<void> = Promise.resolve();
  /** Per buffer: the batch that last used it has been absorbed. */
  private busy: Array<Promise<void>>;
  readonly stats: ScanStats = { entries: 0, files: 0, fileBytes: 0, chunkRefs: 0, newChunks: 0, newChunkBytes: 0 };

  private lastKey: Buffer | undefined;
  private lastType = 0;

  /**
   * sorted mode (packer given): the layer is expected in canonical order, new chunks go straight to
   * the packer and OutOfOrder is thrown at the first entry that breaks the order. spool mode (no
   * packer): new chunks are spooled for a second pass in canonical order.
   */
  constructor(
    private readonly opts: ScanOptions,
    private readonly registry: ChunkRegistry,
    private readonly spool: Spool,
    private readonly packer?: Packer,
    private readonly onBytes?: (n: number) => void,
  ) {
    this.headroom = maxChunkLength(opts.chunker);
    const size = this.headroom + Math.max(opts.batchBytes, this.headroom);
    this.batches = [0, 1].map(() => ({ buf: Buffer.allocUnsafe(size), fill: this.headroom, segs: [] }));
    this.busy = this.batches.map(() => Promise.resolve());
  }

  async scan(entries: AsyncIterable<TarEntry>, layer: string): Promise<ScannedEntry[]> {
    const out: ScannedEntry[] = [];
    for await (const { header, stream } of entries) {
      const entry = canonicalize(header, this.opts, layer);
      if (!entry) {
        stream.resume();
        continue;
      }
      this.stats.entries++;
      if (this.packer) {
        const key = pathKey(entry.path);
        const t = TYPE_ORDER[entry.type];
        const c = this.lastKey ? Buffer.compare(key, this.lastKey) : 1;
        if (c < 0 || (c === 0 && t <= this.lastType)) {
          stream.resume();
          await this.cut.catch(() => {});
          await this.placed.catch(() => {});
          throw new OutOfOrder(entry.path);
        }
        this.lastKey = key;
        this.lastType = t;
      }
      const rec: ScannedEntry = { entry };
      out.push(rec);
      if (entry.type !== 'reg') {
        stream.resume();
        continue;
      }
      rec.chunks = [];
      this.stats.files++;
      this.stats.fileBytes += entry.size;
      let got = 0;
      for await (const data of stream as AsyncIterable<Buffer>) {
        got += data.length;
        if (got > entry.size) {
          throw new OcichunkError('ECORRUPT', `${layer}: entry ${JSON.stringify(entry.path)} has more data than its size`);
        }
        await this.append(rec, data, got === entry.size);
        this.onBytes?.(data.length);
      }
      if (got !== entry.size) {
        throw new OcichunkError('ECORRUPT', `${layer}: entry ${JSON.stringify(entry.path)} is truncated (${got} of ${entry.size} bytes)`);
      }
    }
    await this.flush();
    await this.cut;
    await this.placed;
    return out;
  }

  private async append(file: ScannedEntry, data: Buffer, eof: boolean): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const b = this.batches[this.cur];
      let seg = b.segs[b.segs.length - 1];
      if (!seg || seg.file !== file) {
        seg = { file, start: b.fill, len: 0, eof: false };
        b.segs.push(seg);
      }
      const n = Math.min(data.length - off, b.buf.length - b.fill);
      data.copy(b.buf, b.fill, off, off + n);
      b.fill += n;
      seg.len += n;
      off += n;
      if (off === data.length && eof) seg.eof = true;
      if (b.fill === b.buf.length) await this.flush();
    }
  }

  /**
   * Submit the current batch for chunking and hashing. Its unfinished tail moves into the next buffer
   * as soon as the cut points are known; absorbing (placing or spooling chunks) follows in order.
   */
  private async flush(): Promise<void> {
    await this.cut;
    const b = this.batches[this.cur];
    if (b.segs.length === 0) return;
    const ni = (this.cur + 1) % this.batches.length;
    await this.busy[ni];
    const next = this.batches[ni];
    next.fill = this.headroom;
    next.segs = [];
    const last = b.segs[b.segs.length - 1];
    if (!last.eof) next.segs.push({ file: last.file, start: this.headroom, len: 0, eof: false });
    const segs = new Uint32Array(b.segs.length * 3);
    b.segs.forEach((s, i) => {
      segs[i * 3] = s.start;
      segs[i * 3 + 1] = s.len;
      segs[i * 3 + 2] = s.eof ? 1 : 0;
    });
    const work = native.chunkAndHash(b.buf, segs, this.opts.chunker, this.opts.threads);
    this.cut = work.then((r) => this.carryTail(b, next, r));
    this.placed = Promise.all([work, this.placed]).then(([r]) => this.absorb(b, r));
    this.busy[this.cur] = this.placed;
    // surfaced by the next await of cut/placed
    this.cut.catch(() => {});
    this.placed.catch(() => {});
    this.cur = ni;
  }

  /** Move the unfinished tail of a batch's last segment in front of the next batch's data. */
  private carryTail(b: Batch, next: Batch, r: { counts: Uint32Array; lengths: Uint32Array }): void {
    const si = b.segs.length - 1;
    const s = b.segs[si];
    let ci = 0;
    for (let k = 0; k < si; k++) ci += r.counts[k];
    let pos = s.start;
    for (let k = 0; k < r.counts[si]; k++) pos += r.lengths[ci + k];
    const tail = s.start + s.len - pos;
    if (s.eof) {
      if (tail !== 0) throw new OcichunkError('EINTERNAL', `chunker left ${tail} bytes at end of file`);
      return;
    }
    if (tail > this.headroom) throw new OcichunkError('EINTERNAL', `chunk tail ${tail} exceeds headroom`);
    const cont = next.segs[0];
    b.buf.copy(next.buf, this.headroom - tail, pos, pos + tail);
    cont.start = this.headroom - tail;
    cont.len += tail;
  }

  private async absorb(b: Batch, r: { counts: Uint32Array; lengths: Uint32Array; digests: Buffer }): Promise<void> {
    if (this.packer) return this.absorbSorted(b, r);
    let ci = 0;
    const writes: Array<Promise<void>> = [];
    // large new chunks become frames of their own whatever the order: compress them now, while the
    // scan goes on, and spool the frames; small ones are spooled raw and grouped in pass 2
    const bigParts: number[] = [];
    const bigIds: number[] = [];
    b.segs.forEach((s, si) => {
      let pos = s.start;
      let runStart = -1;
      let runLen = 0;
      const flushRun = () => {
        if (runLen > 0) {
          const { at, written } = this.spool.append(b.buf, runStart, runLen);
          writes.push(written);
          // assign spool offsets to the chunks in this run
          let o = at;
          for (const id of pendingIds) {
            this.registry.setSpool(id, o);
            o += this.registry.length(id);
          }
        }
        pendingIds.length = 0;
        runStart = -1;
        runLen = 0;
      };
      const pendingIds: number[] = [];
      for (let k = 0; k < r.counts[si]; k++, ci++) {
        const len = r.lengths[ci];
        const { id, fresh } = this.registry.internRaw(r.digests, ci * 32, len);
        s.file.chunks!.push(id);
        this.stats.chunkRefs++;
        if (fresh && len >= this.opts.groupBelow) {
          this.stats.newChunks++;
          this.stats.newChunkBytes += len;
          bigParts.push(pos, len);
          bigIds.push(id);
        } else if (fresh) {
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
    });
    if (bigIds.length) {
      const parts = new Uint32Array(bigParts);
      const r = await native.compressFrames(b.buf, parts, new Uint32Array(bigIds.length).fill(1), this.opts.level, this.opts.threads);
      const { at, written } = this.spool.append(r.data, 0, r.data.length);
      writes.push(written);
      let o = at;
      bigIds.forEach((id, k) => {
        this.registry.setSpool(id, o, r.sizes[k]);
        o += r.sizes[k];
      });
    }
    await Promise.all(writes);
  }

  private async absorbSorted(b: Batch, r: { counts: Uint32Array; lengths: Uint32Array; digests: Buffer }): Promise<void> {
    const packer = this.packer!;
    let ci = 0;
    for (let si = 0; si < b.segs.length; si++) {
      const s = b.segs[si];
      let pos = s.start;
      for (let k = 0; k < r.counts[si]; k++, ci++) {
        const len = r.lengths[ci];
        const { id, fresh } = this.registry.internRaw(r.digests, ci * 32, len);
        s.file.chunks!.push(id);
        this.stats.chunkRefs++;
        if (fresh) {
          this.stats.newChunks++;
          this.stats.newChunkBytes += len;
        }
        if (packer.needs(id)) await packer.place(id, b.buf, pos);
        pos += len;
      }
    }
  }


}
