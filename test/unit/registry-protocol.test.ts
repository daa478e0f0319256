/**
 * Unit tier: the registry client's protocol against the in-process registry (fake-registry.ts):
 * bearer tokens by scope, retries of 429/5xx honouring Retry-After, downloads cut in the middle
 * resumed (or re-read when ranges are ignored), chunked uploads resumed from the registry's offset
 * after a lost answer, digests checked, cross-repository mounts, paginated tag lists.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { text } from 'node:stream/consumers';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient, type RegistryOptions } from '../../src/registry/client.js';
import { tmpdir } from '../helpers/env.js';
import { FakeRegistry } from './fake-registry.js';

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
/** 300 KB that differ everywhere (a resume at the wrong offset cannot go unnoticed) */
const BLOB = Buffer.from(Array.from({ length: 30_000 }, (_, i) => `${String(i).padStart(9, '0')}\n`).join(''));
const DIGEST = digestOf(BLOB);
const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', layers: [] }));

describe('registry protocol against an in-process registry', () => {
  let reg: FakeRegistry;
  let dir: string;
  /** an empty auth file: no credentials from the machine's own files */
  let authfile: string;
  const clients: RegistryClient[] = [];
  const client = (opts: RegistryOptions = {}) => {
    const c = new RegistryClient(reg.host, { authfile, retries: 0, backoffMs: 1, ...opts });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    reg = await new FakeRegistry().start();
    dir = tmpdir('unit-protocol');
    authfile = path.join(dir, 'auth.json');
    fs.writeFileSync(authfile, '{}');
    fs.writeFileSync(path.join(dir, 'blob'), BLOB);
    const c = client();
    await c.uploadBytes('p/base', BLOB, DIGEST, 'seed');
    await c.putManifest('p/base', 'v1', MANIFEST, 'application/vnd.oci.image.manifest.v1+json', 'seed');
  });
  afterEach(() => {
    reg.faults.length = 0;
    reg.bearer = undefined;
    reg.ignoreRange = false;
    while (clients.length) clients.pop()!.close();
  });
  afterAll(async () => {
    await reg.stop();
  });

  it('asks the token server for the scopes each request needs, reuses tokens, and refuses bad or missing credentials', async () => {
    reg.bearer = { users: { ann: 'secret' } };
    const c = client({ creds: 'ann:secret' });
    await c.uploadBytes('p/tok', BLOB, DIGEST, 'push');
    expect((await c.getBlobBytes('p/tok', { digest: DIGEST, size: BLOB.length }, 'pull', 1 << 20)).equals(BLOB)).toBe(true);
    expect(await c.headBlob('p/tok', DIGEST, 'head')).toBe(BLOB.length);
    expect(reg.tokenRequests).toEqual([
      { user: 'ann', scopes: ['repository:p/tok:pull,push'] },
      { user: 'ann', scopes: ['repository:p/tok:pull'] },
    ]);

    await expect(client({ creds: 'ann:wrong' }).headBlob('p/tok', DIGEST, 'head')).rejects.toMatchObject({
      code: 'EAUTH',
      message: expect.stringMatching(/token server refused user ann/),
    });
    // anonymous callers get a token without the scope: the registry still says no
    await expect(client().headBlob('p/tok', DIGEST, 'head')).rejects.toMatchObject({ code: 'EAUTH' });
    reg.bearer.anonymousPull = true;
    expect(await client().headBlob('p/tok', DIGEST, 'head')).toBe(BLOB.length);
    await expect(client().putManifest('p/tok', 'x', MANIFEST, 'application/vnd.oci.image.manifest.v1+json', 'push')).rejects.toMatchObject({
      code: 'EAUTH',
    });
  });

  it('retries 429 and 5xx answers, honouring Retry-After, and gives up with ENETWORK', async () => {
    const retries: Array<{ reason: string; delayMs: number }> = [];
    const c = client({ retries: 3, onRetry: (r) => retries.push({ reason: r.reason, delayMs: r.delayMs }) });
    reg.faults.push({ method: 'GET', path: /manifests\/v1$/, status: 503, retryAfter: '0.2' }, { method: 'GET', path: /manifests\/v1$/, status: 429 });
    const t = Date.now();
    expect((await c.getManifest('p/base', 'v1', 'get')).bytes.equals(MANIFEST)).toBe(true);
    expect(Date.now() - t).toBeGreaterThanOrEqual(190);
    expect(retries.map((r) => r.reason)).toEqual(['HTTP 503', 'HTTP 429']);
    expect(retries[0].delayMs).toBe(200);
    expect(c.stats.retries).toBe(2);

    reg.faults.push({ method: 'GET', path: /manifests\/v1$/, status: 500, times: 10 });
    await expect(c.getManifest('p/base', 'v1', 'get')).rejects.toMatchObject({ code: 'ENETWORK', message: expect.stringMatching(/HTTP 500/) });
    // the first try and three retries
    expect(10 - reg.faults[0].times!).toBe(4);
    // 404 is an answer, not a failure to retry
    await expect(c.getManifest('p/base', 'nope', 'get')).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });

  it('resumes a download cut in the middle with a Range request, or re-reads it when ranges are ignored', async () => {
    const c = client({ retries: 2 });
    const blobPath = `/v2/p/base/blobs/${DIGEST}`;
    reg.faults.push({ method: 'GET', path: new RegExp(`${blobPath}$`), cutAfter: 100_000 });
    let before = reg.log.length;
    expect(await text(c.openBlob('p/base', { digest: DIGEST, size: BLOB.length }, 'get'))).toBe(BLOB.toString());
    const gets = reg.log.slice(before).filter((l) => l.startsWith(`GET ${blobPath}`));
    expect(gets).toHaveLength(2);
    // where the cut left off: at least what was sent (node may hand over less than it read)
    const resumedAt = Number(/range=bytes=(\d+)-$/.exec(gets[1])?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(100_000);

    reg.ignoreRange = true;
    reg.faults.push({ method: 'GET', path: new RegExp(`${blobPath}$`), cutAfter: 150_000 });
    before = reg.log.length;
    expect(await text(c.openBlob('p/base', { digest: DIGEST, size: BLOB.length }, 'get'))).toBe(BLOB.toString());
    expect(reg.log.slice(before).filter((l) => l.startsWith(`GET ${blobPath}`))).toHaveLength(2);

    // cut every time: the error says how far it got
    reg.faults.push({ method: 'GET', path: new RegExp(`${blobPath}$`), cutAfter: 1000, times: 10 });
    await expect(text(c.openBlob('p/base', { digest: DIGEST, size: BLOB.length }, 'get'))).rejects.toMatchObject({ code: 'ENETWORK' });
  });

  it('resumes a chunked upload from the offset the registry reports after an answer was lost', async () => {
    const c = client({ retries: 2, uploadChunkSize: 64 << 10 });
    // the third chunk is stored, but its answer is a 500: the client must ask, not send it again
    reg.faults.push({ method: 'PATCH', path: /\/v2\/p\/chunked\/blobs\/uploads\//, skip: 2, afterHandling: true, status: 500 });
    const before = reg.log.length;
    await c.uploadFile('p/chunked', path.join(dir, 'blob'), { digest: DIGEST, size: BLOB.length }, 'upload');
    expect(reg.blobs.get(DIGEST)!.equals(BLOB)).toBe(true);
    expect(reg.holders(DIGEST)).toContain('p/chunked');
    const calls = reg.log.slice(before).map((l) => l.split(' ')[0]);
    // POST, 3 PATCH (the last answered 500), GET status, 2 more PATCH (300 KB in 64 KiB chunks), PUT
    expect(calls).toEqual(['POST', 'PATCH', 'PATCH', 'PATCH', 'GET', 'PATCH', 'PATCH', 'PUT']);
  });

  it('gives up on a chunked upload the registry keeps refusing, saying what it answered', async () => {
    const c = client({ retries: 1, uploadChunkSize: 64 << 10 });
    reg.faults.push({ method: 'PATCH', path: /\/v2\/p\/refused\/blobs\/uploads\//, times: 100, status: 500 });
    const up = c.uploadFile('p/refused', path.join(dir, 'blob'), { digest: DIGEST, size: BLOB.length }, 'upload');
    await expect(up).rejects.toMatchObject({ code: 'ENETWORK', message: expect.stringMatching(/upload stalled at 0 of \d+ bytes: HTTP 500 \(/) });
    expect(reg.blobs.has(DIGEST) && reg.holders(DIGEST).includes('p/refused')).toBe(false);
  });

  it('refuses content that does not match its digest', async () => {
    const c = client();
    const m = await c.getManifest('p/base', 'v1', 'get');
    reg.corrupt.add(m.digest);
    try {
      await expect(c.getManifest('p/base', m.digest, 'get')).rejects.toMatchObject({ code: 'EDIGEST' });
      await expect(c.getManifest('p/base', 'v1', 'get')).rejects.toMatchObject({ code: 'EDIGEST', message: expect.stringMatching(/Docker-Content-Digest/) });
    } finally {
      reg.corrupt.delete(m.digest);
    }
    reg.corrupt.add(DIGEST);
    try {
      await expect(c.getBlobBytes('p/base', { digest: DIGEST, size: BLOB.length }, 'get', 1 << 20)).rejects.toMatchObject({ code: 'EDIGEST' });
    } finally {
      reg.corrupt.delete(DIGEST);
    }
    // a blob the registry does not hold under the digest given
    await expect(c.uploadBytes('p/base', Buffer.from('other bytes'), DIGEST, 'put')).rejects.toMatchObject({ code: 'ENETWORK' });
  });

  it('mounts a blob from another repository instead of uploading it', async () => {
    const c = client();
    expect(await c.headBlob('p/mounted', DIGEST, 'head')).toBeUndefined();
    expect(await c.mountBlob('p/mounted', 'p/base', DIGEST, 'mount')).toBe(true);
    expect(await c.headBlob('p/mounted', DIGEST, 'head')).toBe(BLOB.length);
    // not in the source repository: the upload the registry opened instead is cancelled
    const before = reg.log.length;
    expect(await c.mountBlob('p/other', 'p/nothing', DIGEST, 'mount')).toBe(false);
    expect(reg.log.slice(before).map((l) => l.split(' ')[0])).toEqual(['POST', 'DELETE']);
  });

  it('follows the Link header through every page of a tag list', async () => {
    const c = client();
    const names = Array.from({ length: 2500 }, (_, i) => `t${String(i).padStart(4, '0')}`);
    for (const t of names) reg.tags.set(`p/many:${t}`, 'sha256:00');
    const before = reg.log.length;
    expect(await c.listTags('p/many', 'tags')).toEqual(names);
    expect(reg.log.slice(before)).toHaveLength(3);
    expect(await c.listTags('p/none', 'tags')).toEqual([]);
  });
});
