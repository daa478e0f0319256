/**
 * Errors across the Rust/JavaScript seam: the binding throws (or rejects with) Errors whose `code`
 * is the core's stable code and whose message carries no "ECODE: " prefix; errors of the OS add
 * the Rust io::ErrorKind and errno. src/native maps them by `code` alone. No images needed.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isNativeError, NATIVE_CODES, OcichunkError, withContext, type NativeError } from '../src/errors.js';
import { native } from '../src/native/index.js';
import { REPO, tmpdir } from './helpers/env.js';

/** The raw binding, to see exactly what crosses the seam (src/native is its only importer otherwise). */
const raw = createRequire(import.meta.url)(path.join(REPO, 'native', 'ocichunk.node')) as Record<string, any>;

const PREFIX = /\bE[A-Z]{2,}: /;

/** What `f` throws, or its promise rejects with; fails when it succeeds. */
async function caught(f: () => unknown): Promise<unknown> {
  try {
    await f();
  } catch (e) {
    return e;
  }
  throw new Error('expected a failure');
}

/** A native error with `code` and a bare message matching `text`. */
async function expectNative(f: () => unknown, code: string, text: RegExp): Promise<NativeError> {
  const e = await caught(f);
  expect(e).toBeInstanceOf(Error);
  expect(isNativeError(e), String(e)).toBe(true);
  const n = e as NativeError;
  expect(n.code, n.message).toBe(code);
  expect(n.origin).toBe('ocichunk-core');
  expect(n.message).toMatch(text);
  expect(n.message).not.toMatch(PREFIX);
  return n;
}

const zstd = (b: Buffer | string): Buffer => raw.compressSync(Buffer.from(b), 3);

function tocBlob(entries: unknown[], version = 1): Buffer {
  const toc = { version, chunker: { kind: 'cdc' }, packs: [], frames: [], chunks: [], layers: [{ entries }] };
  return zstd(JSON.stringify(toc));
}
const DIR = [{ path: 'd', type: 'dir', mode: 0o755 }];

