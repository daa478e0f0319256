/**
 * Content-addressed blob store laid out as an OCI image layout's blobs/ directory.
 * Idempotent and atomic: blobs are written to a temp file, verified, then renamed into place,
 * so no partial blob is ever visible under its digest. Readers verify digest and size as they read.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { OcichunkError } from '../errors.js';
import { native } from '../native/index.js';
import { assertDigest, type Descriptor } from '../oci/types.js';
import { tempName } from './owner.js';

/**
 * Read size of blob streams: just under glibc's 1 MiB mmap threshold (fsx::return_large_buffers),
 * so read buffers come from the heap and are reused, where 1 MiB ones were fresh mappings faulted
 * in page by page (convert of a 727 MiB image: 315k -> 173k page faults, 2.5 -> 0.8 s of system time).
 */
export const READ_SIZE = (1 << 20) - (64 << 10);

export function sha256Digest(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** A pass-through stream that fails at the end if the bytes do not match `digest`/`size`. */
export class VerifyingStream extends Transform {
  private hash: ReturnType<typeof createHash> | undefined;
  private seen = 0;
  /** `external`: the digest computed elsewhere from the same bytes (e.g. a native thread reading the file). */
  constructor(
    private readonly digest: string,
    private readonly size: number | undefined,
    private readonly what: string,
    private readonly external?: Promise<string>,
  ) {
    super();
    if (external) external.catch(() => {});
    else this.hash = createHash('sha256');
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.size !== undefined && this.seen > this.size) {
      cb(new OcichunkError('EDIGEST', `${this.what}: blob ${this.digest} is larger than its descriptor's ${this.size} bytes`));
      return;
    }
    this.hash?.update(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    if (this.size !== undefined && this.seen !== this.size) {
      cb(new OcichunkError('EDIGEST', `${this.what}: blob ${this.digest} is truncated: ${this.seen} of ${this.size} bytes`));
      return;
    }
    const check = (got: string) =>
      got === this.digest ? cb() : cb(new OcichunkError('EDIGEST', `${this.what}: digest mismatch: expected ${this.digest}, content hashes to ${got}`));
    if (this.hash) check('sha256:' + this.hash.digest('hex'));
    else this.external!.then(check, (e: unknown) => cb(e as Error));
  }
}

/**
 * Temp files in blobs/sha256 are `.tmp-<pid>-<start>-<ctx>-<random>`: the owner is in the name, so
 * the next writer (OciLayoutSink.init) or `ocichunk gc` removes those of dead processes.
 */
export const BLOB_TEMP_PREFIX = '.tmp-';

export interface BlobWriter {
  write(chunk: Buffer): Promise<void>;
  readonly size: number;
  /** Verify (if `expected` given), then rename into place. Returns the digest. */
  commit(expected?: { digest: string; size?: number }): Promise<{ digest: string; size: number }>;
  abort(): Promise<void>;
}

export class BlobStore {
  readonly dir: string;
  constructor(readonly root: string) {
    this.dir = path.join(root, 'blobs', 'sha256');
  }

  blobPath(digest: string): string {
    assertDigest(digest, 'blob');
    return path.join(this.dir, digest.slice('sha256:'.length));
  }

  async has(digest: string, size?: number): Promise<boolean> {
    try {
      const st = await fsp.stat(this.blobPath(digest));
      return st.isFile() && (size === undefined || st.size === size);
    } catch {
      return false;
    }
  }

  async size(digest: string): Promise<number> {
    try {
      return (await fsp.stat(this.blobPath(digest))).size;
    } catch {
      throw new OcichunkError('ENOTFOUND', `blob ${digest} not found in ${this.root}`);
    }
  }

  async createWriter(): Promise<BlobWriter> {
    await fsp.mkdir(this.dir, { recursive: true });
    const t = await createTempBlob(path.join(this.dir, tempName(BLOB_TEMP_PREFIX)), 0o644);
    return {
      get size() {
        return t.size;
      },
      write: (chunk: Buffer) => t.write(chunk),
      commit: async (expected) => {
        const got = await t.finish(expected);
        if (await this.has(got.digest, got.size)) await t.discard();
        else await fsp.rename(t.path, this.blobPath(got.digest));
        return got;
      },
      abort: () => t.discard(),
    };
  }

  /**
   * Stage a blob from a local file by hardlink, or by a (copy-on-write where possible) kernel copy,
   * under a temp name; commit() publishes it once the caller has verified the content.
   */
  async stageFile(file: string, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<StagedBlob> {
    const noop: StagedBlob = { commit: async () => {}, abort: async () => {} };
    if (await this.has(desc.digest, desc.size)) return noop;
    await fsp.mkdir(this.dir, { recursive: true });
    const tmp = path.join(this.dir, tempName(BLOB_TEMP_PREFIX));
    try {
      await fsp.link(file, tmp).catch(() => fsp.copyFile(file, tmp, fs.constants.COPYFILE_FICLONE));
      const st = await fsp.stat(tmp);
      if (st.size !== desc.size) {
        throw new OcichunkError('EDIGEST', `blob ${desc.digest}: ${file} has ${st.size} bytes, expected ${desc.size}`);
      }
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
    return {
      commit: () => fsp.rename(tmp, this.blobPath(desc.digest)),
      abort: () => fsp.rm(tmp, { force: true }),
    };
  }

  /** Store bytes; a no-op if the blob is already present. */
  async putBytes(bytes: Buffer, expectedDigest?: string): Promise<{ digest: string; size: number }> {
    const digest = sha256Digest(bytes);
    if (expectedDigest && expectedDigest !== digest) {
      throw new OcichunkError('EDIGEST', `blob ${expectedDigest}: content hashes to ${digest}`);
    }
    if (await this.has(digest, bytes.length)) return { digest, size: bytes.length };
    const w = await this.createWriter();
    try {
      await w.write(bytes);
      return await w.commit({ digest, size: bytes.length });
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  /** A stream of the blob's bytes that errors if they don't match the descriptor. */
  openRead(desc: Pick<Descriptor, 'digest' | 'size'>, what = 'blob'): Readable {
    const p = this.blobPath(desc.digest);
    const src = fs.createReadStream(p, { highWaterMark: READ_SIZE });
    // the digest is computed by a native thread reading the same file; the stream only counts bytes
    const v = new VerifyingStream(
      desc.digest,
      desc.size,
      what,
      native.hashFile(p).then((r) => r.digest),
    );
    src.on('error', (e: NodeJS.ErrnoException) =>
      v.destroy(e.code === 'ENOENT' ? new OcichunkError('ENOTFOUND', `${what}: blob ${desc.digest} is missing from ${this.root}`) : e),
    );
    return src.pipe(v);
  }

  /** Read a whole (small) blob, verified, refusing anything over `max` bytes. */
  async readAll(desc: Pick<Descriptor, 'digest' | 'size'>, what = 'blob', max = 64 << 20): Promise<Buffer> {
    if (desc.size > max) throw new OcichunkError('EUNSAFE', `${what}: blob ${desc.digest} is too large (${desc.size} bytes)`);
    let data: Buffer;
    try {
      data = await fsp.readFile(this.blobPath(desc.digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new OcichunkError('ENOTFOUND', `${what}: blob ${desc.digest} is missing from ${this.root}`);
      }
      throw e;
    }
    if (data.length !== desc.size) {
      throw new OcichunkError('EDIGEST', `${what}: blob ${desc.digest} has ${data.length} bytes, descriptor says ${desc.size}`);
    }
    const got = sha256Digest(data);
    if (got !== desc.digest) throw new OcichunkError('EDIGEST', `${what}: blob ${desc.digest} content hashes to ${got}`);
    return data;
  }

  /** Positional reader for pack blobs (chunk-level verification is the caller's job). */
  async openRanges(digest: string): Promise<RangeReader> {
    const p = this.blobPath(digest);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(p, 'r');
    } catch {
      throw new OcichunkError('ENOTFOUND', `blob ${digest} is missing from ${this.root}`);
    }
    const size = (await fh.stat()).size;
    return {
      size,
      async read(offset: number, length: number): Promise<Buffer> {
        if (offset < 0 || length < 0 || offset + length > size) {
          throw new OcichunkError('ECORRUPT', `blob ${digest}: range ${offset}+${length} beyond its ${size} bytes`);
        }
        const buf = Buffer.allocUnsafe(length);
        let got = 0;
        while (got < length) {
          const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
          if (bytesRead === 0) throw new OcichunkError('ECORRUPT', `blob ${digest}: short read at ${offset + got}`);
          got += bytesRead;
        }
        return buf;
      },
      close: () => fh.close(),
    };
  }
}

export interface StagedBlob {
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export interface RangeReader {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}

/** A temp file written by appends; `finish` closes it, hashes it (natively) and checks it. */
export interface TempBlob {
  readonly path: string;
  readonly size: number;
  write(chunk: Buffer): Promise<void>;
  /** Close and hash; on a mismatch with `expected` the file is removed and EDIGEST thrown. */
  finish(expected?: { digest: string; size?: number }): Promise<{ digest: string; size: number }>;
  /** Close and remove. */
  discard(): Promise<void>;
}

export async function createTempBlob(file: string, mode: number): Promise<TempBlob> {
  const fh = await fsp.open(file, 'wx', mode);
  let size = 0;
  let closed = false;
  const close = async () => {
    if (!closed) {
      closed = true;
      await fh.close();
    }
  };
  return {
    path: file,
    get size() {
      return size;
    },
    async write(chunk: Buffer) {
      size += chunk.length;
      let off = 0;
      while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
    },
    async finish(expected) {
      await close();
      // hashed off the JS thread, from the page cache
      const { digest } = await native.hashFile(file);
      if (expected && (expected.digest !== digest || (expected.size !== undefined && expected.size !== size))) {
        await fsp.rm(file, { force: true });
        throw new OcichunkError('EDIGEST', `blob ${expected.digest}: content hashes to ${digest} (${size} bytes, expected ${expected.size ?? '?'})`);
      }
      return { digest, size };
    },
    async discard() {
      await close().catch(() => {});
      await fsp.rm(file, { force: true });
    },
  };
}

/** Atomically replace a small file (temp + rename); the temp file is named for its owner (owner.ts). */
export async function writeFileAtomic(file: string, data: Buffer | string): Promise<void> {
  const tmp = tempName(`${file}.tmp-`);
  await fsp.writeFile(tmp, data);
  await fsp.rename(tmp, file);
}
