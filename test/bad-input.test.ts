/**
 * Hostile and broken input: clear errors naming the blob or entry, non-zero exits, nothing written
 * outside the target, no partial blob visible under a digest, no tag pointing at a half conversion.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { convert, restore, OcichunkError } from '../src/index.js';
import { native } from '../src/native/index.js';
import { tmpdir } from './helpers/env.js';
import { blob, checkBlobs, forgeChunked, gzipLayer, plainLayer, readIndex, writeLayout } from './helpers/layout.js';
import { cli, must } from './helpers/run.js';
import { pyTar as makeTar } from './helpers/tars.js';

let work: string;
let goodTar: Buffer;

/** A tar made by Python's tarfile from a list of [name, kind, data/link] members. */
function pyTar(members: Array<[string, 'file' | 'dir' | 'symlink' | 'hardlink', string?]>): Buffer {
  return makeTar(work, members);
}

async function expectFail(p: Promise<unknown>, code: string, text: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, 'expected an error').toBeInstanceOf(OcichunkError);
  expect((e as OcichunkError).code).toBe(code);
  expect((e as Error).message).toMatch(text);
}

function assertNothingPublished(out: string) {
  expect(checkBlobs(out)).toEqual([]);
  if (fs.existsSync(path.join(out, 'index.json'))) expect(readIndex(out).manifests).toEqual([]);
}

beforeAll(() => {
  work = tmpdir('bad');
  goodTar = pyTar([
    ['etc', 'dir'],
    ['etc/hostname', 'file', 'box\n'],
    ['usr', 'dir'],
    ['usr/big', 'file', 'x'.repeat(300_000)],
  ]);
});

describe('corrupt layers', () => {
  it('refuses a corrupt gzip stream, naming the layer', async () => {
    const gz = zlib.gzipSync(goodTar);
    for (let i = 40; i < gz.length - 40; i += 97) gz[i] ^= 0x5a;
    const dir = path.join(work, 'corrupt-gz');
    writeLayout(dir, 'x', [{ blob: gz, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }]);
    const out = path.join(work, 'out-corrupt-gz');
    await expectFail(convert(`oci:${dir}:x`, `oci:${out}:x`), 'ECORRUPT', /layer 0 \(sha256:[a-f0-9]{64}\).*(gzip|header|check)/);
    assertNothingPublished(out);
  });

  it('refuses a truncated gzip stream', async () => {
    const gz = zlib.gzipSync(goodTar);
    const dir = path.join(work, 'trunc-gz');
    writeLayout(dir, 'x', [{ blob: gz.subarray(0, gz.length >> 1), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }]);
    const out = path.join(work, 'out-trunc-gz');
    await expectFail(convert(`oci:${dir}:x`, `oci:${out}:x`), 'ECORRUPT', /truncated|unexpected end/i);
    assertNothingPublished(out);
  });

  it('refuses a truncated zstd stream', async () => {
    const tarFile = path.join(work, 'z.tar');
    fs.writeFileSync(tarFile, goodTar);
    await must('zstd', ['-q', '-f', '-3', tarFile, '-o', `${tarFile}.zst`]);
    const z = fs.readFileSync(`${tarFile}.zst`);
    const dir = path.join(work, 'trunc-zst');
    writeLayout(dir, 'x', [{ blob: z.subarray(0, z.length - 20), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }]);
    const out = path.join(work, 'out-trunc-zst');
    await expectFail(convert(`oci:${dir}:x`, `oci:${out}:x`), 'ECORRUPT', /layer 0/);
    assertNothingPublished(out);
  });

  /** A layout of goodTar as one gzip layer whose blob `damage` alters after it was written; its layer digest. */
  function damagedLayout(dir: string, damage: (b: Buffer) => void): string {
    writeLayout(dir, 'x', [gzipLayer(goodTar)]);
    const m = JSON.parse(blob(dir, readIndex(dir).manifests[0].digest).toString());
    const p = path.join(dir, 'blobs', 'sha256', m.layers[0].digest.slice(7));
    const b = fs.readFileSync(p);
    damage(b);
    fs.writeFileSync(p, b);
    return m.layers[0].digest;
  }

  it('refuses a layer whose bytes do not match its digest', async () => {
    const dir = path.join(work, 'bad-digest');
    // the gzip header's mtime: decompression does not notice, the digest check does
    const digest = damagedLayout(dir, (b) => void (b[4] ^= 1));
    const out = path.join(work, 'out-bad-digest');
    const r = await cli(['convert', `oci:${dir}:x`, `oci:${out}:x`]);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain(digest);
    expect(r.stderr).toMatch(/digest mismatch/);
    assertNothingPublished(out);
  });

  it('names a digest mismatch, not the corruption it causes, when a blob was damaged after it was written', async () => {
    const dir = path.join(work, 'damaged-blob');
    // the deflate stream no longer inflates
    damagedLayout(dir, (b) => {
      for (let i = 30; i < b.length - 30; i += 7) b[i] ^= 0xa5;
    });
    const out = path.join(work, 'out-damaged-blob');
    const r = await cli(['convert', `oci:${dir}:x`, `oci:${out}:x`]);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/digest mismatch/);
    assertNothingPublished(out);
  });

  it('refuses a truncated blob (shorter than its descriptor)', async () => {
    const dir = path.join(work, 'short-blob');
    writeLayout(dir, 'x', [plainLayer(goodTar)]);
    const m = JSON.parse(blob(dir, readIndex(dir).manifests[0].digest).toString());
    const p = path.join(dir, 'blobs', 'sha256', m.layers[0].digest.slice(7));
    fs.truncateSync(p, 1024);
    const out = path.join(work, 'out-short-blob');
    await expectFail(convert(`oci:${dir}:x`, `oci:${out}:x`), 'EDIGEST', /truncated|digest/);
    assertNothingPublished(out);
  });

  it('refuses an absurd header size without trying to allocate it', async () => {
    // a header claiming an 8 GiB file, then the archive ends
    const h = Buffer.alloc(512);
    h.write('huge', 0);
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write('77777777777\0', 124);
    h.write('00000000000\0', 136);
    h.write('0', 156);
    h.write('ustar\x0000', 257);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const x of h) sum += x;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    const tar = Buffer.concat([h, Buffer.alloc(4096, 1)]);
    const dir = path.join(work, 'absurd');
    writeLayout(dir, 'x', [plainLayer(tar)]);
    const out = path.join(work, 'out-absurd');
    await expectFail(convert(`oci:${dir}:x`, `oci:${out}:x`), 'ECORRUPT', /layer 0/);
    assertNothingPublished(out);
  });

  it('refuses unknown layer media types', async () => {
    const dir = path.join(work, 'unknown-mt');
    writeLayout(dir, 'x', [{ blob: goodTar, mediaType: 'application/vnd.example.layer.v1.tar+bzip2' }]);
    const r = await cli(['convert', `oci:${dir}:x`, `oci:${work}/out-unknown:x`]);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/unsupported media type application\/vnd\.example\.layer\.v1\.tar\+bzip2/);
  });
});

