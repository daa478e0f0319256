/**
 * Faithful mtimes (the default): every real test image restores to the tree umoci unpacks from the
 * original, mtimes included; Python started in a chroot of a restored and of a mounted image finds
 * its bytecode fresh (Debian's .pyc files record their source's mtime); dedup does not depend on
 * mtimes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { convert, restore } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { mounted } from './helpers/mount.js';
import { must } from './helpers/run.js';
import { diffTrees, snapshot } from './helpers/tree.js';

let work: string;

beforeAll(() => {
  work = tmpdir('mtimes');
});

/** What `python3 -v -c 'import subprocess, re, tempfile'` says about the bytecode of the modules it imports. */
async function pythonImports(root: string): Promise<{ fromBytecode: number; stale: string[] }> {
  // (app has python3-minimal: these, not json; os and the modules of start-up are frozen in)
  const r = await must('chroot', [root, '/usr/bin/python3', '-v', '-c', 'import subprocess, re, tempfile']);
  const lines = r.stderr.split('\n');
  return {
    fromBytecode: lines.filter((l) => /^# code object from '.*\.pyc'$/.test(l)).length,
    stale: lines.filter((l) => l.includes('bytecode is stale')),
  };
}

describe('mtimes are kept by default', () => {
  // (py's tree, mtimes included, is compared through the mount by lazy.test.ts; the largest test
  // image, big, the same way as here by benchmarks/restore.sh)
  it.each(['base', 'app2'])('restore of %s gives the tree umoci unpacks, mtimes included', async (name) => {
    const bundle = path.join(work, `umoci-${name}`);
    await must('umoci', ['unpack', '--image', `${image(name)}:latest`, bundle]);
    const reference = snapshot(path.join(bundle, 'rootfs'));
    fs.rmSync(bundle, { recursive: true, force: true });
    const out = path.join(work, `out-${name}`);
    await convert(`oci:${image(name)}:latest`, `oci:${out}:x`);
    const rootfs = path.join(work, `rootfs-${name}`);
    await restore(`oci:${out}:x`, rootfs);
    const got = snapshot(rootfs);
    // the root: umoci gives it the image config's defaults, ocichunk the root entry's metadata
    reference.delete('.');
    got.delete('.');
    expect(diffTrees(reference, got)).toEqual([]);
    // not all one time: a clamp would give every file the same mtime
    expect(new Set([...got.values()].map((n) => n.mtime)).size).toBeGreaterThan(10);
    fs.rmSync(rootfs, { recursive: true, force: true });
  });

  it('python3 finds its bytecode fresh in a chroot of restore and of mount; clamping makes it stale', async () => {
    const out = path.join(work, 'app-kept');
    await convert(`oci:${image('app')}:latest`, `oci:${out}:x`);
    const rootfs = path.join(work, 'app-rootfs');
    await restore(`oci:${out}:x`, rootfs);
    const restored = await pythonImports(rootfs);
    expect(restored.stale).toEqual([]);
    expect(restored.fromBytecode).toBeGreaterThan(10);
    fs.rmSync(rootfs, { recursive: true, force: true });

    const mnt = path.join(work, 'app-mnt');
    let mountedRun: Awaited<ReturnType<typeof pythonImports>> | undefined;
    await mounted(`oci:${out}:x`, mnt, ['--cache', path.join(work, 'cache')], async () => {
      mountedRun = await pythonImports(mnt);
    });
    expect(mountedRun!.stale).toEqual([]);
    expect(mountedRun!.fromBytecode).toBeGreaterThan(10);

    // the opt-in clamp changes the files: every module's bytecode is stale
    const clamped = path.join(work, 'app-clamped');
    await convert(`oci:${image('app')}:latest`, `oci:${clamped}:x`, { sourceDateEpoch: 0 });
    const rootfs0 = path.join(work, 'app-rootfs-0');
    await restore(`oci:${clamped}:x`, rootfs0);
    expect((await pythonImports(rootfs0)).stale.length).toBeGreaterThan(10);
    fs.rmSync(rootfs0, { recursive: true, force: true });
  });

  it('dedup does not depend on mtimes: the same chunks and packs with and without the clamp', async () => {
    const a = await convert(`oci:${image('app')}:latest`, `oci:${path.join(work, 'dd-kept')}:x`);
    const b = await convert(`oci:${image('app')}:latest`, `oci:${path.join(work, 'dd-clamped')}:x`, { sourceDateEpoch: 0 });
    expect(a.chunkedManifest.digest).not.toBe(b.chunkedManifest.digest);
    expect([a.uniqueChunks, a.uniqueChunkBytes, a.bytesStored, a.dedupRatio]).toEqual([b.uniqueChunks, b.uniqueChunkBytes, b.bytesStored, b.dedupRatio]);
  });
});
