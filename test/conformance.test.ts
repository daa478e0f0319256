/**
 * The conformance suite every reader of a chunked image must pass. For each layer fixture
 * (test/conformance/fixtures.ts) the expected merged tree is written down independently: what
 * `umoci unpack` makes of the original image, checked in as test/conformance/expected/<name>.txt
 * (and checked again here against umoci, so it cannot drift). Every reader must show exactly that
 * tree: types, modes, owners, sizes, contents (SHA-256), link targets, device numbers, xattrs,
 * hardlink groups and mtimes (all but symlinks'). A new reader (a snapshotter) is one more entry
 * in READERS.
 *
 * Regenerate the expected listings: OCICHUNK_CONFORMANCE_WRITE=1 npx vitest run test/conformance.test.ts
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { LazyImage } from '../src/lazy/reader.js';
import { FIXTURES } from './conformance/fixtures.js';
import { REPO, tmpdir } from './helpers/env.js';
import { gzipLayer, writeLayout } from './helpers/layout.js';
import { mounted } from './helpers/mount.js';
import { cli, must } from './helpers/run.js';
import { pyTar } from './helpers/tars.js';
import { diffTrees, snapshot, type Node } from './helpers/tree.js';

type Tree = Map<string, Node>;
const EXPECTED = path.join(REPO, 'test', 'conformance', 'expected');
const WRITE = process.env.OCICHUNK_CONFORMANCE_WRITE === '1';

/** One line per path: `<path>\t<node as JSON>`, paths in snapshot order. */
function listingText(t: Tree): string {
  return [...t].map(([p, n]) => `${JSON.stringify(p)}\t${JSON.stringify(n)}\n`).join('');
}

function parseListing(text: string): Tree {
  const t: Tree = new Map();
  for (const line of text.split('\n').filter(Boolean)) {
    const [p, n] = line.split('\t');
    t.set(JSON.parse(p) as string, JSON.parse(n) as Node);
  }
  return t;
}

/** The tree as `ls` and `cat` show it: the library's lazy reader over the merged tree. */
async function lazyTree(ref: string): Promise<Tree> {
  const img = await LazyImage.open(ref, { cacheDir: false });
  const out: Tree = new Map();
  const byIno = new Map<number, string[]>();
  try {
    const walk = async (p: string, rel: string) => {
      const st = img.stat(p, { follow: false });
      const n: Node = { type: st.type, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.type === 'reg') {
        n.size = st.size;
        n.sha256 = createHash('sha256')
          .update(await img.read(p))
          .digest('hex');
      }
      if (st.type === 'symlink') {
        n.link = img.readlink(p);
        n.mode = 0;
      }
      if (st.type === 'char' || st.type === 'block') n.rdev = `${st.devMajor}:${st.devMinor}`;
      const names = img.listxattr(p);
      if (names.length) n.xattrs = Object.fromEntries(names.map((x) => [x, img.getxattr(p, x)!.toString('base64')]));
      if (st.type !== 'symlink') n.mtime = st.mtime;
      if (st.type !== 'dir' && st.nlink > 1) byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), rel]);
      out.set(rel || '.', n);
      if (st.type === 'dir') for (const name of img.readdir(p)) await walk(p === '/' ? `/${name}` : `${p}/${name}`, rel ? `${rel}/${name}` : name);
    };
    await walk('/', '');
  } finally {
    await img.close();
  }
  for (const g of byIno.values()) {
    if (g.length < 2) continue;
    const min = [...g].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))[0];
    for (const p of g) out.get(p)!.group = min;
  }
  return out;
}

/** Every reader of a chunked image: a name and how to get the tree it shows. */
const READERS: Array<{ name: string; tree: (ref: string, work: string) => Promise<Tree> }> = [
  { name: 'ls/cat (merged tree)', tree: (ref) => lazyTree(ref) },
  {
    name: 'restore',
    tree: async (ref, work) => {
      const target = path.join(work, 'restored');
      const r = cli(['restore', ref, target]);
      expect(r.code, r.stderr).toBe(0);
      return snapshot(target, { mtime: true });
    },
  },
  {
    name: 'mount',
    tree: async (ref, work) => {
      let t: Tree = new Map();
      await mounted(ref, path.join(work, 'mnt'), ['--cache', path.join(work, 'cache')], () => {
        t = snapshot(path.join(work, 'mnt'), { mtime: true });
      });
      return t;
    },
  },
];

describe('conformance: every reader shows the tree umoci unpacks', () => {
  const work = tmpdir('conformance');
  const built = new Map<string, { ref: string; expected: Tree }>();

  beforeAll(() => {
    fs.mkdirSync(EXPECTED, { recursive: true });
    for (const [name, layers] of Object.entries(FIXTURES)) {
      const dir = path.join(work, name);
      fs.mkdirSync(dir, { recursive: true });
      const layout = path.join(dir, 'layout');
      writeLayout(
        layout,
        'orig',
        layers.map((members) => gzipLayer(pyTar(dir, members))),
      );
      // the oracle
      const bundle = path.join(dir, 'umoci');
      must('umoci', ['unpack', '--image', `${layout}:orig`, bundle]);
      const oracle = snapshot(path.join(bundle, 'rootfs'), { mtime: true });
      const file = path.join(EXPECTED, `${name}.txt`);
      if (WRITE) fs.writeFileSync(file, listingText(oracle));
      const expected = parseListing(fs.readFileSync(file, 'utf8'));
      expect(diffTrees(expected, oracle), `${file} is not what umoci unpacks now (regenerate: OCICHUNK_CONFORMANCE_WRITE=1)`).toEqual([]);
      // mtimes kept (the default clamps them, docs/format.md §4): readers are compared on them too
      const r = cli(['convert', `oci:${layout}:orig`, `oci:${layout}:chunked`, '--keep-mtime']);
      expect(r.code, r.stderr).toBe(0);
      built.set(name, { ref: `oci:${layout}:chunked`, expected });
    }
  });

  it('every expected listing is checked in, and the fixtures cover what they claim', () => {
    const files = fs.readdirSync(EXPECTED).sort();
    expect(files).toEqual(
      Object.keys(FIXTURES)
        .map((n) => `${n}.txt`)
        .sort(),
    );
    const all = [...built.values()].flatMap((b) => [...b.expected.values()]);
    for (const t of ['reg', 'dir', 'symlink', 'char', 'block', 'fifo'])
      expect(
        all.some((n) => n.type === t),
        t,
      ).toBe(true);
    expect(all.some((n) => n.group)).toBe(true);
    expect(all.some((n) => n.xattrs)).toBe(true);
    expect(all.some((n) => (n.mode & 0o7000) !== 0)).toBe(true);
    const types = built.get('types')!.expected;
    expect([...types.keys()].some((p) => Buffer.byteLength(p) > 255)).toBe(true);
    expect([...types.keys()].some((p) => /[^\x20-\x7e]/.test(p))).toBe(true);
  });

  for (const name of Object.keys(FIXTURES)) {
    it.each(READERS.map((r) => [r.name, r] as const))(`${name}: %s`, async (_, reader) => {
      const { ref, expected } = built.get(name)!;
      const dir = fs.mkdtempSync(path.join(work, `${name}-`));
      expect(diffTrees(expected, await reader.tree(ref, dir), 50)).toEqual([]);
    });
    it(`${name}: verify accepts it`, () => {
      const r = cli(['verify', built.get(name)!.ref]);
      expect(r.code, r.stderr).toBe(0);
    });
  }
});
