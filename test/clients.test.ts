/**
 * Old clients are unaffected: skopeo copies the original manifest byte-identical, and containerd
 * imports the converted layout, unpacks only the original layers and runs a program from it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convert, resolveImage, openSource } from '../src/index.js';
import { Containerd } from './helpers/containerd.js';
import { image, tmpdir } from './helpers/env.js';
import { must } from './helpers/run.js';

let work: string;
const converted: Record<string, { out: string; original: string; layers: number }> = {};

beforeAll(async () => {
  work = tmpdir('clients');
  for (const name of ['app', 'app-docker-v2s2']) {
    const out = path.join(work, name);
    const r = await convert(`oci:${image(name)}:latest`, `oci:${out}:app`);
    converted[name] = { out, original: r.originalManifest.digest, layers: r.layers };
  }
});

describe('skopeo', () => {
  it.each(['app', 'app-docker-v2s2'])('copies the original manifest of %s byte-identical', async (name) => {
    const c = converted[name];
    const dest = path.join(work, `skopeo-dir-${name}`);
    await must('skopeo', ['copy', '--quiet', `oci:${c.out}:app`, `dir:${dest}`]);
    const m = fs.readFileSync(path.join(dest, 'manifest.json'));
    expect('sha256:' + createHash('sha256').update(m).digest('hex')).toBe(c.original);
    // and it is the very manifest of the source image
    const src = await openSource(`oci:${image(name)}:latest`);
    const orig = await resolveImage(src);
    await src.close();
    expect(m.equals(orig.original!.bytes)).toBe(true);
    // skopeo can also read the converted tag as an image and sees the original's layers
    const info = JSON.parse((await must('skopeo', ['inspect', `oci:${c.out}:app`])).stdout);
    expect(info.Layers).toEqual(orig.original!.manifest.layers.map((l) => l.digest));
  });
});

describe('containerd', () => {
  const daemon = () => new Containerd(tmpdir('containerd'));
  let ctrd: Containerd;
  beforeAll(async () => {
    ctrd = daemon();
    await ctrd.start();
  });
  afterAll(async () => {
    await ctrd?.stop();
  });

  it.each(['app', 'app-docker-v2s2'])('imports %s, unpacks only the original layers and runs a program', async (name) => {
    const c = converted[name];
    const archive = path.join(work, `${name}.oci.tar`);
    await must('tar', ['-C', c.out, '-cf', archive, '.']);
    const imgName = `localhost/ocichunk-${name}:app`;
    const imp = await ctrd.ctr(['images', 'import', '--snapshotter', 'native', '--base-name', `localhost/ocichunk-${name}`, archive]);
    expect(imp.code, imp.stderr).toBe(0);
    const ls = await ctrd.ctr(['images', 'ls', '-q']);
    expect(ls.stdout.split('\n')).toContain(imgName);
    const run = await ctrd.ctr(['run', '--rm', '--snapshotter', 'native', imgName, `t-${name}`, '/bin/sh', '-c', 'cat /etc/debian_version; echo ran-ok']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('ran-ok');
    // the snapshot chain is exactly the original layers (one committed snapshot per diff_id)
    const snaps = await ctrd.ctr(['snapshots', '--snapshotter', 'native', 'ls']);
    const committed = snaps.stdout.split('\n').filter((l) => /\bCommitted\b/.test(l));
    expect(committed.length).toBe(c.layers);
  });
});
