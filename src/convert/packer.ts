/**
 * Writes new chunks into packs: the format's frame and pack writer (crates/core/src/format/pack.rs)
 * decides frames (small chunks grouped, big ones alone), compresses them off the JS thread and says
 * where each frame goes; this class only moves bytes: chunk bytes in (from scan batches or the
 * spool), frames out into blob writers of the sink, one compressed batch in flight while the next
 * is placed.
 */
import { OcichunkError } from '../errors.js';
import { native, type CompressedBatch, type NativePackWriter, type PackSpec, type PageBuffers } from '../native/index.js';
import type { BlobWriter } from '../store/blobstore.js';
import type { ImageSink } from '../transports/types.js';
import type { ChunkIndex } from './chunk-index.js';
import { PIPELINE_BATCHES, type Spool } from './scan.js';

/** The writer's options (docs/format.md §5: frame grouping, pack size, compression). */
export type PackOptions = PackSpec;

export interface PackResult {
  digest: string;
  size: number;
}

const CLOSE_BEFORE = 1;
const OPEN = 2;

export class Packer {
  private readonly w: NativePackWriter;
  /** resolves when every batch submitted so far has been written, in order */
  private inflight: Promise<void> = Promise.resolve();
  private outstanding: Array<Promise<void>> = [];
  /** output buffers of compressions, used in turn; their memory goes back at the end of each layer */
  private outs: PageBuffers | undefined;
  private readonly outBytes: number;
  private readonly batchBytes: number;
  private readonly bigAlone: boolean;
  private readonly noDict: boolean;
  private submitted = 0;
  /** pass 2: where spooled chunks are read, given back at the end of the pass */
  private spoolRun: PageBuffers | undefined;
  private writer: BlobWriter | undefined;
  private layerPackStart = 0;
  readonly packs: PackResult[] = [];
  storedBytes = 0;
  frameCount = 0;

  constructor(
    private readonly sink: ImageSink,
    private readonly chunkIndex: ChunkIndex,
    opts: PackOptions,
  ) {
    this.w = native.packWriter(opts);
    this.batchBytes = opts.batchBytes;
    this.bigAlone = (opts.runTarget ?? 0) < opts.groupBelow;
    this.noDict = !opts.dictSize;
    // a batch's frames: about batchBytes, plus the frame that closed it, plus zstd's bound
    this.outBytes = opts.batchBytes + (opts.batchBytes >>> 6) + opts.groupTarget + (1 << 20);
  }

  /**
   * Whether this layer's big chunks can be compressed before they are placed (`compressAlone`, in
   * an unsorted layer's first pass): each is a frame of its own, compressed without a dictionary
   * or with one carried from a lower layer, not with the layer's own (trained once its chunks are
   * placed).
   */
  get compressesBigChunksAhead(): boolean {
    return this.bigAlone && (this.noDict || this.w.carriesDictionary);
  }

  /**
   * Compress `parts` (`[offset, length]` pairs of `src`) each into its own frame as this layer's
   * run frames are compressed, back to back into `out`; resolves to the frames' lengths, for
   * `placeCompressed` (pass 2) later.
   */
  compressAlone(src: Buffer, parts: Uint32Array, out: Buffer): Promise<Uint32Array> {
    return this.w.compressAlone(src, parts, out);
  }

  /** An image's first layer comes next: the dictionary of the image before is not carried to it. */
  beginImage(): void {
    this.w.beginImage();
  }

  beginLayer(): void {
    this.layerPackStart = this.packs.length;
    this.w.beginLayer();
  }

  /**
   * Place the chunks `ids` whose bytes start at `positions` in `src` (those not placed yet), a file
   * boundary before each chunk whose index is in `starts`.
   */
  async placeAll(ids: Uint32Array, positions: Uint32Array, src: Uint8Array, starts: Uint32Array): Promise<void> {
    await this.submit(this.w.place(this.chunkIndex.dict, src, ids, positions, starts));
  }

