/**
 * The native layer scan (tar parsing, decompression, chunking and hashing in Rust) against an
 * independent reader: tar-stream over node:zlib, on real Debian layers as buildah wrote them, as
 * GNU tar writes them (gnu and pax formats, xattrs, long names, hardlinks) and zstd-compressed.
 * Every header field and every file's bytes must agree; every chunk digest must be its bytes' SHA-256.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { canonicalize, type RawHeader } from './helpers/canonical-oracle.js';
import { decodeHeaders } from './helpers/tar-headers.js';
import { decodeEntries } from './helpers/entries.js';
import type { CanonOptions, Entry } from '../src/layer/entry.js';
import { native, type ScanBatch } from '../src/native/index.js';
import { image, tmpdir } from './helpers/env.js';
import { blob, readIndex } from './helpers/layout.js';
import { must } from './helpers/run.js';

// tar-stream decodes PAX values as UTF-8, which mangles binary xattrs (security.capability, ACLs):
// the reference decodes them byte-preserving (latin1), as the native scan hands them over.
const req = createRequire(import.meta.url);
const tarHeaders = req(path.join(path.dirname(req.resolve('tar-stream')), 'headers.js')) as { decodePax: (b: Buffer) => Record<string, string> };
tarHeaders.decodePax = (buf: Buffer) => {
  const out: Record<string, string> = {};
  for (let rest = buf; rest.length; ) {
    const sp = rest.indexOf(0x20);
    const len = parseInt(rest.toString('latin1', 0, sp), 10);
    const rec = rest.subarray(sp + 1, len - 1);
    const eq = rec.indexOf(0x3d);
    out[rec.toString('latin1', 0, eq)] = rec.toString('latin1', eq + 1);
    rest = rest.subarray(len);
  }
  return out;
};

interface Seen {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname: string | null;
  dev: string;
  pax: Record<string, string>;
  content?: string;
}

/** What both readers must agree on (PAX path/linkpath applied to the names; size only for regular files). */
function seenOf(h: RawHeader): Seen {
  const { path: _path, linkpath: _linkpath, ...rest } = h.pax ?? {};
  const pax = h.pax ?? {};
  const isFile = h.type === 'file' || h.type === 'contiguous-file';
  return {
    name: pax.path ?? h.name,
    type: h.type ?? '',
    mode: h.mode ?? 0,
    uid: h.uid ?? 0,
    gid: h.gid ?? 0,
    size: isFile ? (h.size ?? 0) : 0,
    mtime: Math.floor((h.mtime?.getTime() ?? 0) / 1000),
    linkname: pax.linkpath ?? h.linkname ?? null,
    dev: `${h.devmajor ?? 0},${h.devminor ?? 0}`,
    pax: { ...rest },
  };
}

/** The reference: tar-stream over node:zlib (gzip) or the plain tar, byte-preserving names. */
async function reference(file: string): Promise<Seen[]> {
  const out: Seen[] = [];
  const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
  const head = fs.readFileSync(file).subarray(0, 2);
  const input = fs.createReadStream(file);
  const done = head[0] === 0x1f && head[1] === 0x8b ? pipeline(input, zlib.createGunzip(), extract) : pipeline(input, extract);
  for await (const entry of extract) {
    const h = entry.header;
    const hash = createHash('sha256');
    for await (const d of entry) hash.update(d as Buffer);
    const e = seenOf(h as RawHeader);
    out.push(e.size ? { ...e, content: hash.digest('hex') } : e);
  }
  await done;
  return out;
}

/** Canonical entries of a layer by the oracle (test/helpers/canonical-oracle.ts over tar-stream's headers). */
async function oracleEntries(file: string, opts: CanonOptions): Promise<Array<Entry | null>> {
  const out: Array<Entry | null> = [];
  const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
  const head = fs.readFileSync(file).subarray(0, 2);
  const input = fs.createReadStream(file);
  const done = head[0] === 0x1f && head[1] === 0x8b ? pipeline(input, zlib.createGunzip(), extract) : pipeline(input, extract);
  for await (const entry of extract) {
    entry.resume();
    out.push(canonicalize(entry.header as RawHeader, opts, file));
  }
  await done;
  return out;
}

