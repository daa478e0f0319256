/**
 * The listing of a merged tree, as the conformance suite writes it down and compares it: one line
 * per path (the root is "."), tab-separated, in the order of a sorted depth-first walk:
 *
 *   "bin/tool"  reg  mode=4755  uid=0  gid=0  size=20  sha256=<hex>  mtime=1700000000  group="bin/hard"
 *
 * Fields: type (reg, dir, symlink, char, block, fifo); mode (octal permission bits, setuid, setgid
 * and sticky included; 0 for symlinks, which have none); uid, gid; size and sha256 (regular files);
 * link (symlink target, JSON); rdev (major:minor, devices); xattrs (JSON object, names sorted,
 * values base64); mtime (seconds; absent where the expected tree could not say, see
 * test/conformance/oracle.ts); nlink (names of the node; not for directories, whose link count
 * depends on the filesystem); group (hardlinks: the smallest path of the names sharing the node,
 * JSON). Lines starting with '#' are comments.
 */
import type { Node as DiskNode } from '../helpers/tree.js';

/** test/helpers/tree.ts's node, and the link count of what is not a directory. */
export interface Node extends DiskNode {
  nlink?: number;
}
export type Tree = Map<string, Node>;
export type Field = keyof Node;

const bytewise = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Every field a listing may hold, in the order a line shows them. */
export const FIELDS: readonly Field[] = ['type', 'mode', 'uid', 'gid', 'size', 'sha256', 'link', 'rdev', 'xattrs', 'mtime', 'nlink', 'group'];

function line(p: string, n: Node): string {
  const cols = [JSON.stringify(p), n.type, `mode=${n.mode.toString(8).padStart(4, '0')}`, `uid=${n.uid}`, `gid=${n.gid}`];
  if (n.size !== undefined) cols.push(`size=${n.size}`);
  if (n.sha256 !== undefined) cols.push(`sha256=${n.sha256}`);
  if (n.link !== undefined) cols.push(`link=${JSON.stringify(n.link)}`);
  if (n.rdev !== undefined) cols.push(`rdev=${n.rdev}`);
  if (n.xattrs !== undefined) cols.push(`xattrs=${show('xattrs', n.xattrs)}`);
  if (n.mtime !== undefined) cols.push(`mtime=${n.mtime}`);
  if (n.nlink !== undefined) cols.push(`nlink=${n.nlink}`);
  if (n.group !== undefined) cols.push(`group=${JSON.stringify(n.group)}`);
  return cols.join('\t');
}

export function formatListing(t: Tree, header: string[] = []): string {
  return [...header.map((h) => `# ${h}`), ...[...t].map(([p, n]) => line(p, n))].join('\n') + '\n';
}

export function parseListing(text: string): Tree {
  const t: Tree = new Map();
  for (const l of text.split('\n')) {
    if (!l || l.startsWith('#')) continue;
    const [p, type, ...cols] = l.split('\t');
    const n: Node = { type, mode: 0, uid: 0, gid: 0 };
    for (const c of cols) {
      const eq = c.indexOf('=');
      const [k, v] = [c.slice(0, eq), c.slice(eq + 1)];
      switch (k) {
        case 'mode':
          n.mode = Number.parseInt(v, 8);
          break;
        case 'uid':
        case 'gid':
        case 'size':
        case 'mtime':
        case 'nlink':
          n[k] = Number(v);
          break;
        case 'sha256':
        case 'rdev':
          n[k] = v;
          break;
        case 'link':
        case 'group':
          n[k] = JSON.parse(v) as string;
          break;
        case 'xattrs':
          n.xattrs = JSON.parse(v) as Record<string, string>;
          break;
        default:
          throw new Error(`listing: unknown field ${JSON.stringify(k)} in ${JSON.stringify(l)}`);
      }
    }
    t.set(JSON.parse(p) as string, n);
  }
  return t;
}

/** A field's value as a listing line shows it (xattrs in name order). */
function show(f: Field, v: unknown): string {
  if (v === undefined) return '(none)';
  if (f === 'mode') return (v as number).toString(8).padStart(4, '0');
  if (f === 'xattrs') return JSON.stringify(Object.fromEntries(Object.entries(v as object).sort(([a], [b]) => bytewise(a, b))));
  return typeof v === 'string' && f !== 'link' && f !== 'group' ? v : JSON.stringify(v);
}

/**
 * The differences between an expected and a shown tree, one readable line each: a path only one
 * of them has, or a field of a path with both values (`path: mode 4755 expected, 0755 shown`).
 */
export function diffListings(expected: Tree, got: Tree, limit = 50): string[] {
  const out: string[] = [];
  for (const [p, e] of expected) {
    const g = got.get(p);
    if (!g) out.push(`${JSON.stringify(p)}: missing (expected ${e.type})`);
    else for (const f of FIELDS) if (show(f, e[f]) !== show(f, g[f])) out.push(`${JSON.stringify(p)}: ${f} ${show(f, e[f])} expected, ${show(f, g[f])} shown`);
  }
  for (const [p, g] of got) if (!expected.has(p)) out.push(`${JSON.stringify(p)}: not expected (${g.type} shown)`);
  return out.length > limit ? [...out.slice(0, limit), `... and ${out.length - limit} more`] : out;
}

/** A node with only `fields`, in the listing's field order (so that two projections compare as JSON). */
function pick(n: Node, fields: ReadonlySet<Field>, mtime: boolean): Node {
  const out: Record<string, unknown> = {};
  for (const f of FIELDS) if (fields.has(f) && n[f] !== undefined && (f !== 'mtime' || mtime)) out[f] = n[f];
  return out as unknown as Node;
}

/**
 * What a reader is compared on: both trees cut down to `fields` (and without the root when the
 * reader cannot show it); a node's mtime only where the expected tree has one.
 */
export function project(expected: Tree, got: Tree, fields: readonly Field[], root = true): { expected: Tree; got: Tree } {
  const set = new Set(fields);
  const cut = (t: Tree, side: 'e' | 'g') => {
    const out: Tree = new Map();
    for (const [p, n] of t) {
      if (p === '.' && !root) continue;
      const e = expected.get(p);
      out.set(p, pick(n, set, side === 'e' || !e || e.mtime !== undefined));
    }
    return out;
  };
  return { expected: cut(expected, 'e'), got: cut(got, 'g') };
}

/** The hardlink groups of a tree: paths grouped by a key (inode), each named by its smallest path. */
export function setGroups(t: Tree, byKey: Map<string | number, string[]>): void {
  for (const g of byKey.values()) {
    if (g.length < 2) continue;
    const min = [...g].sort(bytewise)[0];
    for (const p of g) t.get(p)!.group = min;
  }
}
