/**
 * Canonical form: the same files, packed by different tools, in different orders, with different
 * timestamps and owner names, convert to identical chunked layers (same TOC, same packs).
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { convert } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { blob, gzipLayer, plainLayer, readIndex, writeLayout } from './helpers/layout.js';
import { must } from './helpers/run.js';
import { native } from '../src/native/index.js';

let work: string;
let src: string;

function chunkedOf(layout: string) {
  const idx = readIndex(layout);
  const top = JSON.parse(blob(layout, idx.manifests[0].digest).toString());
  const m = JSON.parse(blob(layout, top.manifests[1].digest).toString());
  return { toc: m.layers[0].digest as string, packs: m.layers.slice(1).map((l: { digest: string }) => l.digest) as string[], manifest: m };
}

beforeAll(async () => {
  work = tmpdir('canon');
  // Real files: a slice of the Debian base image's root filesystem, unpacked by umoci.
  const bundle = path.join(work, 'bundle');
  await must('umoci', ['unpack', '--image', `${image('base')}:latest`, bundle]);
  src = path.join(work, 'src');
  fs.mkdirSync(src);
  for (const d of ['etc', 'usr/bin', 'usr/share/perl5', 'usr/lib/x86_64-linux-gnu/perl-base']) {
    const from = path.join(bundle, 'rootfs', d);
    if (fs.existsSync(from)) await must('cp', ['-a', '--parents', d, src], { cwd: path.join(bundle, 'rootfs') });
  }
  // and the kinds of entries a tar can hold
  fs.mkdirSync(path.join(src, 'special'));
  fs.writeFileSync(path.join(src, 'special', 'a.txt'), 'hello\n'.repeat(1000));
  fs.linkSync(path.join(src, 'special', 'a.txt'), path.join(src, 'special', 'z-hardlink'));
  fs.linkSync(path.join(src, 'special', 'a.txt'), path.join(src, 'special', '0-hardlink'));
  fs.symlinkSync('../etc/os-release', path.join(src, 'special', 'os-release'));
  native.mknod(path.join(src, 'special', 'fifo'), 'fifo', 0o644, 0, 0);
  native.mknod(path.join(src, 'special', 'null'), 'char', 0o666, 1, 3);
  fs.writeFileSync(path.join(src, 'special', 'empty'), '');
  fs.chownSync(path.join(src, 'special', 'a.txt'), 1234, 5678);
  // a directory and siblings whose names go on with a byte below '/': in the byte order of whole
  // paths they come before its children, in canonical order after them (held in one pass)
  const text = (seed: number, n: number) => Array.from({ length: n }, (_, i) => `line ${(i * 7919 + seed) % 100003} of ${seed}\n`).join('');
  fs.mkdirSync(path.join(src, 'special', 'dir', 'sub'), { recursive: true });
  fs.mkdirSync(path.join(src, 'special', 'dir.d'));
  fs.writeFileSync(path.join(src, 'special', 'dir', 'a'), text(1, 20000));
  fs.writeFileSync(path.join(src, 'special', 'dir', 'sub', 'b'), text(2, 300));
  fs.writeFileSync(path.join(src, 'special', 'dir.d', 'c'), text(3, 30000));
  fs.writeFileSync(path.join(src, 'special', 'dir.d', 'd'), text(4, 200));
  fs.writeFileSync(path.join(src, 'special', 'dir-x'), text(5, 400));
});

/** A tar of `dir`'s tree in the byte order of whole paths (what sorting a diff's paths gives). */
async function byteOrderTar(dir: string, out: string): Promise<void> {
  await must('python3', [
    '-c',
    `import tarfile,os,sys
src=sys.argv[1]
paths=['.']
for root,dirs,files in os.walk(src):
    for n in dirs+files:
        paths.append(os.path.relpath(os.path.join(root,n),src))
paths[1:]=sorted(paths[1:],key=lambda p: p.encode())
with tarfile.open(sys.argv[2],'w',format=tarfile.PAX_FORMAT) as t:
    for p in paths:
        full=os.path.join(src,p)
        ti=t.gettarinfo(full,arcname=p)
        if ti.isreg():
            with open(full,'rb') as f: t.addfile(ti,f)
        else: t.addfile(ti)`,
    dir,
    out,
  ]);
}