/** Canonical entries of a layer by the native scan (crates/core/src/format/canonical.rs). */
async function nativeEntries(file: string, opts: CanonOptions): Promise<Array<Entry | null>> {
  const s = native.layerScanner('auto', { kind: 'cdc' }, 1 << 20, 0, 3, opts);
  const out: Array<Entry | null> = [];
  const take = (b: ScanBatch) => {
    out.push(...decodeEntries(b.headers, b.entries));
    s.done(b);
  };
  s.openFile(file);
  for (let eof = false; !eof; ) {
    const r = await s.pull();
    r.batches.forEach(take);
    eof = r.eof;
  }
  (await s.finish()).batches.forEach(take);
  return out;
}

/** The native scan, reading the file itself (or, with `piece`, fed by pushes of that size). */
async function scanned(file: string, piece?: number): Promise<{ seen: Seen[]; chunks: number }> {
  const s = native.layerScanner('auto', { kind: 'cdc' }, 1 << 20, 0, 3);
  const seen: Seen[] = [];
  const content = new Map<number, ReturnType<typeof createHash>>();
  let chunks = 0;
  const take = (b: ScanBatch) => {
    for (const h of decodeHeaders(b.headers, b.entries)) seen.push(seenOf(h));
    const data = s.bytes(b);
    let ci = 0;
    for (let i = 0; i < b.segs.length; i += 4) {
      const [entry, start] = [b.segs[i], b.segs[i + 1]];
      let pos = start;
      for (let k = 0; k < b.counts[i / 4]; k++, ci++) {
        const bytes = data.subarray(pos, pos + b.lengths[ci]);
        expect(
          createHash('sha256')
            .update(bytes)
            .digest()
            .equals(b.digests.subarray(ci * 32, ci * 32 + 32)),
        ).toBe(true);
        if (!content.has(entry)) content.set(entry, createHash('sha256'));
        content.get(entry)!.update(bytes);
        pos += b.lengths[ci];
        chunks++;
      }
    }
    s.done(b);
  };
  if (piece) {
    s.openStream();
    const all = fs.readFileSync(file);
    const offer = async (f: () => ReturnType<typeof s.end>) => {
      for (let r = await f(); ; r = await f()) {
        r.batches.forEach(take);
        if (r.accepted) return;
      }
    };
    for (let o = 0; o < all.length; o += piece) await offer(() => s.push(all.subarray(o, o + piece)));
    await offer(() => s.end());
  } else s.openFile(file);
  for (let eof = false; !eof; ) {
    const r = await s.pull();
    r.batches.forEach(take);
    eof = r.eof;
  }
  if (!piece) {
    const d = s.fileDigest()!;
    expect(d.digest).toBe(`sha256:${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`);
  }
  (await s.finish()).batches.forEach(take);
  for (const [i, h] of content) seen[i].content = h.digest('hex');
  return { seen, chunks };
}

let work: string;
const layers: Array<[string, string]> = [];

beforeAll(async () => {
  work = tmpdir('tarscan');
  // the real layers of the test images as buildah wrote them (gzip), and one as zstd
  for (const name of ['base', 'app']) {
    const dir = image(name);
    const top = readIndex(dir).manifests[0];
    const m = JSON.parse(blob(dir, top.digest).toString());
    for (const [i, l] of (m.layers as Array<{ digest: string }>).entries()) {
      layers.push([`${name} layer ${i}`, path.join(dir, 'blobs', 'sha256', l.digest.slice(7))]);
    }
  }
  // GNU tar over the same files: gnu and pax formats (long names, xattrs, hardlinks, a fifo)
  const bundle = path.join(work, 'bundle');
  await must('umoci', ['unpack', '--image', `${image('base')}:latest`, bundle]);
  const root = path.join(bundle, 'rootfs');
  const deep = path.join(root, 'deep', 'x'.repeat(90), 'y'.repeat(90));
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(path.join(deep, `${'z'.repeat(120)}.txt`), 'long name\n');
  fs.linkSync(path.join(root, 'etc', 'os-release'), path.join(root, 'deep', 'os-release-link'));
  await must('mkfifo', [path.join(root, 'deep', 'fifo')]);
  await must('setfattr', ['-n', 'user.ocichunk', '-v', '0sAAECAwT/', path.join(root, 'etc', 'hostname')]);
  for (const fmt of ['gnu', 'pax']) {
    const out = path.join(work, `rootfs-${fmt}.tar`);
    await must('tar', ['-C', root, `--format=${fmt}`, '--xattrs', '--numeric-owner', '-cf', out, '.']);
    layers.push([`GNU tar --format=${fmt}`, out]);
  }
  await must('zstd', ['-q', '-3', path.join(work, 'rootfs-pax.tar'), '-o', path.join(work, 'rootfs-pax.tar.zst')]);
});

