/**
 * docker:// against a real registry (Debian's docker-registry, started here on 127.0.0.1): in-place
 * conversion, old clients (skopeo, containerd) unaffected, restore, second-image pushes, mounts,
 * multi-platform indexes, referrers, htpasswd auth with every credential source, and a
 * fault-injecting proxy.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Containerd } from './helpers/containerd.js';
import { image, tmpdir } from './helpers/env.js';
import { FaultProxy, type Fault } from './helpers/fault-proxy.js';
import { Registry } from './helpers/registry.js';
import { TokenServer } from './helpers/token-server.js';
import { cli, cliJson, must, selfSignedCert } from './helpers/run.js';
import { diffTrees, snapshot, type Node } from './helpers/tree.js';

interface Transfer {
  blobsUploaded: number;
  bytesUploaded: number;
  blobsSkipped: number;
  blobsMounted: number;
  bytesMounted: number;
  retries: number;
}
interface Converted {
  index: { digest: string };
  originalManifest: { digest: string };
  chunkedManifest: { digest: string };
  platform: string;
  platforms: Array<{ platform: string; originalManifest: { digest: string }; newChunks: number; reusedChunks: number }>;
  newPacks: number;
  newChunks: number;
  uniqueChunks: number;
  bytesStored: number;
  tocBytes: number;
  digestTableBytes: number;
  layers: number;
  attach: string;
  attachedVia?: string;
  transfer: Transfer;
}

const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

let work: string;
let reg: Registry;
let reference: Map<string, Node>;

beforeAll(async () => {
  work = tmpdir('registry');
  reg = await new Registry(path.join(work, 'reg')).start();
  await reg.push(`oci:${image('app')}:latest`, 'apps:app');
  await reg.push(`oci:${image('app2')}:latest`, 'apps:app2');
  const bundle = path.join(work, 'umoci');
  await must('umoci', ['unpack', '--image', `${image('app')}:latest`, bundle]);
  reference = snapshot(path.join(bundle, 'rootfs'));
});

afterAll(async () => {
  await reg?.stop();
});

describe('docker:// on a registry', () => {
  let first: Converted;
  let originalDigest: string;

  it('converts a tag in place: the tag now points to [original, chunked], uploading only packs and the TOC', async () => {
    originalDigest = (await reg.tagDigest('apps:app'))!;
    first = await cliJson<Converted>(['convert', `docker://${reg.host}/apps:app`, `docker://${reg.host}/apps:app`]);
    expect(first.originalManifest.digest).toBe(originalDigest);
    expect(await reg.tagDigest('apps:app')).toBe(first.index.digest);
    // the original layers and config were already there: only the new packs and the TOC went up
    expect(first.transfer.blobsUploaded).toBe(first.newPacks + 2); // and the TOC and its digest table
    expect(first.transfer.bytesUploaded).toBe(first.bytesStored + first.tocBytes + first.digestTableBytes);
  });

  it('skopeo copies the converted tag as the original image, manifest byte-identical', async () => {
    const dest = path.join(work, 'skopeo-dir');
    await must('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/apps:app`, `dir:${dest}`]);
    const m = fs.readFileSync(path.join(dest, 'manifest.json'));
    expect(sha256(m)).toBe(originalDigest);
    const idx = JSON.parse(fs.readFileSync(path.join(image('app'), 'index.json'), 'utf8'));
    expect(fs.readFileSync(path.join(image('app'), 'blobs', 'sha256', idx.manifests[0].digest.slice(7))).equals(m)).toBe(true);
  });

  it('restore docker:// gives the tree umoci unpacks from the original; verify and inspect read it too', async () => {
    const rootfs = path.join(work, 'restored');
    const r = await cli(['restore', `docker://${reg.host}/apps:app`, rootfs]);
    expect(r.code, r.stderr).toBe(0);
    expect(diffTrees(reference, snapshot(rootfs))).toEqual([]);
    const v = await cli(['verify', `docker://${reg.host}/apps:app`]);
    expect(v.code, v.stderr).toBe(0);
    const info = await cliJson<{ chunkedManifest: string; uniqueChunks: number }>(['inspect', `docker://${reg.host}/apps:app`]);
    expect(info.chunkedManifest).toBe(first.chunkedManifest.digest);
    expect(info.uniqueChunks).toBe(first.uniqueChunks);
  });

  it('a second image in the same repository uploads only its new chunks (by our report and by the registry disk)', async () => {
    const before = reg.storedBytes();
    const second = await cliJson<Converted>(['convert', `docker://${reg.host}/apps:app2`, `docker://${reg.host}/apps:app2`]);
    const growth = reg.storedBytes() - before;
    expect(second.newChunks).toBeLessThan(second.uniqueChunks * 0.05);
    expect(second.transfer.bytesUploaded).toBe(second.bytesStored + second.tocBytes + second.digestTableBytes);
    expect(second.transfer.bytesUploaded).toBeLessThan(first.transfer.bytesUploaded * 0.02);
    // what the registry stored: those uploads plus three small manifests (chunked, index; the original was there)
    expect(growth).toBeGreaterThanOrEqual(second.transfer.bytesUploaded);
    expect(growth - second.transfer.bytesUploaded).toBeLessThan(16 << 10);
    // converting again changes nothing and uploads nothing
    const again = await cliJson<Converted>(['convert', `docker://${reg.host}/apps:app2`, `docker://${reg.host}/apps:app2`]);
    expect(again.index.digest).toBe(second.index.digest);
    expect(again.transfer.blobsUploaded).toBe(0);
  });

  it('mounts the original layers from the source repository instead of uploading them', async () => {
    const r = await cliJson<Converted>(['convert', `docker://${reg.host}/apps:app`, `docker://${reg.host}/mirror/app:1`]);
    expect(r.transfer.blobsMounted).toBe(r.layers);
    expect(await reg.tagDigest('mirror/app:1')).toBe(r.index.digest);
    const dest = path.join(work, 'skopeo-mirror');
    await must('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/mirror/app:1`, `dir:${dest}`]);
    expect(sha256(fs.readFileSync(path.join(dest, 'manifest.json')))).toBe(originalDigest);
  });

  it('writes to an OCI layout from a registry, and from a layout to a registry', async () => {
    const out = path.join(work, 'from-registry');
    const a = await cliJson<Converted>(['convert', `docker://${reg.host}/apps:app`, `oci:${out}:app`]);
    expect(a.index.digest).toBe(first.index.digest); // same bytes, whatever the transport
    const b = await cliJson<Converted>(['convert', `oci:${image('app')}:latest`, `docker://${reg.host}/from-layout:1`]);
    expect(b.index.digest).toBe(first.index.digest);
    expect(b.transfer.blobsUploaded).toBeGreaterThanOrEqual(b.layers + b.newPacks + 1);
  });

  it('converts a batch into one repository: the second image stores only its new chunks', async () => {
    const list = [`oci:${image('app')}:latest docker://${reg.host}/batch/stack:app`, `oci:${image('app2')}:latest docker://${reg.host}/batch/stack:app2`];
    const [a, b] = await cliJson<Converted[]>(['convert', '--batch', '-'], { input: list.join('\n') });
    expect(a.index.digest).toBe(first.index.digest); // the bytes of a conversion of its own
    expect(b.newChunks).toBeLessThan(b.uniqueChunks * 0.05);
    expect(b.bytesStored).toBeLessThan(a.bytesStored * 0.05);
    expect(await reg.tagDigest('batch/stack:app')).toBe(a.index.digest);
    expect(await reg.tagDigest('batch/stack:app2')).toBe(b.index.digest);
  });

  it('converts every platform of a multi-platform index into one index (--all-platforms)', async () => {
    const b = path.join(work, 'buildah');
    const bah = (args: string[]) => must('buildah', ['--root', `${b}/root`, '--runroot', `${b}/run`, '--storage-driver', 'vfs', ...args]);
    await bah(['manifest', 'create', 'multi']);
    await bah(['manifest', 'add', '--os', 'linux', '--arch', 'amd64', 'multi', `oci:${image('app')}:latest`]);
    await bah(['manifest', 'add', '--os', 'linux', '--arch', 'arm64', '--variant', 'v8', 'multi', `oci:${image('base')}:latest`]);
    // an entry no platform matches, as BuildKit's attestation manifests: kept, not converted
    await bah(['manifest', 'add', '--os', 'unknown', '--arch', 'unknown', 'multi', `oci:${image('app2')}:latest`]);
    await bah(['manifest', 'push', '--all', '--quiet', '--tls-verify=false', 'multi', `docker://${reg.host}/multi:latest`]);
    const src = JSON.parse((await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/multi:latest`])).stdout);
    const r = await cliJson<Converted>(['convert', `docker://${reg.host}/multi:latest`, `docker://${reg.host}/multi:chunked`, '--all-platforms']);
    expect(r.platforms.map((p) => p.platform)).toEqual(['linux/amd64', 'linux/arm64/v8']);
    const idx = JSON.parse((await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/multi:chunked`])).stdout);
    // per platform: the original entry, unchanged, then the chunked manifest; other entries kept
    expect(idx.manifests.length).toBe(5);
    expect(idx.manifests[4]).toEqual(src.manifests[2]);
    expect(idx.manifests[0]).toEqual(src.manifests[0]);
    expect(idx.manifests[1].artifactType).toBe('application/vnd.ocichunk.image.v1');
    expect(idx.manifests[2]).toEqual(src.manifests[1]);
    // chunked entries match no platform (old clients skip them); their platform is an annotation
    expect(idx.manifests[3].platform).toEqual({ os: 'unknown', architecture: 'unknown' });
    expect(idx.manifests[3].annotations['org.ocichunk.platform']).toBe('linux/arm64/v8');
    expect(idx.manifests[3].annotations['org.ocichunk.source.manifest']).toBe(src.manifests[1].digest);
    // the arm64 image is the base image: all its chunks were stored with the amd64 one
    expect(r.platforms[1].newChunks).toBe(0);
    // skopeo picks the original for each platform
    const arm = path.join(work, 'skopeo-arm');
    await must('skopeo', [
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      '--override-arch',
      'arm64',
      '--override-variant',
      'v8',
      `docker://${reg.host}/multi:chunked`,
      `dir:${arm}`,
    ]);
    expect(sha256(fs.readFileSync(path.join(arm, 'manifest.json')))).toBe(src.manifests[1].digest);
    const rootfs = path.join(work, 'restored-arm');
    const rr = await cli(['restore', `docker://${reg.host}/multi:chunked`, rootfs, '--platform', 'linux/arm64']);
    expect(rr.code, rr.stderr).toBe(0);
    expect(fs.existsSync(path.join(rootfs, 'etc', 'debian_version'))).toBe(true);
    // into another repository, the entries that were not converted come along with their blobs
    const other = await cliJson<Converted>(['convert', `docker://${reg.host}/multi:latest`, `docker://${reg.host}/multi-copy:1`, '--all-platforms']);
    expect(other.index.digest).toBe(r.index.digest);
    const copied = path.join(work, 'skopeo-unknown');
    await must('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/multi-copy@${src.manifests[2].digest}`, `dir:${copied}`]);
    expect(sha256(fs.readFileSync(path.join(copied, 'manifest.json')))).toBe(src.manifests[2].digest);
  });

  it('--attach referrer leaves the tag alone and attaches the chunked manifest to the original', async () => {
    await reg.push(`oci:${image('base')}:latest`, 'ref:1');
    const before = (await reg.tagDigest('ref:1'))!;
    const r = await cliJson<Converted>(['convert', `docker://${reg.host}/ref:1`, `docker://${reg.host}/ref:1`, '--attach', 'referrer']);
    expect(await reg.tagDigest('ref:1')).toBe(before);
    expect(r.attach).toBe('referrer');
    // this registry has no referrers API: the referrers tag schema holds the chunked manifest
    expect(r.attachedVia).toBe('tag');
    const refs = JSON.parse((await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/ref:${before.replace(':', '-')}`])).stdout);
    expect(refs.manifests.map((m: { digest: string }) => m.digest)).toEqual([r.chunkedManifest.digest]);
    const chunked = JSON.parse(
      (await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/ref@${r.chunkedManifest.digest}`])).stdout,
    );
    expect(chunked.subject.digest).toBe(before);
    // and readers find it from the untouched tag
    const info = await cliJson<{ chunkedManifest: string }>(['inspect', `docker://${reg.host}/ref:1`]);
    expect(info.chunkedManifest).toBe(r.chunkedManifest.digest);
  });

  it('containerd pulls the converted tag, unpacks only the original layers and runs a program', async () => {
    const ctrd = new Containerd(tmpdir('containerd-reg'));
    await ctrd.start();
    try {
      const ref = `${reg.host}/apps:app`;
      const pull = await ctrd.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', ref]);
      expect(pull.code, pull.stderr).toBe(0);
      const run = await ctrd.ctr(['run', '--rm', '--snapshotter', 'native', ref, 't-reg', '/bin/sh', '-c', 'cat /etc/debian_version; echo ran-ok']);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toContain('ran-ok');
      const snaps = await ctrd.ctr(['snapshots', '--snapshotter', 'native', 'ls']);
      expect(snaps.stdout.split('\n').filter((l) => /\bCommitted\b/.test(l)).length).toBe(first.layers);
      // containerd fetched the original manifest and its blobs, never the chunked manifest or a pack
      const content = (await ctrd.ctr(['content', 'ls', '-q'])).stdout.trim().split('\n').sort();
      const m = JSON.parse((await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/apps@${originalDigest}`])).stdout);
      expect(content).toEqual([first.index.digest, originalDigest, m.config.digest, ...m.layers.map((l: { digest: string }) => l.digest)].sort());
    } finally {
      await ctrd.stop();
    }
  });

  it('analyze reads images from the registry and gives the figures it gives for the layouts', async () => {
    // apps:app2 was pushed from the app2 layout; compare with the layout directly
    const strategies = ['--chunker', 'layer,file,cdc:16k/64k/256k'];
    type A = { strategies: Array<{ strategy: string; storedBytes: number; uniqueBytes: number; units: number }> };
    const remote = await cliJson<A>(['analyze', `docker://${reg.host}/apps:app2`, ...strategies]);
    const local = await cliJson<A>(['analyze', `oci:${image('app2')}:latest`, ...strategies]);
    const figures = (x: A) => x.strategies.map(({ strategy, storedBytes, uniqueBytes, units }) => ({ strategy, storedBytes, uniqueBytes, units }));
    expect(figures(remote)).toEqual(figures(local));
    expect(figures(remote).length).toBe(3);
  });

  it('says clearly what is missing', async () => {
    const noRepo = await cli(['inspect', `docker://${reg.host}/nothing/here:1`]);
    expect(noRepo.code).toBe(3);
    expect(noRepo.stderr).toContain(`${reg.host}/nothing/here`);
    const noTag = await cli(['restore', `docker://${reg.host}/apps:no-such-tag`, path.join(work, 'x')]);
    expect(noTag.code).toBe(3);
    expect(noTag.stderr).toMatch(/not found/);
    const bad = await cli(['inspect', 'docker://127.0.0.1:1/apps:app', '--retries', '0']);
    expect(bad.code).toBe(9);
    expect(bad.stderr).toContain('127.0.0.1:1');
    const digestDest = await cli(['convert', `docker://${reg.host}/apps:app`, `docker://${reg.host}/apps@${originalDigest}`]);
    expect(digestDest.code).toBe(2);
    // a layer blob the registry lost: a clear error naming it (no hang, no crash)
    await reg.push(`oci:${image('base')}:latest`, 'broken:1');
    const m = JSON.parse((await must('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/broken:1`])).stdout);
    const layer = m.layers[0].digest as string;
    await must('curl', ['-fsS', '-X', 'DELETE', `http://${reg.host}/v2/broken/blobs/${layer}`]);
    const lost = await cli(['convert', `docker://${reg.host}/broken:1`, `oci:${path.join(work, 'broken-out')}:x`]);
    expect(lost.code).toBe(3);
    expect(lost.stderr).toContain(layer);
    expect(lost.stderr).toContain(`${reg.host}/broken`);
  });
});

describe('registry auth (htpasswd)', () => {
  let sec: Registry;
  const user = 'tester';
  const password = 'pa55:word';
  beforeAll(async () => {
    sec = await new Registry(path.join(work, 'secure'), { user, password }).start();
    await sec.push(`oci:${image('base')}:latest`, 'secure/base:1');
  });
  afterAll(async () => {
    await sec?.stop();
  });
  const env = (extra: Record<string, string>) => ({
    env: { ...process.env, HOME: path.join(work, 'nohome'), DOCKER_CONFIG: '', REGISTRY_AUTH_FILE: '', XDG_RUNTIME_DIR: '', ...extra },
  });

  it('refuses clearly without credentials or with a wrong password', async () => {
    const anon = await cli(['inspect', `docker://${sec.host}/secure/base:1`], env({}));
    expect(anon.code).toBe(10);
    expect(anon.stderr).toContain(sec.host);
    expect(anon.stderr).toMatch(/requires a login/);
    const wrong = await cli(['inspect', `docker://${sec.host}/secure/base:1`, '--creds', `${user}:nope`], env({}));
    expect(wrong.code).toBe(10);
    expect(wrong.stderr).toMatch(/authentication failed for user tester/);
  });

  it('converts in place with --creds', async () => {
    const r = await cli(
      ['convert', `docker://${sec.host}/secure/base:1`, `docker://${sec.host}/secure/base:1`, '--creds', `${user}:${password}`, '--json'],
      env({}),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(await sec.tagDigest('secure/base:1')).toBe((JSON.parse(r.stdout) as Converted).index.digest);
  });

  it('reads credentials from a Docker config.json, an --authfile and a credential helper', async () => {
    const auth = Buffer.from(`${user}:${password}`).toString('base64');
    const dockerDir = path.join(work, 'docker-config');
    fs.mkdirSync(dockerDir, { recursive: true });
    fs.writeFileSync(path.join(dockerDir, 'config.json'), JSON.stringify({ auths: { [sec.host]: { auth } } }));
    const viaConfig = await cli(['inspect', `docker://${sec.host}/secure/base:1`, '--json'], env({ DOCKER_CONFIG: dockerDir }));
    expect(viaConfig.code, viaConfig.stderr).toBe(0);

    const authfile = path.join(work, 'auth.json');
    fs.writeFileSync(authfile, JSON.stringify({ auths: { [`https://${sec.host}`]: { auth } } }));
    const viaFile = await cli(['inspect', `docker://${sec.host}/secure/base:1`, '--authfile', authfile], env({}));
    expect(viaFile.code, viaFile.stderr).toBe(0);

    // docker-credential-<name> get: reads the server on stdin, prints {Username, Secret}
    const bin = path.join(work, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    const asked = path.join(work, 'helper-asked');
    const helper = path.join(bin, 'docker-credential-octest');
    fs.writeFileSync(helper, `#!/bin/sh\n[ "$1" = get ] || exit 1\ncat > ${asked}\nprintf '{"ServerURL":"x","Username":"${user}","Secret":"${password}"}'\n`, {
      mode: 0o755,
    });
    const helperCfg = path.join(work, 'helper-config');
    fs.mkdirSync(helperCfg, { recursive: true });
    fs.writeFileSync(path.join(helperCfg, 'config.json'), JSON.stringify({ credHelpers: { [sec.host]: 'octest' } }));
    const viaHelper = await cli(['inspect', `docker://${sec.host}/secure/base:1`], env({ DOCKER_CONFIG: helperCfg, PATH: `${bin}:${process.env.PATH}` }));
    expect(viaHelper.code, viaHelper.stderr).toBe(0);
    expect(fs.readFileSync(asked, 'utf8')).toBe(sec.host);
    // credsStore works the same way, for every registry
    fs.writeFileSync(path.join(helperCfg, 'config.json'), JSON.stringify({ credsStore: 'octest' }));
    const viaStore = await cli(['inspect', `docker://${sec.host}/secure/base:1`], env({ DOCKER_CONFIG: helperCfg, PATH: `${bin}:${process.env.PATH}` }));
    expect(viaStore.code, viaStore.stderr).toBe(0);
  });
});

describe('registry auth (bearer tokens from a token server)', () => {
  let tokens: TokenServer;
  let treg: Registry;
  const user = 'builder';
  const password = 't0ken-pass';
  beforeAll(async () => {
    tokens = await new TokenServer(path.join(work, 'tokens'), { [user]: password }, { 'rt-4711': user }).start();
    treg = await new Registry(path.join(work, 'token-reg'), { user, password }, tokens.registryAuth()).start();
    await treg.push(`oci:${image('base')}:latest`, 'tok/base:1');
  });
  afterAll(async () => {
    await treg?.stop();
    await tokens?.stop();
  });

  it('gets pull, push and mount scopes and converts across repositories', async () => {
    const noCreds = await cli(['inspect', `docker://${treg.host}/tok/base:1`], {
      env: { ...process.env, HOME: path.join(work, 'nohome'), DOCKER_CONFIG: '' },
    });
    expect(noCreds.code).toBe(10);
    expect(noCreds.stderr).toContain(treg.host);
    tokens.reset();
    const r = await cli(['convert', `docker://${treg.host}/tok/base:1`, `docker://${treg.host}/tok/chunked:1`, '--creds', `${user}:${password}`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Converted;
    expect(out.transfer.blobsMounted).toBe(out.layers);
    const asked = tokens.asked().map((a) => a.scopes.sort().join(' '));
    expect(asked).toContain('repository:tok/base:pull');
    expect(asked).toContain('repository:tok/chunked:pull,push');
    expect(asked).toContain('repository:tok/base:pull repository:tok/chunked:pull,push'); // the mount
    expect(tokens.asked().every((a) => a.user === user && a.ok)).toBe(true);
    const wrong = await cli(['inspect', `docker://${treg.host}/tok/chunked:1`, '--creds', `${user}:nope`]);
    expect(wrong.code).toBe(10);
    expect(wrong.stderr).toMatch(/token server refused user builder/);
    const rootfs = path.join(work, 'restored-token');
    const rr = await cli(['restore', `docker://${treg.host}/tok/chunked:1`, rootfs, '--creds', `${user}:${password}`]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(fs.existsSync(path.join(rootfs, 'etc', 'debian_version'))).toBe(true);
  });

  it('trades an identity token from the auth file for access tokens (OAuth2 refresh grant)', async () => {
    const cfg = path.join(work, 'identity-config');
    fs.mkdirSync(cfg, { recursive: true });
    const entry = { auth: Buffer.from(`${user}:`).toString('base64'), identitytoken: 'rt-4711' };
    fs.writeFileSync(path.join(cfg, 'config.json'), JSON.stringify({ auths: { [treg.host]: entry } }));
    tokens.reset();
    const r = await cli(['inspect', `docker://${treg.host}/tok/chunked:1`, '--json'], { env: { ...process.env, DOCKER_CONFIG: cfg } });
    expect(r.code, r.stderr).toBe(0);
    expect(tokens.asked().some((a) => a.grant === 'refresh_token' && a.user === user && a.ok)).toBe(true);
    fs.writeFileSync(path.join(cfg, 'config.json'), JSON.stringify({ auths: { [treg.host]: { ...entry, identitytoken: 'rt-wrong' } } }));
    const bad = await cli(['inspect', `docker://${treg.host}/tok/chunked:1`], { env: { ...process.env, DOCKER_CONFIG: cfg } });
    expect(bad.code).toBe(10);
    expect(bad.stderr).toMatch(/refused the identity token/);
  });
});

describe('a registry behind a faulty network', () => {
  let proxy: FaultProxy;
  beforeAll(async () => {
    proxy = await new FaultProxy(reg.host, () => 'pass').start();
  });
  afterAll(async () => {
    await proxy?.stop();
  });

  it('completes a conversion through resets, 5xx, 429, slow answers, hangs and cut bodies', async () => {
    // every kind of fault at least once, on every kind of request, plus periodic resets and slow answers
    const faultyPlan = () => {
      const seen = new Map<string, number>();
      const first: Record<string, Record<number, Fault>> = {
        'GET blob': { 1: 'truncate', 3: 'reset' },
        'GET manifest': { 1: '503', 2: 'hang' },
        'HEAD blob': { 1: '500' },
        'POST upload': { 1: '429' },
        'PUT upload': { 1: 'reset' },
        'PATCH upload': { 1: 'reset' },
        'PUT manifest': { 1: '500' },
      };
      return (req: IncomingMessage, n: number): Fault => {
        const url = req.url ?? '';
        const kind = `${req.method} ${/\/blobs\/uploads\//.test(url) ? 'upload' : /\/blobs\//.test(url) ? 'blob' : /\/manifests\//.test(url) ? 'manifest' : 'other'}`;
        const c = (seen.get(kind) ?? 0) + 1;
        seen.set(kind, c);
        return first[kind]?.[c] ?? (n % 9 === 0 ? 'reset' : n % 5 === 0 ? 'slow' : 'pass');
      };
    };
    proxy.plan = faultyPlan();
    const src = `docker://${proxy.host}/apps:app2`;
    const dst = `docker://${proxy.host}/faulty/app:1`;
    const r = await cli(['convert', src, dst, '--json', '--retries', '8', '--timeout', '2', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Converted;
    expect(out.transfer.retries).toBeGreaterThan(0);
    for (const f of ['reset', '500', 'truncate', '503', '429', 'slow', 'hang'] as Fault[]) expect(proxy.faults[f] ?? 0, f).toBeGreaterThan(0);
    // what landed is complete and correct (checked directly against the registry)
    proxy.plan = () => 'pass';
    const v = await cli(['verify', `docker://${reg.host}/faulty/app:1`]);
    expect(v.code, v.stderr).toBe(0);
    expect(await reg.tagDigest('faulty/app:1')).toBe(out.index.digest);
    // restore through the faulty proxy too (range reads retried)
    proxy.plan = faultyPlan();
    const rootfs = path.join(work, 'restored-faulty');
    const rr = await cli(['restore', dst, rootfs, '--retries', '8', '--timeout', '2', '--quiet']);
    expect(rr.code, rr.stderr).toBe(0);
  });

  it('fails with a clear error and leaves the tag untouched when the registry keeps failing', async () => {
    await reg.push(`oci:${image('base')}:latest`, 'stuck:1');
    const before = await reg.tagDigest('stuck:1');
    proxy.plan = (req) => (req.method === 'PUT' || req.method === 'PATCH' ? '500' : 'pass');
    const r = await cli(['convert', `docker://${proxy.host}/stuck:1`, `docker://${proxy.host}/stuck:1`, '--retries', '1', '--quiet']);
    expect(r.code).toBe(9);
    expect(r.stderr).toContain(`${proxy.host}/stuck`);
    expect(r.stderr).toMatch(/HTTP 500/);
    proxy.plan = () => 'pass';
    expect(await reg.tagDigest('stuck:1')).toBe(before);
  });

  it('reads from a registry that ignores Range requests (whole blobs, fetched once)', async () => {
    const conv = await cli(['convert', `oci:${image('app')}:latest`, `docker://${reg.host}/norange/app:1`, '--quiet']);
    expect(conv.code, conv.stderr).toBe(0);
    proxy.plan = () => 'norange';
    const rootfs = path.join(work, 'restored-norange');
    const r = await cli(['restore', `docker://${proxy.host}/norange/app:1`, rootfs, '--json', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(proxy.faults.norange ?? 0).toBeGreaterThan(0);
    expect(diffTrees(reference, snapshot(rootfs))).toEqual([]);
    const out = JSON.parse(r.stdout) as { transfer: { bytesDownloaded: number } };
    const info = await cliJson<{ packBytes: number; tocBytes: number; digestTableBytes: number }>(['inspect', `docker://${reg.host}/norange/app:1`]);
    // each pack came whole, once (plus the small documents), not once per range
    expect(out.transfer.bytesDownloaded).toBeGreaterThanOrEqual(info.packBytes);
    expect(out.transfer.bytesDownloaded).toBeLessThan(info.packBytes * 1.05 + info.tocBytes + info.digestTableBytes + (64 << 10));
    proxy.plan = () => 'pass';
  });

  it('refuses bytes that do not match their digests', async () => {
    proxy.plan = () => 'corrupt';
    const r = await cli(['restore', `docker://${proxy.host}/apps:app`, path.join(work, 'restored-corrupt'), '--quiet']);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/does not match|digest mismatch|hashes to/);
    const c = await cli(['convert', `docker://${proxy.host}/apps:app2`, `oci:${path.join(work, 'corrupt-out')}:x`, '--quiet']);
    expect(c.code).toBe(6);
    proxy.plan = () => 'pass';
  });
});

describe('registries off localhost: TLS and plain HTTP', () => {
  // 127.0.0.2 is loopback too, but not "localhost": ocichunk speaks HTTPS to it unless told otherwise
  let tls: Registry;
  let plain: Registry;
  beforeAll(async () => {
    const dir = path.join(work, 'tls');
    fs.mkdirSync(dir, { recursive: true });
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    await selfSignedCert(key, cert, '/CN=127.0.0.2', '-addext', 'subjectAltName=IP:127.0.0.2');
    tls = await new Registry(path.join(dir, 'reg'), undefined, undefined, { address: '127.0.0.2', tls: { cert, key } }).start();
    plain = await new Registry(path.join(work, 'plain-reg'), undefined, undefined, { address: '127.0.0.2' }).start();
    await tls.push(`oci:${image('base')}:latest`, 'base:1');
    await plain.push(`oci:${image('base')}:latest`, 'base:1');
  });
  afterAll(async () => {
    await tls?.stop();
    await plain?.stop();
  });

  it('verifies certificates unless --insecure, and says so', async () => {
    const refused = await cli(['inspect', `docker://${tls.host}/base:1`, '--retries', '0']);
    expect(refused.code).toBe(9);
    expect(refused.stderr).toContain(tls.host);
    expect(refused.stderr).toMatch(/--insecure/);
    const r = await cli(['convert', `docker://${tls.host}/base:1`, `docker://${tls.host}/base:1`, '--insecure', '--json', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(await tls.tagDigest('base:1')).toBe((JSON.parse(r.stdout) as Converted).index.digest);
  });

  it('speaks plain HTTP to other hosts only with --plain-http', async () => {
    const refused = await cli(['inspect', `docker://${plain.host}/base:1`, '--retries', '0']);
    expect(refused.code).toBe(9);
    expect(refused.stderr).toMatch(/--plain-http/);
    const r = await cli(['convert', `docker://${plain.host}/base:1`, `oci:${path.join(work, 'from-plain')}:base`, '--plain-http', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
  });
});
