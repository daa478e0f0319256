/**
 * The conformance suite every reader of a chunked image must pass (issue 13).
 *
 * For each layer fixture (test/conformance/fixtures.ts) the expected merged tree is written down
 * independently of ocichunk: what `umoci unpack` makes of the original image, checked in as
 * test/conformance/expected/<fixture>.txt (format: test/conformance/listing.ts) and checked again
 * here against umoci, so that it cannot drift. The image is converted (mtimes kept) and every
 * reader of test/conformance/readers.ts must show exactly that tree, on the fields it can show:
 *
 * - merged tree (the library's LazyImage): every field;
 * - `ocichunk ls --json` and `ocichunk cat`: every field but xattrs (ls shows none), root excluded
 *   (ls lists a directory's children, not the directory);
 * - `ocichunk restore` (into a fresh directory): every field;
 * - `ocichunk mount` (FUSE): every field;
 * - and `ocichunk verify` must accept the converted image.
 *
 * Fields: type, mode (with setuid/setgid/sticky), uid, gid, size, SHA-256 of the content, symlink
 * target, device numbers, xattrs, mtime (symlinks' included; not where umoci makes one up, see
 * test/conformance/oracle.ts), link count (not of directories) and hardlink groups. Where ocichunk
 * deliberately differs from umoci, test/conformance/deviations.ts says so and why (the checked-in
 * listing stays umoci's; the suite checks umoci still differs there).
 *
 * containerd's own applier is the reference where the two differ (docs/format.md §4): each original
 * is imported into a private containerd and its unpacked tree compared too; what no reader can
 * reproduce (the time of the unpack) or what breaks the OCI spec (a whiteout removing its own
 * layer's write) is listed line by line in test/conformance/deviations.ts CONTAINERD, and the suite
 * checks containerd still differs exactly there.
 *
 * Regenerate the expected listings after changing a fixture: bash test/conformance/regen.sh
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTAINERD, DEVIATIONS } from './conformance/deviations.js';
import { FIXTURES } from './conformance/fixtures.js';
import { diffListings, FIELDS, formatListing, type Node, parseListing, project, type Tree } from './conformance/listing.js';
import { buildFixture, containerdTree, umociTree } from './conformance/oracle.js';
import { Containerd } from './helpers/containerd.js';
import { READERS } from './conformance/readers.js';
import { REPO, tmpdir } from './helpers/env.js';
import { cli } from './helpers/run.js';
import type { Member } from './helpers/tars.js';

const EXPECTED = path.join(REPO, 'test', 'conformance', 'expected');
const WRITE = process.env.OCICHUNK_CONFORMANCE_WRITE === '1';
const NAMES = Object.keys(FIXTURES);

const header = (name: string) => [
  `conformance fixture ${JSON.stringify(name)} (test/conformance/fixtures.ts): umoci unpack of its image`,
  'format: test/conformance/listing.ts; regenerate: bash test/conformance/regen.sh',
];

function expectedOf(name: string): Tree {
  return parseListing(fs.readFileSync(path.join(EXPECTED, `${name}.txt`), 'utf8'));
}

/** The tree every reader must show: umoci's, with the deliberate deviations of conformance/deviations.ts. */
function readersExpected(name: string): Tree {
  const t = expectedOf(name);
  for (const d of DEVIATIONS.filter((d) => d.fixture === name)) {
    if (d.umoci === null) {
      t.set(d.path, { ...d.ocichunk } as Node);
      continue;
    }
    const n = t.get(d.path);
    if (!n) throw new Error(`deviation: ${name}: ${d.path} is not in the expected listing`);
    for (const [k, v] of Object.entries(d.ocichunk)) {
      if (v === undefined) delete (n as any)[k];
      else (n as any)[k] = v;
    }
  }
  return t;
}

