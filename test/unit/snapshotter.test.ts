/**
 * Unit tier: the snapshotter's semantics as containerd's overlayfs snapshotter has them (its
 * `snapshots/storage` and `snapshots/overlay` at v1.6.20), over the real gRPC wire API on a unix
 * socket — no containerd, no root: the mounts are only returned, never performed. Also the state
 * file's recovery (torn temp file, leftover directories, a dead holder's lock), containerd's filter
 * syntax, and the LayerProvider seam with a fake provider.
 */
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { matcher, parseFilter } from '../../src/snapshotter/filters.js';
import type { LayerProvider } from '../../src/snapshotter/layers.js';
import { KIND } from '../../src/snapshotter/proto.js';
import { SnapshotterServer } from '../../src/snapshotter/server.js';
import { SnapshotStore } from '../../src/snapshotter/store.js';
import { tmpdir } from '../helpers/env.js';
import { SnapshotsClient, statusOf } from '../helpers/snapshots-client.js';

const INDEX_OFF = fs.existsSync('/sys/module/overlay/parameters/index') ? ['index=off'] : [];

let open: { server?: SnapshotterServer; client?: SnapshotsClient }[] = [];
afterEach(async () => {
  for (const o of open) {
    o.client?.close();
    await o.server?.stop();
  }
  open = [];
});

async function serve(root: string, layers?: LayerProvider) {
  const sock = path.join(path.dirname(root), `${path.basename(root)}.sock`);
  const server = await SnapshotterServer.start({ root, address: sock, layers });
  const client = new SnapshotsClient(sock);
  const o = { server, client };
  open.push(o);
  return { server, client, sock, fsOf: (id: string) => path.join(root, 'snapshots', id, 'fs') };
}

/** The snapshot id behind a key (from the state file). */
function idOf(root: string, key: string): string {
  return JSON.parse(fs.readFileSync(path.join(root, 'state.json'), 'utf8')).snapshots[key].id;
}

