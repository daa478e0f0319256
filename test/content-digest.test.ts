/**
 * The content digest (docs/format.md §9): a function of an image's files and the conversion's
 * options, not of frames, packs or where it was converted to; stated on the chunked manifest,
 * checked by `verify`, and derived again from the original by `verify --against-original`, so a
 * TOC whose author recomputed every blob digest still cannot pass for the original.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convert, verify } from '../src/index.js';
import { native } from '../src/native/index.js';
import { ANN } from '../src/oci/chunked-media.js';
import { image, tmpdir } from './helpers/env.js';
import { blob, forgeChunked, readIndex } from './helpers/layout.js';
import { Registry } from './helpers/registry.js';
import { cli } from './helpers/run.js';

let work: string;
let reg: Registry;
const zstd = { compress: (j: Buffer) => native.compressSync(j, 3), decompress: (b: Buffer) => native.decompressSync(b, 256 << 20) };

beforeAll(async () => {
  work = tmpdir('content');
  reg = await new Registry(path.join(work, 'reg')).start();
});

afterAll(async () => {
  await reg?.stop();
});

/** The chunked manifest of `tag` in a converted layout. */
function chunkedManifest(dir: string, tag: string) {
  const idx = readIndex(dir);
  const top = JSON.parse(blob(dir, idx.manifests.find((m: any) => m.annotations?.['org.opencontainers.image.ref.name'] === tag).digest).toString());
  return JSON.parse(blob(dir, top.manifests[1].digest).toString());
}

describe('content digest', () => {
  it('is the same whatever the destination holds; the TOCs differ', async () => {
    // app (python3-minimal over the slim base: app2, a rebuild of it, and base share files with it),
    // into an empty layout
    const alone = await convert(`oci:${image('app')}:latest`, `oci:${work}/alone:app`);
    // into a layout that already holds images sharing files with it
    await convert(`oci:${image('app2')}:latest`, `oci:${work}/shared:app2`);
    await convert(`oci:${image('base')}:latest`, `oci:${work}/shared:base`);
    const shared = await convert(`oci:${image('app')}:latest`, `oci:${work}/shared:app`);
    expect(shared.reusedChunks).toBeGreaterThan(0);
    // into a registry repository holding others
    await reg.push(`oci:${image('app2')}:latest`, 'c/repo:app2');
    await reg.push(`oci:${image('app')}:latest`, 'c/repo:app');
    const app2 = `docker://${reg.host}/c/repo:app2`;
    const app = `docker://${reg.host}/c/repo:app`;
    await convert(app2, app2);
    const remote = await convert(app, app);
    expect(remote.reusedChunks).toBeGreaterThan(0);

    expect(alone.contentDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(shared.contentDigest).toBe(alone.contentDigest);
    expect(remote.contentDigest).toBe(alone.contentDigest);
    const tocOf = (dir: string, tag: string) => chunkedManifest(dir, tag).layers[0].digest;
    expect(tocOf(`${work}/shared`, 'app')).not.toBe(tocOf(`${work}/alone`, 'app'));
    expect(chunkedManifest(`${work}/alone`, 'app').annotations[ANN.contentDigest]).toBe(alone.contentDigest);

    // verify states it, and derives it again from the original's layers
    for (const ref of [`oci:${work}/alone:app`, `oci:${work}/shared:app`, app]) {
      const v = await verify(ref, { againstOriginal: true });
      expect(v).toMatchObject({ contentDigest: alone.contentDigest, contentDigestStated: true, matchesOriginal: true });
    }
    // another image: another digest; clamped mtimes: another digest (the files differ)
    expect((await verify(`oci:${work}/shared:app2`)).contentDigest).not.toBe(alone.contentDigest);
    const clamped = await convert(`oci:${image('app')}:latest`, `oci:${work}/clamped:app`, { sourceDateEpoch: 0 });
    expect(clamped.contentDigest).not.toBe(alone.contentDigest);
    expect(chunkedManifest(`${work}/clamped`, 'app').annotations[ANN.sourceDateEpoch]).toBe('0');
    expect(await verify(`oci:${work}/clamped:app`, { againstOriginal: true })).toMatchObject({ matchesOriginal: true });
  });

  it('a TOC changed by an author who recomputed every digest passes plain verify, not --against-original', async () => {
    const dir = path.join(work, 'forged');
    await convert(`oci:${image('app')}:latest`, `oci:${dir}:app`);
    let victim = '';
    forgeChunked(
      dir,
      'app',
      {
        // one file's content becomes another's: its chunk list and size are replaced
        toc: (toc) => {
          const top = toc.layers[toc.layers.length - 1].entries;
          const files = top.filter((e: any) => e.type === 'reg' && e.chunks.length > 0);
          const [a, b] = [files.find((e: any) => e.path.endsWith('.py')), files.find((e: any) => e.path.endsWith('.so') || e.path.includes('/bin/'))];
          victim = a.path;
          a.chunks = b.chunks;
          a.size = b.size;
          return toc;
        },
        // and the content digest stated to match the new TOC
        manifest: (m) => {
          const blobPath = m.layers[0].digest;
          const t = native.openToc(blob(dir, blobPath), 'forged TOC');
          t.loadDigests(blob(dir, m.layers[1].digest)); // the digest table (format version 2)
          m.annotations[ANN.contentDigest] = t.contentDigest();
        },
      },
      zstd,
    );
    expect(victim).not.toBe('');
    const plain = await cli(['verify', `oci:${dir}:app`, '--json']);
    expect(plain.code, plain.stderr).toBe(0);
    const against = await cli(['verify', `oci:${dir}:app`, '--against-original']);
    expect(against.code).toBe(6);
    expect(against.stderr).toMatch(/layer \d+ \(sha256:[0-9a-f]{64}\): the TOC's files \(content digest sha256:[0-9a-f]{64}\) are not the original layer's/);
    // a manifest whose statement does not match its TOC is refused by plain verify
    forgeChunked(dir, 'app', { manifest: (m) => (m.annotations[ANN.contentDigest] = `sha256:${'0'.repeat(64)}`) }, zstd);
    const wrong = await cli(['verify', `oci:${dir}:app`]);
    expect(wrong.code).toBe(6);
    expect(wrong.stderr).toMatch(/states content digest sha256:0{64}, its TOC holds files of content digest/);
  });
});