describe('conformance: every reader shows the tree umoci unpacks', () => {
  const work = tmpdir('conformance');
  const built = new Map<string, { ref: string; oracle: Tree }>();

  beforeAll(async () => {
    for (const name of NAMES) {
      const dir = path.join(work, name);
      const layout = buildFixture(name, dir);
      const oracle = await umociTree(layout, dir);
      if (WRITE) fs.writeFileSync(path.join(EXPECTED, `${name}.txt`), formatListing(oracle, header(name)));
      // mtimes kept (the default clamps them to 0, docs/format.md §4): readers are compared on them too
      const r = await cli(['convert', `oci:${layout}:orig`, `oci:${layout}:chunked`, '--quiet']);
      expect(r.code, `convert ${name}: ${r.stderr}`).toBe(0);
      built.set(name, { ref: `oci:${layout}:chunked`, oracle });
    }
  });

  it('every fixture has its checked-in listing, and nothing else is there', () => {
    expect(fs.readdirSync(EXPECTED).sort()).toEqual(NAMES.map((n) => `${n}.txt`).sort());
  });

  it.each(NAMES)('%s: the checked-in listing is what umoci unpacks now', (name) => {
    const file = path.join(EXPECTED, `${name}.txt`);
    expect(diffListings(expectedOf(name), built.get(name)!.oracle), `${file} is not umoci's tree (bash test/conformance/regen.sh)`).toEqual([]);
    // the file is exactly what the listing format writes (no hand edits that parse the same)
    expect(fs.readFileSync(file, 'utf8')).toBe(formatListing(expectedOf(name), header(name)));
  });

  it.each(DEVIATIONS.map((d) => [`${d.fixture}: ${d.path}`, d] as const))('deviation from umoci still there: %s', (_, d) => {
    const n = expectedOf(d.fixture).get(d.path);
    if (d.umoci === null) return expect(n, `${d.path} (${d.why})`).toBeUndefined();
    expect(n, `${d.path} (${d.why})`).toBeDefined();
    for (const [k, v] of Object.entries(d.umoci)) expect((n as any)[k], `${k} (${d.why})`).toEqual(v);
  });

  it('the fixtures cover what they claim', () => {
    const all = NAMES.flatMap((n) => [...expectedOf(n)]);
    const some = (f: (n: Node, p: string) => boolean) => all.some(([p, n]) => f(n, p));
    const members = Object.values(FIXTURES).flat(2);
    const base = (m: Member) => m[0].split('/').pop()!;
    const claims: Record<string, boolean> = {
      ...Object.fromEntries(['reg', 'dir', 'symlink', 'char', 'block', 'fifo'].map((t) => [`a ${t}`, some((n) => n.type === t)])),
      'an empty file': some((n) => n.type === 'reg' && n.size === 0),
      'a file of more than 1 MB': some((n) => (n.size ?? 0) > 1_000_000),
      setuid: some((n) => (n.mode & 0o4000) !== 0),
      setgid: some((n) => (n.mode & 0o2000) !== 0),
      sticky: some((n) => (n.mode & 0o1000) !== 0),
      'an owner past the ustar field': some((n) => n.uid > 0o7777777 && n.gid > 0o7777777),
      'xattrs on a file': some((n) => n.type === 'reg' && !!n.xattrs),
      'xattrs on a directory': some((n) => n.type === 'dir' && !!n.xattrs),
      "a symlink's mtime": some((n) => n.type === 'symlink' && n.mtime !== undefined),
      'an mtime before 1970': some((n) => (n.mtime ?? 0) < 0),
      'hardlinked files': some((n) => n.type === 'reg' && !!n.group),
      'hardlinked non-files': some((n) => n.type !== 'reg' && !!n.group),
      'a path past 1024 bytes': some((_, p) => Buffer.byteLength(p) > 1024),
      'a 255-byte name': some((_, p) => p.split('/').some((c) => Buffer.byteLength(c) === 255)),
      'a non-ASCII name': some((_, p) => /[^\x20-\x7e]/.test(p)),
      'a whiteout': members.some((m) => base(m).startsWith('.wh.') && base(m) !== '.wh..wh..opq'),
      'an opaque directory': members.some((m) => base(m) === '.wh..wh..opq'),
      'an opaque root': members.some((m) => m[0] === '.wh..wh..opq'),
      'an empty layer': Object.values(FIXTURES).some((layers) => layers.some((l) => l.length === 0)),
    };
    expect(Object.keys(claims).filter((c) => !claims[c])).toEqual([]);
  });

  it('the comparison sees a change in any field (the suite can fail)', () => {
    const expected = expectedOf('types');
    const probe: Record<string, (t: Tree) => void> = {
      type: (t) => (t.get('dev/pipe')!.type = 'reg'),
      mode: (t) => (t.get('bin/tool')!.mode ^= 0o4000),
      uid: (t) => (t.get('bin/tool')!.uid += 1),
      gid: (t) => (t.get('dev/loop9')!.gid += 1),
      size: (t) => (t.get('bin/tool')!.size! += 1),
      sha256: (t) => (t.get('bin/tool')!.sha256 = '0'.repeat(64)),
      link: (t) => (t.get('link-rel')!.link = 'bin/other'),
      rdev: (t) => (t.get('dev/null')!.rdev = '1:4'),
      xattrs: (t) => (t.get('bin/tool')!.xattrs = { 'user.x': 'eA==' }),
      mtime: (t) => (t.get('link-abs')!.mtime! += 1),
      nlink: (t) => (t.get('bin/tool')!.nlink! += 1),
      group: (t) => delete t.get('bin/hard')!.group,
    };
    expect(Object.keys(probe).sort()).toEqual([...FIELDS].sort());
    for (const [field, change] of Object.entries(probe)) {
      const got: Tree = new Map([...expected].map(([p, n]) => [p, structuredClone(n)]));
      change(got);
      const cut = project(expected, got, FIELDS);
      expect(diffListings(cut.expected, cut.got).length, field).toBeGreaterThan(0);
    }
    const missing: Tree = new Map(expected);
    missing.delete('dev/null');
    expect(diffListings(expected, missing)).toEqual(['"dev/null": missing (expected char)']);
  });

  for (const reader of READERS) {
    it.each(NAMES)(`%s: ${reader.name}`, async (name) => {
      const { ref } = built.get(name)!;
      const dir = fs.mkdtempSync(path.join(work, `${name}-`));
      const cut = project(readersExpected(name), await reader.tree(ref, dir), reader.fields, reader.root !== false);
      expect(diffListings(cut.expected, cut.got)).toEqual([]);
    });
  }

  describe("containerd's own unpack agrees", () => {
    let ctrd: Containerd;
    beforeAll(async () => {
      ctrd = new Containerd(tmpdir('conformance-containerd'));
      await ctrd.start();
    });
    afterAll(async () => {
      await ctrd?.stop();
    });
    // the original image imported into containerd, its top snapshot viewed through overlayfs as a
    // container's root: the tree every reader shows (ocichunk's deliberate differences from umoci
    // are containerd's behaviour)
    it.each(NAMES)('%s: containerd (its applier, native snapshotter)', async (name) => {
      const dir = fs.mkdtempSync(path.join(work, `${name}-ctrd-`));
      const since = Math.floor(Date.now() / 1000) - 1;
      const got = await containerdTree(ctrd, path.join(work, name, 'layout'), name, dir);
      const until = Math.ceil(Date.now() / 1000) + 1;
      const cut = project(readersExpected(name), got, FIELDS);
      // containerd gives some nodes the time of the unpack: shown as such
      const diffs = diffListings(cut.expected, cut.got).map((l) =>
        l.replace(/mtime (-?\d+) expected, (\d+) shown$/, (all, want, shown) =>
          +shown >= since && +shown <= until ? `mtime ${want} expected, <unpack time> shown` : all,
        ),
      );
      expect(diffs).toEqual(CONTAINERD[name] ?? []);
    });
  });

  it.each(NAMES)('%s: ocichunk verify accepts it', async (name) => {
    const r = await cli(['verify', built.get(name)!.ref]);
    expect(r.code, r.stderr).toBe(0);
  });
});
