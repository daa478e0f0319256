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
import type { NativeCheckedToc } from '../native/index.js';

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

/** Bytes [from, to) of TOC chunk `chunk` go at `at` in a read's output. */
export interface ReadPiece {
  chunk: number;
  from: number;
  to: number;
  at: number;
}

export class MergedTree {
  readonly root: Inode;
  /** every inode by number (hardlinks: one inode, several names) */
  readonly inodes: Inode[] = [];

  /** `checked`: the TOC as the format module checked and merged it; `toc`: its decoded form. */
  constructor(
    readonly toc: Toc,
    private readonly checked: NativeCheckedToc,
  ) {
    const view = JSON.parse(checked.view().toString('utf8')) as { inodes: InodeSpec[] };
    for (const s of view.inodes) {
      const n: Inode = { ino: s.ino, type: s.kind, mode: s.mode, uid: s.uid, gid: s.gid, mtime: s.mtime, size: s.size, nlink: s.nlink };
      if (s.link !== undefined) n.link = s.link;
      if (s.devMajor !== undefined) {
        n.devMajor = s.devMajor;
        n.devMinor = s.devMinor;
      }
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

  /**
   * Where the bytes [offset, offset + length) of a regular file are (clipped to the file): the
   * format module's offset -> chunk lookup, one piece per chunk in file order.
   */
  plan(n: Inode, offset: number, length: number): ReadPiece[] {
    if (n.type !== 'reg') throw new OcichunkError('EUSAGE', `inode ${n.ino} is not a regular file`);
    const rows = this.checked.plan(n.ino, offset, length);
    const out: ReadPiece[] = [];
    for (let i = 0; i < rows.length; i += 4) out.push({ chunk: rows[i], from: rows[i + 1], to: rows[i + 2], at: rows[i + 3] });
    return out;
  }
}