  /**
   * Pass 2 of unsorted layers: place the layer's chunks in canonical order from the spool (those
   * not placed yet); each file's begin at the index `fileStarts` gives. Raw chunks are read in runs
   * of about a batch (adjacent spool ranges in one read), into one buffer dropped at the end.
   */
  async placeFromSpool(chunks: Uint32Array, fileStarts: Uint32Array, spool: Spool): Promise<void> {
    const { dict } = this.chunkIndex;
    let ids: number[] = [];
    /** indices into `ids` of chunks placed first after a file boundary */
    let starts: number[] = [];
    /** [spool offset, length] of each id in `ids` */
    let where: number[] = [];
    let bytes = 0;
    // one buffer for every run and frame read (the writer copies what it takes before place() returns),
    // kept for the layer's later releases and given back when the layer ends
    const room = (n: number): Buffer => {
      if (!this.spoolRun || this.spoolRun.buffers[0].length < n) {
        this.spoolRun?.release();
        this.spoolRun = native.pageBuffers(1, Math.max(n, this.batchBytes + (1 << 20)));
      }
      return this.spoolRun.buffers[0];
    };
    const flush = async () => {
      if (!ids.length) return;
      const buf = room(bytes);
      const positions = new Uint32Array(ids.length);
      let at = 0;
      for (let k = 0; k < ids.length; ) {
        // one read for spool ranges that follow each other
        const from = where[2 * k];
        let len = 0;
        let j = k;
        for (; j < ids.length && where[2 * j] === from + len; j++) {
          positions[j] = at + len;
          len += where[2 * j + 1];
        }
        spool.readInto(buf, at, len, from);
        at += len;
        k = j;
      }
      const list = Uint32Array.from(ids);
      const startList = Uint32Array.from(starts);
      ids = [];
      where = [];
      starts = [];
      bytes = 0;
      await this.placeAll(list, positions, buf, startList);
    };
    const plan = dict.spoolPlan(chunks, fileStarts);
    for (let k = 0; k < plan.ids.length; k++) {
      const [id, off, len] = [plan.ids[k], plan.offsets[k], plan.lens[k]];
      if (plan.raw[k]) {
        if (plan.starts[k]) starts.push(ids.length);
        ids.push(id);
        where.push(off, len);
        bytes += len;
        if (bytes >= this.batchBytes) await flush();
        continue;
      }
      // a large chunk, compressed into its own frame during the scan: the same bytes as here
      await flush();
      const frame = room(len).subarray(0, len);
      spool.readInto(frame, 0, len, off);
      await this.submit(this.w.placeCompressed(dict, id, frame));
    }
    await flush();
  }

  /**
   * Start compressing the sealed batches at once; their frames are written in order, each batch
   * after the one before it. At most PIPELINE_BATCHES batches are outstanding (compressing or
   * being written) while the next is placed.
   */
  private async submit(ready: number): Promise<void> {
    for (let i = 0; i < ready; i++) {
      while (this.outstanding.length >= PIPELINE_BATCHES) await this.outstanding.shift();
      // fewer than PIPELINE_BATCHES are outstanding now, so the batch that used this output buffer
      // last is written: it is free again (fresh buffers per batch cost page faults and GC time)
      this.outs ??= native.pageBuffers(PIPELINE_BATCHES, this.outBytes);
      const out = this.outs.buffers[this.submitted++ % PIPELINE_BATCHES];
      const work = this.w.compressNext(out);
      work.catch(() => {}); // surfaced through inflight
      const before = this.inflight;
      this.inflight = Promise.all([work, before]).then(([c]) => this.write(c.data ?? out, c));
      this.inflight.catch(() => {}); // surfaced by the next await of inflight
      this.outstanding.push(this.inflight);
    }
  }

  /** Append a compressed batch's frames to packs, where the writer says. */
  private async write(data: Buffer, c: CompressedBatch): Promise<void> {
    const rows = this.w.land(this.chunkIndex.dict, c.frames, c.ids);
    // frames for one pack lie back to back in `data`: written as one view, never copied
    let from = -1;
    let to = -1;
    const flush = async () => {
      if (from >= 0 && to > from) await this.writer!.write(data.subarray(from, to));
      from = to = -1;
    };
    for (let r = 0; r < rows.length; r += 4) {
      const [flags, pack, start, len] = [rows[r], rows[r + 1], rows[r + 2], rows[r + 3]];
      if (flags & CLOSE_BEFORE) {
        await flush();
        await this.closePack();
      }
      if (flags & OPEN) {
        await flush();
        if (pack !== this.packs.length) throw new OcichunkError('EINTERNAL', `pack ${pack} opened after ${this.packs.length}`);
        this.writer = await this.sink.createBlobWriter();
        this.packs.push({ digest: '', size: 0 });
      }
      if (from < 0) from = start;
      to = start + len;
      this.storedBytes += len;
      this.frameCount++;
    }
    await flush();
  }

  /** End of a layer: the group frame closes, what is staged is compressed and written, the pack closes. */
  async finishLayer(): Promise<void> {
    await this.submit(this.w.finishLayer());
    await this.inflight;
    this.outstanding = [];
    this.releaseBuffers();
    await this.closePack();
    this.w.packClosed();
  }

  /** Forget everything placed in this layer (its packs stay as unreferenced blobs). */
  async rollbackLayer(): Promise<void> {
    await this.inflight.catch(() => {});
    this.releaseBuffers();
    await this.writer?.abort();
    this.writer = undefined;
    this.w.rollbackLayer(this.chunkIndex.dict);
    this.packs.length = this.layerPackStart;
    this.inflight = Promise.resolve();
    this.outstanding = [];
  }

  async abort(): Promise<void> {
    await this.inflight.catch(() => {});
    this.releaseBuffers();
    await this.writer?.abort();
    this.writer = undefined;
  }

  /** The output buffers and the spool read buffer give their memory back (they stay usable). */
  private releaseBuffers(): void {
    this.outs?.release();
    this.spoolRun?.release();
  }

  private async closePack(): Promise<void> {
    if (!this.writer) return;
    const w = this.writer;
    this.writer = undefined;
    this.packs[this.packs.length - 1] = await w.commit();
  }
}
