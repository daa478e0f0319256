/**
 * Raw tar headers as the native layer scan hands them over without `canon` (crates/core/src/tarscan.rs
 * encode_header), decoded into tar-stream's shape: for the tar reader's own tests and the oracle.
 */
import { OcichunkError } from '../../src/errors.js';
import type { RawHeader } from './canonical-oracle.js';

/** tar type flags as tar-stream names them (the names canonicalize() expects). */
const TYPE_NAMES: Record<number, string> = {
  0: 'file',
  0x30: 'file',
  0x31: 'link',
  0x32: 'symlink',
  0x33: 'character-device',
  0x34: 'block-device',
  0x35: 'directory',
  0x36: 'fifo',
  0x37: 'contiguous-file',
  0x53: 'gnu-sparse',
  0x56: 'gnu-volume-header',
  0x4d: 'gnu-multivol',
  0x44: 'gnu-dumpdir',
};

/**
 * Headers as the native layer scan encodes them (crates/core/src/tarscan.rs `encode_header`), in
 * the shape tar-stream gives: names, link targets and PAX values as latin1 (byte-preserving) text.
 */
export function decodeHeaders(buf: Buffer, count: number): RawHeader[] {
  const out: RawHeader[] = [];
  let o = 0;
  const bytes = () => {
    const n = buf.readUInt32LE(o);
    const s = buf.toString('latin1', o + 4, o + 4 + n);
    o += 4 + n;
    return s;
  };
  for (let i = 0; i < count; i++) {
    const flag = buf[o];
    const h: RawHeader = {
      name: '',
      type: TYPE_NAMES[flag] ?? `type ${JSON.stringify(String.fromCharCode(flag))}`,
      mode: buf.readUInt32LE(o + 1),
      uid: buf.readDoubleLE(o + 5),
      gid: buf.readDoubleLE(o + 13),
      size: buf.readDoubleLE(o + 21),
      mtime: new Date(buf.readDoubleLE(o + 29) * 1000),
      devmajor: buf.readUInt32LE(o + 37),
      devminor: buf.readUInt32LE(o + 41),
    };
    o += 45;
    h.name = bytes();
    const link = bytes();
    h.linkname = link === '' ? null : link;
    const np = buf.readUInt32LE(o);
    o += 4;
    if (np > 0) {
      const pax: Record<string, string> = Object.create(null) as Record<string, string>;
      for (let k = 0; k < np; k++) {
        const key = bytes();
        pax[key] = bytes();
      }
      h.pax = pax;
    } else h.pax = null;
    out.push(h);
  }
  if (o !== buf.length) throw new OcichunkError('EINTERNAL', `native tar headers: ${buf.length - o} bytes left over`);
  return out;
}
