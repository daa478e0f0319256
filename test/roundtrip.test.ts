/**
 * Round trip on real images: restore of the chunked manifest gives exactly the tree umoci unpacks
 * from the original (content, types, modes, owners, links, hardlink groups, xattrs, devices).
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { convert, inspectImage, openChunked, openSource, resolveImage, restore, verify } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { must } from './helpers/run.js';
import { diffTrees, snapshot, type Node } from './helpers/tree.js';

let work: string;
let reference: Map<string, Node>;

beforeAll(async () => {
  work = tmpdir('roundtrip');
  const bundle = path.join(work, 'umoci');
  await must('umoci', ['unpack', '--image', `${image('app')}:latest`, bundle]);
  reference = snapshot(path.join(bundle, 'rootfs'));
  reference.delete('.');
});

const SOURCES: Array<[string, () => string]> = [
  ['oci gzip (buildah)', () => `oci:${image('app')}:latest`],
  ['oci uncompressed (skopeo)', () => `oci:${image('app-tar')}:latest`],
  ['oci zstd (skopeo)', () => `oci:${image('app-zstd')}:latest`],
  ['docker-archive (classic docker save)', () => `docker-archive:${image('app.docker.tar')}`],
  ['docker-archive (Docker >= 25)', () => `docker-archive:${image('app.docker25.tar')}:app:latest`],
  ['oci layout with a Docker v2 manifest', () => `oci:${image('app-docker-v2s2')}:latest`],
];

describe('restore reproduces the original tree', () => {
  it.each(SOURCES)('%s', async (name, ref) => {
    const slug = name.replace(/[^a-z0-9]+/gi, '-');
    const out = path.join(work, `out-${slug}`);
    const r = await convert(ref(), `oci:${out}:app`);
    expect(r.layers).toBeGreaterThanOrEqual(2);
    const stats = await inspectImage(`oci:${out}:app`);
    // the second layer of the app image deletes files from the base: whiteouts are kept
    expect((stats.entries.whiteout ?? 0) + (stats.entries.opaque ?? 0)).toBeGreaterThan(0);
    const rootfs = path.join(work, `rootfs-${slug}`);
    const rr = await restore(`oci:${out}:app`, rootfs);
    expect(rr.files).toBeGreaterThan(1000);
    const got = snapshot(rootfs);
    got.delete('.');
    expect(diffTrees(reference, got)).toEqual([]);
    const v = await verify(`oci:${out}:app`);
    expect(v.chunks).toBe(stats.uniqueChunks);
    fs.rmSync(rootfs, { recursive: true, force: true });
  });

  it.each([
    ['fixed 256 KiB chunks', { kind: 'fixed', size: 256 << 10 }],
    ['one chunk per file', { kind: 'file' }],
  ] as const)('round-trips with %s', async (name, chunker) => {
    const slug = name.replace(/[^a-z0-9]+/gi, '-');
    const out = path.join(work, `out-${slug}`);
    const r = await convert(`oci:${image('app')}:latest`, `oci:${out}:app`, { chunker: { ...chunker } });
    const src = await openSource(`oci:${out}:app`);
    const { toc } = await openChunked(await resolveImage(src));
    await src.close();
    for (const l of toc.layers) {
      for (const e of l.entries) {
        if (e.type !== 'reg') continue;
        const lens = e.chunks!.map((c) => toc.chunks[c].length);
        if (chunker.kind === 'file')
          expect(lens.length).toBe(e.size ? 1 : 0); // files are < 64 MiB
        else lens.forEach((len, i) => expect(len).toBe(i < lens.length - 1 ? 256 << 10 : e.size! - i * (256 << 10)));
      }
    }
    expect(r.uniqueChunks).toBe(toc.chunks.length);
    const rootfs = path.join(work, `rootfs-${slug}`);
    await restore(`oci:${out}:app`, rootfs);
    const got = snapshot(rootfs);
    got.delete('.');
    expect(diffTrees(reference, got)).toEqual([]);
    fs.rmSync(rootfs, { recursive: true, force: true });
  });

  it.each([
    {
      name: 'every chunk grouped into 1 MiB frames (--group-below 256k --frame-size 1m)',
      slug: 'big-frames',
      groupBelow: 256 << 10,
      groupTarget: 1 << 20,
      runTarget: 0,
    },
    {
      name: 'small frames, chunks >= 32 KiB alone in theirs (--group-below 32k --frame-size 64k --run-frame-size 0)',
      slug: 'small-frames',
      groupBelow: 32 << 10,
      groupTarget: 64 << 10,
      runTarget: 0,
    },
    {
      name: "small frames, a file's chunks >= 32 KiB in run frames of up to 256 KiB (--run-frame-size 256k)",
      slug: 'run-frames',
      groupBelow: 32 << 10,
      groupTarget: 64 << 10,
      runTarget: 256 << 10,
    },
  ])('round-trips with $name', async ({ slug, groupBelow, groupTarget, runTarget }) => {
    const out = path.join(work, `out-${slug}`);
    const r = await convert(`oci:${image('app')}:latest`, `oci:${out}:app`, { groupBelow, groupTarget, runTarget });
    const src = await openSource(`oci:${out}:app`);
    const { toc } = await openChunked(await resolveImage(src));
    await src.close();
    // a frame holds either chunks >= groupBelow (one, or up to runTarget bytes of them), or chunks
    // below it up to about groupTarget
    const members = new Map<number, number[]>();
    for (const { frame: fi, length: len } of toc.chunks) members.set(fi, [...(members.get(fi) ?? []), len]);
    for (const [fi, lens] of members) {
      if (lens.some((l) => l >= groupBelow)) {
        expect(lens.every((l) => l >= groupBelow)).toBe(true);
        if (runTarget < groupBelow) expect(lens).toHaveLength(1);
        else expect(toc.frames[fi].length).toBeLessThanOrEqual(runTarget);
      } else expect(toc.frames[fi].length).toBeLessThan(groupTarget + groupBelow);
    }
    const alone = [...members.values()].filter((l) => l.length === 1 && l[0] >= groupBelow).length;
    const shared = [...members.values()].filter((l) => l.length > 1 && l[0] >= groupBelow).length;
    if (groupTarget >= 1 << 20) expect(toc.frames.length).toBeLessThan(toc.chunks.length / 8);
    else if (runTarget < groupBelow) expect([alone, shared]).toEqual([expect.any(Number), 0]);
    else expect(shared).toBeGreaterThan(50);
    if (groupTarget < 1 << 20 && runTarget < groupBelow) expect(alone).toBeGreaterThan(100);
    expect(r.uniqueChunks).toBe(toc.chunks.length);
    const rootfs = path.join(work, `rootfs-${slug}`);
    await restore(`oci:${out}:app`, rootfs);
    const got = snapshot(rootfs);
    got.delete('.');
    expect(diffTrees(reference, got)).toEqual([]);
    fs.rmSync(rootfs, { recursive: true, force: true });
  });

  it('the reference tree has what the comparison must cover', () => {
    const kinds = new Set([...reference.values()].map((n) => n.type));
    expect(kinds).toContain('symlink');
    expect(kinds).toContain('dir');
    expect([...reference.values()].some((n) => n.group)).toBe(true); // hardlink groups
    expect([...reference.values()].some((n) => n.uid !== 0 || n.gid !== 0)).toBe(true);
    expect([...reference.values()].some((n) => n.mode & 0o6000)).toBe(true); // setuid/setgid binaries
  });
});
