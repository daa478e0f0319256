/**
 * `ocichunk snapshotter` with a real containerd: Debian's containerd started privately (own root,
 * state and socket) with the snapshotter registered as a proxy plugin, images pulled from Debian's
 * docker-registry on 127.0.0.1 (one converted in place, so its tag is an index with the chunked
 * manifest beside the original; one not converted), unpacked and run through the snapshotter.
 * Restarts (SIGTERM and kill -9) between runs and during a burst of changes; cleanup leaves no
 * mount and no directory. `ctr images pull` passes no image labels: every layer takes the ordinary
 * path, containerd downloads and applies it (lazy layers: snapshotter-lazy.test.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Containerd } from './helpers/containerd.js';
import { image, tmpdir } from './helpers/env.js';
import { Registry } from './helpers/registry.js';
import { cli } from './helpers/run.js';
import { CtrSession, mountsUnder, SnapshotterProc, settled, snapshotState } from './helpers/snapshotter.js';
import { SnapshotsClient } from './helpers/snapshots-client.js';

let work: string;
let reg: Registry;
let snap: SnapshotterProc;
let ctrd: Containerd;
let converted: string; // an index: the original manifest and the chunked one
let plain: string; // an image as any registry has it
const CMD = ['/bin/sh', '-c', 'cat /etc/debian_version; echo hello > /tmp/f; cat /tmp/f'];

const session = new CtrSession(
  () => ctrd,
  () => snap,
);
const ctrOk = (args: string[]) => session.ok(args);
const snapshotList = () => session.snapshotList();
const cid = (name: string) => session.cid(name);
const stateOf = (root: string) => snapshotState(root);

beforeAll(async () => {
  work = tmpdir('snapshotter');
  reg = await new Registry(path.join(work, 'registry')).start();
  await reg.push(`oci:${image('app')}:latest`, 'apps:app');
  const conv = await cli(['convert', `docker://${reg.host}/apps:app`, `docker://${reg.host}/apps:app`, '--quiet']);
  if (conv.code !== 0) throw new Error(conv.stderr);
  converted = `${reg.host}/apps:app`;
  await reg.push(`oci:${image('app2')}:latest`, 'apps:plain');
  plain = `${reg.host}/apps:plain`;
  snap = new SnapshotterProc(path.join(work, 'snap-root'), path.join(work, 'snap.sock'), work);
  await snap.start();
  ctrd = new Containerd(path.join(work, 'containerd'), snap.containerdConfig());
  fs.mkdirSync(ctrd.dir);
  await ctrd.start();
});

afterAll(async () => {
  if (ctrd) await session.removeAll();
  await ctrd?.stop();
  await snap?.stop();
  await reg?.stop();
});

describe('containerd with the ocichunk snapshotter (ordinary layers)', () => {
  it('is registered as a proxy snapshotter', async () => {
    expect(await ctrOk(['plugins', 'ls'])).toMatch(/io\.containerd\.snapshotter\.v1\s+ocichunk\s+-\s+ok/);
  });

  it('pulls and unpacks a converted image (an index with the chunked manifest) and runs a program from it', async () => {
    await ctrOk(['images', 'pull', '--plain-http', '--snapshotter', 'ocichunk', converted]);
    const out = await ctrOk(['run', '--rm', '--snapshotter', 'ocichunk', converted, cid('c1'), ...CMD]);
    expect(out).toMatch(/^\d+(\.\d+)?\nhello\n$/);
    // every layer is one committed snapshot, chained; the container's snapshot is gone with --rm
    const ls = await snapshotList();
    expect(ls.length).toBeGreaterThan(0);
    expect(ls.every((l) => l.endsWith(' Committed'))).toBe(true);
    await settled(() => Object.keys(stateOf(snap.root)).length === ls.length);
    const st = stateOf(snap.root);
    expect(Object.values(st).every((r) => r.kind === 'committed')).toBe(true);
    expect(Object.keys(st).length).toBe(ls.length);
    // the snapshotter saw containerd's calls
    expect(snap.logText()).toMatch(/Prepare "ocichunk-test\/\d+\/extract-/);
    // the container's snapshot goes with containerd's garbage collection, after ctr returns
    const removed = new RegExp(`Remove "ocichunk-test/\\d+/${cid('c1')}": ok`);
    await settled(() => removed.test(snap.logText()));
    expect(snap.logText()).toMatch(removed);
  });

  it('runs an image that was never converted', async () => {
    await ctrOk(['images', 'pull', '--plain-http', '--snapshotter', 'ocichunk', plain]);
    const out = await ctrOk(['run', '--rm', '--snapshotter', 'ocichunk', plain, cid('c-plain'), ...CMD]);
    expect(out).toMatch(/hello\n$/);
  });

  it('survives restarts (SIGTERM, then kill -9): the same snapshots, new containers run, a running one keeps its files', async () => {
    await settled(async () => (await snapshotList()).every((l) => l.endsWith(' Committed')));
    const before = await snapshotList();
    // a container that runs across the restarts
    await ctrOk(['run', '-d', '--snapshotter', 'ocichunk', converted, cid('long'), 'sleep', '600']);
    const withLong = await snapshotList();
    expect(withLong.filter((l) => !before.includes(l))).toEqual([expect.stringMatching(new RegExp(`^${cid('long')} \\S+ Active$`))]);

    expect(await snap.stop('SIGTERM')).toBe(0);
    expect(fs.existsSync(snap.sock)).toBe(false);
    expect(snap.logText()).toMatch(/SIGTERM: stopping\n.*stopped\n/);
    await snap.start();
    await session.reconnected();
    expect(await snapshotList()).toEqual(withLong);
    expect(await ctrOk(['run', '--rm', '--snapshotter', 'ocichunk', converted, cid('c2'), ...CMD])).toMatch(/hello\n$/);

    const beforeKill = await snapshotList();
    expect(await snap.stop('SIGKILL')).toBe('SIGKILL');
    expect(fs.existsSync(snap.sock)).toBe(true); // left behind, replaced at start
    expect(fs.existsSync(path.join(snap.root, 'lock'))).toBe(true); // a dead holder's: taken over
    await snap.start();
    // containerd's connection to the killed server broke without a goodbye: its calls fail
    // (Unavailable) until its reconnect backoff (at most a few seconds) dials the new one
    const t0 = Date.now();
    await session.reconnected();
    expect(Date.now() - t0).toBeLessThan(15000);
    expect(await snapshotList()).toEqual(beforeKill);
    expect(await ctrOk(['run', '--rm', '--snapshotter', 'ocichunk', converted, cid('c3'), ...CMD])).toMatch(/hello\n$/);
    // the container started before both restarts still reads and writes its files
    expect(
      await ctrOk(['task', 'exec', '--exec-id', 'e1', cid('long'), '/bin/sh', '-c', 'cat /etc/debian_version >/dev/null && echo ok > /tmp/g && cat /tmp/g']),
    ).toBe('ok\n');
    await session.removeContainer(cid('long'));
    await settled(async () => (await snapshotList()).length === before.length);
    expect(await snapshotList()).toEqual(before);
  });

  it('leaves no mount and no directory after the images, containers and snapshots are removed', async () => {
    await ctrOk(['images', 'rm', '--sync', converted, plain]);
    expect(await ctrOk(['containers', 'ls', '-q'])).toBe('');
    // containerd's garbage collection removed every snapshot through the snapshotter (Remove, then Cleanup)
    await settled(async () => (await snapshotList()).length === 0 && Object.keys(stateOf(snap.root)).length === 0);
    expect(await snapshotList()).toEqual([]);
    expect(stateOf(snap.root)).toEqual({});
    expect(fs.readdirSync(path.join(snap.root, 'snapshots'))).toEqual([]);
    expect(mountsUnder(work)).toEqual([]);
    expect(snap.logText()).toMatch(/Cleanup : ok/);
  });
});

describe('the snapshotter alone, killed during a burst of changes', () => {
  it('keeps every acknowledged change and nothing torn, three kills in a row', async () => {
    const dir = tmpdir('snapshotter-kill');
    const p = new SnapshotterProc(path.join(dir, 'root'), path.join(dir, 'snap.sock'), dir);
    /** names the snapshotter acknowledged as existing, with their kind (by the client's account) */
    const acked = new Map<string, string>();
    /** names the call in flight at the kill touches: either outcome is right for them */
    let inFlight: string[] = [];
    let seq = 0;
    try {
      for (let round = 0; round < 3; round++) {
        await p.start();
        const c = new SnapshotsClient(p.sock);
        const listed = new Map((await c.list()).infos.map((i) => [i.name, i.kind === 3 ? 'committed' : 'active']));
        for (const [n, k] of acked) if (!inFlight.includes(n)) expect(listed.get(n), n).toBe(k);
        for (const n of listed.keys()) if (!inFlight.includes(n)) expect(acked.has(n), n).toBe(true);
        acked.clear();
        for (const [n, k] of listed) acked.set(n, k);
        // every record has its directory, every directory a record
        const st = stateOf(p.root);
        expect(fs.readdirSync(path.join(p.root, 'snapshots')).sort()).toEqual(
          Object.values(st)
            .map((r) => r.id)
            .sort(),
        );
        // a burst of prepare / commit / remove, one call at a time, killed at a random moment
        const start = seq;
        const burst = (async () => {
          for (;;) {
            seq++;
            const parent = [...acked].filter(([, k]) => k === 'committed').at(-1)?.[0] ?? '';
            const [k, n] = [`k${seq}`, `c${seq}`];
            inFlight = [k];
            await c.prepare(k, parent);
            acked.set(k, 'active');
            inFlight = [k, n];
            await c.commit(n, k);
            acked.delete(k);
            acked.set(n, 'committed');
            if (seq % 3 === 0) {
              inFlight = [n]; // the newest layer: no children
              await c.remove(n);
              acked.delete(n);
            }
            inFlight = [];
          }
        })().catch(() => undefined); // the connection dies with the process
        await new Promise((r) => setTimeout(r, 300 + Math.random() * 700));
        expect(await p.stop('SIGKILL')).toBe('SIGKILL');
        await burst;
        c.close();
        expect(seq - start).toBeGreaterThan(3);
      }
      await p.start();
      const c = new SnapshotsClient(p.sock);
      expect((await c.list()).infos.length).toBeGreaterThan(0);
      c.close();
    } finally {
      await p.stop();
    }
  });
});
