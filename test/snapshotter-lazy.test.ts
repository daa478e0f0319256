/**
 * Lazy layers through containerd (issue 15's acceptance): Debian's containerd started privately
 * with the ocichunk snapshotter as a proxy plugin, Debian's docker-registry on 127.0.0.1 holding
 * the `py` image converted in place, and Debian's ctr-remote (stargz-snapshotter) as the client:
 * `ctr-remote image rpull` passes each layer's image and digest as labels, the snapshotter mounts
 * the chunked manifest's layers (FUSE) and answers AlreadyExists, so containerd downloads no layer;
 * `ctr run` then runs python3 on overlayfs over those lazy layers. What the registry served is
 * read from its own access log.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Containerd } from './helpers/containerd.js';
import { image, REPO, tmpdir } from './helpers/env.js';
import { Registry, type AccessEntry } from './helpers/registry.js';
import { cli, must } from './helpers/run.js';
import { CtrSession, mountsUnder, SnapshotterProc, settled, snapshotState } from './helpers/snapshotter.js';

let work: string;
let reg: Registry;
let snap: SnapshotterProc;
let ctrd: Containerd;
let cache: string;
let py: string; // converted in place: an index with the original manifest and the chunked one
let app: string; // converted, sharing py's base layer
let plain: string; // never converted
/** compressed bytes of the original py image's layers */
let pyImageBytes = 0;
/** the original py image's layer digests */
let pyLayers: string[] = [];
const PY = ['/usr/bin/python3', '-c', 'import json; print(json.dumps([1]))'];
/** app and app2 have python3-minimal (no json module) */
const PY_MIN = ['/usr/bin/python3', '-c', 'print([1])'];

const session = new CtrSession(
  () => ctrd,
  () => snap,
);
const cid = (name: string) => session.cid(name);
const ctrOk = (args: string[], remote = false) => session.ok(args, remote);
const rpull = (ref: string) => ctrOk(['image', 'rpull', '--snapshotter', 'ocichunk', '--plain-http', ref], true);
const run = (ref: string, name: string, cmd: string[]) => ctrOk(['run', '--snapshotter', 'ocichunk', '--rm', ref, cid(name), ...cmd]);
const snapshotList = () => session.snapshotList();
const stateOf = (root: string) => snapshotState<{ id: string; kind: string; remote?: { chunked: string; layer: number } }>(root);

/** Blob GETs in an access log slice, and the bytes they sent. */
function blobGets(log: AccessEntry[]): { digests: string[]; bytes: number } {
  const gets = log.filter((e) => e.method === 'GET' && /\/blobs\/sha256:/.test(e.path) && e.status < 300);
  return { digests: gets.map((e) => /(sha256:[0-9a-f]{64})/.exec(e.path)![1]), bytes: gets.reduce((a, e) => a + e.bytes, 0) };
}
const served = (log: AccessEntry[]) => log.filter((e) => e.method === 'GET' && e.status < 300).reduce((a, e) => a + e.bytes, 0);

