/**
 * Unit tier: the registry client and the docker:// transport against an in-process registry
 * (test/unit/fake-registry.ts): a conversion pushed and read back lazily, content damaged on the
 * way refused by digest, credentials asked for and used. The suite's registry.test.ts runs the same
 * against Debian's docker-registry.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveImage } from '../../src/chunked/image.js';
import { convert } from '../../src/convert/convert.js';
import { LazyImage } from '../../src/lazy/reader.js';
import { openClients } from '../../src/registry/client.js';
import { openSource } from '../../src/ref.js';
import { verify } from '../../src/verify.js';
import { tmpdir } from '../helpers/env.js';
import { gzipLayer, writeLayout } from '../helpers/layout.js';
import { FakeRegistry } from './fake-registry.js';
import { tarOf } from './tar.js';

const BIG = 'x'.repeat(300_000) + 'the end\n';

describe('registry client against an in-process registry', () => {
  let reg: FakeRegistry;
  let layout: string;
  let home: string;
  const opts = () => ({ trustDir: path.join(home, 'trust'), transport: { retries: 1, backoffMs: 1 } });

  beforeAll(async () => {
    reg = await new FakeRegistry().start();
    const dir = tmpdir('unit-registry');
    home = path.join(dir, 'home');
    layout = path.join(dir, 'layout');
    writeLayout(layout, 'x', [
      gzipLayer(tarOf({ 'etc/': '', 'etc/hostname': 'fake\n', 'big/': '', 'big/file': BIG })),
      gzipLayer(tarOf({ 'etc/motd': 'hello from layer 1\n' })),
    ]);
  });
  afterAll(async () => {
    await reg.stop();
  });

  it('pushes a conversion, reads it back lazily with range requests, and verifies it', async () => {
    const ref = `docker://${reg.host}/unit/img:1`;
    const r = await convert(`oci:${layout}:x`, ref, opts());
    expect(r.layers).toBe(2);
    expect(reg.tags.get('unit/img:1')).toBe(r.index.digest);
    // the original layers and the chunked image's blobs are all there
    const src = await openSource(ref);
    const img = await resolveImage(src, { os: 'linux', architecture: 'amd64' });
    await src.close();
    expect(img.original && img.chunked).toBeTruthy();
    for (const l of [...img.original!.manifest.layers, ...img.chunked!.manifest.layers]) expect(reg.blobs.has(l.digest)).toBe(true);

    const before = reg.log.length;
    const lazy = await LazyImage.open(ref, { cacheDir: false, transport: { retries: 1 } });
    try {
      expect(lazy.readdir('/etc').sort()).toEqual(['hostname', 'motd']);
      expect((await lazy.read('/etc/motd')).toString()).toBe('hello from layer 1\n');
      expect((await lazy.read('/big/file', BIG.length - 8)).toString()).toBe('the end\n');
    } finally {
      await lazy.close();
    }
    expect(reg.log.slice(before).some((l) => l.startsWith('GET') && l.includes('/blobs/'))).toBe(true);
    expect((await verify(ref, { transport: { retries: 1 } })).files).toBe(3);
    // converting again uploads nothing new: every blob is found with HEAD
    const puts = reg.log.filter((l) => l.startsWith('PUT') && l.includes('/uploads/')).length;
    await convert(`oci:${layout}:x`, `docker://${reg.host}/unit/img:2`, opts());
    expect(reg.log.filter((l) => l.startsWith('PUT') && l.includes('/uploads/')).length).toBe(puts);
  });

  it('refuses content damaged on the way, by digest', async () => {
    const ref = `docker://${reg.host}/unit/img:1`;
    const src = await openSource(ref);
    const img = await resolveImage(src, { os: 'linux', architecture: 'amd64' });
    await src.close();
    const pack = img.chunked!.manifest.layers[1].digest;
    reg.corrupt.add(pack);
    try {
      await expect(verify(ref, { transport: { retries: 0 } })).rejects.toMatchObject({ code: 'EDIGEST' });
    } finally {
      reg.corrupt.delete(pack);
    }
  });

  it('asks for credentials and uses them', async () => {
    reg.auth = 'ann:secret';
    try {
      await expect(verify(`docker://${reg.host}/unit/img:1`, { transport: { retries: 0 } })).rejects.toMatchObject({ code: 'EAUTH' });
      const ok = await verify(`docker://${reg.host}/unit/img:1`, { transport: { retries: 0, creds: 'ann:secret' } });
      expect(ok.files).toBe(3);
    } finally {
      reg.auth = undefined;
    }
    expect(openClients()).toBe(0);
  });
});
