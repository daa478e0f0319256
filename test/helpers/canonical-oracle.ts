/**
 * A test oracle, written independently of the converter's canonicalization (crates/core/src/format/canonical.rs):
 * tar-stream's header -> canonical Entry. Normalizes paths, keeps numeric ids and mode bits, clamps mtimes,
 * keeps sorted xattrs, turns overlay whiteouts into explicit entries and drops everything else
 * (uname/gname, atime/ctime, SCHILY.dev/ino, LIBARCHIVE.*, ...).
 */
import { OcichunkError } from '../../src/errors.js';
import type { CanonOptions, Entry } from '../../src/layer/entry.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** tar-stream gives us names decoded as latin1 (byte-preserving); turn them back into UTF-8 text. */
function bytesToText(s: string, what: string): string {
  try {
    return utf8.decode(Buffer.from(s, 'latin1'));
  } catch {
    throw new OcichunkError('EUNSUPPORTED', `${what}: path ${JSON.stringify(s)} is not valid UTF-8`);
  }
}

/** Normalize a tar member name to a relative path inside the root, refusing anything that escapes it. */
export function normalizePath(name: string, what: string): string {
  if (name.includes('\0')) throw new OcichunkError('EUNSAFE', `${what}: path contains a NUL byte`);
  if (name.startsWith('/')) {
    throw new OcichunkError('EUNSAFE', `${what}: absolute path ${JSON.stringify(name)} is not allowed in a layer`);
  }
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new OcichunkError('EUNSAFE', `${what}: path ${JSON.stringify(name)} escapes the root with '..'`);
    out.push(part);
  }
  return out.length === 0 ? '.' : out.join('/');
}

function num(v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

export interface RawHeader {
  name: string;
  type: string | null;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: Date;
  linkname?: string | null;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string> | null;
}

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** Returns null for entries that carry no filesystem meaning (aufs bookkeeping). */
export function canonicalize(h: RawHeader, opts: CanonOptions, layer: string): Entry | null {
  const rawName = h.pax?.path !== undefined ? h.pax.path : h.name;
  const name = bytesToText(rawName, `${layer}: entry`);
  const what = `${layer}: entry ${JSON.stringify(name)}`;
  const path = normalizePath(name, what);
  const pax = h.pax ?? {};
  const mtimeRaw = pax.mtime !== undefined ? Math.floor(num(pax.mtime, 0)) : Math.floor((h.mtime?.getTime() ?? 0) / 1000);
  const mtime = opts.keepMtime ? mtimeRaw : Math.min(mtimeRaw, opts.sourceDateEpoch);
  const base: Entry = {
    path,
    type: 'reg',
    mode: (h.mode ?? 0) & 0o7777,
    uid: num(pax.uid, h.uid ?? 0),
    gid: num(pax.gid, h.gid ?? 0),
    size: 0,
    mtime,
  };
  if (!Number.isSafeInteger(base.uid) || base.uid < 0 || !Number.isSafeInteger(base.gid) || base.gid < 0) {
    throw new OcichunkError('ECORRUPT', `${what}: invalid uid/gid`);
  }
  const slash = path.lastIndexOf('/');
  const dir = slash === -1 ? '.' : path.slice(0, slash);
  const leaf = slash === -1 ? path : path.slice(slash + 1);
  if (leaf.startsWith(WH)) {
    const join = (p: string) => (dir === '.' ? p : `${dir}/${p}`);
    if (leaf === OPAQUE) return { ...base, path: dir, type: 'opaque', mode: 0, uid: 0, gid: 0, mtime: 0 };
    if (leaf.startsWith(WH + WH)) return null; // .wh..wh.plnk, .wh..wh.aufs: aufs internals
    const target = leaf.slice(WH.length);
    if (target === '' || target === '.' || target === '..') throw new OcichunkError('EUNSAFE', `${what}: invalid whiteout`);
    return { ...base, path: join(target), type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: 0 };
  }
  const xattrs: Array<[string, Buffer]> = [];
  for (const [k, v] of Object.entries(pax)) {
    if (k.startsWith('SCHILY.xattr.')) {
      xattrs.push([bytesToText(k.slice('SCHILY.xattr.'.length), what), Buffer.from(v, 'latin1')]);
    }
  }
  xattrs.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  if (xattrs.length) base.xattrs = xattrs;
  switch (h.type) {
    case 'file':
    case 'contiguous-file':
      return { ...base, type: 'reg', size: h.size ?? 0 };
    case 'directory':
      return { ...base, type: 'dir' };
    case 'symlink': {
      const raw = pax.linkpath ?? h.linkname ?? '';
      if (raw === '') throw new OcichunkError('ECORRUPT', `${what}: symlink without target`);
      return { ...base, type: 'symlink', link: bytesToText(raw, what) };
    }
    case 'link': {
      const raw = pax.linkpath ?? h.linkname ?? '';
      const link = normalizePath(bytesToText(raw, what), `${what} (hardlink target)`);
      if (link === '.') throw new OcichunkError('EUNSAFE', `${what}: hardlink to the root directory`);
      if (link === path) throw new OcichunkError('ECORRUPT', `${what}: hardlink to itself`);
      return { ...base, type: 'hardlink', link };
    }
    case 'character-device':
    case 'block-device':
      return { ...base, type: h.type === 'character-device' ? 'char' : 'block', devMajor: h.devmajor ?? 0, devMinor: h.devminor ?? 0 };
    case 'fifo':
      return { ...base, type: 'fifo' };
    default:
      throw new OcichunkError('EUNSUPPORTED', `${what}: unsupported tar entry type ${JSON.stringify(h.type)}`);
  }
}
