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