describe('snapshotter semantics (gRPC)', () => {
  it('prepare, commit, views and their mounts, as the overlayfs snapshotter', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const { client: c, fsOf } = await serve(root);
    // no parent: a bind mount of the upper dir
    const m0 = await c.prepare('ex-1', '', { 'containerd.io/snapshot.ref': 'l1', keep: 'x' });
    const id1 = idOf(root, 'ex-1');
    expect(m0).toEqual([{ type: 'bind', source: fsOf(id1), target: '', options: ['rw', 'rbind'] }]);
    expect(fs.statSync(fsOf(id1)).mode & 0o7777).toBe(0o755);
    expect(fs.statSync(path.join(root, 'snapshots', id1, 'work')).mode & 0o7777).toBe(0o711);
    fs.writeFileSync(path.join(fsOf(id1), 'a'), 'x'.repeat(10000));
    expect(await c.mounts('ex-1')).toEqual(m0);
    const active = await c.stat('ex-1');
    expect(active).toMatchObject({ name: 'ex-1', parent: '', kind: KIND.ACTIVE, labels: { 'containerd.io/snapshot.ref': 'l1', keep: 'x' } });
    expect(active.created_at!.seconds).toBeGreaterThan(1.6e9);
    const u = await c.usage('ex-1');
    expect(u.inodes).toBe(2); // fs and a
    expect(u.size).toBeGreaterThanOrEqual(10000);

    // commit: the key is gone, the name has the commit's labels (containerd's storage replaces them), the same directory
    await c.commit('l1', 'ex-1', { 'containerd.io/snapshot.gc': 'y', empty: '' });
    expect(await statusOf(c.stat('ex-1'))).toBe(status.NOT_FOUND);
    expect(await c.stat('l1')).toMatchObject({ name: 'l1', kind: KIND.COMMITTED, labels: { 'containerd.io/snapshot.gc': 'y' } });
    expect(idOf(root, 'l1')).toBe(id1);
    expect(await c.usage('l1')).toEqual(u);
    expect(await statusOf(c.mounts('l1'))).toBe(status.FAILED_PRECONDITION);

    // one parent: overlay with upper and work dirs
    const m2 = await c.prepare('ex-2', 'l1');
    const id2 = idOf(root, 'ex-2');
    expect(m2).toEqual([
      {
        type: 'overlay',
        source: 'overlay',
        target: '',
        options: [...INDEX_OFF, `workdir=${path.join(root, 'snapshots', id2, 'work')}`, `upperdir=${fsOf(id2)}`, `lowerdir=${fsOf(id1)}`],
      },
    ]);
    await c.commit('l2', 'ex-2');
    // a view of one layer: a read-only bind of it; of two: overlay of the lowers only, nearest first
    expect(await c.view('v1', 'l1')).toEqual([{ type: 'bind', source: fsOf(id1), target: '', options: ['ro', 'rbind'] }]);
    expect(await c.view('v2', 'l2')).toEqual([
      { type: 'overlay', source: 'overlay', target: '', options: [...INDEX_OFF, `lowerdir=${fsOf(id2)}:${fsOf(id1)}`] },
    ]);
    expect(await c.view('v0')).toEqual([{ type: 'bind', source: fsOf(idOf(root, 'v0')), target: '', options: ['ro', 'rbind'] }]);
    expect(fs.existsSync(path.join(root, 'snapshots', idOf(root, 'v2'), 'work'))).toBe(false);
    expect((await c.stat('v2')).kind).toBe(KIND.VIEW);
    expect(await c.usage('v2')).toEqual({ size: 0, inodes: 0 });
    // the container's layer: three parents
    const m3 = await c.prepare('c1', 'l2');
    expect(m3[0].options.at(-1)).toBe(`lowerdir=${fsOf(id2)}:${fsOf(id1)}`);
  });

  it('refuses what containerd refuses, with its status codes', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const { client: c } = await serve(root);
    await c.prepare('a');
    await c.commit('base', 'a');
    await c.prepare('b', 'base');
    await c.view('v', 'base');
    expect(await statusOf(c.prepare('b', 'base'))).toBe(status.ALREADY_EXISTS); // key exists
    expect(await statusOf(c.view('base'))).toBe(status.ALREADY_EXISTS); // keys and names share one space
    expect(await statusOf(c.prepare('x', 'nope'))).toBe(status.NOT_FOUND); // no parent
    expect(await statusOf(c.prepare('x', 'b'))).toBe(status.INVALID_ARGUMENT); // parent not committed
    expect(await statusOf(c.view('x', 'v'))).toBe(status.INVALID_ARGUMENT);
    expect(await statusOf(c.prepare(''))).toBe(status.INVALID_ARGUMENT);
    expect(await statusOf(c.commit('base', 'b'))).toBe(status.ALREADY_EXISTS); // name taken
    expect(await statusOf(c.commit('n', 'v'))).toBe(status.FAILED_PRECONDITION); // a view
    expect(await statusOf(c.commit('n', 'base'))).toBe(status.FAILED_PRECONDITION); // committed already
    expect(await statusOf(c.commit('n', 'gone'))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.remove('base'))).toBe(status.FAILED_PRECONDITION); // has children
    expect(await statusOf(c.remove('gone'))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.stat('gone'))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.mounts('gone'))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.usage('gone'))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.update('gone', {}))).toBe(status.NOT_FOUND);
    expect(await statusOf(c.list(['name=="unterminated']))).toBe(status.INVALID_ARGUMENT);
    // nothing of the refused calls left a directory or a record behind
    expect((await c.list()).infos.map((i) => i.name).sort()).toEqual(['b', 'base', 'v']);
    expect(fs.readdirSync(path.join(root, 'snapshots')).length).toBe(3);
    // remove the children, then the parent: directories go with them
    const idB = idOf(root, 'b');
    await c.remove('b');
    expect(fs.existsSync(path.join(root, 'snapshots', idB))).toBe(false);
    await c.remove('v');
    await c.remove('base');
    expect((await c.list()).infos).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'snapshots'))).toEqual([]);
  });

  it('updates labels through the field mask', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const { client: c } = await serve(root);
    await c.prepare('a', '', { x: '1', y: '2' });
    const before = await c.stat('a');
    await new Promise((r) => setTimeout(r, 5));
    let i = await c.update('a', { y: '20', z: '3' }, ['labels.y']);
    expect(i.labels).toEqual({ x: '1', y: '20' });
    expect(i.kind).toBe(KIND.ACTIVE);
    expect(i.updated_at!.seconds * 1e9 + i.updated_at!.nanos).toBeGreaterThan(before.updated_at!.seconds * 1e9 + before.updated_at!.nanos);
    expect(i.created_at).toEqual(before.created_at);
    i = await c.update('a', { z: '3' }, ['labels.x', 'labels.z']); // a key not given is deleted
    expect(i.labels).toEqual({ y: '20', z: '3' });
    i = await c.update('a', { only: 'this' }, ['labels']);
    expect(i.labels).toEqual({ only: 'this' });
    i = await c.update('a', { w: 'v', e: '' }); // no mask: all labels, empty values dropped
    expect(i.labels).toEqual({ w: 'v' });
    expect(await statusOf(c.update('a', { w: 'x' }, ['parent']))).toBe(status.INVALID_ARGUMENT);
    expect((await c.stat('a')).labels).toEqual({ w: 'v' }); // persisted, and the refused update changed nothing
  });

  it('lists with containerd filters, streamed in batches', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const { client: c } = await serve(root);
    await c.prepare('x1');
    await c.commit('sha256:aaa', 'x1', { 'containerd.io/snapshot.ref': 'sha256:aaa' });
    await c.prepare('x2', 'sha256:aaa');
    await c.commit('sha256:bbb', 'x2', { 'containerd.io/snapshot.ref': 'sha256:bbb' });
    await c.prepare('c1', 'sha256:bbb', { 'containerd.io/snapshot/x': 'y' });
    for (let i = 0; i < 150; i++) await c.view(`v${i}`, 'sha256:aaa');
    const names = async (...f: string[]) => (await c.list(f)).infos.map((i) => i.name).sort();
    // what containerd's metadata asks after a remote Prepare
    expect(await names('labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="sha256:aaa"')).toEqual(['sha256:bbb']);
    expect(await names('labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="sha256:zzz"')).toEqual([]);
    expect(await names('kind==committed')).toEqual(['sha256:aaa', 'sha256:bbb']);
    expect(await names('kind==active', 'name==sha256:aaa')).toEqual(['c1', 'sha256:aaa']); // filters OR
    expect(await names('labels."containerd.io/snapshot/x"')).toEqual(['c1']); // presence
    expect(await names('kind!=view,parent!=sha256:aaa')).toEqual(['c1', 'sha256:aaa']);
    expect(await names('name~=/^v1[0-4]$/')).toEqual(['v10', 'v11', 'v12', 'v13', 'v14']);
    const all = await c.list();
    expect(all.infos).toHaveLength(153);
    expect(all.messages).toBe(2);
  });

  it('stops cleanly and serves the same state after a restart', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const a = await serve(root);
    await a.client.prepare('k');
    await a.client.commit('base', 'k', { l: '1' });
    await a.client.prepare('c', 'base', { m: '2' });
    const before = (await a.client.list()).infos;
    a.client.close();
    await a.server.stop();
    expect(fs.existsSync(a.sock)).toBe(false);
    expect(fs.existsSync(path.join(root, 'lock'))).toBe(false);
    const b = await serve(root);
    expect((await b.client.list()).infos).toEqual(before);
    // a new id never reuses an old one
    await b.client.prepare('d', 'base');
    expect(Number(idOf(root, 'd'))).toBeGreaterThan(Number(idOf(root, 'c')));
  });
});