/** A process's resident memory now and at its peak (MiB): the snapshotter's by default. */
function rss(pid = snap.proc!.pid!): { now: number; peak: number } {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st)![1]);
  return { now: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

function cacheFiles(): Set<string> {
  const out = new Set<string>();
  const top = path.join(cache, 'sha256');
  if (!fs.existsSync(top)) return out;
  for (const d of fs.readdirSync(top)) for (const f of fs.readdirSync(path.join(top, d))) out.add(f);
  return out;
}

beforeAll(async () => {
  work = tmpdir('snapshotter-lazy');
  cache = path.join(work, 'cache');
  reg = await new Registry(path.join(work, 'registry')).start();
  await reg.push(`oci:${image('py')}:latest`, 'py:1');
  await reg.push(`oci:${image('app')}:latest`, 'app:1');
  await reg.push(`oci:${image('app2')}:latest`, 'plain:1');
  for (const name of ['py:1', 'app:1']) {
    const conv = await cli(['convert', `docker://${reg.host}/${name}`, `docker://${reg.host}/${name}`, '--quiet']);
    if (conv.code !== 0) throw new Error(conv.stderr);
  }
  py = `${reg.host}/py:1`;
  app = `${reg.host}/app:1`;
  plain = `${reg.host}/plain:1`;
  const layout = image('py');
  const idx = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const man = JSON.parse(fs.readFileSync(path.join(layout, 'blobs', 'sha256', idx.manifests[0].digest.split(':')[1]), 'utf8')) as {
    layers: Array<{ digest: string; size: number }>;
  };
  pyLayers = man.layers.map((l) => l.digest);
  pyImageBytes = man.layers.reduce((a, l) => a + l.size, 0);
  snap = new SnapshotterProc(path.join(work, 'snap-root'), path.join(work, 'snap.sock'), work);
  await snap.start(['--cache', cache]);
  ctrd = new Containerd(path.join(work, 'containerd'), snap.containerdConfig());
  fs.mkdirSync(ctrd.dir);
  await ctrd.start();
});

afterAll(async () => {
  if (process.env.OCICHUNK_KEEP_LOG && snap) fs.copyFileSync(snap.log, process.env.OCICHUNK_KEEP_LOG);
  if (ctrd) await session.removeAll();
  await ctrd?.stop();
  await snap?.stop();
  // mount processes a failed test left (they outlive the snapshotter by design)
  const images = snap ? path.join(snap.root, 'images') : '';
  for (const f of images && fs.existsSync(images) ? fs.readdirSync(images).filter((x) => x.endsWith('.json')) : []) {
    try {
      process.kill((JSON.parse(fs.readFileSync(path.join(images, f), 'utf8')) as { pid: number }).pid, 'SIGTERM');
    } catch {
      // gone
    }
  }
  // and what their mounts leave when a test failed midway
  if (work) for (const m of mountsUnder(work).reverse()) spawnSync('umount', ['-l', m]);
  await reg?.stop();
});

describe('containerd with the ocichunk snapshotter: lazy layers', () => {
  let pyRunBytes = 0;

  it('ctr-remote rpull + ctr run: python3 prints [1]; no original layer blob fetched, ≤ 15% of the image served', async () => {
    const idle = rss();
    const mark = reg.logSize();
    await rpull(py);
    // every layer is a remote snapshot, committed at once
    const st = stateOf(snap.root);
    expect(Object.values(st).filter((r) => r.remote).length).toBe(pyLayers.length);
    expect(snap.logText()).toMatch(/layer 0 of .* is served lazily/);
    const out = await run(py, 'c1', PY);
    expect(out).toBe('[1]\n');
    const log = reg.accessLog(mark);
    const blobs = blobGets(log);
    for (const l of pyLayers) expect(blobs.digests, `original layer ${l} fetched`).not.toContain(l);
    pyRunBytes = served(log);
    const mem = rss();
    const images = path.join(snap.root, 'images');
    const mountPid = (JSON.parse(fs.readFileSync(path.join(images, fs.readdirSync(images).find((f) => f.endsWith('.json'))!), 'utf8')) as { pid: number }).pid;
    const mountMem = rss(mountPid);
    console.log(
      `lazy containerd run: registry served ${pyRunBytes} B in ${log.length} requests = ${((pyRunBytes / pyImageBytes) * 100).toFixed(1)}% of the image (${pyImageBytes} B); snapshotter RSS idle ${idle.now.toFixed(0)} MiB, now ${mem.now.toFixed(0)} MiB, peak ${mem.peak.toFixed(0)} MiB; the image's mount process RSS ${mountMem.now.toFixed(0)} MiB, peak ${mountMem.peak.toFixed(0)} MiB`,
    );
    expect(pyRunBytes).toBeGreaterThan(0);
    expect(pyRunBytes).toBeLessThanOrEqual(0.15 * pyImageBytes);
    // the layers: a FUSE mount of the chunked manifest (a process of its own), bound into the snapshots
    expect(mountsUnder(path.join(snap.root, 'images')).length).toBe(1);
    expect(mountsUnder(path.join(snap.root, 'snapshots')).length).toBe(pyLayers.length);
    expect(mem.peak).toBeLessThan(100);
    expect(mountMem.peak).toBeLessThan(125);
  });

  it('a second container of the same image fetches nothing', async () => {
    const mark = reg.logSize();
    expect(await run(py, 'c2', PY)).toBe('[1]\n');
    expect(blobGets(reg.accessLog(mark)).digests).toEqual([]);
  });

  it('a second image sharing the base fetches only chunks that are not in the cache', async () => {
    const before = cacheFiles();
    const mark = reg.logSize();
    await rpull(app);
    expect(await run(app, 'c-app', PY_MIN)).toBe('[1]\n');
    const log = reg.accessLog(mark);
    const bytes = served(log);
    const after = cacheFiles();
    const added = [...after].filter((f) => !before.has(f));
    for (const f of before) expect(after.has(f)).toBe(true);
    console.log(`second image: registry served ${bytes} B (first image: ${pyRunBytes} B); ${added.length} chunks added to the cache`);
    // its own layer: mounted from its own chunked manifest; the base: py's snapshot (same chain id)
    expect(bytes).toBeLessThan(pyRunBytes);
    const packGets = log.filter((e) => e.method === 'GET' && e.status === 206);
    if (added.length === 0) expect(packGets).toEqual([]);
  });

  it('an unconverted image runs through the same snapshotter (containerd applies its layers)', async () => {
    await rpull(plain);
    expect(await run(plain, 'c-plain', PY_MIN)).toBe('[1]\n');
    expect(snap.logText()).toMatch(/plain:1 has no chunked manifest: containerd applies layer/);
  });

  it('survives SIGTERM and kill -9 between runs: the same snapshots, new containers run, a running container keeps reading', async () => {
    await settled(async () => (await snapshotList()).every((l) => l.endsWith(' Committed')));
    const before = await snapshotList();
    // a container that runs across the restarts
    await ctrOk(['run', '-d', '--snapshotter', 'ocichunk', py, cid('long'), 'sleep', '600']);
    expect(await ctrOk(['task', 'exec', '--exec-id', 'e1', cid('long'), ...PY])).toBe('[1]\n');
    const withLong = await snapshotList();
    expect(withLong.filter((l) => !before.includes(l))).toEqual([expect.stringMatching(new RegExp(`^${cid('long')} \\S+ Active$`))]);
    const images = path.join(snap.root, 'images');
    const fuse = mountsUnder(images);
    expect(fuse.length).toBe(2); // py and app

    expect(await snap.stop('SIGTERM')).toBe(0);
    expect(mountsUnder(images)).toEqual(fuse); // the mount processes outlive the snapshotter
    await snap.start(['--cache', cache]);
    await session.reconnected();
    expect(snap.logText()).toMatch(/adopted 2 running image mount\(s\)/);
    expect(await snapshotList()).toEqual(withLong);
    expect(await run(py, 'c3', PY)).toBe('[1]\n');
    // files it never read before
    expect(await ctrOk(['task', 'exec', '--exec-id', 'e2', cid('long'), '/usr/bin/python3', '-c', 'import wave, csv; print(2)'])).toBe('2\n');

    expect(await snap.stop('SIGKILL')).toBe('SIGKILL');
    await snap.start(['--cache', cache]);
    await session.reconnected();
    expect(await snapshotList()).toEqual(withLong);
    expect(mountsUnder(images)).toEqual(fuse);
    expect(await run(py, 'c4', PY)).toBe('[1]\n');
    expect(await ctrOk(['task', 'exec', '--exec-id', 'e3', cid('long'), '/usr/bin/python3', '-c', 'import email.parser, zipfile; print(3)'])).toBe('3\n');

    // a mount process killed: its image is mounted again at the next start
    const pids = fs
      .readdirSync(images)
      .filter((f) => f.endsWith('.json'))
      .map((f) => (JSON.parse(fs.readFileSync(path.join(images, f), 'utf8')) as { pid: number }).pid);
    expect(pids.length).toBe(2);
    process.kill(pids[0], 'SIGKILL');
    await settled(() => !fs.existsSync(`/proc/${pids[0]}`));
    expect(await snap.stop('SIGTERM')).toBe(0);
    await snap.start(['--cache', cache]);
    await session.reconnected();
    expect(snap.logText()).toMatch(/detached \d+ mount\(s\) left under .* by mount processes that are gone/);
    expect(await run(py, 'c5', PY)).toBe('[1]\n');
    expect(await run(app, 'c6', PY_MIN)).toBe('[1]\n');

    await session.removeContainer(cid('long'));
    await settled(async () => (await snapshotList()).length === before.length);
    expect(await snapshotList()).toEqual(before);
  });

  // last: it breaks a pack of py in the registry
  it('a tampered chunk in the registry fails the read inside the container with EIO', async () => {
    const target = '/usr/lib/python3.11/http/server.py';
    const code = `
      import { LazyImage } from ${JSON.stringify(path.join(REPO, 'dist', 'lazy', 'reader.js'))};
      const img = await LazyImage.open(${JSON.stringify(`docker://${py}`)}, { cacheDir: false });
      const n = img.tree.lookup(${JSON.stringify(target)});
      const frames = new Set(n.chunks.map((c) => img.image.toc.chunks[c].frame));
      const { frame: fi } = img.image.toc.chunks[n.chunks[0]];
      const { pack: pi, offset: off, compressedLength: clen } = img.image.toc.frames[fi];
      const ids = img.image.toc.chunks.flatMap((c, i) => (frames.has(c.frame) ? [i] : []));
      const chunks = await img.chunkDigests(ids);
      console.log(JSON.stringify({ pack: img.image.toc.packs[pi], off, clen, chunks }));
      await img.close();`;
    const where = JSON.parse((await must(process.execPath, ['--input-type=module', '-e', code])).stdout) as {
      pack: string;
      off: number;
      clen: number;
      chunks: string[];
    };
    // not cached (nothing read it yet; made sure)
    for (const c of where.chunks) fs.rmSync(path.join(cache, 'sha256', c.slice(0, 2), c), { force: true });
    reg.flipBytes(where.pack, where.off + Math.floor(where.clen / 2));
    const out = await run(py, 'c-tamper', ['/bin/sh', '-c', `cat ${target} > /tmp/got 2>/tmp/err; echo rc=$?; cat /tmp/err; wc -c < /tmp/got`]);
    expect(out).toMatch(/^rc=1\n.*Input\/output error\n0\n$/);
    for (const c of where.chunks) expect(fs.existsSync(path.join(cache, 'sha256', c.slice(0, 2), c))).toBe(false);
  });

  it('leaves no FUSE mount, bind mount or directory after the images and snapshots are removed', async () => {
    await ctrOk(['images', 'rm', '--sync', py, app, plain]);
    await settled(async () => (await snapshotList()).length === 0 && Object.keys(stateOf(snap.root)).length === 0, 200);
    expect(await snapshotList()).toEqual([]);
    expect(stateOf(snap.root)).toEqual({});
    expect(fs.readdirSync(path.join(snap.root, 'snapshots'))).toEqual([]);
    expect(fs.readdirSync(path.join(snap.root, 'images'))).toEqual([]);
    expect(mountsUnder(work)).toEqual([]);
  });
});
