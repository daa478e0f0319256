/**
 * Unit tier: the format's rules on hand-written TOCs, without images: the merged tree every reader
 * shows (whiteouts, opaque directories, symlinked parents resolved inside the root, hardlinks,
 * replaced directories), the offset -> chunk lookup and TOC refusals with their codes. (The canonical
 * order a converted layer is written in is tested with its owner, crates/core/src/format/build.rs.)
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { openToc, type Toc, type TocEntry } from '../../src/chunked/toc.js';
import { MergedTree } from '../../src/lazy/tree.js';
import { compareEntries, tocBlob } from '../helpers/toc.js';

const PACK = `sha256:${'ab'.repeat(32)}`;
const hex = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * A TOC of these layers; `content` gives the bytes of regular files (by path), cut into chunks of
 * at most `chunk` bytes that share one frame.
 */
function tocOf(layers: TocEntry[][], content: Record<string, string> = {}, chunk = 1 << 20): Toc {
  const toc: Toc = { version: 1, chunker: { kind: 'fixed', size: chunk }, packs: [PACK], frames: [], chunks: [], layers: [] };
  let frameLen = 0;
  for (const entries of layers) {
    const sorted = entries.map((e) => {
      if (e.type === 'whiteout' || e.type === 'opaque' || e.type === 'hardlink') return e;
      if (e.type !== 'reg') return { mode: 0o755, ...e };
      const data = content[e.path] ?? '';
      const chunks: number[] = [];
      for (let o = 0; o < data.length; o += chunk) {
        const part = data.slice(o, o + chunk);
        chunks.push(toc.chunks.length);
        toc.chunks.push({ digest: hex(part), frame: 0, offset: frameLen, length: part.length });
        frameLen += part.length;
      }
      return { mode: 0o644, ...e, size: data.length, chunks };
    });
    sorted.sort(compareEntries);
    toc.layers.push({ entries: sorted });
  }
  toc.frames.push({ pack: 0, offset: 0, compressedLength: Math.max(1, frameLen), length: Math.max(1, frameLen) });
  return toc;
}

function tree(toc: Toc): MergedTree {
  const { toc: t, checked } = openToc(tocBlob(toc), 'test TOC');
  return new MergedTree(t, checked);
}

/** `path type [-> link]` for every name of the merged tree, sorted. */
function listing(t: MergedTree): string[] {
  const out: string[] = [];
  const walk = (dir: string, n: NonNullable<ReturnType<MergedTree['lookup']>>) => {
    for (const [name, c] of n.children ?? []) {
      const p = `${dir}/${name}`;
      out.push(`${p} ${c.type}${c.link !== undefined ? ` -> ${c.link}` : ''}${c.type === 'reg' && c.nlink > 1 ? ` nlink=${c.nlink}` : ''}`);
      if (c.type === 'dir') walk(p, c);
    }
  };
  walk('', t.root);
  return out.sort();
}

describe('merged tree (crates/core/src/format/tree.rs)', () => {
  it('resolves symlinked parents inside the root, as containerd and umoci unpack them', () => {
    const t = tree(
      tocOf(
        [
          [
            { path: '.', type: 'dir' },
            { path: 'real', type: 'dir' },
            { path: 'lib', type: 'symlink', link: '/real' },
            { path: 'up', type: 'symlink', link: '../../../real' },
          ],
          [
            { path: 'lib/file', type: 'reg' },
            { path: 'up/other', type: 'reg' },
          ],
        ],
        { 'lib/file': 'inside', 'up/other': 'also' },
      ),
    );
    expect(listing(t)).toEqual(['/lib symlink -> /real', '/real dir', '/real/file reg', '/real/other reg', '/up symlink -> ../../../real']);
  });

  it('applies whiteouts, opaque directories, replaced directories and hardlinks', () => {
    const t = tree(
      tocOf(
        [
          [
            { path: '.', type: 'dir' },
            { path: 'a', type: 'dir' },
            { path: 'a/x', type: 'reg' },
            { path: 'a/y', type: 'reg' },
            { path: 'd', type: 'dir' },
            { path: 'd/old', type: 'reg' },
            { path: 'r', type: 'dir' },
            { path: 'r/inner', type: 'reg' },
            { path: 'f', type: 'reg' },
            { path: 'dev', type: 'char', devMajor: 1, devMinor: 3 },
          ],
          [
            { path: 'a/x', type: 'whiteout' },
            { path: 'd', type: 'dir' },
            { path: 'd', type: 'opaque' },
            { path: 'd/new', type: 'reg' },
            { path: 'r', type: 'reg' },
            { path: 'g', type: 'hardlink', link: 'f' },
          ],
        ],
        { f: 'shared', r: 'now a file' },
      ),
    );
    expect(listing(t)).toEqual(['/a dir', '/a/y reg', '/d dir', '/d/new reg', '/dev char', '/f reg nlink=2', '/g reg nlink=2', '/r reg']);
    expect(t.lookup('/f')).toBe(t.lookup('g'));
    expect(t.lookup('/dev')).toMatchObject({ devMajor: 1, devMinor: 3 });
    expect(t.lookup('/a/../etc')).toBeUndefined();
  });

  it('finds the chunks of a byte range (the one offset -> chunk lookup)', () => {
    const data = 'abcdefghijklmnopqrstuvwxyz';
    const t = tree(
      tocOf(
        [
          [
            { path: '.', type: 'dir' },
            { path: 'f', type: 'reg' },
          ],
        ],
        { f: data },
        10,
      ),
    );
    const f = t.lookup('f')!;
    expect(f.chunks).toEqual([0, 1, 2]);
    // bytes 5..17: the end of chunk 0, all but the last 3 bytes of chunk 1
    expect(t.plan(f, 5, 12)).toEqual([
      { chunk: 0, from: 5, to: 10, at: 0 },
      { chunk: 1, from: 0, to: 7, at: 5 },
    ]);
    // clipped to the file
    expect(t.plan(f, 24, 100)).toEqual([{ chunk: 2, from: 4, to: 6, at: 0 }]);
    expect(t.plan(f, 26, 10)).toEqual([]);
    const read = (off: number, len: number) =>
      t
        .plan(f, off, len)
        .map((p) => data.slice(f.chunks![p.chunk] * 10 + p.from, f.chunks![p.chunk] * 10 + p.to))
        .join('');
    expect(read(3, 20)).toBe(data.slice(3, 23));
  });
});

describe('TOC refusals carry codes', () => {
  const base = () =>
    tocOf(
      [
        [
          { path: '.', type: 'dir' },
          { path: 'f', type: 'reg' },
        ],
      ],
      { f: 'x' },
    );
  const cases: Array<[string, (t: Toc) => void, string, RegExp]> = [
    ['a path escaping the root', (t) => t.layers[0].entries.push({ path: '../x', type: 'dir', mode: 0o755 }), 'EUNSAFE', /\.\./],
    ['an unknown version', (t) => (t.version = 99), 'EUNSUPPORTED', /version/],
    ['a chunk index out of range', (t) => (t.layers[0].entries[1].chunks = [7]), 'ECORRUPT', /chunk/],
    ['sizes that do not add up', (t) => (t.layers[0].entries[1].size = 2), 'ECORRUPT', /size/],
    ['a setuid bit beyond 0o7777', (t) => (t.layers[0].entries[1].mode = 0o17777), 'ECORRUPT', /mode/],
  ];
  it.each(cases)('%s', (_, spoil, code, message) => {
    const t = base();
    spoil(t);
    let err: unknown;
    try {
      tree(t);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code });
    expect((err as Error).message).toMatch(message);
  });
});
