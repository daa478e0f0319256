/**
 * The merged view of a chunked image's layers, as a container runtime would see it after unpacking
 * them in order: whiteouts delete, opaque markers empty a directory, a non-directory replaces a
 * subtree, hardlinks share the inode of their target. Built from the TOC alone (no content).
 */
import type { Toc, TocEntry } from '../chunked/toc.js';
import { OcichunkError } from '../errors.js';
import type { EntryType } from '../layer/entry.js';

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

function checkPath(p: string, what: string): string[] {
  if (p === '.') return [];
  const parts = p.split('/');
  if (p.startsWith('/') || parts.some((c) => c === '' || c === '.' || c === '..')) {
    throw new OcichunkError('EUNSAFE', `${what}: path is not a normalized relative path`);
  }
  return parts;
}

export class MergedTree {
  readonly root: Inode;
  private nextIno = 2;
  /** every inode by number (hardlinks: one inode, several names) */
  readonly inodes: Inode[] = [];
  entries = 0;

  constructor(readonly toc: Toc) {
    this.root = { ino: 1, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, size: 0, nlink: 2, children: new Map() };
    this.inodes[1] = this.root;
    for (const [li, layer] of toc.layers.entries()) {
      for (const e of layer.entries) this.apply(e, `layer ${li} entry ${JSON.stringify(e.path)}`);
    }
  }

  private make(e: TocEntry, type: NodeType): Inode {
    const n: Inode = { ino: this.nextIno++, type, mode: e.mode ?? 0, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? 0, size: 0, nlink: 1 };
    if (type === 'reg') {
      n.size = e.size ?? 0;
      n.chunks = e.chunks ?? [];
    }
    if (type === 'dir') {
      n.children = new Map();
      n.nlink = 2;
    }
    if (type === 'symlink') {
      n.link = e.link ?? '';
      n.size = Buffer.byteLength(n.link);
    }
    if (type === 'char' || type === 'block') {
      n.devMajor = e.devMajor ?? 0;
      n.devMinor = e.devMinor ?? 0;
    }
    if (e.xattrs) n.xattrs = e.xattrs;
    this.inodes[n.ino] = n;
    return n;
  }

  private meta(n: Inode, e: TocEntry): void {
    n.mode = e.mode ?? 0;
    n.uid = e.uid ?? 0;
    n.gid = e.gid ?? 0;
    n.mtime = e.mtime ?? 0;
    if (e.xattrs) n.xattrs = e.xattrs;
    else delete n.xattrs;
  }

  /** The directory holding `parts`' last component, made (0755) where a layer left it out. */
  private parentOf(parts: string[], what: string): Inode {
    let d = this.root;
    for (const c of parts.slice(0, -1)) {
      let n = d.children!.get(c);
      if (!n) {
        n = { ino: this.nextIno++, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, size: 0, nlink: 2, children: new Map() };
        this.inodes[n.ino] = n;
        d.children!.set(c, n);
      }
      if (n.type !== 'dir') throw new OcichunkError('ECORRUPT', `${what}: ${c} is not a directory`);
      d = n;
    }
    return d;
  }

  private unlink(dir: Inode, name: string): void {
    const old = dir.children!.get(name);
    if (!old) return;
    old.nlink--;
    dir.children!.delete(name);
  }

  private apply(e: TocEntry, what: string): void {
    this.entries++;
    const parts = checkPath(e.path, what);
    if (parts.length === 0) {
      if (e.type === 'dir') this.meta(this.root, e);
      else if (e.type === 'opaque') this.root.children!.clear();
      else throw new OcichunkError('EUNSAFE', `${what}: the root can only be a directory`);
      return;
    }
    const name = parts[parts.length - 1];
    if (e.type === 'whiteout') {
      // the parent may be missing: nothing to delete then
      const d = this.lookupParts(parts.slice(0, -1));
      if (d?.type === 'dir') this.unlink(d, name);
      return;
    }
    const dir = this.parentOf(parts, what);
    const old = dir.children!.get(name);
    switch (e.type) {
      case 'opaque':
        if (old?.type === 'dir') old.children!.clear();
        return;
      case 'dir':
        if (old?.type === 'dir') {
          this.meta(old, e);
          return;
        }
        this.unlink(dir, name);
        dir.children!.set(name, this.make(e, 'dir'));
        return;
      case 'hardlink': {
        const linkWhat = `${what} (hardlink to ${JSON.stringify(e.link)})`;
        const target = this.lookupParts(checkPath(e.link ?? '', linkWhat));
        if (!target) throw new OcichunkError('ECORRUPT', `${linkWhat}: target does not exist`);
        if (target.type === 'dir') throw new OcichunkError('EUNSAFE', `${linkWhat}: target is a directory`);
        if (target === old) return;
        this.unlink(dir, name);
        target.nlink++;
        dir.children!.set(name, target);
        return;
      }
      case 'reg':
      case 'symlink':
      case 'char':
      case 'block':
      case 'fifo':
        this.unlink(dir, name);
        dir.children!.set(name, this.make(e, e.type));
        return;
    }
  }

  private lookupParts(parts: string[]): Inode | undefined {
    let n: Inode | undefined = this.root;
    for (const c of parts) {
      if (n?.type !== 'dir') return undefined;
      n = n.children!.get(c);
    }
    return n;
  }

  /** The inode at a path of the image (leading '/' allowed; symlinks in the path are not followed). */
  lookup(p: string): Inode | undefined {
    const parts = p.split('/').filter((c) => c !== '' && c !== '.');
    if (parts.includes('..')) return undefined;
    return this.lookupParts(parts);
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
