/**
 * Test-side reader of the canonical entries the native layer scan hands over
 * (crates/core/src/format/canonical.rs `encode_entry`; the converter reads them natively in
 * crates/core/src/format/build.rs). Text is UTF-8, xattr values are raw bytes.
 */
import { OcichunkError } from '../../src/errors.js';
import type { Entry, EntryType } from '../../src/layer/entry.js';

const KINDS: Array<EntryType | null> = [null, 'reg', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout', 'opaque'];

/** One entry per tar header of the batch; null for headers with no filesystem meaning (aufs bookkeeping). */
export function decodeEntries(buf: Buffer, count: number): Array<Entry | null> {
  const out: Array<Entry | null> = [];
  let o = 0;
  const bytes = () => {
    const n = buf.readUInt32LE(o);
    o += 4 + n;
    return buf.subarray(o - n, o);
  };
  for (let i = 0; i < count; i++) {
    const kind = buf[o++];
    const type = KINDS[kind];
    if (type === undefined) throw new OcichunkError('EINTERNAL', `native entries: unknown kind ${kind}`);
    if (type === null) {
      out.push(null);
      continue;
    }
    const e: Entry = {
      path: '',
      type,
      mode: buf.readUInt32LE(o),
      uid: buf.readDoubleLE(o + 4),
      gid: buf.readDoubleLE(o + 12),
      size: buf.readDoubleLE(o + 20),
      mtime: buf.readDoubleLE(o + 28),
    };
    const devMajor = buf.readUInt32LE(o + 36);
    const devMinor = buf.readUInt32LE(o + 40);
    o += 44;
    e.path = bytes().toString('utf8');
    const link = bytes();
    if (type === 'symlink' || type === 'hardlink') e.link = link.toString('utf8');
    if (type === 'char' || type === 'block') {
      e.devMajor = devMajor;
      e.devMinor = devMinor;
    }
    const nx = buf.readUInt32LE(o);
    o += 4;
    if (nx > 0) {
      e.xattrs = [];
      for (let k = 0; k < nx; k++) {
        const name = bytes().toString('utf8');
        e.xattrs.push([name, Buffer.from(bytes())]);
      }
    }
    out.push(e);
  }
  if (o !== buf.length) throw new OcichunkError('EINTERNAL', `native entries: ${buf.length - o} bytes left over`);
  return out;
}
