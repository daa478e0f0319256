/**
 * The merged view of a chunked image's layers, as a container runtime shows it after unpacking
 * them in order. The layers are merged once, by the format's owner in the native core
 * (crates/core/src/format/tree.rs: whiteouts, opaque directories, symlinked parents resolved inside
 * the root, hardlinks sharing a node); this is that tree as JavaScript objects, for ls and cat;
 * the mount serves the same tree natively.
 */
import type { Toc } from '../chunked/toc.js';
import { OcichunkError } from '../errors.js';
import type { EntryType } from '../layer/entry.js';
import { native } from '../native/index.js';

export type NodeType = Exclude<EntryType, 'hardlink' | 'whiteout' | 'opaque'>;

export interface Inode {
  ino: number;
  type: NodeType;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  nlink: number;
  link?: string;
  devMajor?: number;
  devMinor?: number;
  /** name -> base64 value */
  xattrs?: Record<string, string>;
  /** TOC chunk indexes, in file order (regular files) */
  chunks?: number[];
  /** start offset of each chunk in the file, computed on first read */
  starts?: Float64Array;
  children?: Map<string, Inode>;
}

/** One inode as the native view gives it (crates/core/src/format/tree.rs InodeOut, as JSON). */
interface InodeSpec {
  ino: number;
  kind: NodeType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  nlink: number;
  rdev: number;
  link?: string;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Array<[string, number[]]>;
  chunks?: number[];
  children?: Array<[string, number]>;
}

export class MergedTree {
  readonly root: Inode;
  /** every inode by number (hardlinks: one inode, several names) */
  readonly inodes: Inode[] = [];

  /** `blob`: the TOC as stored (checked again and merged natively); `toc`: its decoded form. */
  constructor(
    readonly toc: Toc,
    blob: Buffer,
  ) {
    const view = JSON.parse(native.mergedView(blob).toString('utf8')) as { inodes: InodeSpec[] };
    for (const s of view.inodes) {
      const n: Inode = { ino: s.ino, type: s.kind, mode: s.mode, uid: s.uid, gid: s.gid, mtime: s.mtime, size: s.size, nlink: s.nlink };
      if (s.link !== undefined) n.link = s.link;
      if (s.devMajor !== undefined) (n.devMajor = s.devMajor), (n.devMinor = s.devMinor);
      if (s.xattrs) n.xattrs = Object.fromEntries(s.xattrs.map(([k, v]) => [k, Buffer.from(v).toString('base64')]));
      if (s.kind === 'reg') n.chunks = s.chunks ?? [];
      if (s.kind === 'dir') n.children = new Map();
      this.inodes[n.ino] = n;
    }
    for (const s of view.inodes) for (const [name, ino] of s.children ?? []) this.inodes[s.ino].children!.set(name, this.inodes[ino]);
    this.root = this.inodes[1];
  }

  /** The inode at a path of the image (leading '/' allowed; symlinks in the path are not followed). */
  lookup(p: string): Inode | undefined {
    const parts = p.split('/').filter((c) => c !== '' && c !== '.');
    if (parts.includes('..')) return undefined;
    let n: Inode | undefined = this.root;
    for (const c of parts) {
      if (n?.type !== 'dir') return undefined;
      n = n.children!.get(c);
    }
    return n;
  }

  /** Start offset in the file of each of its chunks. */
  starts(n: Inode): Float64Array {
    if (!n.starts) {
      const s = new Float64Array(n.chunks!.length + 1);
      n.chunks!.forEach((c, i) => (s[i + 1] = s[i] + this.toc.chunks[c][3]));
      if (s[n.chunks!.length] !== n.size) throw new OcichunkError('ECORRUPT', `inode ${n.ino}: chunks add up to ${s[n.chunks!.length]} bytes, size is ${n.size}`);
      n.starts = s;
    }
    return n.starts;
  }
}