describe('canonical conversion', () => {
  it('gives the same TOC and packs for GNU tar sorted, PAX unsorted and Python tarfile inputs', async () => {
    const tars = path.join(work, 'tars');
    fs.mkdirSync(tars);
    // 1. GNU tar, sorted, GNU format
    await must('tar', ['--sort=name', '--format=gnu', '--numeric-owner', '-cf', path.join(tars, 'gnu.tar'), '-C', src, '.']);
    // 2. GNU tar, PAX format (sub-second mtimes), reverse order, owner names, './' prefixes
    const names = fs
      .readdirSync(src)
      .sort()
      .reverse()
      .map((n) => `./${n}`);
    await must('tar', ['--format=pax', '-cf', path.join(tars, 'pax.tar'), '-C', src, '--no-recursion', '.', '--recursion', ...names]);
    // 3. Python's tarfile, directory walk order, other owner names
    await must('python3', [
      '-c',
      `import tarfile,os,sys
src=sys.argv[1]
with tarfile.open(sys.argv[2],'w',format=tarfile.USTAR_FORMAT) as t:
    for root,dirs,files in os.walk(src):
        dirs.sort(reverse=True)
        for n in sorted(files+[d for d in dirs if os.path.islink(os.path.join(root,d))],reverse=True)+[None]:
            p=root if n is None else os.path.join(root,n)
            ti=t.gettarinfo(p,arcname=os.path.relpath(p,src))
            ti.uname='someone'; ti.gname='somegroup'
            if ti.isreg():
                with open(p,'rb') as f: t.addfile(ti,f)
            else: t.addfile(ti)`,
      src,
      path.join(tars, 'py.tar'),
    ]);
    // 4. the byte order of whole paths (special/dir-x and special/dir.d before special/dir/a)
    await byteOrderTar(src, path.join(tars, 'bytes.tar'));
    // the tars really differ
    const digests = ['gnu', 'pax', 'py', 'bytes'].map((n) => fs.readFileSync(path.join(tars, `${n}.tar`)).toString('base64').length);
    expect(new Set(digests).size).toBeGreaterThan(1);
    // with the default frames, and with run frames (a file's big chunks sharing frames)
    for (const [variant, opts] of [
      ['default', {}],
      ['runs', { runTarget: 256 << 10 }],
    ] as const) {
      const results = [];
      for (const [name, layer] of [
        ['gnu', plainLayer(fs.readFileSync(path.join(tars, 'gnu.tar')))],
        ['pax', gzipLayer(fs.readFileSync(path.join(tars, 'pax.tar')))],
        ['py', plainLayer(fs.readFileSync(path.join(tars, 'py.tar')))],
        ['bytes', plainLayer(fs.readFileSync(path.join(tars, 'bytes.tar')))],
      ] as const) {
        const inDir = path.join(work, `in-${name}`);
        if (!fs.existsSync(inDir)) writeLayout(inDir, 'x', [layer]);
        const out = path.join(work, `out-${name}-${variant}`);
        const r = await convert(`oci:${inDir}:x`, `oci:${out}:x`, opts);
        expect(r.files).toBeGreaterThan(100);
        // sorted and byte-ordered tars in one pass (the latter holding special/dir-x and
        // special/dir.d until special/dir's children are placed), the others in two
        expect(r.onePassLayers, `${name} ${variant}`).toBe(name === 'gnu' || name === 'bytes' ? 1 : 0);
        results.push(chunkedOf(out));
      }
      for (const k of [1, 2, 3]) {
        expect(results[k].toc, variant).toBe(results[0].toc);
        expect(results[k].packs, variant).toEqual(results[0].packs);
      }
    }
  });

  it("a real layer in the byte order of whole paths (buildah's diffs) converts in one pass, to the TOC and packs of two", async () => {
    // the py test image's upper layer (apt-get install python3 in buildah, committed): python3.11
    // directories come before python3's children there
    const py = image('py');
    const top = JSON.parse(fs.readFileSync(path.join(py, 'index.json'), 'utf8')).manifests[0].digest as string;
    const m = JSON.parse(blob(py, top).toString());
    const upper = blob(py, m.layers[1].digest);
    const asIs = path.join(work, 'in-py-upper');
    writeLayout(asIs, 'x', [{ blob: upper, tar: zlib.gunzipSync(upper), mediaType: m.layers[1].mediaType }]);
    // the same entries in reverse order: two passes
    const reversed = path.join(work, 'py-upper-reversed.tar');
    await must('python3', [
      '-c',
      `import tarfile,sys
src=tarfile.open(sys.argv[1],'r:gz')
ms=[(m, src.extractfile(m).read() if m.isreg() else None) for m in src]
with tarfile.open(sys.argv[2],'w',format=tarfile.PAX_FORMAT) as t:
    for m,data in reversed(ms):
        if data is not None:
            import io; t.addfile(m, io.BytesIO(data))
        else: t.addfile(m)`,
      path.join(py, 'blobs', 'sha256', m.layers[1].digest.slice(7)),
      reversed,
    ]);
    const rev = path.join(work, 'in-py-reversed');
    writeLayout(rev, 'x', [plainLayer(fs.readFileSync(reversed))]);
    const one = await convert(`oci:${asIs}:x`, `oci:${path.join(work, 'out-py-one')}:x`);
    const two = await convert(`oci:${rev}:x`, `oci:${path.join(work, 'out-py-two')}:x`);
    expect([one.onePassLayers, two.onePassLayers]).toEqual([1, 0]);
    expect(one.files).toBeGreaterThan(1000);
    const [a, b] = [chunkedOf(path.join(work, 'out-py-one')), chunkedOf(path.join(work, 'out-py-two'))];
    expect(a.toc).toBe(b.toc);
    expect(a.packs).toEqual(b.packs);
  });

  it('over a layer below with its own dictionary: big chunks take that one, and the packs still do not depend on the order', async () => {
    // the layer below: other real files (a dictionary of their own)
    const below = path.join(work, 'below');
    fs.mkdirSync(below);
    await must('cp', ['-a', '--parents', 'usr/sbin', 'var/lib/dpkg', below], { cwd: path.join(work, 'bundle', 'rootfs') });
    await must('tar', ['--sort=name', '--format=gnu', '-cf', path.join(work, 'below.tar'), '-C', below, '.']);
    const base = gzipLayer(fs.readFileSync(path.join(work, 'below.tar')));
    const results = [];
    for (const name of ['gnu', 'pax', 'py']) {
      const inDir = path.join(work, `in2-${name}`);
      writeLayout(inDir, 'x', [base, plainLayer(fs.readFileSync(path.join(work, 'tars', `${name}.tar`)))]);
      const out = path.join(work, `out2-${name}`);
      const r = await convert(`oci:${inDir}:x`, `oci:${out}:x`);
      expect(r.onePassLayers).toBe(name === 'gnu' ? 2 : 1);
      results.push(chunkedOf(out));
    }
    expect(results[1].toc).toBe(results[0].toc);
    expect(results[2].toc).toBe(results[0].toc);
    expect(results[1].packs).toEqual(results[0].packs);
    expect(results[2].packs).toEqual(results[0].packs);
    // two dictionaries; the upper layer's frames use both: its big chunks' frames the one in the
    // layer below's pack, its group frames its own
    const out = path.join(work, 'out2-gnu');
    const toc = JSON.parse(native.decompressSync(blob(out, results[0].toc), 64 << 20).toString()) as {
      frames: number[][];
      dicts: number[][];
    };
    expect(toc.dicts.length).toBe(2);
    let carried = 0;
    let own = 0;
    for (const f of toc.frames) {
      if (f[4] === undefined) continue;
      if (toc.dicts[f[4]][0] === f[0]) own++;
      else {
        carried++;
        expect(f[3], 'only frames of one big chunk take the carried dictionary').toBeGreaterThanOrEqual(32 << 10);
      }
    }
    expect(carried).toBeGreaterThan(10);
    expect(own).toBeGreaterThan(10);
  });

  it("--run-frame-size 256k puts a file's big chunks into shared run frames, never two files in one; by default each has its own frame", async () => {
    const tarFile = path.join(work, 'runs.tar');
    await must('tar', ['--sort=name', '--format=pax', '-cf', tarFile, '-C', src, '.']);
    const inDir = path.join(work, 'in-runs');
    writeLayout(inDir, 'x', [plainLayer(fs.readFileSync(tarFile))]);
    const frameRows = async (out: string, opts: { runTarget?: number }) => {
      await convert(`oci:${inDir}:x`, `oci:${out}:x`, opts);
      const c = chunkedOf(out);
      const toc = JSON.parse(native.decompressSync(blob(out, c.toc), 64 << 20).toString()) as {
        frames: number[][];
        chunks: number[][];
        layers: Array<{ entries: Array<{ path: string; type: string; chunks?: number[] }> }>;
      };
      const stored = c.packs.reduce((n, d) => n + blob(out, d).length, 0);
      return { toc, stored };
    };
    const runs = await frameRows(path.join(work, 'out-runs'), { runTarget: 256 << 10 });
    const single = await frameRows(path.join(work, 'out-single'), {});
    const big = (t: typeof runs.toc) => t.chunks.filter((c) => c[2] >= 32 << 10);
    // the same chunks either way
    expect(big(runs.toc).length).toBe(big(single.toc).length);
    expect(big(runs.toc).length).toBeGreaterThan(20);
    // frames of one big chunk each, or shared by several (at most 256 KiB of them)
    const perFrame = (t: typeof runs.toc) => {
      const m = new Map<number, number>();
      for (const c of big(t)) m.set(c[0], (m.get(c[0]) ?? 0) + 1);
      return [...m.values()];
    };
    expect(Math.max(...perFrame(single.toc))).toBe(1);
    expect(Math.max(...perFrame(runs.toc))).toBeGreaterThan(1);
    for (const c of big(runs.toc)) expect(runs.toc.frames[c[0]][3]).toBeLessThanOrEqual(256 << 10);
    // no run frame holds big chunks of two files (each chunk placed by the first file holding it)
    const owner = new Map<number, string>();
    const placed = new Set<number>();
    for (const e of runs.toc.layers[0].entries) {
      for (const ci of e.chunks ?? []) {
        const c = runs.toc.chunks[ci];
        if (c[2] < 32 << 10 || placed.has(ci)) continue;
        placed.add(ci);
        const was = owner.get(c[0]);
        if (was !== undefined) expect(was, `frame ${c[0]}`).toBe(e.path);
        owner.set(c[0], e.path);
      }
    }
    // fewer, larger frames store less
    expect(runs.toc.frames.length).toBeLessThan(single.toc.frames.length);
    expect(runs.stored).toBeLessThan(single.stored);
  });

  it('keeps mtimes by default; --source-date-epoch clamps them (another TOC), the packs stay the same', async () => {
    const tarFile = path.join(work, 'mt.tar');
    await must('tar', ['--sort=name', '--format=pax', '-cf', tarFile, '-C', src, '.']);
    const inDir = path.join(work, 'in-mt');
    writeLayout(inDir, 'x', [plainLayer(fs.readFileSync(tarFile))]);
    await convert(`oci:${inDir}:x`, `oci:${work}/out-mt-a:x`, {});
    await convert(`oci:${inDir}:x`, `oci:${work}/out-mt-b:x`, { sourceDateEpoch: 0 });
    await convert(`oci:${inDir}:x`, `oci:${work}/out-mt-c:x`, { sourceDateEpoch: 1000 });
    const a = chunkedOf(`${work}/out-mt-a`);
    const b = chunkedOf(`${work}/out-mt-b`);
    const c = chunkedOf(`${work}/out-mt-c`);
    expect(b.toc).not.toBe(a.toc);
    expect(c.toc).not.toBe(a.toc);
    expect(c.toc).not.toBe(b.toc);
    expect(b.packs).toEqual(a.packs);
    expect(c.packs).toEqual(a.packs);
    // the default TOC holds each file's own mtime (whole seconds); clamped ones hold at most the epoch
    const entries = (layout: string, digest: string) =>
      JSON.parse(native.decompressSync(blob(layout, digest), 64 << 20).toString()).layers[0].entries as Array<{ path: string; type: string; mtime?: number }>;
    const kept = entries(`${work}/out-mt-a`, a.toc);
    const files = kept.filter((e) => e.type === 'reg');
    expect(files.length).toBeGreaterThan(50);
    for (const e of files) expect(e.mtime ?? 0).toBe(Math.floor(fs.lstatSync(path.join(src, e.path)).mtimeMs / 1000));
    expect(entries(`${work}/out-mt-b`, b.toc).every((e) => e.mtime === undefined)).toBe(true);
    expect(entries(`${work}/out-mt-c`, c.toc).every((e) => (e.mtime ?? 0) <= 1000)).toBe(true);
  });
});
