/**
 * Random access into an uncompressed tar archive (oci-archive, docker-archive): one pass over the
 * headers records where each regular file's bytes lie, so blobs are read in place, never extracted.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { OcichunkError } from '../errors.js';
import { READ_SIZE, VerifyingStream, sha256Digest, type RangeReader } from '../store/blobstore.js';

export interface TarMember {
  offset: number;
  size: number;
}

function field(h: Buffer, off: number, len: number): string {
  const end = h.indexOf(0, off);
  return h.toString('utf8', off, end === -1 || end > off + len ? off + len : end);
}

function octal(h: Buffer, off: number, len: number, what: string): number {
  if (h[off] & 0x80) {
    let v = 0;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + h[i];
    return v;
  }
  const s = field(h, off, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new OcichunkError('ECORRUPT', `${what}: bad tar header number ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function normalize(name: string): string {
  return path.posix.normalize(name.replace(/^\.?\/+/, '')).replace(/\/$/, '');
}

export class TarIndex {
  private constructor(
    readonly file: string,
    readonly members: Map<string, TarMember>,
    private readonly fh: fsp.FileHandle,
  ) {}

  static async open(file: string): Promise<TarIndex> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      throw new OcichunkError('ENOTFOUND', `cannot open archive ${file}: ${(e as Error).message}`);
    }
    try {
      const total = (await fh.stat()).size;
      const members = new Map<string, TarMember>();
      const h = Buffer.alloc(512);
      let pos = 0;
      let longName: string | undefined;
      while (pos + 512 <= total) {
        const { bytesRead } = await fh.read(h, 0, 512, pos);
        if (bytesRead < 512) break;
        if (h.every((b) => b === 0)) break;
        let sum = 0;
        for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
        const want = octal(h, 148, 8, file);
        if (sum !== want) throw new OcichunkError('ECORRUPT', `${file}: not a tar archive (bad header checksum at ${pos})`);
        const size = octal(h, 124, 12, file);
        const type = String.fromCharCode(h[156] || 48);
        const dataOff = pos + 512;
        if (dataOff + size > total) {
          throw new OcichunkError('ECORRUPT', `${file}: truncated archive (member at ${pos} claims ${size} bytes)`);
        }
        let name = field(h, 0, 100);
        const magic = h.toString('latin1', 257, 263);
        if (magic.startsWith('ustar')) {
          const prefix = field(h, 345, 155);
          if (prefix && magic === 'ustar\0') name = `${prefix}/${name}`;
        }
        if (type === 'L' || type === 'x') {
          if (size > 1 << 20) throw new OcichunkError('ECORRUPT', `${file}: oversized extended header at ${pos}`);
          const buf = Buffer.alloc(size);
          await fh.read(buf, 0, size, dataOff);
          if (type === 'L') longName = buf.toString('utf8').replace(/\0+$/, '');
          else {
            const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(buf.toString('utf8'));
            if (m) longName = m[1];
          }
        } else {
          if (longName !== undefined) {
            name = longName;
            longName = undefined;
          }
          if (type === '0' || type === '7') members.set(normalize(name), { offset: dataOff, size });
        }
        pos = dataOff + Math.ceil(size / 512) * 512;
      }
      return new TarIndex(file, members, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  has(name: string): boolean {
    return this.members.has(normalize(name));
  }

  member(name: string): TarMember {
    const m = this.members.get(normalize(name));
    if (!m) throw new OcichunkError('ENOTFOUND', `${this.file}: no member ${name}`);
    return m;
  }

  async read(name: string, max = 64 << 20): Promise<Buffer> {
    const m = this.member(name);
    if (m.size > max) throw new OcichunkError('EUNSAFE', `${this.file}: member ${name} too large (${m.size} bytes)`);
    const buf = Buffer.alloc(m.size);
    await this.fh.read(buf, 0, m.size, m.offset);
    return buf;
  }

  stream(name: string): Readable {
    const m = this.member(name);
    if (m.size === 0) return fs.createReadStream('/dev/null');
    return fs.createReadStream(this.file, { start: m.offset, end: m.offset + m.size - 1, highWaterMark: READ_SIZE });
  }

  verifiedStream(name: string, digest: string, size: number, what: string): Readable {
    return this.stream(name).pipe(new VerifyingStream(digest, size, what));
  }

  async digestOf(name: string): Promise<{ digest: string; size: number }> {
    const m = this.member(name);
    const { createHash } = await import('node:crypto');
    const h = createHash('sha256');
    for await (const chunk of this.stream(name)) h.update(chunk as Buffer);
    return { digest: 'sha256:' + h.digest('hex'), size: m.size };
  }

  ranges(name: string): RangeReader {
    const m = this.member(name);
    const fh = this.fh;
    return {
      size: m.size,
      async read(offset: number, length: number) {
        if (offset < 0 || offset + length > m.size) {
          throw new OcichunkError('ECORRUPT', `${name}: range ${offset}+${length} beyond its ${m.size} bytes`);
        }
        const buf = Buffer.allocUnsafe(length);
        const { bytesRead } = await fh.read(buf, 0, length, m.offset + offset);
        if (bytesRead !== length) throw new OcichunkError('ECORRUPT', `${name}: short read`);
        return buf;
      },
      close: async () => {},
    };
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

export function blobMember(digest: string): string {
  return `blobs/sha256/${digest.slice('sha256:'.length)}`;
}

export { sha256Digest };
