/** Same input and options -> same bytes, whatever the thread count; re-converting is a no-op. */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { convert } from '../src/index.js';
import { image, tmpdir } from './helpers/env.js';
import { readIndex } from './helpers/layout.js';

describe('reproducible output', () => {
  it('gives the same index digest twice, and with 1 or all threads', async () => {
    const work = tmpdir('repro');
    const src = `oci:${image('app-tar')}:latest`;
    const a = await convert(src, `oci:${path.join(work, 'a')}:app`, { threads: 0 });
    const b = await convert(src, `oci:${path.join(work, 'b')}:app`, { threads: 1 });
    const c = await convert(src, `oci:${path.join(work, 'c')}:app`, { threads: 2, batchBytes: 1 << 20 });
    expect(b.index.digest).toBe(a.index.digest);
    expect(c.index.digest).toBe(a.index.digest);
    expect(readIndex(path.join(work, 'a'))).toEqual(readIndex(path.join(work, 'b')));
  });

  it('re-converting into the same layout reuses every chunk and changes nothing', async () => {
    const work = tmpdir('repro2');
    const src = `oci:${image('app')}:latest`;
    const first = await convert(src, `oci:${work}:app`);
    const again = await convert(src, `oci:${work}:app`);
    expect(again.index.digest).toBe(first.index.digest);
    expect(again.newChunks).toBe(0);
    expect(again.bytesStored).toBe(0);
    expect(again.reusedChunks).toBe(first.uniqueChunks);
    // the layers were converted before with the same options: not even read again
    expect(again.reusedLayers).toBe(first.layers);
    expect(first.reusedLayers).toBe(0);
  });

  it('the same content in other layer blobs (zstd instead of gzip) reuses every chunk', async () => {
    const work = tmpdir('repro3');
    const first = await convert(`oci:${image('app')}:latest`, `oci:${work}:app`);
    const other = await convert(`oci:${image('app-zstd')}:latest`, `oci:${work}:app-zstd`);
    expect(other.reusedLayers).toBe(0);
    expect(other.newChunks).toBe(0);
    expect(other.bytesStored).toBe(0);
    expect(other.uniqueChunks).toBe(first.uniqueChunks);
  });
});
