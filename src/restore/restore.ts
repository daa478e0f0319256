/**
 * chunked image -> root filesystem: the layers merged as a container runtime applies tar
 * layers (whiteouts delete, opaque markers empty a directory); file contents come from verified chunks.
 */
import fsp from 'node:fs/promises';
import { OcichunkError } from '../errors.js';
import { ChunkReader } from '../chunked/content.js';
import { openChunked, resolveImage, type ChunkedImage } from '../chunked/image.js';
import { native } from '../native/index.js';
import { throwIfAborted } from '../util/abort.js';
import type { Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import type { TransferReport } from '../transports/types.js';

export interface RestoreOptions {
  platform?: Platform;
  threads?: number;
  /** Uncompressed bytes of file content fetched per batch. */
  batchBytes?: number;
  /** Registry options for docker:// references. */
  transport?: TransportOptions;
  /** after each batch of file content: bytes and chunks written so far, of `chunks` in all */
  onProgress?: (p: { bytes: number; done: number; chunks: number }) => void;
  /** Cancels the restore between batches (ECANCELED); the target keeps the partial tree, mode 0700. */
  signal?: AbortSignal;
}

export interface RestoreResult {
  source: string;
  target: string;
  layers: number;
  entries: number;
  /** regular-file entries of all layers and their bytes (as convert and inspect count them) */
  files: number;
  fileBytes: number;
  /** what the merged tree put on disk: files (hardlinked ones once), their bytes, directories, extra hardlink names */
  written: { files: number; bytes: number; dirs: number; hardlinks: number };
  packBytesRead: number;
  /** Registry figures (bytes downloaded, requests, retries) for docker:// sources. */
  transfer?: TransferReport;
  ownership: boolean;
  seconds: number;
}

export async function restore(srcRef: string, target: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const src = await openSource(srcRef, opts.transport);
  try {
    const img = await openChunked(await resolveImage(src, opts.platform));
    return await restoreChunked(img, target, opts);
  } finally {
    await src.close();
  }
}

/**
 * The merged tree is written by the native core (crates/core/src/restore.rs) into an empty target,
 * without following any symlink, file after file in the writer's order, batch by batch (a file of
 * any size needs one batch of memory). The native side also fetches each batch: it reads the frames
 * from the pack files of a local layout (for other sources this side reads them), decompresses them
 * and compares every chunk with its digest, the next batch while this one is written.
 */
export async function restoreChunked(img: ChunkedImage, target: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const t0 = performance.now();
  const writer = native.restoreWriter(target, img.checked);
  const root = await fsp.realpath(target);
  const threads = opts.threads ?? 0;
  const reader = new ChunkReader(img, threads);
  const batchBytes = opts.batchBytes ?? 16 << 20;
  const toc = img.toc;
  const seq = writer.chunkSequence();
  const files = img.packs.map((p) => img.image.source.blobFile?.(p));
  const local = files.every((f) => f !== undefined);
  if (local) writer.openPacks(files as string[]);
  let written = 0;
  let packBytes = 0;
  const prepare = async (i: number, j: number): Promise<void> => {
    const frames = writer.frames(i, j);
    let comp: Buffer | undefined;
    let pairs: Uint32Array | undefined;
    if (local) {
      for (const f of frames) packBytes += toc.frames[f].compressedLength;
    } else {
      const r = await reader.readFrames(frames);
      comp = r.comp;
      pairs = new Uint32Array(frames.length * 2);
      for (let k = 0; k < frames.length; k++) {
        pairs[2 * k] = frames[k];
        pairs[2 * k + 1] = r.at[k];
      }
    }
    let bad: number;
    try {
      bad = await writer.prepare(i, j, comp, pairs, threads);
    } catch (e) {
      if (!(e instanceof OcichunkError) || e.code !== 'ECORRUPT') throw e;
      throw new OcichunkError('ECORRUPT', `${img.image.source.name}: ${e.message}`, { cause: e });
    }
    if (bad >= 0) {
      const { digest: hex, frame } = toc.chunks[bad];
      const pack = toc.packs[toc.frames[frame].pack];
      throw new OcichunkError('EDIGEST', `${img.image.source.name}: chunk sha256:${hex} in pack ${pack} does not match its digest`);
    }
  };
  // the next batch is fetched (read, decompressed, verified) while this one is written
  const fetchFrom = (i: number) => {
    // a small first batch: writing starts sooner
    const limit = i === 0 ? Math.min(batchBytes, 2 << 20) : batchBytes;
    let bytes = 0;
    let j = i;
    while (j < seq.length && (j === i || bytes + toc.chunks[seq[j]].length <= limit)) bytes += toc.chunks[seq[j++]].length;
    const got = prepare(i, j);
    got.catch(() => {}); // awaited below
    return { i, j, bytes, got };
  };
  // the dictionaries the frames were compressed with, before any frame is decompressed
  if (toc.dicts?.length) await reader.loadDictionaries(toc.frames.keys());
  let next = seq.length ? fetchFrom(0) : undefined;
  try {
    // directories and the like are created while the first batch is fetched
    await writer.skeleton();
    while (next) {
      throwIfAborted(opts.signal, `restore into ${root} (a partial tree is left there, mode 0700)`);
      const { i, j, bytes, got } = next;
      await got;
      next = j < seq.length ? fetchFrom(j) : undefined;
      await writer.writePrepared(i);
      written += bytes;
      opts.onProgress?.({ bytes: written, done: j, chunks: seq.length });
    }
  } finally {
    await next?.got.catch(() => {});
    await reader.close();
  }
  const s = writer.finish();
  const regs = toc.layers.flatMap((l) => l.entries.filter((e) => e.type === 'reg'));
  return {
    source: img.image.source.name,
    target: root,
    layers: toc.layers.length,
    entries: s.entries,
    files: regs.length,
    fileBytes: regs.reduce((a, e) => a + (e.size ?? 0), 0),
    written: { files: s.files, bytes: s.fileBytes, dirs: s.dirs, hardlinks: s.hardlinks },
    packBytesRead: reader.bytesRead + packBytes,
    ...(img.image.source.transferReport ? { transfer: img.image.source.transferReport() } : {}),
    ownership: process.getuid?.() === 0,
    seconds: (performance.now() - t0) / 1000,
  };
}
