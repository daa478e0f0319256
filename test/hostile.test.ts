/**
 * Untrusted images, as an attacker builds them: plain tar layers that exploit layer merging, and
 * chunked images whose TOC was crafted and whose every digest was recomputed. Every reader
 * (restore, ls, cat, inspect, verify) refuses them with a clear error and a stable exit code, or
 * reads them inside the root; nothing outside the target changes; peak memory stays bounded.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { convert, type OcichunkError } from '../src/index.js';
import { native } from '../src/native/index.js';
import { REPO, tmpdir } from './helpers/env.js';
import { blob, forgeChunked, plainLayer, putRaw, readIndex, writeLayout } from './helpers/layout.js';
import { mounted, mountLine } from './helpers/mount.js';
import { sh } from './helpers/run.js';
import { pyTar, pyTarZstdAsync, type Member } from './helpers/tars.js';

let work: string;
let canary: string;
let canaryState: string;
let n = 0;

/** Names, contents, modes and mtimes of everything under a directory. */
function snapshot(dir: string): string {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${st.mode.toString(8)} ${st.mtimeMs} ${st.isFile() ? fs.readFileSync(p, 'hex') : ''}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  const st = fs.statSync(dir);
  return `${st.mode.toString(8)} ${st.mtimeMs}\n${out.join('\n')}`;
}

/** A layout of plain tar layers converted by ocichunk; returns the chunked layout's reference. */
async function chunked(layers: Member[][]): Promise<string> {
  const id = `img${n++}`;
  const src = path.join(work, `${id}-src`);
  writeLayout(
    src,
    'x',
    layers.map((m) => plainLayer(pyTar(work, m))),
  );
  const out = path.join(work, `${id}-out`);
  await convert(`oci:${src}:x`, `oci:${out}:x`, { trustDir: path.join(work, 'trust') });
  return out;
}

const zstd = { compress: (j: Buffer) => native.compressSync(j, 3), decompress: (b: Buffer) => native.decompressSync(b, 256 << 20) };
const forge = (out: string, edit: (toc: any, text: string) => unknown) => forgeChunked(out, 'x', { toc: edit }, zstd);

/** The CLI under /usr/bin/time: exit code, output and peak RSS in MiB. */
async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string; rssMiB: number }> {
  const r = await sh('/usr/bin/time', ['-f', 'peak-rss-kib %M', process.execPath, path.join(REPO, 'bin', 'ocichunk.js'), ...args], {
    env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'xdg') },
  });
  const m = /peak-rss-kib (\d+)\s*$/.exec(r.stderr);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr.replace(/peak-rss-kib \d+\s*$/, ''), rssMiB: m ? Number(m[1]) / 1024 : NaN };
}

async function restoreInto(out: string): Promise<{ code: number; stderr: string; target: string; rssMiB: number }> {
  const target = path.join(work, `rootfs-${n++}`);
  return { ...(await run(['restore', `oci:${out}:x`, target])), target };
}

