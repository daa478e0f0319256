/** The CLI as users run it: usage errors, --json output, exit codes, archives in and out. */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { image, tmpdir, REPO } from './helpers/env.js';
import { cli, cliJson, must } from './helpers/run.js';

describe('ocichunk CLI', () => {
  it('explains usage errors with exit code 2', async () => {
    const r = await cli(['convert', 'nonsense', 'oci:/tmp/x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/invalid image reference "nonsense"/);
    expect((await cli([])).code).toBe(2);
    const p = await cli(['convert', `oci:${REPO}/examples/debian-mini:latest`, 'oci:/tmp/x:y', '--platform', 'linux']);
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/invalid platform/);
  });

  it('names a missing tag and the tags that exist', async () => {
    const r = await cli(['inspect', `oci:${REPO}/examples/debian-mini:nope`]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no image tagged "nope" \(tags: latest\)/);
  });

  it('reports a platform the image does not have', async () => {
    const work = tmpdir('cli-plat');
    const out = path.join(work, 'o');
    await must(process.execPath, [path.join(REPO, 'bin/ocichunk.js'), 'convert', `oci:${REPO}/examples/debian-mini:latest`, `oci:${out}:x`]);
    const r = await cli(['restore', `oci:${out}:x`, path.join(work, 'r'), '--platform', 'linux/s390x']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no image for platform linux\/s390x \(available: linux\/amd64\)/);
  });

  it('converts the bundled example with --json, and to and from archives', async () => {
    const work = tmpdir('cli');
    const r = await cliJson<any>(['convert', `oci:${REPO}/examples/debian-mini:latest`, `oci-archive:${work}/ex.tar:ex`]);
    expect(r.files).toBeGreaterThan(0);
    expect(r.index.digest).toMatch(/^sha256:/);
    // the archive is a valid OCI archive for skopeo, pointing at the original image
    const info = JSON.parse((await must('skopeo', ['inspect', `oci-archive:${work}/ex.tar:ex`])).stdout);
    expect(info.Layers.length).toBe(r.layers);
    // and a source for our own commands
    const v = await cliJson<any>(['verify', `oci-archive:${work}/ex.tar:ex`]);
    expect(v.ok).toBe(true);
    const rs = await cliJson<any>(['restore', `oci-archive:${work}/ex.tar:ex`, `${work}/rootfs`]);
    expect(rs.files).toBe(r.files);
    expect(fs.existsSync(`${work}/rootfs/bin/busybox`) || fs.existsSync(`${work}/rootfs/usr/bin/busybox`)).toBe(true);
  });

  it('prints a readable summary without --json', async () => {
    const work = tmpdir('cli-text');
    const r = await cli(['convert', `oci:${image('app-tar')}:latest`, `oci:${work}/o:app`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/dedup ratio\s+\d+\.\d\dx/);
    expect(r.stdout).toMatch(/bytes stored \(new packs\)/);
    expect(r.stderr).toBe(''); // no progress when stderr is not a TTY
    const i = await cli(['inspect', `oci:${work}/o:app`]);
    expect(i.stdout).toMatch(/chunks \(refs \/ unique\)/);
  });
});