describe('native layer scan', () => {
  it('reads real layers exactly as tar-stream does: every header field and every file byte', async () => {
    expect(layers.length).toBeGreaterThanOrEqual(4);
    for (const [what, file] of layers) {
      const [ref, got] = await Promise.all([reference(file), scanned(file)]);
      expect(got.seen.length, what).toBe(ref.length);
      expect(got.seen, what).toEqual(ref);
      expect(got.chunks, what).toBeGreaterThan(0);
    }
    // what the GNU tar layers hold, so the comparison covers it
    const pax = (await scanned(path.join(work, 'rootfs-pax.tar'))).seen;
    expect(pax.find((e) => e.name.endsWith('etc/hostname'))?.pax['SCHILY.xattr.user.ocichunk']).toBe('\x00\x01\x02\x03\x04\xff');
    expect(pax.some((e) => e.type === 'link' && e.name.endsWith('os-release-link'))).toBe(true);
    expect(pax.some((e) => e.type === 'fifo')).toBe(true);
    const gnu = (await scanned(path.join(work, 'rootfs-gnu.tar'))).seen;
    expect(gnu.some((e) => e.name.length > 255 && e.name.endsWith('.txt'))).toBe(true);
  });

  it('makes the canonical entries an independent canonicalizer makes from tar-stream headers, with and without mtimes kept', async () => {
    for (const opts of [
      { sourceDateEpoch: 0, keepMtime: false },
      { sourceDateEpoch: 1_600_000_000, keepMtime: false },
      { sourceDateEpoch: 0, keepMtime: true },
    ]) {
      for (const [what, file] of layers) {
        const [want, got] = await Promise.all([oracleEntries(file, opts), nativeEntries(file, opts)]);
        expect(got.length, what).toBe(want.length);
        expect(got, `${what} ${JSON.stringify(opts)}`).toEqual(want);
      }
    }
    // what the comparison covers
    const pax = await nativeEntries(path.join(work, 'rootfs-pax.tar'), { sourceDateEpoch: 0, keepMtime: true });
    const host = pax.find((e) => e?.path === 'etc/hostname')!;
    expect(host.xattrs).toEqual([['user.ocichunk', Buffer.from([0, 1, 2, 3, 4, 0xff])]]);
    expect(pax.some((e) => e?.type === 'hardlink' && e.link === 'etc/os-release')).toBe(true);
    expect(pax.some((e) => e?.type === 'fifo') && pax.some((e) => e?.type === 'symlink') && pax.some((e) => e?.type === 'dir' && e.path === '.')).toBe(true);
    expect(new Set(pax.map((e) => e?.mtime)).size).toBeGreaterThan(1);
  });

  it('gives the same entries and chunks from zstd, from pushes of any size, and from the file', async () => {
    const plain = await scanned(path.join(work, 'rootfs-pax.tar'));
    const zst = await scanned(path.join(work, 'rootfs-pax.tar.zst'));
    expect(zst).toEqual(plain);
    for (const piece of [1 << 20, 4099]) expect(await scanned(path.join(work, 'rootfs-pax.tar.zst'), piece)).toEqual(plain);
    const gz = layers[0][1];
    expect(await scanned(gz, 65_537)).toEqual(await scanned(gz));
  });
});