beforeAll(() => {
  work = tmpdir('hostile');
  canary = path.join(work, 'canary');
  fs.mkdirSync(path.join(canary, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(canary, 'secret'), 'precious');
  fs.writeFileSync(path.join(canary, 'sub', 'b'), 'also precious');
  fs.utimesSync(canary, 1000, 1000);
  canaryState = snapshot(canary);
});

describe('writes outside the target', () => {
  const unchanged = () => expect(snapshot(canary)).toBe(canaryState);

  it('an opaque marker under a symlink to a host directory empties nothing outside (plain tar image)', async () => {
    const out = await chunked([[['a', 'symlink', canary]], [['a/.wh..wh..opq', 'file', '']]]);
    const r = await restoreInto(out);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    unchanged();
    expect(fs.readlinkSync(path.join(r.target, 'a'))).toBe(canary);
  });

  it('a whiteout, a file and a directory entry under a symlink to a host directory stay inside the root', async () => {
    const out = await chunked([
      [
        ['a', 'symlink', canary],
        ['d', 'dir'],
      ],
      [
        ['a/.wh.secret', 'file', ''],
        ['a/new', 'file', 'x'],
        ['a/sub', 'dir', null, { mode: 0o777, mtime: 5 }],
        ['d', 'symlink', canary],
      ],
      [
        ['d/new2', 'file', 'y'],
        ['d/sub', 'dir', null, { mode: 0o700 }],
      ],
    ]);
    const r = await restoreInto(out);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    unchanged();
    // resolved like a chroot: the same path below the target
    const inside = path.join(r.target, canary);
    expect(fs.readFileSync(path.join(inside, 'new'), 'utf8')).toBe('x');
    expect(fs.readFileSync(path.join(inside, 'new2'), 'utf8')).toBe('y');
    expect(fs.lstatSync(path.join(inside, 'sub')).mode & 0o7777).toBe(0o700);
  });

  it('refuses a target that already holds anything (a symlink to a host directory included)', async () => {
    const out = await chunked([
      [
        ['x', 'dir'],
        ['x/f', 'file', 'z'],
      ],
    ]);
    const target = path.join(work, 'prefilled');
    fs.mkdirSync(target);
    fs.symlinkSync(canary, path.join(target, 'x'));
    const r = await run(['restore', `oci:${out}:x`, target]);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(/must be empty or absent/);
    unchanged();
  });

  it('crafted TOCs: whiteouts, opaque markers and hardlinks through symlinks resolve inside the root', async () => {
    const out = await chunked([
      [
        ['a', 'symlink', canary],
        ['f', 'file', 'data'],
      ],
      [['z', 'file', 'q']],
    ]);
    forge(out, (toc) => {
      toc.layers[1].entries = [
        { path: 'a', type: 'opaque' },
        { path: 'a/secret', type: 'whiteout' },
        { path: 'h', type: 'hardlink', link: 'f' },
        { path: 'z', type: 'reg', mode: 0o644, size: toc.layers[1].entries[0].size, chunks: toc.layers[1].entries[0].chunks },
      ].sort((x, y) => (x.path < y.path ? -1 : 1));
      toc.layers[1].entries.sort((x: any, y: any) => (x.path === y.path ? (x.type === 'whiteout' ? -1 : 1) : x.path < y.path ? -1 : 1));
    });
    const r = await restoreInto(out);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    unchanged();
    expect(fs.statSync(path.join(r.target, 'h')).ino).toBe(fs.statSync(path.join(r.target, 'f')).ino);
  });
});

describe('crafted TOCs with valid digests', () => {
  let base: string;
  beforeAll(async () => {
    base = await chunked([
      [
        ['etc', 'dir'],
        ['etc/hostname', 'file', 'box\n'],
        ['etc/big', 'file', 'y'.repeat(70_000)],
        ['bin', 'dir'],
        ['bin/sh', 'symlink', 'busybox'],
      ],
    ]);
  });

  /** A copy of the base image with its TOC forged. */
  function forged(edit: (toc: any, text: string) => unknown): string {
    const out = path.join(work, `forged-${n++}`);
    fs.cpSync(base, out, { recursive: true });
    forge(out, edit);
    return out;
  }
  const entry = (toc: any, p: string) => toc.layers[0].entries.find((e: any) => e.path === p);

  const cases: Array<[string, (toc: any, text: string) => unknown, number, RegExp]> = [
    ['uid beyond 32 bits', (t) => void (entry(t, 'etc/hostname').uid = 2 ** 32), 5, /"etc\/hostname".*uid|u32/],
    ['negative uid', (t) => void (entry(t, 'etc/hostname').uid = -1), 5, /"etc\/hostname".*-1/],
    ['uid as a string', (t) => void (entry(t, 'etc/hostname').uid = '0'), 5, /"etc\/hostname".*invalid type: string/],
    ['fractional gid', (t) => void (entry(t, 'etc/hostname').gid = 1.5), 5, /"etc\/hostname".*floating point/],
    ['negative mode', (t) => void (entry(t, 'etc/hostname').mode = -1), 5, /"etc\/hostname"/],
    ['mode beyond 07777', (t) => void (entry(t, 'etc/hostname').mode = 0o17777), 5, /"etc\/hostname".*mode 0o17777 has bits beyond 07777/],
    ['fractional mode', (t) => void (entry(t, 'etc/hostname').mode = 420.5), 5, /"etc\/hostname".*floating point/],
    ['mode as a string (setuid)', (t) => void (entry(t, 'etc/hostname').mode = '4755'), 5, /"etc\/hostname".*invalid type: string "4755"/],
    ['mode given twice', (_t, text) => text.replace('"type":"reg","mode":420', '"type":"reg","mode":420,"mode":2541'), 5, /duplicate field `mode`/],
    ['null mode', (t) => void (entry(t, 'etc/hostname').mode = null), 5, /"etc\/hostname".*null/],
    ['huge mtime', (t) => void (entry(t, 'etc/hostname').mtime = 1e20), 5, /"etc\/hostname"/],
    ['mtime as a string', (t) => void (entry(t, 'etc/hostname').mtime = '5'), 5, /"etc\/hostname".*invalid type: string/],
    ['frame longer than 4 GiB', (t) => void (t.frames[0][2] = 2 ** 33), 5, /frame 0: .* out of range/],
    [
      'a 1 GiB chunk',
      (t) => {
        t.frames[0][3] = 2 ** 30;
        t.chunks[0][2] = 2 ** 30;
      },
      5,
      /frame 0.*out of range|chunk 0/,
    ],
    ['NUL in a name', (t) => void (entry(t, 'etc/hostname').path = 'etc/host\u0000name'), 7, /NUL/],
    ['a name longer than 255 bytes', (t) => void (entry(t, 'etc/hostname').path = `etc/${'n'.repeat(300)}`), 7, /component is 300 bytes/],
    ['a path longer than 4095 bytes', (t) => void (entry(t, 'etc/hostname').path = `etc/${'d/'.repeat(3000)}x`), 7, /path of 6005 bytes/],
    [
      '10k-deep nesting',
      (t) => {
        for (let i = 1; i <= 10_000; i++) t.layers[0].entries.push({ path: 'z/'.repeat(i).slice(0, -1), type: 'dir', mode: 0o755 });
      },
      7,
      /path of 4097 bytes/,
    ],
    [
      'root replaced by a symlink',
      (t) => void t.layers[0].entries.unshift({ path: '.', type: 'symlink', mode: 0o777, link: '/etc' }),
      7,
      /the root can only be a directory/,
    ],
    [
      'a hardlink to a directory',
      (t) => void t.layers[0].entries.push({ path: 'etc/zz', type: 'hardlink', link: 'bin' }),
      7,
      /hardlink target "bin" is a directory/,
    ],
    [
      'a hardlink to nothing',
      (t) => void t.layers[0].entries.push({ path: 'etc/zz', type: 'hardlink', link: 'nope' }),
      5,
      /hardlink target "nope" does not exist/,
    ],
    ['an unknown entry type', (t) => void (entry(t, 'etc/hostname').type = 'socket'), 5, /unknown variant `socket`/],
    ['entries out of order', (t) => void t.layers[0].entries.reverse(), 5, /out of canonical order/],
    ['a path given twice', (t) => void t.layers[0].entries.push({ ...entry(t, 'etc/hostname') }), 5, /out of canonical order|appears twice/],
    ['file size that the chunks do not add up to', (t) => void (entry(t, 'etc/big').size = 5), 5, /chunks add up to 70000 bytes, size is 5/],
    ['a chunk index out of range', (t) => void entry(t, 'etc/big').chunks.push(99), 5, /chunk index 99 does not exist/],
    ['xattr value not base64', (t) => void (entry(t, 'etc/hostname').xattrs = { 'user.x': '!!' }), 5, /xattr "user.x": value is not base64/],
    ['an unknown TOC version', (t) => void (t.version = 3), 4, /TOC version 3 is not supported/],
    ['a TOC that inflates past 128 MiB', (_t, text) => text.slice(0, -1) + ' '.repeat(200 << 20) + '}', 5, /over|exceeds|limit|too large|128/i],
    [
      'more than 2^20 entries in a small TOC',
      (_t, text) => {
        const e = '{"path":"p","type":"fifo","mode":0},'.repeat(1_100_000);
        return text.replace('"entries":[', `"entries":[${e}`);
      },
      5,
      /more than 1048576 entries/,
    ],
  ];

  it.each(cases)('%s: every reader refuses it with a clear error', async (_name, edit, code, msg) => {
    const out = forged(edit);
    const ref = `oci:${out}:x`;
    const readers = [
      ['restore', ref, path.join(work, `r-${n++}`)],
      ['ls', ref, '/etc'],
      ['cat', ref, '/etc/hostname'],
      ['inspect', ref],
      ['verify', ref],
    ];
    // the readers run side by side (each is its own process; the checks below are per reader)
    const results = await Promise.all(readers.map((args) => run(args)));
    for (const [k, args] of readers.entries()) {
      const r = results[k];
      if (process.env.SHOW) console.log(`${_name} | ${args[0]} | ${r.code} | ${r.rssMiB.toFixed(0)} MiB | ${r.stderr.trim().slice(0, 300)}`);
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(code);
      expect(r.stderr, args[0]).toMatch(msg);
      expect(r.stderr, args[0]).not.toMatch(/EINTERNAL|\n\s+at /);
      expect(r.stdout, args[0]).toBe('');
      expect(r.rssMiB, args[0]).toBeLessThan(512);
    }
    // the restore target was never created
    expect(fs.readdirSync(work).filter((d) => d.startsWith('r-') && fs.existsSync(path.join(work, d)))).toEqual([]);
  });

  /**
   * A copy of the base image whose digest table is replaced by `edit` of it. `toc`: what of the TOC
   * follows the new table: nothing (the manifest names a table the TOC does not), its blob digest
   * only (stale section hashes), or blob and section hashes (a TOC author can recompute them all).
   */
  function forgedTable(edit: (table: Buffer) => Buffer, toc: 'none' | 'blob' | 'all'): string {
    const out = path.join(work, `forged-${n++}`);
    fs.cpSync(base, out, { recursive: true });
    forgeChunked(
      out,
      'x',
      {
        manifest: (m) => {
          const table = edit(blob(out, m.layers[1].digest));
          const put = putRaw(out, table);
          if (toc !== 'none') {
            const t = JSON.parse(zstd.decompress(blob(out, m.layers[0].digest)).toString());
            const s = t.digests.section * 32;
            const hashes: Buffer[] = [];
            for (let o = 0; o < table.length; o += s)
              hashes.push(
                createHash('sha256')
                  .update(table.subarray(o, o + s))
                  .digest(),
              );
            t.digests.blob = put.digest;
            if (toc === 'all') t.digests.sections = Buffer.concat(hashes).toString('base64');
            Object.assign(m.layers[0], putRaw(out, zstd.compress(Buffer.from(JSON.stringify(t)))));
          }
          Object.assign(m.layers[1], put);
        },
      },
      zstd,
    );
    return out;
  }

  it("a digest table that is not the TOC's, or that names other bytes: every reader refuses it", async () => {
    const flip = (t: Buffer) => {
      const c = Buffer.from(t);
      for (let o = 5; o < c.length; o += 32) c[o] ^= 1;
      return c;
    };
    const readers = (ref: string, target: string): string[][] => [
      ['restore', ref, target],
      ['cat', ref, '/etc/hostname'],
      ['verify', ref],
    ];
    // a table the TOC's section hashes do not cover (the manifest names it, the TOC does not)
    for (const [out, codes, msg] of [
      // the manifest names a table the TOC does not
      [forgedTable(flip, 'none'), [5], /must be the TOC's digest table sha256:[0-9a-f]{64} of \d+ bytes/],
      // sections that do not hash to what the TOC says
      [forgedTable(flip, 'blob'), [5], /digest table section \d+: content hashes to sha256:[0-9a-f]{64}, the TOC says/],
      // a consistent table of other digests: the chunks do not match them
      [forgedTable(flip, 'all'), [6], /does not match its digest/],
      // a digest listed twice: refused where the whole table is read, else its chunk does not match
      [forgedTable((t) => Buffer.concat([t.subarray(0, 32), t.subarray(0, t.length - 32)]), 'all'), [5, 6], /listed twice|does not match its digest/],
      [forgedTable((t) => t.subarray(0, t.length - 32), 'all'), [5], /digest table/],
    ] as Array<[string, number[], RegExp]>) {
      const target = path.join(work, `r-${n++}`);
      const all = readers(`oci:${out}:x`, target);
      const results = await Promise.all(all.map((args) => run(args)));
      for (const [k, args] of all.entries()) {
        const r = results[k];
        expect(codes, `${args[0]}: ${r.stderr}`).toContain(r.code);
        expect(r.stderr, args[0]).toMatch(msg);
        expect(r.stderr, args[0]).not.toMatch(/EINTERNAL|\n\s+at /);
        expect(r.stdout, args[0]).toBe('');
        if (args[0] !== 'restore') continue;
        // refused before writing: no target; a chunk found bad while writing: a partial tree, closed (0700)
        if (r.code === 5) expect(fs.existsSync(target)).toBe(false);
        else expect(fs.statSync(target).mode & 0o777).toBe(0o700);
      }
    }
    // a manifest without the table the TOC names
    const out = path.join(work, `forged-${n++}`);
    fs.cpSync(base, out, { recursive: true });
    forgeChunked(out, 'x', { manifest: (m) => m.layers.splice(1, 1) }, zstd);
    const target = path.join(work, `r-${n++}`);
    const all = readers(`oci:${out}:x`, target);
    const results = await Promise.all(all.map((args) => run(args)));
    for (const [k, args] of all.entries()) {
      const r = results[k];
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(5);
      expect(r.stderr).toMatch(/must be the TOC's digest table sha256:[0-9a-f]{64} of \d+ bytes/);
    }
    expect(fs.existsSync(target)).toBe(false);
  });

  it('verify lists every violation it finds, not only the first', async () => {
    const out = forged((t) => {
      entry(t, 'etc/hostname').mode = 0o17777;
      entry(t, 'etc/big').size = 5;
      t.layers[0].entries.push({ path: 'etc/zz', type: 'hardlink', link: '../x' });
    });
    const r = await run(['verify', `oci:${out}:x`, '--json']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/and 2 more/);
    const listed = await run(['verify', `oci:${out}:x`]);
    for (const m of [/mode 0o17777/, /size is 5/, /hardlink target "\.\.\/x"/]) expect(listed.stdout + listed.stderr).toMatch(m);
  });
});

describe('conversions that cannot be poisoned', () => {
  it("a destination's chunked manifest naming a clean image's layers is not reused for it", async () => {
    const cleanTar = pyTar(work, [
      ['etc', 'dir'],
      ['etc/hostname', 'file', 'clean\n'],
      ['usr', 'dir'],
      ['usr/bin', 'dir'],
      ['usr/bin/tool', 'file', 'x'.repeat(100_000)],
    ]);
    const evilTar = pyTar(work, [
      ['etc', 'dir'],
      ['etc/hostname', 'file', 'clean\n'],
      ['etc/zz-backdoor', 'file', '#!/bin/sh\nid\n', { mode: 0o4755 }],
      ['usr', 'dir'],
      ['usr/bin', 'dir'],
      ['usr/bin/tool', 'file', 'x'.repeat(100_000)],
    ]);
    const clean = path.join(work, 'clean-src');
    writeLayout(clean, 'x', [plainLayer(cleanTar)]);
    const cleanLayer = JSON.parse(fs.readFileSync(path.join(clean, 'blobs', 'sha256', readIndex(clean).manifests[0].digest.slice(7)), 'utf8')).layers[0].digest;
    const evil = path.join(work, 'evil-src');
    writeLayout(evil, 'x', [plainLayer(evilTar)]);
    // the attacker converts the backdoored image into a shared layout, then claims its TOC layer is the clean layer's
    const victim = path.join(work, 'shared-layout');
    const trustDir = path.join(work, 'victim-trust');
    await convert(`oci:${evil}:x`, `oci:${victim}:x`, { trustDir: path.join(work, 'attacker-trust') });
    forgeChunked(victim, 'x', { manifest: (m) => void (m.annotations['org.ocichunk.source.layers'] = JSON.stringify([cleanLayer])) }, zstd);
    const check = async (ref: string) => {
      const r = await run(['ls', ref, '/etc']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/hostname/);
      expect(r.stdout).not.toMatch(/zz-backdoor/);
      expect((await run(['verify', ref])).code).toBe(0);
    };
    // a victim who never converted the clean image: its layer is read, not taken from the layout
    const first = await convert(`oci:${clean}:x`, `oci:${victim}:clean`, { trustDir });
    expect(first.reusedLayers).toBe(0);
    await check(`oci:${victim}:clean`);
    // ... and after converting it elsewhere (its own record of the layer): the forged layer still differs
    await convert(`oci:${clean}:x`, `oci:${path.join(work, 'elsewhere')}:clean`, { trustDir });
    const again = await convert(`oci:${clean}:x`, `oci:${victim}:clean2`, { trustDir });
    await check(`oci:${victim}:clean2`);
    // the victim's own conversion in that layout is reused (the speed-up stays for what can be trusted)
    const mine = await convert(`oci:${clean}:x`, `oci:${victim}:clean3`, { trustDir });
    expect(mine.reusedLayers).toBe(1);
    expect(mine.index.digest).toBe(first.index.digest);
    expect(again.index.digest).toBe(first.index.digest);
  });
});

describe('chunk locations a destination claims', () => {
  it('are read and verified before a conversion uses them; a forged one refuses the conversion', async () => {
    const a = 'A'.repeat(3000);
    const b = 'B'.repeat(3000);
    const layout = path.join(work, 'shared-chunks');
    const trustDir = path.join(work, 'chunk-trust');
    // the attacker's image holds both contents; its TOC then swaps where the two chunks are
    const evil = path.join(work, 'evil-chunks-src');
    writeLayout(evil, 'x', [
      plainLayer(
        pyTar(work, [
          ['a', 'file', a],
          ['b', 'file', b],
        ]),
      ),
    ]);
    await convert(`oci:${evil}:x`, `oci:${layout}:x`, { trustDir: path.join(work, 'attacker-trust2') });
    forge(layout, (toc) => {
      const [ca, cb] = toc.chunks; // [frame, offsetInFrame, length]
      [ca[1], cb[1]] = [cb[1], ca[1]];
    });
    const victim = path.join(work, 'victim-chunks-src');
    writeLayout(victim, 'x', [
      plainLayer(
        pyTar(work, [
          ['etc', 'dir'],
          ['etc/motd', 'file', a],
        ]),
      ),
    ]);
    const err = await convert(`oci:${victim}:x`, `oci:${layout}:victim`, { trustDir }).then(
      () => undefined,
      (e: unknown) => e as OcichunkError,
    );
    expect(err?.code).toBe('EDIGEST');
    expect(err?.message).toMatch(/does not hold chunk sha256:[a-f0-9]{64} where a chunked manifest there claims it is/);
    expect(readIndex(layout).manifests.map((m: any) => m.annotations?.['org.opencontainers.image.ref.name'])).not.toContain('victim');
    // honest locations of someone else's conversion are read once, then known
    const honest = path.join(work, 'honest-chunks');
    await convert(`oci:${evil}:x`, `oci:${honest}:x`, { trustDir: path.join(work, 'other-user-trust') });
    const first = await convert(`oci:${victim}:x`, `oci:${honest}:victim`, { trustDir });
    expect(first.chunksVerified).toBe(1);
    expect(first.newChunks).toBe(0);
    const again = await convert(`oci:${victim}:x`, `oci:${honest}:victim2`, { trustDir });
    expect(again.chunksVerified).toBe(0);
    expect((await run(['cat', `oci:${honest}:victim`, '/etc/motd'])).stdout).toBe(a);
  });
});

describe('mounting an untrusted image', () => {
  it('setuid bits and device nodes are inert unless asked for; other users get in only when allowed', async () => {
    const out = await chunked([
      [
        ['bin', 'dir'],
        ['bin/id', 'file', null, { from: '/usr/bin/id', mode: 0o4755, uid: 0, gid: 0 }],
        ['dev', 'dir'],
        ['dev/null', 'char', null, { mode: 0o666, major: 1, minor: 3 }],
      ],
    ]);
    fs.chmodSync(work, 0o755); // let the unprivileged user reach the mount point
    const mnt = path.join(work, 'mnt-untrusted');
    const asNobody = (args: string[]) => sh('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', ...args]);
    const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'xdg') };
    await mounted(
      `oci:${out}:x`,
      mnt,
      ['--allow-other'],
      async () => {
        expect(mountLine(mnt)).toMatch(/\bnosuid,nodev\b/);
        expect(fs.statSync(path.join(mnt, 'bin', 'id')).mode & 0o7777).toBe(0o4755);
        const id = await asNobody([path.join(mnt, 'bin', 'id')]);
        expect(id.stdout).toMatch(/^uid=65534\b/);
        expect(id.stdout).not.toMatch(/euid=0/);
        // a device node of the image does not open the host's device, for root neither
        expect((await sh('cat', [path.join(mnt, 'dev', 'null')])).stderr).toMatch(/Permission denied/);
        expect((await asNobody(['cat', path.join(mnt, 'dev', 'null')])).stderr).toMatch(/Permission denied/);
      },
      'SIGTERM',
      env,
    );
    // the image's setuid-root program runs as root only when the user trusts the image with it
    await mounted(
      `oci:${out}:x`,
      mnt,
      ['--allow-other', '--allow-suid', '--allow-dev'],
      async () => {
        expect((await asNobody([path.join(mnt, 'bin', 'id')])).stdout).toMatch(/euid=0\(root\)/);
        expect((await sh('cat', [path.join(mnt, 'dev', 'null')])).code).toBe(0);
      },
      'SIGTERM',
      env,
    );
    // without --allow-other, another user cannot enter at all
    await mounted(
      `oci:${out}:x`,
      mnt,
      [],
      async () => {
        expect((await asNobody(['ls', mnt])).stderr).toMatch(/Permission denied/);
      },
      'SIGTERM',
      env,
    );
  });
});

