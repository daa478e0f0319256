/**
 * The chunk index over the format's native chunk dictionary (crates/core/src/format/dict.rs, with
 * Rust tests of its own): batches of digests, new told from known, roll-back, locations and packs
 * resolved from a conversion's indexes to digests (what lets analyze keep one index across images).
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ChunkIndex } from '../src/convert/chunk-index.js';

const digest = (i: number) => createHash('sha256').update(`chunk ${i}`).digest();
const digests = (list: number[]) => Buffer.concat(list.map(digest));
/** The id of a known chunk (hex digest), or undefined. */
const lookup = (r: ChunkIndex, hex: string) => {
  const d = Buffer.from(hex, 'hex');
  const id = d.length === 32 ? r.dict.lookup(d) : -1;
  return id >= 0 ? id : undefined;
};

describe('ChunkIndex', () => {
  it('interns 200k digests in batches, finds each again, and tells new from known', () => {
    const r = new ChunkIndex();
    const n = 200_000;
    let wrong = 0;
    for (let i = 0; i < n; i += 1000) {
      const list = Array.from({ length: 1000 }, (_, k) => i + k);
      const { ids, fresh } = r.internAll(
        digests(list),
        Uint32Array.from(list, (v) => v % 65536),
      );
      list.forEach((v, k) => {
        if (!fresh(k) || ids[k] !== v) wrong++;
      });
    }
    expect(wrong).toBe(0);
    expect(r.size).toBe(n);
    for (let i = 0; i < n; i += 997) {
      const d = digest(i);
      const { ids, fresh } = r.internAll(d, Uint32Array.of(1));
      expect([ids[0], fresh(0)]).toEqual([i, false]);
      expect(lookup(r, d.toString('hex'))).toBe(i);
      expect(r.hex(i)).toBe(d.toString('hex'));
      expect(r.length(i)).toBe(i % 65536);
    }
    // one batch holding a known chunk, a new one twice and another new one
    const { ids, fresh } = r.internAll(digests([5, n + 1, n + 1, n + 2]), Uint32Array.of(0, 7, 7, 9));
    expect([...ids]).toEqual([5, n, n, n + 1]);
    expect([0, 1, 2, 3].map(fresh)).toEqual([false, true, false, true]);
    expect(r.length(n + 1)).toBe(9);
    expect(lookup(r, digest(n + 3).toString('hex'))).toBeUndefined();
    expect(lookup(r, 'beef')).toBeUndefined();
  });

  it('rolls back to a mark, and the forgotten digests are new again', () => {
    const r = new ChunkIndex();
    const range = (a: number, b: number) => Array.from({ length: b - a }, (_, k) => a + k);
    r.internAll(digests(range(0, 1000)), new Uint32Array(1000).fill(1));
    const mark = r.mark();
    r.internAll(digests(range(1000, 5000)), new Uint32Array(4000).fill(1));
    r.truncate(mark);
    expect(r.size).toBe(1000);
    expect(lookup(r, digest(999).toString('hex'))).toBe(999);
    expect(lookup(r, digest(1000).toString('hex'))).toBeUndefined();
    const { ids, fresh } = r.internAll(digests([4000]), Uint32Array.of(3));
    expect([ids[0], fresh(0)]).toEqual([1000, true]);
    expect(r.length(1000)).toBe(3);
    expect(r.dict.unplaced(1000)).toBe(true);
  });

  it('keeps locations and spool places; packs of a conversion become digests once written', () => {
    const r = new ChunkIndex();
    const [a, b, c] = r.internAll(digests([1, 2, 3]), Uint32Array.of(10, 20, 30)).ids;
    const setLoc = (id: number, l: { pack: string | number; off: number; clen: number; ulen: number; inner: number }) =>
      r.dict.setLocation(id, { pack: l.pack, offset: l.off, compressedLen: l.clen, len: l.ulen, inner: l.inner });
    setLoc(a, { pack: 'sha256:' + 'a'.repeat(64), off: 0, clen: 5, ulen: 10, inner: 0 });
    r.dict.claim(b);
    expect(r.dict.unplaced(b)).toBe(false);
    expect(r.loc(b)).toBeUndefined();
    setLoc(b, { pack: 0, off: 2 ** 40, clen: 7, ulen: 50, inner: 10 });
    setLoc(c, { pack: 1, off: 9, clen: 8, ulen: 30, inner: 0 });
    expect(r.loc(b)).toEqual({ pack: 0, off: 2 ** 40, clen: 7, ulen: 50, inner: 10 });
    expect(r.dict.spooled(c)).toBeNull();
    r.setSpool(c, 2 ** 33);
    expect(r.dict.spooled(c)).toEqual([2 ** 33, -1]);
    r.setSpool(c, 12, 34);
    expect(r.dict.spooled(c)).toEqual([12, 34]);
    r.resolvePacks([
      { digest: 'sha256:' + 'b'.repeat(64), size: 100 },
      { digest: 'sha256:' + 'c'.repeat(64), size: 200 },
    ]);
    expect(r.loc(b)!.pack).toBe('sha256:' + 'b'.repeat(64));
    expect(r.loc(c)!.pack).toBe('sha256:' + 'c'.repeat(64));
    expect(r.packSizes.get('sha256:' + 'c'.repeat(64))).toBe(200);
    // the next conversion's pack 0 is a new pack, not the resolved one
    const [d] = r.internAll(digests([4]), Uint32Array.of(40)).ids;
    setLoc(d, { pack: 0, off: 0, clen: 1, ulen: 40, inner: 0 });
    expect(r.loc(d)!.pack).toBe(0);
    expect(r.loc(b)!.pack).toBe('sha256:' + 'b'.repeat(64));
    // ids the index never handed out are refused by the native side with a code, not a crash
    expect(() => r.length(99)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});
