/**
 * A mount's prefetch list, planned whole: frames that lie together in a pack are fetched in one
 * request whatever the order the list needs them in, and the batches go out in the order the list
 * first needs them.
 */
import { describe, expect, it } from 'vitest';
import { planListBatches } from '../../src/lazy/mount.js';

const frame = (pack: number, offset: number, compressedLength: number) => ({ pack, offset, compressedLength, length: compressedLength * 3 });

describe('planListBatches', () => {
  it('joins adjacent frames needed at different times, keeps far ones and other packs apart, and orders batches by first need', () => {
    const frames = [
      frame(0, 0, 100), // 0
      frame(0, 100, 200), // 1: right after 0
      frame(0, 300_000, 50), // 2: far from 1
      frame(1, 0, 100), // 3: another pack
      frame(0, 310, 2 << 20), // 4: near 1, but too long to join it
    ];
    // chunk -> frame
    const chunks = [2, 0, 3, 1, 0, 4].map((f, i) => ({ frame: f, offset: 0, length: 10, digest: `${i}` }));
    // the list needs chunk 0 (frame 2) first, then frame 0, frame 3, frame 1, frame 0 again, frame 4
    const batches = planListBatches([0, 1, 2, 3, 4, 5], { frames, chunks } as never);
    expect(batches).toEqual([
      { chunks: [0], bytes: 50 },
      // frames 0 and 1 in one batch, in pack order: frame 0's chunks, then frame 1's
      { chunks: [1, 4, 3], bytes: 300 },
      { chunks: [2], bytes: 100 },
      { chunks: [5], bytes: 2 << 20 },
    ]);
  });

  it('gives every chunk of the list once, in batches of at most 1 MiB unless one frame is larger', () => {
    const frames = Array.from({ length: 200 }, (_, i) => frame(i % 3, Math.floor(i / 3) * 40_000, 30_000));
    const list = Array.from({ length: 400 }, (_, i) => (i * 7919) % 400);
    const chunks = Array.from({ length: 400 }, (_, i) => ({ frame: i % 200, offset: 0, length: 1, digest: `${i}` }));
    const batches = planListBatches(list, { frames, chunks } as never);
    expect(batches.flatMap((b) => b.chunks).sort((a, b) => a - b)).toEqual([...list].sort((a, b) => a - b));
    for (const b of batches) {
      expect(b.bytes).toBeLessThanOrEqual(1 << 20);
      expect(new Set(b.chunks.map((c) => frames[chunks[c].frame].pack)).size).toBe(1);
    }
    // frames 10 KiB apart join: far fewer batches than frames
    expect(batches.length).toBeLessThan(20);
  });
});