describe('snapshotter state', () => {
  it("recovers from a crash: torn temp file ignored, leftover directories removed, a dead holder's lock taken over", async () => {
    const root = path.join(tmpdir('snap'), 'root');
    let s = await SnapshotStore.open(root);
    await s.prepare('a', undefined);
    await s.commit('base', 'a');
    await s.prepare('b', 'base');
    await s.close();
    const state = fs.readFileSync(path.join(root, 'state.json'), 'utf8');
    // what a kill -9 can leave: a half-written temp state, a made but unrecorded directory, a temp directory, the lock
    fs.writeFileSync(path.join(root, 'state.json.tmp'), state.slice(0, 40));
    fs.mkdirSync(path.join(root, 'snapshots', '99', 'fs'), { recursive: true });
    fs.mkdirSync(path.join(root, 'snapshots', 'new-123', 'fs'), { recursive: true });
    fs.writeFileSync(path.join(root, 'lock'), JSON.stringify({ pid: 2 ** 22 + 7, start: '1', ctx: 'deadbeef' }));
    const events: string[] = [];
    s = await SnapshotStore.open(root, { onEvent: (e) => events.push(e.msg) });
    expect(
      s
        .list()
        .map((i) => i.name)
        .sort(),
    ).toEqual(['b', 'base']);
    expect(fs.readdirSync(path.join(root, 'snapshots')).sort()).toEqual([idOf(root, 'b'), idOf(root, 'base')].sort());
    expect(fs.existsSync(path.join(root, 'state.json.tmp'))).toBe(false);
    expect(events.join('\n')).toMatch(/removed 2 snapshot directories/);
    // the id after a leftover directory's is not handed out while that directory is there
    fs.mkdirSync(path.join(root, 'snapshots', '3'));
    await s.prepare('c', 'base');
    expect(idOf(root, 'c')).toBe('4');
    // Cleanup deletes it
    expect(await s.cleanup()).toEqual(['3']);
    // a live holder keeps the root: a second store on it fails
    await expect(SnapshotStore.open(root)).rejects.toMatchObject({ code: 'ELOCKED' });
    await s.close();
  });

  it('refuses a damaged state file instead of starting empty', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, 'state.json'), '{"version":1,"nextId":3,"snapshots":{"a":{"id":"1","kind":"active","parent":"x","labels":{}}}}');
    await expect(SnapshotStore.open(root)).rejects.toMatchObject({ code: 'ECORRUPT', message: expect.stringMatching(/parent is not a committed/) });
    fs.writeFileSync(path.join(root, 'state.json'), '{"version":1,');
    await expect(SnapshotStore.open(root)).rejects.toMatchObject({ code: 'ECORRUPT' });
    expect(fs.existsSync(path.join(root, 'lock'))).toBe(false); // released on failure
  });
});

