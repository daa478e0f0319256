/**
 * Chunks are stored once across images: two independent builds of the same stack converted into one
 * layout share most of their chunks, which inspect reports and the bytes on disk confirm.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { convert } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { cliJson } from './helpers/run.js';

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
});
