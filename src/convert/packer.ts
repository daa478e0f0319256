/**
 * Places new chunks into zstd frames and frames into pack blobs, in canonical order.
 * Small chunks (small files, file tails) are grouped into one frame to keep compression context;
 * larger chunks get a frame each. Chunk bytes are copied into a staging buffer as they are placed;
 * full stages are compressed natively (one in flight while the next fills) and appended to packs.
 * Frame grouping depends only on the order and sizes of chunks, never on buffer sizes.
 */
import { OcichunkError } from '../errors.js';
import { native } from '../native/index.js';
import type { BlobWriter } from '../store/blobstore.js';
import type { ImageSink } from '../transports/types.js';
import type { ChunkIndex } from './chunk-index.js';
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
  /** Largest chunk the chunker makes. */
  maxChunk: number;
}

export interface PackResult {
  digest: string;
  size: number;
}

interface Frame {
  /** [offset, length] pairs in the stage buffer */
  parts: number[];
  ids: number[];
  bytes: number;
  /** A frame compressed already during the scan, waiting in the spool. */
  pre?: { spool: Spool; off: number; clen: number };
}

export class Packer {
  /** A ring of staging buffers: one filling, the others compressing or being written. */
  private readonly stages: Buffer[];
  private readonly outs: Buffer[];
  /** Per stage: its last submitted batch has been compressed and written. */
  private stageBusy: Array<Promise<void>>;
  private cur = 0;
  private fill = 0;
  private frames: Frame[] = [];
  private framesBytes = 0;
  private group: Frame | undefined;
  private inflight: Promise<void> = Promise.resolve();
  private writer: BlobWriter | undefined;
  private packIndex = -1;
  private layerPackStart = 0;
  private placedThisLayer: number[] = [];
  readonly packs: PackResult[] = [];
  storedBytes = 0;
  frameCount = 0;

  constructor(
    private readonly sink: ImageSink,
    private readonly chunkIndex: ChunkIndex,
    private readonly opts: PackOptions,
  ) {
    const cap = Math.max(opts.batchBytes, opts.maxChunk) + opts.groupTarget;
    this.stages = [0, 1].map(() => Buffer.allocUnsafe(cap));
    // compressed frames land in a buffer per stage, reused with it (fresh buffers per batch made the
    // garbage collector run every few batches)
    this.outs = [0, 1].map(() => Buffer.allocUnsafe(cap + (cap >>> 8) + (64 << 10)));
    this.stageBusy = this.stages.map(() => Promise.resolve());
  }

  beginLayer(): void {
    this.layerPackStart = this.packs.length;
    this.placedThisLayer = [];
  }

  /** Is this chunk still to be placed? */
  needs(id: number): boolean {
    return this.chunkIndex.unplaced(id);
  }

  /** Place a chunk whose bytes are at src[off, off+len). */
  async place(id: number, src: Buffer, off: number): Promise<void> {
    const len = this.chunkIndex.length(id);
    const at = await this.reserve(len);
    src.copy(this.stages[this.cur], at, off, off + len);
    this.placed(id, at, len);
  }

  /** Place the not yet placed chunks of a file from the spool (pass 2 of unsorted layers). */
  async placeFromSpool(ids: number[], spool: Spool): Promise<void> {
    for (const id of ids) {
      if (!this.needs(id)) continue;
      const so = this.chunkIndex.spoolOff(id);
      if (so < 0) throw new OcichunkError('EINTERNAL', `chunk ${this.chunkIndex.hex(id)} has no bytes to place`);
      const len = this.chunkIndex.length(id);
      const clen = this.chunkIndex.spoolClen(id);
      if (clen >= 0) {
        // a large chunk, compressed into its own frame during the scan: the same bytes as here
        if (this.framesBytes >= this.opts.batchBytes) await this.rotate();
        this.claim(id);
        this.closeFrame({ parts: [], ids: [id], bytes: len, pre: { spool, off: so, clen } });
        continue;
      }
      const at = await this.reserve(len);
      spool.readInto(this.stages[this.cur], at, len, so);
      this.placed(id, at, len);
    }
  }

  /** Claim a chunk now, so a repeat is not placed twice; the real location is set when written. */
  private claim(id: number): void {
    this.chunkIndex.claim(id);
    this.placedThisLayer.push(id);
  }

  private placed(id: number, at: number, len: number): void {
    this.claim(id);
    if (len >= this.opts.groupBelow) {
      this.closeFrame({ parts: [at, len], ids: [id], bytes: len });
      return;
    }
    if (this.group && this.group.bytes + len > this.opts.groupTarget) this.closeGroup();
    const g = (this.group ??= { parts: [], ids: [], bytes: 0 });
    const last = g.parts.length - 2;
    if (last >= 0 && g.parts[last] + g.parts[last + 1] === at) g.parts[last + 1] += len;
    else g.parts.push(at, len);
    g.ids.push(id);
    g.bytes += len;
    if (g.bytes >= this.opts.groupTarget) this.closeGroup();
  }

  private closeGroup(): void {
    if (this.group) this.closeFrame(this.group);
    this.group = undefined;
  }

  private closeFrame(f: Frame): void {
    this.frames.push(f);
    this.framesBytes += f.bytes;
  }

  /** Room for len bytes in the current stage; rotates stages when full. Returns the offset. */
  private async reserve(len: number): Promise<number> {
    const stage = this.stages[this.cur];
    if (this.framesBytes >= this.opts.batchBytes || this.fill + len > stage.length) await this.rotate();
    const at = this.fill;
    this.fill += len;
    return at;
  }

