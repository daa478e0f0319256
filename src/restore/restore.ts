/**
 * chunked image -> root filesystem: the layers merged as a container runtime applies tar
 * layers (whiteouts delete, opaque markers empty a directory); file contents come from verified chunks.
 */
import fsp from 'node:fs/promises';
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
 * without following any symlink; this side fetches and verifies the chunks, file after file in
 * the writer's order, batch by batch (a file of any size needs one batch of memory).
 */
export async function restoreChunked(img: ChunkedImage, target: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const t0 = performance.now();
  const writer = native.restoreWriter(target, img.checked);
  const root = await fsp.realpath(target);
  const reader = new ChunkReader(img, opts.threads ?? 0);
  const batchBytes = opts.batchBytes ?? 16 << 20;
  const toc = img.toc;
  const seq = writer.chunkSequence();
  let written = 0;
  // the next batch is fetched (read, decompressed, verified) while this one is written
  const fetchFrom = (i: number) => {
    let bytes = 0;
    let j = i;
    while (j < seq.length && (j === i || bytes + toc.chunks[seq[j]].length <= batchBytes)) bytes += toc.chunks[seq[j++]].length;
    const got = reader.fetch(seq.subarray(i, j));
    got.catch(() => {}); // awaited below
    return { i, j, bytes, got };
  };
  let next = seq.length ? fetchFrom(0) : undefined;
  try {
    while (next) {
      throwIfAborted(opts.signal, `restore into ${root} (a partial tree is left there, mode 0700)`);
      const { i, j, bytes, got } = next;
      const chunks = await got;
      next = j < seq.length ? fetchFrom(j) : undefined;
      await writer.write(Array.from(seq.subarray(i, j), (c) => chunks.get(c)!));
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
    packBytesRead: reader.bytesRead,
    ...(img.image.source.transferReport ? { transfer: img.image.source.transferReport() } : {}),
    ownership: process.getuid?.() === 0,
    seconds: (performance.now() - t0) / 1000,
  };
}