describe('hostile paths', () => {
  it.each([
    ['../ in a path', [['../evil', 'file', 'x']] as const, /"\.\.\/evil".*escapes/],
    ['absolute path', [['/etc/evil', 'file', 'x']] as const, /absolute path/],
    ['hardlink outside the root', [['a', 'hardlink', '../../etc/passwd']] as const, /escapes/],
  ])('refuses %s at conversion', async (_name, members, msg) => {
    const dir = path.join(work, `hostile-${Math.random().toString(36).slice(2)}`);
    writeLayout(dir, 'x', [plainLayer(pyTar(members as never))]);
    const out = path.join(work, `out-${path.basename(dir)}`);
    const r = await cli(['convert', `oci:${dir}:x`, `oci:${out}:x`]);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(msg);
    assertNothingPublished(out);
  });

  it('resolves a relative symlink that climbs above the root inside the root, like containerd and umoci', async () => {
    const outside = path.join(work, 'outside');
    fs.mkdirSync(outside);
    const depth = '../'.repeat(12);
    const dir = path.join(work, 'symlink-escape');
    writeLayout(dir, 'x', [plainLayer(pyTar([['link', 'symlink', `${depth}${outside.slice(1)}`]])), plainLayer(pyTar([['link/pwned', 'file', 'gotcha']]))]);
    const out = path.join(work, 'out-symlink-escape');
    await convert(`oci:${dir}:x`, `oci:${out}:x`); // a symlink is legitimate content
    const target = path.join(work, 'rootfs-escape');
    const r = await cli(['restore', `oci:${out}:x`, target]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // '..' stops at the root: the file lands at the same path below the target
    expect(fs.readFileSync(path.join(target, outside, 'pwned'), 'utf8')).toBe('gotcha');
    expect(fs.readlinkSync(path.join(target, 'link'))).toBe(`${depth}${outside.slice(1)}`);
    expect(fs.readdirSync(outside)).toEqual([]);
  });

  it('resolves absolute symlinks inside the root, like a chroot', async () => {
    const dir = path.join(work, 'abs-symlink');
    writeLayout(dir, 'x', [
      plainLayer(
        pyTar([
          ['real', 'dir'],
          ['lib', 'symlink', '/real'],
        ]),
      ),
      plainLayer(pyTar([['lib/file', 'file', 'inside']])),
    ]);
    const out = path.join(work, 'out-abs-symlink');
    await convert(`oci:${dir}:x`, `oci:${out}:x`);
    const target = path.join(work, 'rootfs-abs');
    await restore(`oci:${out}:x`, target);
    expect(fs.readFileSync(path.join(target, 'real', 'file'), 'utf8')).toBe('inside');
    // every reader shows the same merged tree
    const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'xdg') };
    expect((await cli(['cat', `oci:${out}:x`, '/real/file'], { env })).stdout).toBe('inside');
    expect((await cli(['cat', `oci:${out}:x`, '/lib/file'], { env })).stdout).toBe('inside');
    const ls = await cli(['ls', `oci:${out}:x`, '/real', '--json'], { env });
    expect(ls.code, ls.stderr).toBe(0);
    expect(JSON.stringify(JSON.parse(ls.stdout))).toMatch(/"file"/);
  });

  it('refuses a tampered TOC whose hardlink points outside the root', async () => {
    const dir = path.join(work, 'toc-src');
    writeLayout(dir, 'x', [
      plainLayer(
        pyTar([
          ['a', 'file', 'data'],
          ['b', 'hardlink', 'a'],
        ]),
      ),
    ]);
    const out = path.join(work, 'out-toc');
    await convert(`oci:${dir}:x`, `oci:${out}:x`);
    forgeChunked(
      out,
      'x',
      {
        toc: (toc) => {
          toc.layers[0].entries.find((e: { path: string }) => e.path === 'b').link = '../../../etc/passwd';
        },
      },
      { compress: (j) => native.compressSync(j, 3), decompress: (b) => native.decompressSync(b, 1 << 20) },
    );
    const target = path.join(work, 'rootfs-toc');
    const r = await cli(['restore', `oci:${out}:x`, target]);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(/layer 0 entry "b": hardlink target "\.\.\/\.\.\/\.\.\/etc\/passwd": path is not a normalized relative path/);
    expect(fs.existsSync(target)).toBe(false);
  });

  it('ignores a wrong TOC or config hint of the index entry (readers read what the manifest names); verify reports it', async () => {
    const dir = path.join(work, 'hint-src');
    writeLayout(dir, 'x', [plainLayer(goodTar)]);
    const out = path.join(work, 'out-hint');
    await convert(`oci:${dir}:x`, `oci:${out}:x`);
    const zstd = { compress: (j: Buffer) => native.compressSync(j, 3), decompress: (b: Buffer) => native.decompressSync(b, 1 << 20) };
    const want = await cli(['ls', `oci:${out}:x`, '/', '--json']);
    expect(want.code, want.stderr).toBe(0);
    expect((await cli(['verify', `oci:${out}:x`])).code).toBe(0);
    const edits: Array<[string, RegExp, (d: any) => void]> = [
      // the TOC hint names the config blob: valid digest, wrong blob
      [
        'org.ocichunk.toc',
        /org\.ocichunk\.toc names sha256:[0-9a-f]{64} \(\d+ bytes\), the manifest sha256:/,
        (d) => (d.annotations['org.ocichunk.toc'] = d.annotations['org.ocichunk.config']),
      ],
      [
        'org.ocichunk.config',
        /org\.ocichunk\.config is not \{"digest","size"\}/,
        (d) => (d.annotations['org.ocichunk.config'] = '{"digest":"sha256:../../etc","size":-1}'),
      ],
    ];
    for (const [key, message, edit] of edits) {
      forgeChunked(out, 'x', { entry: edit }, zstd);
      const ls = await cli(['ls', `oci:${out}:x`, '/', '--json']);
      expect(ls.code, `${key}: ${ls.stderr}`).toBe(0);
      expect(ls.stdout).toBe(want.stdout);
      const v = await cli(['verify', `oci:${out}:x`]);
      expect(v.code, key).toBe(5);
      expect(v.stderr).toMatch(message);
    }
  });

  it('refuses a pack whose chunk bytes were tampered with', async () => {
    const dir = path.join(work, 'tamper-src');
    writeLayout(dir, 'x', [plainLayer(goodTar)]);
    const out = path.join(work, 'out-tamper');
    await convert(`oci:${dir}:x`, `oci:${out}:x`);
    const idx = readIndex(out);
    const top = JSON.parse(blob(out, idx.manifests[0].digest).toString());
    const cm = JSON.parse(blob(out, top.manifests[1].digest).toString());
    const pack = path.join(out, 'blobs', 'sha256', cm.layers[1].digest.slice(7));
    // replace a frame with another valid zstd frame of the same length is hard; flip a byte instead
    const b = fs.readFileSync(pack);
    b[b.length >> 1] ^= 0xff;
    fs.writeFileSync(pack, b);
    const v = await cli(['verify', `oci:${out}:x`]);
    expect(v.code).not.toBe(0);
    expect(v.stderr).toMatch(/sha256:[a-f0-9]{64}/);
    const r = await cli(['restore', `oci:${out}:x`, path.join(work, 'rootfs-tamper')]);
    expect([5, 6]).toContain(r.code);
  });
});
