/** Canonical filesystem entries: what a tar header means, without the tar implementation's noise. */
export type EntryType = 'reg' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'whiteout' | 'opaque';

export interface Entry {
  /** Normalized relative path: no leading '/' or './', no '.' or '..' components, no trailing '/'; '.' is the root. */
  path: string;
  type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Content size (regular files only). */
  size: number;
  /** Seconds since the epoch, clamped per the conversion options. */
  mtime: number;
  /** Symlink target (verbatim) or hardlink target (normalized path). */
  link?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes sorted by name. */
  xattrs?: Array<[string, Buffer]>;
}

/** What shapes canonical entries beyond the tar's content (crates/core/src/format/canonical.rs CanonOptions). */
export interface CanonOptions {
  /** Clamp mtimes to at most this many seconds since the epoch (default 0). */
  sourceDateEpoch: number;
  /** Keep mtimes unchanged (whole seconds). */
  keepMtime: boolean;
}

/** Order of entries that share a path: deletions first, then the entry, then an opaque marker. */
export const TYPE_ORDER: Record<EntryType, number> = {
  whiteout: 0,
  reg: 1,
  dir: 1,
  symlink: 1,
  hardlink: 1,
  char: 1,
  block: 1,
  fifo: 1,
  opaque: 2,
};

/**
 * Sort key of a path: its UTF-8 bytes with '/' mapped to 0x00, so that comparing keys bytewise
 * compares paths component by component (a directory's subtree directly follows it, siblings in
 * bytewise order: the order of `tar --sort=name` and of a sorted directory walk). '.' sorts first.
 */
export function pathKey(path: string): Buffer {
  if (path === '.') return Buffer.alloc(0);
  const b = Buffer.from(path);
  for (let i = 0; i < b.length; i++) if (b[i] === 0x2f) b[i] = 0;
  return b;
}

/** Canonical order: component-wise bytewise path order, then type order. */
export function compareEntries(a: { path: string; type: EntryType }, b: { path: string; type: EntryType }): number {
  const c = Buffer.compare(pathKey(a.path), pathKey(b.path));
  return c !== 0 ? c : TYPE_ORDER[a.type] - TYPE_ORDER[b.type];
}