describe('terminal-safe output', () => {
  it('ls quotes names holding newlines or escape sequences; --json keeps them exact', async () => {
    const out = await chunked([
      [
        ['d', 'dir'],
        ['d/a\nb', 'file', 'x'],
        ['d/\x1b[31mred', 'file', 'y'],
        ['d/plain', 'symlink', '\x1b]0;title\x07'],
      ],
    ]);
    const r = await run(['ls', `oci:${out}:x`, '/d']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/\x1b|\x07/);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(r.stdout).toContain(`$'a\\nb'`);
    expect(r.stdout).toContain(`$'\\E[31mred'`);
    expect(r.stdout).toContain(`plain -> $'\\E]0;title\\a'`);
    const j = JSON.parse((await run(['ls', `oci:${out}:x`, '/d', '--json'])).stdout);
    expect(j.entries.map((e: { name: string }) => e.name).sort()).toEqual(['\x1b[31mred', 'a\nb', 'plain'].sort());
  });
});

describe('reads of big chunks', () => {
  it('cat reads and hashes a cached 20 MiB chunk once, not once per 8 MiB piece', async () => {
    const blobFile = path.join(work, 'random.bin');
    fs.writeFileSync(
      blobFile,
      Buffer.from(
        Array.from({ length: 20 << 10 }, (_, i) => (i * 2654435761) >>> 0).flatMap((x) => Array.from({ length: 256 }, (_, j) => (x >>> (j % 32)) & 0xff)),
      ),
    );
    const src = path.join(work, 'bigchunk-src');
    writeLayout(src, 'x', [plainLayer(pyTar(work, [['big', 'file', null, { from: blobFile }]]))]);
    const out = path.join(work, 'bigchunk-out');
    const c = await run(['convert', `oci:${src}:x`, `oci:${out}:x`, '--chunker', 'file', '--quiet']);
    expect(c.code, c.stderr).toBe(0);
    const first = JSON.parse((await run(['cat', `oci:${out}:x`, '/big', '--json'])).stdout);
    expect(first.chunksFetched).toBe(1);
    const again = JSON.parse((await run(['cat', `oci:${out}:x`, '/big', '--json'])).stdout);
    expect(again.chunksFetched).toBe(0);
    expect(again.cacheHits).toBe(1);
    const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'xdg') };
    const piped = await sh('bash', ['-c', `"${process.execPath}" "${path.join(REPO, 'bin', 'ocichunk.js')}" cat oci:${out}:x /big | sha256sum`], { env });
    expect(piped.stdout.split(' ')[0]).toBe(createHash('sha256').update(fs.readFileSync(blobFile)).digest('hex'));
  });
});

