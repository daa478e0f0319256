/**
 * Chunks are stored once across images: two independent builds of the same stack converted into one
 * layout share most of their chunks, which inspect reports and the bytes on disk confirm.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { convert } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { cli, cliJson } from './helpers/run.js';

function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((a, n) => a + fs.statSync(path.join(dir, n)).size, 0);
}

describe('dedup across images', () => {
  it('stores the chunks two rebuilds share once', async () => {
    const work = tmpdir('dedup');
    const shared = path.join(work, 'shared');
    const a = await convert(`oci:${image('app')}:latest`, `oci:${shared}:app`);
    const b = await convert(`oci:${image('app2')}:latest`, `oci:${shared}:app2`);
    // the rebuild's layers differ from the first build's ...
    expect(b.originalManifest.digest).not.toBe(a.originalManifest.digest);
    // ... but most of its chunks were already stored
    expect(b.reusedChunks).toBeGreaterThan(b.uniqueChunks * 0.5);
    const alone = await convert(`oci:${image('app2')}:latest`, `oci:${path.join(work, 'alone')}:app2`);
    expect(b.bytesStored).toBeLessThan(alone.bytesStored * 0.5);

    const layout = await cliJson<any>(['inspect', `oci:${shared}`]);
    expect(layout.totals.images).toBe(2);
    expect(layout.totals.sharedChunks).toBeGreaterThan(0);
    expect(layout.totals.sharedChunkBytes).toBeGreaterThan(layout.totals.uniqueChunkBytes * 0.3);
    // the packs on disk are exactly the stored new bytes of both conversions, nothing twice
    expect(layout.totals.packBytes).toBe(a.bytesStored + b.bytesStored);
    const blobs = path.join(shared, 'blobs', 'sha256');
    const packFiles = new Set<string>();
    for (const img of layout.images) {
      const m = JSON.parse(fs.readFileSync(path.join(blobs, img.chunkedManifest.slice(7)), 'utf8'));
      for (const l of m.layers) if (l.mediaType.includes('pack')) packFiles.add(l.digest.slice(7));
    }
    const onDisk = [...packFiles].reduce((s, h) => s + fs.statSync(path.join(blobs, h)).size, 0);
    expect(onDisk).toBe(layout.totals.packBytes);
    expect(dirBytes(blobs)).toBeGreaterThan(onDisk);
  });

  it('converts a batch in one process: the bytes of one conversion at a time, trust recorded, the first failure named', async () => {
    const work = tmpdir('batch');
    const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') };
    const one = path.join(work, 'one');
    const many = path.join(work, 'many');
    const other = path.join(work, 'other');
    const runs: Array<[string, string]> = [
      ['app', 'app'],
      ['app2', 'app2'],
      ['app', 'again'],
    ];
    const alone: any[] = [];
    for (const [img, tag] of runs) alone.push(await cliJson<any>(['convert', `oci:${image(img)}:latest`, `oci:${one}:${tag}`]));
    const list = [
      '# images of one stack into one layout, another elsewhere',
      '',
      `oci:${image('app')}:latest oci:${many}:app`,
      `  oci:${image('py')}:latest\toci:${other}:py  `,
      `oci:${image('app2')}:latest oci:${many}:app2`,
      `oci:${image('app')}:latest oci:${many}:again`,
    ].join('\n');
    const rs = await cliJson<any[]>(['convert', '--batch', '-'], { env, input: list });
    expect(rs.map((r) => r.destination)).toEqual([`oci:${many}:app`, `oci:${other}:py`, `oci:${many}:app2`, `oci:${many}:again`]);
    // the same bytes as one process per image: the same indexes, the same blobs and nothing more
    expect([rs[0], rs[2], rs[3]].map((r) => r.index.digest)).toEqual(alone.map((r) => r.index.digest));
    const blobs = (d: string) => fs.readdirSync(path.join(d, 'blobs', 'sha256')).sort();
    expect(blobs(many)).toEqual(blobs(one));
    expect(rs[2].reusedChunks).toBeGreaterThan(rs[2].uniqueChunks * 0.5);
    expect(rs[3].reusedLayers).toBe(rs[3].layers);
    expect(rs[3].bytesStored).toBe(0);
    expect((await cliJson<any>(['inspect', `oci:${other}:py`])).files).toBe(rs[1].files);
    // what the batch wrote is recorded as this user's own: a later process takes it without reading it
    const later = await cliJson<any>(['convert', `oci:${image('app2')}:latest`, `oci:${many}:later`], { env });
    expect(later.reusedLayers).toBe(later.layers);
    expect(later.chunksVerified).toBe(0);
    const stranger = await cliJson<any>(['convert', `oci:${image('app2')}:latest`, `oci:${many}:stranger`], {
      env: { ...env, XDG_CACHE_HOME: path.join(work, 'cache2') },
    });
    expect(stranger.chunksVerified).toBeGreaterThan(0);

    // a malformed line: nothing is converted
    const bad = await cli(['convert', '--batch', '-'], { input: `oci:${image('app')}:latest oci:${work}/bad:x\noci:${image('app')}:latest\n` });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/the batch on stdin line 2: expected SOURCE DESTINATION, found 1 field/);
    expect(fs.existsSync(path.join(work, 'bad'))).toBe(false);
    expect((await cli(['convert', `oci:${image('app')}:latest`, `oci:${work}/x:x`, '--batch', '-'])).code).toBe(2);
    expect((await cli(['convert', '--batch', path.join(work, 'missing.txt')])).code).toBe(3);
    // the first failure stops the batch and is named; what came before it stays converted
    const fail = await cli(['convert', '--batch', '-'], {
      input: `oci:${image('app')}:latest oci:${work}/f:first\noci:${image('app')}:nope oci:${work}/f:second\noci:${image('app2')}:latest oci:${work}/f:third\n`,
    });
    expect(fail.code).toBe(3);
    expect(fail.stderr).toMatch(/conversion 2 of 3 \(oci:.*:nope -> oci:.*f:second\): .*no image tagged "nope"/);
    const tags = JSON.parse(fs.readFileSync(path.join(work, 'f', 'index.json'), 'utf8')).manifests.map(
      (m: any) => m.annotations['org.opencontainers.image.ref.name'],
    );
    expect(tags).toEqual(['first']);
  });

  it('--keep-going: a failure mid-layer is reported, and the next conversion into the same layout still stores what it needs', async () => {
    const work = tmpdir('batch-keep-going');
    // py with its last layer cut short: its first pass places chunks, then the blob is found truncated
    const bad = path.join(work, 'bad');
    fs.cpSync(image('py'), bad, { recursive: true });
    const blob = (d: string) => path.join(bad, 'blobs', 'sha256', d.slice(7));
    const index = JSON.parse(fs.readFileSync(path.join(bad, 'index.json'), 'utf8'));
    const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0].digest), 'utf8'));
    const last = blob(manifest.layers.at(-1).digest);
    fs.truncateSync(last, Math.floor((fs.statSync(last).size * 3) / 4));
    const out = path.join(work, 'out');
    const list = [`oci:${image('app')}:latest oci:${out}:app`, `oci:${bad}:latest oci:${out}:bad`, `oci:${image('py')}:latest oci:${out}:py`].join('\n');
    const r = await cli(['convert', '--batch', '-', '--keep-going', '--json'], { input: list });
    expect(r.code).toBe(6); // the first failure's code: EDIGEST
    const rs = JSON.parse(r.stdout);
    expect(rs.map((x: any) => x.error?.code ?? 'ok')).toEqual(['ok', 'EDIGEST', 'ok']);
    expect(rs[1].error.message).toMatch(/conversion 2 of 3 .* is truncated/);
    expect(r.stderr).toMatch(/1 of 3 conversions failed/);
    // the failed conversion had claimed chunks it never wrote: the next one reads the layout again
    expect(rs[2].reusedChunks).toBeGreaterThan(0);
    expect((await cliJson<any>(['verify', `oci:${out}:py`])).ok).toBe(true);
    const tags = JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8')).manifests.map(
      (m: any) => m.annotations['org.opencontainers.image.ref.name'],
    );
    expect(tags.sort()).toEqual(['app', 'py']);
    // human output names the failure (into a new layout: the one above holds py's layers now, and a
    // layer converted there is taken without reading its blob again); without --batch the option is
    // a usage error
    const text = await cli(['convert', '--batch', '-', '--keep-going'], { input: list.replaceAll(`oci:${out}:`, `oci:${out}2:`) });
    expect(text.code).toBe(6);
    expect(text.stdout).toMatch(/failed oci:.*bad:latest -> oci:.*out2:bad/);
    expect(text.stdout).toMatch(/2 conversions, 1 failed/);
    expect((await cli(['convert', `oci:${image('app')}:latest`, `oci:${work}/x:x`, '--keep-going'])).code).toBe(2);
  });
});