  /** Compress the closed frames of this stage; carry the open group over to the other stage. */
  private async rotate(): Promise<void> {
    const stage = this.stages[this.cur];
    const frames = this.frames;
    this.frames = [];
    this.framesBytes = 0;
    if (frames.length) this.submit(stage, frames);
    this.stageBusy[this.cur] = this.inflight;
    const ni = (this.cur + 1) % this.stages.length;
    await this.stageBusy[ni].catch(() => {});
    this.cur = ni;
    this.fill = 0;
    const g = this.group;
    if (g) {
      const next = this.stages[this.cur];
      const parts: number[] = [];
      for (let i = 0; i < g.parts.length; i += 2) {
        stage.copy(next, this.fill, g.parts[i], g.parts[i] + g.parts[i + 1]);
        parts.push(this.fill, g.parts[i + 1]);
        this.fill += g.parts[i + 1];
      }
      g.parts = parts;
    }
  }

  private submit(stage: Buffer, frames: Frame[]): void {
    const raw = frames.filter((f) => !f.pre);
    const nparts = raw.reduce((a, f) => a + f.parts.length / 2, 0);
    const parts = new Uint32Array(nparts * 2);
    const counts = new Uint32Array(raw.length);
    let k = 0;
    raw.forEach((f, i) => {
      counts[i] = f.parts.length / 2;
      for (const v of f.parts) parts[k++] = v;
    });
    // zstd's bound on each frame's size: the output buffer is used when they surely fit
    const bound = raw.reduce((a, f) => a + f.bytes + (f.bytes >>> 8) + (f.bytes < 131072 ? (131072 - f.bytes) >>> 11 : 0), 0);
    const out = this.outs[this.stages.indexOf(stage)];
    const work = raw.length
      ? native.compressFrames(stage, parts, counts, this.opts.level, this.opts.threads, bound <= out.length ? out : undefined)
      : Promise.resolve({ data: Buffer.alloc(0), sizes: new Uint32Array(0) });
    const before = this.inflight;
    // `inflight` resolves when this batch's frames have been written, after the earlier batches'
    this.inflight = (async () => {
      const [r] = await Promise.all([work, before]);
      await this.writeFrames(frames, r.data, r.sizes);
    })();
    this.inflight.catch(() => {}); // surfaced by the next await of inflight
  }

  /** Append frames to packs in order (compressed now, or read back from the spool). */
  private async writeFrames(frames: Frame[], data: Buffer, sizes: Uint32Array): Promise<void> {
    // frames compressed together lie back to back in `data`: written as one view, never copied
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      for (const b of pending) await this.writer!.write(b);
      pending = [];
      pendingBytes = 0;
    };
    const push = (b: Buffer) => {
      const last = pending[pending.length - 1];
      if (last && last.buffer === b.buffer && last.byteOffset + last.length === b.byteOffset) {
        pending[pending.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + b.length);
      } else pending.push(b);
      pendingBytes += b.length;
    };
    let off = 0; // in data, over the frames compressed now
    let ri = 0; // index among the frames compressed now
    for (const f of frames) {
      let bytes: Buffer;
      if (f.pre) {
        bytes = Buffer.allocUnsafe(f.pre.clen);
        f.pre.spool.readInto(bytes, 0, f.pre.clen, f.pre.off);
      } else {
        bytes = data.subarray(off, off + sizes[ri++]);
        off += bytes.length;
      }
      const clen = bytes.length;
      const at = (this.writer?.size ?? 0) + pendingBytes;
      if (this.writer && at > 0 && at + clen > this.opts.packTarget) {
        await flush();
        await this.closePack();
      }
      if (!this.writer) {
        this.writer = await this.sink.createBlobWriter();
        this.packIndex = this.packs.length;
        this.packs.push({ digest: '', size: 0 });
      }
      const packOff = this.writer.size + pendingBytes;
      let inner = 0;
      for (const id of f.ids) {
        this.chunkIndex.setLoc(id, { pack: this.packIndex, off: packOff, clen, ulen: f.bytes, inner });
        inner += this.chunkIndex.length(id);
      }
      push(bytes);
      this.storedBytes += clen;
      this.frameCount++;
    }
    await flush();
  }

  /** End of a layer: close the group frame, compress what is staged, close the pack. */
  async finishLayer(): Promise<void> {
    this.closeGroup();
    const frames = this.frames;
    this.frames = [];
    this.framesBytes = 0;
    if (frames.length) this.submit(this.stages[this.cur], frames);
    await this.inflight;
    this.cur = (this.cur + 1) % this.stages.length;
    this.fill = 0;
    await this.closePack();
  }

  /** Forget everything placed in this layer (its packs stay as unreferenced blobs). */
  async rollbackLayer(): Promise<void> {
    await this.inflight.catch(() => {});
    await this.writer?.abort();
    this.writer = undefined;
    for (const id of this.placedThisLayer) this.chunkIndex.unclaim(id);
    this.placedThisLayer = [];
    this.packs.length = this.layerPackStart;
    this.frames = [];
    this.framesBytes = 0;
    this.group = undefined;
    this.fill = 0;
    this.inflight = Promise.resolve();
    this.stageBusy = this.stages.map(() => Promise.resolve());
  }

  async abort(): Promise<void> {
    await this.inflight.catch(() => {});
    await this.writer?.abort();
    this.writer = undefined;
  }

  private async closePack(): Promise<void> {
    if (!this.writer) return;
    const w = this.writer;
    this.writer = undefined;
    this.packs[this.packIndex] = await w.commit();
  }
}
