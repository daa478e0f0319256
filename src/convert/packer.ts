/**
 * Pass 2: place new chunks into zstd frames and frames into pack blobs, in canonical order.
 * Small chunks (small files, file tails) are grouped into one frame to keep compression context;
 * larger chunks get a frame each. Frames are compressed in native batches, one batch in flight
 * while the next is read from the spool.
 */
import { native } from '../native/index.js';
import type { BlobWriter } from '../store/blobstore.js';
import type { ImageSink } from '../transports/types.js';
import type { ChunkRegistry } from './registry.js';
import type { Spool } from './scan.js';

export interface PackOptions {
  level: number;
  threads: number;
  /** Chunks shorter than this are grouped with their neighbours. */
  groupBelow: number;
  /** A group frame is closed once it reaches this many bytes. */
  groupTarget: number;
  /** Packs are cut at frame boundaries once they reach this size. */
  packTarget: number;
  /** Uncompressed bytes per native compression call. */
  batchBytes: number;
}

export interface PackResult {
  digest: string;
  size: number;
}

export class Packer {
  private group: number[] = [];
  private groupBytes = 0;
  private frames: number[][] = [];
  private framesBytes = 0;
  private inflight: Promise<void> = Promise.resolve();
  private writer: BlobWriter | undefined;
  private packIndex = -1;
  readonly packs: PackResult[] = [];
  storedBytes = 0;
  frameCount = 0;

  constructor(
    private readonly sink: ImageSink,
    private readonly registry: ChunkRegistry,
    private readonly spool: Spool,
    private readonly opts: PackOptions,
  ) {}

  /** Place a file's chunks (those not yet placed) in canonical order. */
  async add(chunks: number[]): Promise<void> {
    const reg = this.registry;
    for (const id of chunks) {
      if (reg.loc[id] !== undefined || reg.spoolOff[id] < 0) continue;
      // Mark as claimed so a repeat inside the same layer is not placed twice.
      reg.loc[id] = { pack: -1, off: 0, clen: 0, ulen: 0, inner: 0 };
      const len = reg.lengths[id];
      if (len >= this.opts.groupBelow) {
        await this.pushFrame([id], len);
      } else {
        if (this.groupBytes + len > this.opts.groupTarget && this.group.length) await this.closeGroup();
        this.group.push(id);
        this.groupBytes += len;
        if (this.groupBytes >= this.opts.groupTarget) await this.closeGroup();
      }
    }
  }

  /** End of a layer: close the group frame and every pack. */
  async finishLayer(): Promise<void> {
    await this.closeGroup();
    await this.submit();
    await this.inflight;
    await this.closePack();
  }

  async abort(): Promise<void> {
    await this.inflight.catch(() => {});
    await this.writer?.abort();
    this.writer = undefined;
  }

  private async closeGroup(): Promise<void> {
    if (!this.group.length) return;
    const g = this.group;
    const bytes = this.groupBytes;
    this.group = [];
    this.groupBytes = 0;
    await this.pushFrame(g, bytes);
  }

  private async pushFrame(ids: number[], bytes: number): Promise<void> {
    this.frames.push(ids);
    this.framesBytes += bytes;
    if (this.framesBytes >= this.opts.batchBytes) await this.submit();
  }

  /** Read the batch's chunks from the spool, compress them natively, then append to packs in order. */
  private async submit(): Promise<void> {
    if (!this.frames.length) return;
    const frames = this.frames;
    const total = this.framesBytes;
    this.frames = [];
    this.framesBytes = 0;
    const reg = this.registry;
    const buf = Buffer.allocUnsafe(total);
    const parts = new Uint32Array(frames.length * 2);
    const counts = new Uint32Array(frames.length).fill(1);
    let pos = 0;
    // coalesce adjacent spool ranges into one read
    let runPos = -1;
    let runSpool = -1;
    let runLen = 0;
    const flushRun = () => {
      if (runLen) this.spool.readInto(buf, runPos, runLen, runSpool);
      runLen = 0;
    };
    frames.forEach((ids, fi) => {
      parts[fi * 2] = pos;
      for (const id of ids) {
        const so = reg.spoolOff[id];
        const len = reg.lengths[id];
        if (runLen && runSpool + runLen === so) runLen += len;
        else {
          flushRun();
          runPos = pos;
          runSpool = so;
          runLen = len;
        }
        pos += len;
      }
      parts[fi * 2 + 1] = pos - parts[fi * 2];
    });
    flushRun();
    const work = native.compressFrames(buf, parts, counts, this.opts.level, this.opts.threads);
    const prev = this.inflight;
    this.inflight = (async () => {
      const [r] = await Promise.all([work, prev]);
      let off = 0;
      for (let fi = 0; fi < frames.length; fi++) {
        const clen = r.sizes[fi];
        const ulen = parts[fi * 2 + 1];
        await this.writeFrame(frames[fi], r.data.subarray(off, off + clen), ulen);
        off += clen;
      }
    })();
    this.inflight.catch(() => {}); // surfaced by the next await of inflight
    // keep at most one batch compressing while the next is prepared
    await prev;
  }

  private async writeFrame(ids: number[], frame: Buffer, ulen: number): Promise<void> {
    if (this.writer && this.writer.size > 0 && this.writer.size + frame.length > this.opts.packTarget) {
      await this.closePack();
    }
    if (!this.writer) {
      this.writer = await this.sink.createBlobWriter();
      this.packIndex = this.packs.length;
      this.packs.push({ digest: '', size: 0 });
    }
    const off = this.writer.size;
    await this.writer.write(frame);
    this.storedBytes += frame.length;
    this.frameCount++;
    let inner = 0;
    for (const id of ids) {
      this.registry.loc[id] = { pack: this.packIndex, off, clen: frame.length, ulen, inner };
      inner += this.registry.lengths[id];
    }
  }

  private async closePack(): Promise<void> {
    if (!this.writer) return;
    const w = this.writer;
    this.writer = undefined;
    this.packs[this.packIndex] = await w.commit();
  }
}
