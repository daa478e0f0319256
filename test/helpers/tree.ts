/**
 * A comparable snapshot of a directory tree: type, mode, owner, content hash, link targets, xattrs,
 * device numbers, hardlink groups and (unless asked not to) whole-second mtimes of every path.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/native/index.js';

export interface Node {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  link?: string;
  rdev?: string;
  xattrs?: Record<string, string>;
  /** smallest path of its hardlink group, when nlink > 1 */
  group?: string;
  mtime?: number;
}

function typeOf(st: fs.Stats): string {
  if (st.isFile()) return 'reg';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

export function snapshot(root: string, opts: { mtime?: boolean } = { mtime: true }): Map<string, Node> {
  const out = new Map<string, Node>();
  const inodes = new Map<string, string[]>();
  const walk = (rel: string) => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs, { bigint: false });
    const n: Node = { type: typeOf(st), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
    if (n.type === 'reg') {
      n.size = st.size;
      n.sha256 = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    }
    if (n.type === 'symlink') {
      n.link = fs.readlinkSync(abs);
      n.mode = 0;
    }
    if (n.type === 'char' || n.type === 'block') n.rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
    const names = native.llistxattr(abs).sort();
    if (names.length) n.xattrs = Object.fromEntries(names.map((x) => [x, native.lgetxattr(abs, x).toString('base64')]));
    if (opts.mtime) n.mtime = Math.floor(st.mtimeMs / 1000);
    if (n.type !== 'dir' && st.nlink > 1) {
      const k = `${st.dev}:${st.ino}`;
      const g = inodes.get(k) ?? [];
      g.push(rel);
      inodes.set(k, g);
    }
    out.set(rel || '.', n);
    if (n.type === 'dir') for (const name of fs.readdirSync(abs).sort()) walk(rel ? `${rel}/${name}` : name);
  };
  walk('');
  for (const g of inodes.values()) {
    if (g.length < 2) continue;
    const min = [...g].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))[0];
    for (const p of g) out.get(p)!.group = min;
  }
  return out;
}

/** Differences between two snapshots, as readable lines (empty when equal). */
export function diffTrees(a: Map<string, Node>, b: Map<string, Node>, limit = 20): string[] {
  const out: string[] = [];
  for (const [p, na] of a) {
    const nb = b.get(p);
    if (!nb) out.push(`only in first: ${p}`);
    else if (JSON.stringify(na) !== JSON.stringify(nb)) out.push(`differs: ${p}: ${JSON.stringify(na)} vs ${JSON.stringify(nb)}`);
    if (out.length >= limit) return out;
  }
  for (const p of b.keys()) {
    if (!a.has(p)) out.push(`only in second: ${p}`);
    if (out.length >= limit) return out;
  }
  return out;
}