describe('containerd filter syntax', () => {
  it('parses quoted fields and values, and refuses bad syntax', () => {
    expect(parseFilter('labels."a.b/c"==x,name')).toEqual([{ path: ['labels', 'a.b/c'], op: '==', value: 'x' }, { path: ['name'] }]);
    expect(parseFilter('name=="a\\"b\\x41"')).toEqual([{ path: ['name'], op: '==', value: 'a"bA' }]);
    expect(parseFilter('labels.|x|!=|y,z|')).toEqual([{ path: ['labels', 'x'], op: '!=', value: 'y,z' }]);
    for (const bad of ['1abc', 'name=', 'name==', 'name<>x', 'name==a b', 'name~=/(/', 'labels."x']) {
      expect(() => parseFilter(bad), bad).toThrow(expect.objectContaining({ code: 'EUSAGE' }));
    }
    const m = matcher(['labels.a!=1']);
    expect(m({ name: 'n', kind: 'view', labels: {} })).toBe(true); // absent differs from every value, as containerd
    expect(matcher(['labels.a==1'])({ name: 'n', kind: 'view', labels: {} })).toBe(false);
    expect(matcher([])({ name: 'n', kind: 'view', labels: {} })).toBe(true);
  });
});

describe('LayerProvider seam', () => {
  /** A provider that "serves" every labelled layer by writing one file (a real one mounts FUSE there). */
  function fakeProvider() {
    const calls: string[] = [];
    const p: LayerProvider = {
      async prepare(req) {
        calls.push(`prepare ${req.labels['containerd.io/snapshot.ref']} parents=${req.parentDirs.length}`);
        if (req.labels['test/remote'] !== 'yes') return undefined;
        if (req.labels['test/remote-fails']) throw new Error('registry down');
        fs.writeFileSync(path.join(req.dir, 'fs', 'served'), req.key);
        return {
          labels: { 'containerd.io/snapshot/remote': 'ocichunk' },
          remote: { layer: req.labels['containerd.io/snapshot.ref'] },
          usage: { size: 4096, inodes: 2 },
        };
      },
      async restore(l) {
        calls.push(`restore ${l.name} ${JSON.stringify(l.remote)}`);
      },
      async release(dir) {
        calls.push(`release ${path.basename(dir)}`);
      },
    };
    return { p, calls };
  }

  it('commits a remote layer at once and answers AlreadyExists; restores it at start; falls back on failure', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    const { p, calls } = fakeProvider();
    const a = await serve(root, p);
    const c = a.client;
    const labels = { 'containerd.io/snapshot.ref': 'sha256:l1', 'test/remote': 'yes' };
    expect(await statusOf(c.prepare('ns/1/extract-1 sha256:l1', '', labels))).toBe(status.ALREADY_EXISTS);
    expect(await statusOf(c.stat('ns/1/extract-1 sha256:l1'))).toBe(status.NOT_FOUND);
    const l1 = await c.stat('sha256:l1');
    expect(l1).toMatchObject({ kind: KIND.COMMITTED, parent: '', labels: { ...labels, 'containerd.io/snapshot/remote': 'ocichunk' } });
    expect(fs.readFileSync(path.join(a.fsOf(idOf(root, 'sha256:l1')), 'served'), 'utf8')).toBe('ns/1/extract-1 sha256:l1');
    expect(await c.usage('sha256:l1')).toEqual({ size: 4096, inodes: 2 });
    // containerd's follow-up query finds it
    expect((await c.list(['labels."containerd.io/snapshot.ref"==sha256:l1,parent==""'])).infos.map((i) => i.name)).toEqual(['sha256:l1']);
    // the same layer again (another namespace): AlreadyExists without asking the provider
    const n = calls.length;
    expect(await statusOf(c.prepare('ns2/1/extract-2 sha256:l1', '', labels))).toBe(status.ALREADY_EXISTS);
    expect(calls.length).toBe(n);
    // a provider failure: the ordinary path (an active snapshot containerd fills)
    const l2 = { 'containerd.io/snapshot.ref': 'sha256:l2', 'test/remote': 'yes', 'test/remote-fails': '1' };
    const m = await c.prepare('ns/2/extract-3 sha256:l2', 'sha256:l1', l2);
    expect(m[0].type).toBe('overlay');
    expect((await c.stat('ns/2/extract-3 sha256:l2')).kind).toBe(KIND.ACTIVE);
    expect(calls).toContain('prepare sha256:l2 parents=1');
    // no labels for the provider: it is asked and declines
    await c.prepare('ns/3/extract-4 sha256:l3', 'sha256:l1', { 'containerd.io/snapshot.ref': 'sha256:l3' });
    expect((await c.stat('ns/3/extract-4 sha256:l3')).kind).toBe(KIND.ACTIVE);
    // restart: the remote layer is served again from its record
    c.close();
    await a.server.stop();
    const b = await serve(root, p);
    expect(calls).toContain('restore sha256:l1 {"layer":"sha256:l1"}');
    // remove releases before deleting
    await b.client.remove('ns/2/extract-3 sha256:l2');
    await b.client.remove('ns/3/extract-4 sha256:l3');
    const id = idOf(root, 'sha256:l1');
    await b.client.remove('sha256:l1');
    expect(calls).toContain(`release ${id}`);
    expect(fs.readdirSync(path.join(root, 'snapshots'))).toEqual([]);
  });

  it('a slow lookup holds up no other call; a second Prepare of that layer waits for it; Cleanup leaves its directory', async () => {
    const root = path.join(tmpdir('snap'), 'root');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let asked = 0;
    const p: LayerProvider = {
      async prepare(req) {
        asked++;
        await gate; // a registry that takes its time
        fs.writeFileSync(path.join(req.dir, 'fs', 'served'), req.key);
        return { labels: {}, remote: { layer: req.labels['containerd.io/snapshot.ref'] }, usage: { size: 0, inodes: 1 } };
      },
      async restore() {},
      async release() {},
    };
    const { client: c } = await serve(root, p);
    const labels = { 'containerd.io/snapshot.ref': 'sha256:slow' };
    const first = statusOf(c.prepare('ns/1/extract-1 sha256:slow', '', labels));
    const second = statusOf(c.prepare('ns/2/extract-2 sha256:slow', '', labels));
    // meanwhile: other changes, reads and a Cleanup go through
    await c.prepare('other');
    await c.commit('base', 'other');
    expect((await c.list([])).infos.map((i) => i.name)).toEqual(['base']);
    await c.cleanup();
    expect(fs.readdirSync(path.join(root, 'snapshots')).length).toBe(2); // base's and the held Prepare's
    expect(await statusOf(c.prepare('ns/1/extract-1 sha256:slow', ''))).toBe(status.ALREADY_EXISTS); // its key is held
    expect(asked).toBe(1);
    release();
    expect(await first).toBe(status.ALREADY_EXISTS);
    // the second waited, then found the layer committed: the provider was asked once
    expect(await second).toBe(status.ALREADY_EXISTS);
    expect(asked).toBe(1);
    expect((await c.stat('sha256:slow')).kind).toBe(KIND.COMMITTED);
    expect(fs.readFileSync(path.join(root, 'snapshots', idOf(root, 'sha256:slow'), 'fs', 'served'), 'utf8')).toBe('ns/1/extract-1 sha256:slow');
  });
});
