/**
 * The chunk index's off-heap hash table: lookups after growth, roll-back, and packs resolved from
 * a conversion's indexes to digests (what lets analyze keep one registry across many images).
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ChunkIndex } from '../src/convert/chunk-index.js';

const digest = (i: number) => createHash('sha256').update(`chunk ${i}`).digest();

describe('ChunkIndex', () => {
  it('interns 200k digests, finds each again, and tells new from known', () => {
    const r = new ChunkIndex();
    const n = 200_000;
    let wrong = 0;
    for (let i = 0; i < n; i++) {
      const { id, fresh } = r.internRaw(digest(i), 0, i % 65536);
      if (!fresh || id !== i) wrong++;
    }
    expect(wrong).toBe(0);
    expect(r.size).toBe(n);
    for (let i = 0; i < n; i += 997) {
      const d = digest(i);
      expect(r.internRaw(d, 0, 1)).toEqual({ id: i, fresh: false });
      expect(r.lookup(d.toString('hex'))).toBe(i);
      expect(r.hex(i)).toBe(d.toString('hex'));
      expect(r.length(i)).toBe(i % 65536);
    }
    // a digest at an offset inside a larger buffer (as chunkAndHash returns them)
    const batch = Buffer.concat([digest(5), digest(n + 1)]);
    expect(r.internRaw(batch, 0, 0)).toEqual({ id: 5, fresh: false });
    expect(r.internRaw(batch, 32, 7)).toEqual({ id: n, fresh: true });
    expect(r.lookup(digest(n + 2).toString('hex'))).toBeUndefined();
  });

  it('rolls back to a mark, and the forgotten digests are new again', () => {
    const r = new ChunkIndex();
    for (let i = 0; i < 1000; i++) r.internRaw(digest(i), 0, 1);
    const mark = r.mark();
    for (let i = 1000; i < 5000; i++) r.internRaw(digest(i), 0, 1);
    r.truncate(mark);
    expect(r.size).toBe(1000);
    expect(r.lookup(digest(999).toString('hex'))).toBe(999);
    expect(r.lookup(digest(1000).toString('hex'))).toBeUndefined();
    expect(r.internRaw(digest(4000), 0, 3)).toEqual({ id: 1000, fresh: true });
    expect(r.length(1000)).toBe(3);
    expect(r.unplaced(1000)).toBe(true);
  });

  it('keeps locations; packs of a conversion become digests once written', () => {
    const r = new ChunkIndex();
    const a = r.intern(digest(1).toString('hex'), 10).id;
    const b = r.intern(digest(2).toString('hex'), 20).id;
    const c = r.intern(digest(3).toString('hex'), 30).id;
    r.setLoc(a, { pack: 'sha256:' + 'a'.repeat(64), off: 0, clen: 5, ulen: 10, inner: 0 });
    r.claim(b);
    expect(r.unplaced(b)).toBe(false);
    expect(r.loc(b)).toBeUndefined();
    r.setLoc(b, { pack: 0, off: 2 ** 40, clen: 7, ulen: 50, inner: 10 });
    r.setLoc(c, { pack: 1, off: 9, clen: 8, ulen: 30, inner: 0 });
    expect(r.loc(b)).toEqual({ pack: 0, off: 2 ** 40, clen: 7, ulen: 50, inner: 10 });
    r.resolvePacks([
      { digest: 'sha256:' + 'b'.repeat(64), size: 100 },
      { digest: 'sha256:' + 'c'.repeat(64), size: 200 },
    ]);
    expect(r.loc(b)!.pack).toBe('sha256:' + 'b'.repeat(64));
    expect(r.loc(c)!.pack).toBe('sha256:' + 'c'.repeat(64));
    expect(r.packSizes.get('sha256:' + 'c'.repeat(64))).toBe(200);
    // the next conversion's pack 0 is a new pack, not the resolved one
    const d = r.intern(digest(4).toString('hex'), 40).id;
    r.setLoc(d, { pack: 0, off: 0, clen: 1, ulen: 40, inner: 0 });
    expect(r.loc(d)!.pack).toBe(0);
    expect(r.loc(b)!.pack).toBe('sha256:' + 'b'.repeat(64));
    expect(() => r.intern('not hex', 1)).toThrow(/invalid chunk digest/);
  });
});
