/**
 * The local chunk cache: verified reads (a damaged entry is dropped), atomic writes by several
 * processes at once, and a size bound kept by evicting the least recently used chunks.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChunkCache } from '../src/lazy/cache.js';
import { REPO, tmpdir } from './helpers/env.js';

const chunk = (i: number, size = 10_000) => {
  const b = Buffer.alloc(size);
  for (let k = 0; k < size; k += 32) createHash('sha256').update(`${i}/${k}`).digest().copy(b, k);
  return { hex: createHash('sha256').update(b).digest('hex'), bytes: b };
};

describe('ChunkCache', () => {
  it('returns what was put, and drops an entry whose bytes no longer match its digest', async () => {
    const c = await ChunkCache.open(tmpdir('cache'), 1 << 30);
    const a = chunk(1);
    expect(await c.get(a.hex)).toBeUndefined();
    await c.put(a.hex, a.bytes);
    expect((await c.get(a.hex))!.equals(a.bytes)).toBe(true);
    const f = c.pathOf(a.hex);
    const b = fs.readFileSync(f);
    b[100] ^= 1;
    fs.writeFileSync(f, b);
    expect(await c.get(a.hex)).toBeUndefined();
    expect(fs.existsSync(f)).toBe(false);
    expect(c.stats.corrupt).toBe(1);
    // nothing half-written is left in the temp area
    expect(fs.readdirSync(path.join(c.dir, 'tmp'))).toEqual([]);
  });

  it('empty when opened: look-ups of chunks it did not store skip the file system; opened with chunks, it looks', async () => {
    const dir = tmpdir('cache');
    const cold = await ChunkCache.open(dir, 1 << 30);
    const [x, y, z] = [chunk(101), chunk(102), chunk(103)];
    // another process fills the cache meanwhile (a plain instance always looks)
    await new ChunkCache(dir, 1 << 30).put(x.hex, x.bytes);
    expect(cold.has(x.hex)).toBe(false);
    expect(await cold.get(x.hex)).toBeUndefined();
    // what it stored itself it finds, by either way of storing
    await cold.put(y.hex, y.bytes);
    await cold.putMany([z.hex], [z.bytes]);
    expect(cold.has(y.hex)).toBe(true);
    expect((await cold.get(y.hex))!.equals(y.bytes)).toBe(true);
    expect((await cold.get(z.hex))!.equals(z.bytes)).toBe(true);
    // and a chunk it stored that was evicted (or removed) since is looked for, and missed
    fs.rmSync(cold.pathOf(y.hex));
    expect(cold.has(y.hex)).toBe(false);
    // opened again, the cache holds chunks: every look-up looks
    const warm = await ChunkCache.open(dir, 1 << 30);
    expect(warm.has(x.hex)).toBe(true);
    expect((await warm.get(x.hex))!.equals(x.bytes)).toBe(true);
    // and an empty one looks again once its first moments are over (a long-lived mount)
    const dir2 = tmpdir('cache');
    const brief = await ChunkCache.open(dir2, 1 << 30, 2000);
    await new ChunkCache(dir2, 1 << 30).put(x.hex, x.bytes);
    expect(brief.has(x.hex)).toBe(false);
    await new Promise((r) => setTimeout(r, 2100));
    expect(brief.has(x.hex)).toBe(true);
  });

  it('stores many chunks in one native call: each once, counted, bounded, and a failure is a typed error', async () => {
    const c = await ChunkCache.open(tmpdir('cache'), 1 << 30);
    const xs = Array.from({ length: 50 }, (_, i) => chunk(i, 1000 + i));
    expect(
      await c.putMany(
        xs.map((x) => x.hex),
        xs.map((x) => x.bytes),
      ),
    ).toEqual(xs.map(() => true));
    expect(c.stats.stored).toBe(50);
    expect(c.stats.storedBytes).toBe(xs.reduce((a, x) => a + x.bytes.length, 0));
    for (const x of xs) expect((await c.get(x.hex))!.equals(x.bytes)).toBe(true);
    // stored once: a second call (or one mixing old and new) says which it stored
    const y = chunk(99);
    expect(await c.putMany([xs[0].hex, y.hex], [xs[0].bytes, y.bytes])).toEqual([false, true]);
    expect(c.stats.stored).toBe(51);
    expect(fs.readdirSync(path.join(c.dir, 'tmp'))).toEqual([]);
    // a name that is not a digest never becomes a path
    await expect(c.putMany(['../../escape'], [Buffer.from('x')])).rejects.toMatchObject({ code: 'EIO' });
    // the cache's temp area gone: an error with a code, nothing stored
    fs.rmSync(path.join(c.dir, 'tmp'), { recursive: true });
    const z = chunk(100);
    await expect(c.putMany([z.hex], [z.bytes])).rejects.toMatchObject({ code: 'EIO' });
    expect(fs.existsSync(c.pathOf(z.hex))).toBe(false);
    // the bound holds for chunks stored many at once too
    const small = await ChunkCache.open(tmpdir('cache'), 100_000);
    const many = Array.from({ length: 20 }, (_, i) => chunk(200 + i));
    for (let i = 0; i < 20; i += 5)
      await small.putMany(
        many.slice(i, i + 5).map((x) => x.hex),
        many.slice(i, i + 5).map((x) => x.bytes),
      );
    expect((await small.usage()).bytes).toBeLessThanOrEqual(100_000);
    expect(small.stats.evicted).toBeGreaterThan(0);
  });

  it('stays under its bound, evicting the least recently used chunks first', async () => {
    const c = await ChunkCache.open(tmpdir('cache'), 100_000);
    const all = Array.from({ length: 20 }, (_, i) => chunk(i));
    for (const [i, x] of all.entries()) {
      await c.put(x.hex, x.bytes);
      // keep chunk 0 in use: it must survive
      if (i % 3 === 0) {
        await new Promise((r) => setTimeout(r, 5));
        expect(await c.get(all[0].hex)).toBeDefined();
      }
    }
    const u = await c.usage();
    expect(u.bytes).toBeLessThanOrEqual(100_000);
    expect(c.stats.evicted).toBeGreaterThan(0);
    expect(await c.get(all[0].hex)).toBeDefined();
    expect(await c.get(all[1].hex)).toBeUndefined();
    expect(await c.get(all[19].hex)).toBeDefined();
  });

  it('is safe with several processes writing the same chunks at once', async () => {
    const dir = tmpdir('cache');
    const script = `
      import { ChunkCache } from ${JSON.stringify(path.join(REPO, 'dist', 'lazy', 'cache.js'))};
      import { createHash } from 'node:crypto';
      const c = await ChunkCache.open(${JSON.stringify(dir)}, 1 << 30);
      for (let i = 0; i < 200; i++) {
        const b = Buffer.alloc(50_000, i);
        const hex = createHash('sha256').update(b).digest('hex');
        // one at a time and many at once, racing each other
        if (i % 2) await c.put(hex, b);
        else await c.putMany([hex], [b]);
        const back = await c.get(hex);
        if (!back || !back.equals(b)) { console.error('bad read of', hex); process.exit(1); }
      }`;
    const codes = await Promise.all(
      [0, 1, 2, 3].map(
        () =>
          new Promise<number>((resolve) => {
            const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
            p.on('exit', (code) => resolve(code ?? -1));
          }),
      ),
    );
    expect(codes).toEqual([0, 0, 0, 0]);
    const c = new ChunkCache(dir);
    expect((await c.usage()).chunks).toBe(200);
    expect(fs.readdirSync(path.join(dir, 'tmp'))).toEqual([]);
  });
});