describe('native errors carry a stable code', () => {
  it('corrupt compressed data: ECORRUPT, thrown and rejected', async () => {
    await expectNative(() => raw.decompressSync(Buffer.from('not zstd at all'), 100), 'ECORRUPT', /^zstd: /);
    await expectNative(() => raw.decompressSync(zstd(Buffer.alloc(200)), 100), 'ECORRUPT', /exceeds 100 bytes/);
    const good = zstd('hello');
    const bad = Buffer.concat([good, Buffer.from('not zstd at all')]);
    const frames = new Uint32Array([0, good.length, 5, good.length, 15, 10]);
    await expectNative(() => raw.decompressFrames(bad, frames, 1), 'ECORRUPT', /^frame 1: zstd: /);
  });

  it('bad arguments: EINVAL', async () => {
    await expectNative(() => raw.decompressFrames(Buffer.alloc(4), new Uint32Array([0, 1]), 1), 'EINVAL', /must hold triplets/);
    await expectNative(() => raw.hashRanges(Buffer.alloc(4), new Uint32Array([2, 8]), 1), 'EINVAL', /outside the 4-byte buffer/);
    await expectNative(() => raw.compressSync(Buffer.from('x'), 1000), 'EINVAL', /zstd level 1000/);
    await expectNative(() => raw.chunkCachePath('/tmp', 'zz'), 'EINVAL', /not a sha256 hex digest/);
    await expectNative(() => new raw.LayerScanner('rar', { kind: 'cdc' }, 1 << 20, 1, 2, null), 'EINVAL', /unknown compression "rar"/);
    await expectNative(() => new raw.LayerScanner('none', { kind: 'cdc', min: 1 }, 1 << 20, 1, 2, null), 'EINVAL', /cdc chunker sizes/);
    await expectNative(() => raw.mknod(path.join(tmpdir('nerr'), 'n'), 'socket', 0o644, 0, 0), 'EINVAL', /unknown node kind/);
  });

  it('TOCs keep the class of their first violation', async () => {
    const ok = new raw.CheckedToc(tocBlob(DIR));
    expect(ok.takeJson()!.length).toBeGreaterThan(0);
    expect(ok.takeJson()).toBeNull(); // handed over once
    await expectNative(() => new raw.CheckedToc(Buffer.from('garbage')), 'ECORRUPT', /^TOC: zstd: /);
    await expectNative(() => new raw.CheckedToc(zstd('{"version": 1, ')), 'ECORRUPT', /invalid TOC at byte/);
    await expectNative(() => new raw.CheckedToc(tocBlob(DIR, 99)), 'EUNSUPPORTED', /version/);
    await expectNative(() => new raw.CheckedToc(tocBlob([{ path: '../x', type: 'dir', mode: 0o755 }])), 'EUNSAFE', /\.\./);
  });

  it('unsafe restore targets: EUNSAFE', async () => {
    const toc = new raw.CheckedToc(tocBlob(DIR));
    const d = tmpdir('nerr');
    fs.writeFileSync(path.join(d, 'f'), 'x');
    await expectNative(() => new raw.RestoreWriter(d, toc), 'EUNSAFE', /must be empty or absent/);
    await expectNative(() => new raw.RestoreWriter(path.join(d, 'f'), toc), 'EUNSAFE', /not a directory/);
    const w = new raw.RestoreWriter(path.join(d, 'new'), toc);
    w.finish();
    expect(fs.statSync(path.join(d, 'new', 'd')).isDirectory()).toBe(true);
    await expectNative(() => w.finish(), 'EINVAL', /restore writer finished/);
    await expectNative(() => w.write([]), 'EINVAL', /restore writer finished/);
  });

  it('errors of the OS: ENOTFOUND or EIO, with the io::ErrorKind and errno', async () => {
    const d = tmpdir('nerr');
    const missing = path.join(d, 'missing');
    for (const f of [() => raw.hashFile(missing), () => raw.llistxattr(missing), () => raw.lgetxattr(missing, 'user.x')]) {
      const e = await expectNative(f, 'ENOTFOUND', /missing: No such file or directory/);
      expect([e.ioKind, e.errno]).toEqual(['NotFound', os.constants.errno.ENOENT]);
    }
    fs.writeFileSync(path.join(d, 'f'), 'x');
    const e = await expectNative(() => raw.mknod(path.join(d, 'f'), 'fifo', 0o644, 0, 0), 'EIO', /^mknod .*f: File exists/);
    expect([e.ioKind, e.errno]).toEqual(['AlreadyExists', os.constants.errno.EEXIST]);
    // no OS error behind it: no ioKind
    const c = await expectNative(() => raw.decompressSync(Buffer.from('x'), 1), 'ECORRUPT', /zstd/);
    expect(c.ioKind).toBeUndefined();
    expect(c.errno).toBeUndefined();
  });

  it('layer scans: the code survives the scan thread and the async steps', async () => {
    const s = new raw.LayerScanner('none', { kind: 'cdc' }, 1 << 20, 1, 2, null);
    await expectNative(() => s.openFile(path.join(tmpdir('nerr'), 'missing')), 'ENOTFOUND', /^open .*missing: /);
    await expectNative(() => s.pull(), 'EINVAL', /does not fit this scan's state/);

    // not a tar: the scan thread refuses the first header; push, pull or finish reports it
    const t = new raw.LayerScanner('none', { kind: 'cdc' }, 1 << 20, 1, 2, null);
    t.openStream();
    const e = await expectNative(
      async () => {
        await t.push(Buffer.alloc(1024, 0xff));
        await t.end();
        for (let r = await t.pull(); !r.eof; r = await t.pull()) r.batches.forEach((b: { buffer: number }) => t.release(b.buffer));
        await t.finish();
      },
      'ECORRUPT',
      /bad checksum/,
    );
    expect(e.ioKind).toBeUndefined();
    t.close();
  });

  it('every code the core has is mapped, and only those', () => {
    const codes: string[] = raw.errorCodes();
    expect(codes).toContain('ECORRUPT');
    expect([...codes].sort()).toEqual(Object.keys(NATIVE_CODES).sort());
    expect(native.errorCodes()).toEqual(codes);
  });
});

describe('src/native maps native errors by code', () => {
  it('to OcichunkErrors with context, the native error as cause', async () => {
    const e = (await caught(() => native.decompressSync(Buffer.from('not zstd at all'), 100))) as OcichunkError;
    expect(e).toBeInstanceOf(OcichunkError);
    expect(e.code).toBe('ECORRUPT');
    expect(e.message).toMatch(/^decompression: zstd: /);
    expect((e.cause as NativeError).code).toBe('ECORRUPT');

    const cases: Array<[() => unknown, string, RegExp]> = [
      [() => native.chunkCachePath('/tmp', 'zz'), 'EUSAGE', /^chunk cache: "zz" is not/],
      [() => native.hashFile('/nonexistent/ocichunk'), 'ENOTFOUND', /^hashing \/nonexistent\/ocichunk: open /],
      [() => native.decompressFrames(Buffer.from('junk'), new Uint32Array([0, 4, 4]), 1), 'ECORRUPT', /^decompression: frame 0: zstd: /],
      [() => native.openToc(tocBlob([{ path: '/abs', type: 'dir', mode: 0o755 }]), 'image x'), 'EUNSAFE', /^image x: /],
      [() => native.openToc(tocBlob(DIR, 7), 'image x'), 'EUNSUPPORTED', /^image x: /],
      [() => native.mknod(path.join(tmpdir('nerr'), 'no', 'n'), 'fifo', 0o644, 0, 0), 'ENOTFOUND', /^mknod .*No such file/],
    ];
    for (const [f, code, text] of cases) {
      const err = (await caught(f)) as OcichunkError;
      expect(err, String(err)).toBeInstanceOf(OcichunkError);
      expect(err.code, err.message).toBe(code);
      expect(err.message).toMatch(text);
      expect(err.message).not.toMatch(PREFIX);
    }
    const d = tmpdir('nerr');
    fs.writeFileSync(path.join(d, 'f'), 'x');
    const u = (await caught(() => native.restoreWriter(d, native.openToc(tocBlob(DIR), 'image x')))) as OcichunkError;
    expect([u.code, u.message.startsWith(`restore into ${d}: `)]).toEqual(['EUNSAFE', true]);
  });

  it('by the marker and code, never by the message', () => {
    const fake = (code: string, message: string) => Object.assign(new Error(message), { code, origin: 'ocichunk-core' });
    expect(withContext(fake('EINVAL', 'bad'), 'x').code).toBe('EUSAGE');
    expect(withContext(fake('EIO', 'read: broken pipe'), 'x').code).toBe('EIO');
    expect(withContext(fake('ENOTFOUND', 'gone'), 'x', 'ECORRUPT').code).toBe('ENOTFOUND');
    // a code the core does not have means a binding out of step
    expect(withContext(fake('EWHATEVER', 'new'), 'x').code).toBe('EINTERNAL');
    // Node's own EINVAL is not the core's: the fallback applies
    expect(withContext(Object.assign(new Error('invalid argument'), { code: 'EINVAL' }), 'x').code).toBe('EIO');
    // a message that looks like an old native one is only text now
    const old = withContext(new Error('ECORRUPT: zstd: bad'), 'x');
    expect([old.code, old.message]).toEqual(['EIO', 'x: ECORRUPT: zstd: bad']);
  });
});
