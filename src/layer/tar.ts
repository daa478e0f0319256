/**
 * Streaming layer reader: sniffs and undoes compression (gzip via node:zlib, zstd via zstd-napi), then
 * yields tar entries one at a time with their data streams. Never holds a whole layer in memory.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { type Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { DecompressStream } from 'zstd-napi';
import { OcichunkError, withContext } from '../errors.js';
import type { RawHeader } from './canonical.js';
import { sniff, type SniffedCompression } from './compression.js';

// tar-stream decodes PAX records as UTF-8, which mangles binary xattr values (security.capability,
// ACLs). Decode them byte-preserving (latin1) instead; canonicalize() turns names back into UTF-8.
const req = createRequire(import.meta.url);
const tarHeaders = req(path.join(path.dirname(req.resolve('tar-stream')), 'headers.js')) as {
  decodePax: (buf: Buffer) => Record<string, string>;
};
tarHeaders.decodePax = function decodePaxBinary(buf: Buffer): Record<string, string> {
  const result: Record<string, string> = {};
  let rest = buf;
  while (rest.length) {
    const sp = rest.indexOf(0x20);
    if (sp <= 0) break;
    const len = parseInt(rest.toString('latin1', 0, sp), 10);
    if (!(len > sp + 1) || len > rest.length) {
      throw new OcichunkError('ECORRUPT', 'malformed PAX extended header');
    }
    const rec = rest.subarray(sp + 1, len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw new OcichunkError('ECORRUPT', 'malformed PAX record (no "=")');
    const key = rec.toString('latin1', 0, eq);
    // path/linkpath are UTF-8 by the PAX spec; keep their bytes so canonicalize() decodes them once.
    result[key] = rec.toString('latin1', eq + 1);
    rest = rest.subarray(len);
  }
  return result;
};


/** Resolve with the first bytes of a stream without consuming them. */
export function peek(stream: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = (b: Buffer) => {
      stream.off('readable', onReadable);
      stream.off('error', onError);
      stream.off('end', onEnd);
      resolve(b);
    };
    const onReadable = () => {
      const c = stream.read() as Buffer | null;
      if (c === null) return;
      stream.unshift(c);
      done(c);
    };
    const onError = (e: Error) => {
      stream.off('readable', onReadable);
      reject(e);
    };
    const onEnd = () => done(Buffer.alloc(0));
    stream.on('readable', onReadable);
    stream.once('error', onError);
    stream.once('end', onEnd);
  });
}

function decompressor(kind: SniffedCompression): Transform | undefined {
  if (kind === 'gzip') return zlib.createGunzip({ chunkSize: 256 << 10 });
  if (kind === 'zstd') return new DecompressStream() as unknown as Transform;
  return undefined;
}

export interface TarEntry {
  header: RawHeader;
  stream: Readable;
}

/**
 * Iterate the entries of a (maybe compressed) tar stream. Each entry's stream must be consumed (or
 * resumed) before the next entry arrives. Errors name the layer.
 */
export async function* readLayer(blob: Readable, what: string): AsyncGenerator<TarEntry> {
  let head: Buffer;
  try {
    head = await peek(blob);
  } catch (e) {
    throw withContext(e, what);
  }
  const kind = sniff(head);
  const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
  const d = decompressor(kind);
  const done = (d ? pipeline(blob, d, extract) : pipeline(blob, extract)).catch((e: unknown) => {
    extract.destroy(e as Error);
    throw e;
  });
  let failed: unknown;
  done.catch((e) => {
    failed = e;
  });
  try {
    for await (const entry of extract as AsyncIterable<Readable & { header: RawHeader }>) {
      yield { header: entry.header, stream: entry };
    }
    await done;
  } catch (e) {
    const err = failed ?? e;
    throw classify(err, what, kind);
  } finally {
    if (!extract.destroyed) extract.destroy();
    if (!blob.destroyed) blob.destroy();
  }
}

function classify(e: unknown, what: string, kind: SniffedCompression): OcichunkError {
  if (e instanceof OcichunkError) return withContext(e, what);
  const msg = (e as Error)?.message ?? String(e);
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code?.startsWith('Z_') || /zstd|unexpected end|Unexpected end|Invalid tar|header|premature/i.test(msg)) {
    return new OcichunkError('ECORRUPT', `${what}: corrupt or truncated ${kind === 'none' ? 'tar' : kind + ' tar'} stream: ${msg}`, {
      cause: e,
    });
  }
  return withContext(e, what, 'ECORRUPT');
}