describe('a valid image with a 5 GiB file', () => {
  it('restores with flat memory, streamed chunk by chunk', async () => {
    const src = path.join(work, 'huge-src');
    // a zstd layer: 5 GiB of tar in a blob of ~200 KB (this disk never holds the tar)
    const zst = await pyTarZstdAsync(path.join(work, 'huge.tar.zst'), [
      ['big', 'file', null, { zeros: 5 * 2 ** 30 }],
      ['small', 'file', 'tail'],
    ]);
    fs.mkdirSync(path.join(src, 'blobs', 'sha256'), { recursive: true });
    const digest = createHash('sha256').update(fs.readFileSync(zst)).digest('hex');
    fs.renameSync(zst, path.join(src, 'blobs', 'sha256', digest));
    const size = fs.statSync(path.join(src, 'blobs', 'sha256', digest)).size;
    writeLayout(src, 'x', [], {
      manifestPatch: (m) => {
        m.layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: `sha256:${digest}`, size }];
      },
    });
    const out = path.join(work, 'huge-out');
    const c = await run(['convert', `oci:${src}:x`, `oci:${out}:x`, '--quiet']);
    expect(c.code, c.stderr).toBe(0);
    fs.rmSync(src, { recursive: true });
    const target = path.join(work, 'rootfs-huge');
    const r = await run(['restore', `oci:${out}:x`, target]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(target, 'big')).size).toBe(5 * 2 ** 30);
    expect(fs.readFileSync(path.join(target, 'small'), 'utf8')).toBe('tail');
    expect(r.rssMiB).toBeLessThan(256);
    fs.rmSync(target, { recursive: true });
  }, 600_000);
});
