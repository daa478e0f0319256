/**
 * An OCI layout survives concurrent writers and crashes, and `ocichunk gc` cleans it safely
 * (issue 12, "Lost data"): parallel converts into one layout keep every tag; `kill -9` at random
 * points of a convert leaves a layout that verifies, and the next run cleans what the killed one
 * left and writes the same index; gc removes unreferenced blobs and stale temp files only.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { gc, OcichunkError, openSink, restore } from '../src/index.js';
import { BlobStore } from '../src/store/blobstore.js';
import { lockLayout } from '../src/store/layout-lock.js';
import { image, tmpdir, REPO } from './helpers/env.js';
import { checkBlobs, readIndex } from './helpers/layout.js';

const BIN = path.join(REPO, 'bin', 'ocichunk.js');
const MINI = `oci:${REPO}/examples/debian-mini:latest`;
const REF = 'org.opencontainers.image.ref.name';

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run the CLI; with killAfterMs, send it `kill` (SIGKILL unless said) after that long (if it is still running). */
function ocichunk(args: string[], opts: { env?: NodeJS.ProcessEnv; killAfterMs?: number; kill?: NodeJS.Signals } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = opts.killAfterMs !== undefined ? setTimeout(() => child.kill(opts.kill ?? 'SIGKILL'), opts.killAfterMs) : undefined;
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

async function mustRun(args: string[], env?: NodeJS.ProcessEnv): Promise<Ran> {
  const r = await ocichunk(args, { env });
  if (r.code !== 0) throw new Error(`ocichunk ${args.join(' ')} exited ${r.code ?? r.signal}\n${r.stderr}\n${r.stdout}`);
  return r;
}

/** A node process that runs `code` (ES module, with REPO's dist at hand) and kills itself with SIGKILL. */
async function crashAfter(code: string): Promise<number> {
  const script = `${code}\nprocess.kill(process.pid, 'SIGKILL');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_c, s) => resolve(s)));
  if (signal !== 'SIGKILL') throw new Error(`helper process did not crash as planned: ${stderr}`);
  return child.pid!;
}

function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function tags(layout: string): string[] {
  return readIndex(layout)
    .manifests.map((m: any) => m.annotations?.[REF])
    .filter(Boolean);
}

/** Verify every tag of a layout with the CLI, two at a time. */
async function verifyAll(layout: string): Promise<void> {
  const queue = tags(layout);
  const worker = async () => {
    for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
      const r = await ocichunk(['verify', `oci:${layout}:${t}`, '--json']);
      if (r.code !== 0) throw new Error(`verify oci:${layout}:${t} exited ${r.code}\n${r.stderr}`);
      expect(JSON.parse(r.stdout).ok).toBe(true);
    }
  };
  await Promise.all([worker(), worker()]);
}

/** Whatever is left in a layout or a spool dir that a finished run should not leave. */
function leftovers(layout: string, spoolDir?: string): string[] {
  const out: string[] = checkBlobs(layout).filter((s) => s.startsWith('stray file'));
  for (const n of fs.existsSync(layout) ? fs.readdirSync(layout) : []) {
    if (!['blobs', 'oci-layout', 'index.json', '.ocichunk'].includes(n)) out.push(`layout: ${n}`);
  }
  const state = path.join(layout, '.ocichunk');
  for (const n of fs.existsSync(state) ? fs.readdirSync(state) : []) out.push(`.ocichunk/${n}`);
  if (spoolDir) for (const n of fs.readdirSync(spoolDir)) if (n.startsWith('ocichunk-spool-')) out.push(`spool: ${n}`);
  return out;
}

/** Files of a directory tree with their sizes (to show a dry run changed nothing). */
function listing(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[])
    .map((n) => path.join(dir, n))
    .filter((p) => fs.lstatSync(p).isFile())
    .map((p) => `${path.relative(dir, p)} ${fs.statSync(p).size}`)
    .sort();
}

/** A small seeded PRNG, so a failing run can be repeated (OCICHUNK_CRASH_SEED). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('concurrent converts into one layout', () => {
  it('keep every tag, 2 rounds of 8 parallel converts, and every tag verifies', async () => {
    const work = tmpdir('safety-conc');
    const layout = path.join(work, 'layout');
    const spool = path.join(work, 'spool');
    fs.mkdirSync(spool);
    const sources: Array<[string, string]> = [
      ['base', `oci:${image('base')}:latest`],
      ['app', `oci:${image('app')}:latest`],
      ['app2', `oci:${image('app2')}:latest`],
      ['zstd', `oci:${image('app-zstd')}:latest`],
      ['mini-a', MINI],
      ['mini-b', MINI],
      ['mini-c', MINI],
      ['mini-d', MINI],
    ];
    const expected: string[] = [];
    for (let round = 0; round < 2; round++) {
      const runs = await Promise.all(
        sources.map(([name, src]) => {
          expected.push(`r${round}-${name}`);
          return ocichunk(['convert', src, `oci:${layout}:r${round}-${name}`, '--quiet'], { env: { TMPDIR: spool } });
        }),
      );
      for (const r of runs) expect(r.code, r.stderr).toBe(0);
      expect(tags(layout).sort()).toEqual([...expected].sort());
    }
    expect(new Set(tags(layout)).size).toBe(sources.length * 2);
    expect(leftovers(layout, spool)).toEqual([]);
    await verifyAll(layout);
  });

  it('a lock held by a live process makes a writer wait, then fail with a clear error naming it', async () => {
    const work = tmpdir('safety-lock');
    const layout = path.join(work, 'layout');
    await mustRun(['convert', MINI, `oci:${layout}:one`, '--quiet']);
    const lock = await lockLayout(layout);
    try {
      const r = await ocichunk(['convert', MINI, `oci:${layout}:two`, '--json'], { env: { OCICHUNK_LOCK_TIMEOUT: '1' } });
      expect(r.code).not.toBe(0);
      const err = JSON.parse(r.stdout).error;
      expect(['ELOCKED', 'EIO']).toContain(err.code);
      expect(err.message).toMatch(new RegExp(`is locked by pid ${process.pid} .*gave up after 1\\.0 s`));
    } finally {
      await lock.release();
    }
    await mustRun(['convert', MINI, `oci:${layout}:two`, '--quiet']);
    expect(tags(layout).sort()).toEqual(['one', 'two']);
  });

  it('a lock left by a killed process is taken over', async () => {
    const work = tmpdir('safety-stale');
    const layout = path.join(work, 'layout');
    await mustRun(['convert', MINI, `oci:${layout}:one`, '--quiet']);
    await crashAfter(`import { lockLayout } from './dist/store/layout-lock.js'; await lockLayout(${JSON.stringify(layout)});`);
    expect(fs.existsSync(path.join(layout, '.ocichunk', 'lock'))).toBe(true);
    const r = await mustRun(['convert', MINI, `oci:${layout}:two`, '--quiet'], { OCICHUNK_LOCK_TIMEOUT: '5' });
    expect(r.ms).toBeLessThan(5000);
    expect(tags(layout).sort()).toEqual(['one', 'two']);
    expect(leftovers(layout)).toEqual([]);
  });
});

describe('kill -9 during convert', () => {
  it('leaves a layout that verifies; the next run cleans up and writes the same index (random kills)', async () => {
    const work = tmpdir('safety-crash');
    const spool = path.join(work, 'spool');
    fs.mkdirSync(spool);
    const env = { TMPDIR: spool };
    const src = `oci:${image('base')}:latest`;
    // the starting layout: one image already there (it must survive every crash)
    const start = path.join(work, 'start');
    await mustRun(['convert', MINI, `oci:${start}:keep`, '--quiet']);
    const copyOfStart = (to: string) => fs.cpSync(start, to, { recursive: true });
    // what an uninterrupted run writes
    const ref = path.join(work, 'ref');
    copyOfStart(ref);
    const refProc = await mustRun(['convert', src, `oci:${ref}:base`, '--json'], env);
    const refRun = JSON.parse(refProc.stdout);
    const refIndexJson = sha256File(path.join(ref, 'index.json'));
    // a second uninterrupted run, with the source in the page cache as it is for the runs below
    const warm = path.join(work, 'warm');
    copyOfStart(warm);
    const warmProc = await mustRun(['convert', src, `oci:${warm}:base`, '--quiet'], env);
    fs.rmSync(warm, { recursive: true, force: true });
    // kills land between 100 ms and 85% of the faster whole run (node start-up included), so most
    // of them hit mid-run even when the first run was slowed by a cold cache or a busy machine
    // (narrowed by every whole run below: a machine that gets faster must not let kills land
    // after the end)
    let span = Infinity;
    const narrow = (wholeRunMs: number) => (span = Math.max(Math.min(span, wholeRunMs * 0.85 - 100), 200));
    narrow(Math.min(refProc.ms, warmProc.ms));
    const seed = Number(process.env.OCICHUNK_CRASH_SEED ?? Date.now() % 100000);
    const rand = prng(seed);
    let left = 0;
    let finished = 0;
    // 6 per run (the seed changes from run to run); more with OCICHUNK_CRASH_KILLS
    const kills = Number(process.env.OCICHUNK_CRASH_KILLS ?? 6);
    for (let i = 0; i < kills; i++) {
      const layout = path.join(work, `l${i}`);
      copyOfStart(layout);
      const delay = Math.round(100 + rand() * span);
      const ctx = `seed ${seed}, kill ${i} after ${delay} ms`;
      const killed = await ocichunk(['convert', src, `oci:${layout}:base`, '--quiet'], { env, killAfterMs: delay });
      if (killed.code === 0) {
        finished++;
        narrow(killed.ms);
      } else expect(killed.signal, `${ctx}: ${killed.stderr}`).toBe('SIGKILL');
      // whatever index.json says now is whole and verifies
      const now = tags(layout);
      expect(now, ctx).toContain('keep');
      await verifyAll(layout);
      left += leftovers(layout, spool).length;
      // the next run cleans what the killed one left and writes what an uninterrupted run writes
      const againProc = await mustRun(['convert', src, `oci:${layout}:base`, '--json'], env);
      const again = JSON.parse(againProc.stdout);
      expect(again.index.digest, ctx).toBe(refRun.index.digest);
      expect(sha256File(path.join(layout, 'index.json')), ctx).toBe(refIndexJson);
      expect(leftovers(layout, spool), ctx).toEqual([]);
      if (i % 3 === 2) await verifyAll(layout);
      // the next kills within 85% of the fastest whole run seen so far
      narrow(againProc.ms);
      fs.rmSync(layout, { recursive: true, force: true });
    }
    console.log(`kill -9: seed ${seed}, ${kills - finished} killed mid-run, ${finished} finished first, ${left} leftover files cleaned by the next runs`);
    expect(finished).toBeLessThan(kills / 2);
    expect(left).toBeGreaterThan(0); // the kills did leave something to clean
  });
});

describe('SIGINT during convert and restore', () => {
  it('stops cleanly: exit 130, nothing left behind, the destination untouched; a restore leaves its partial tree closed (0700)', async () => {
    const work = tmpdir('safety-sigint');
    const spool = path.join(work, 'spool');
    fs.mkdirSync(spool);
    const env = { TMPDIR: spool };
    const src = `oci:${image('base')}:latest`;
    const start = path.join(work, 'start');
    await mustRun(['convert', MINI, `oci:${start}:keep`, '--quiet']);
    const indexBefore = sha256File(path.join(start, 'index.json'));
    fs.cpSync(start, path.join(work, 'ref'), { recursive: true });
    const ref = JSON.parse((await mustRun(['convert', src, `oci:${path.join(work, 'ref')}:base`, '--json'], env)).stdout);
    let stopped = 0;
    for (const [i, delay] of [400, 700, 1000, 1400].entries()) {
      const layout = path.join(work, `l${i}`);
      fs.cpSync(start, layout, { recursive: true });
      const r = await ocichunk(['convert', src, `oci:${layout}:base`], { env, killAfterMs: delay, kill: 'SIGINT' });
      if (r.code === 0) continue; // finished first
      expect(r.code, r.stderr).toBe(130);
      // still loading (a slow machine): it ends at once, having started nothing
      const early = /SIGINT before the command started; nothing was done/.test(r.stderr);
      if (!early) {
        stopped++;
        expect(r.stderr).toMatch(/SIGINT: stopping the conversion/);
        expect(r.stderr).toMatch(/ocichunk: .*SIGINT/);
      }
      // nothing to clean up, not even by a next run; the destination is as it was
      expect(leftovers(layout, spool), `SIGINT after ${delay} ms`).toEqual([]);
      expect(sha256File(path.join(layout, 'index.json'))).toBe(indexBefore);
      await verifyAll(layout);
      const againProc = await mustRun(['convert', src, `oci:${layout}:base`, '--json'], env);
      const again = JSON.parse(againProc.stdout);
      expect(again.index.digest).toBe(ref.index.digest);
    }
    expect(stopped).toBeGreaterThan(0);
    // restore: stops between batches of file content (canceled after the first batch)
    const target = path.join(work, 'rootfs');
    const ac = new AbortController();
    let batches = 0;
    const err = await restore(`oci:${path.join(work, 'ref')}:base`, target, {
      batchBytes: 1 << 20,
      signal: ac.signal,
      onProgress: () => {
        batches++;
        ac.abort();
      },
    }).catch((e) => e);
    expect(err instanceof OcichunkError && err.code, String(err)).toBe('ECANCELED');
    expect(err.message).toMatch(/partial tree is left there, mode 0700/);
    expect(batches).toBe(1);
    expect(fs.statSync(target).mode & 0o777).toBe(0o700);
  });
});

describe('ocichunk gc', () => {
  it('removes unreferenced blobs and stale temp files, keeps what verify needs; --dry-run removes nothing', async () => {
    const work = tmpdir('safety-gc');
    const layout = path.join(work, 'layout');
    const blobs = path.join(layout, 'blobs', 'sha256');
    await mustRun(['convert', `oci:${image('base')}:latest`, `oci:${layout}:base`, '--quiet']);
    const oldApp = JSON.parse((await mustRun(['convert', `oci:${image('app')}:latest`, `oci:${layout}:app`, '--json'])).stdout);
    // the tag moves to another image: the old index, manifests and TOC are unreferenced now
    const newApp = JSON.parse((await mustRun(['convert', `oci:${image('app2')}:latest`, `oci:${layout}:app`, '--json'])).stdout);
    expect(newApp.index.digest).not.toBe(oldApp.index.digest);
    // an unreferenced blob
    const orphan = randomBytes(100_000);
    const orphanDigest = 'sha256:' + createHash('sha256').update(orphan).digest('hex');
    fs.writeFileSync(path.join(blobs, orphanDigest.slice(7)), orphan);
    // a temp file of a writer killed with -9
    const deadPid = await crashAfter(
      `import { BlobStore } from './dist/store/blobstore.js'; const w = await new BlobStore(${JSON.stringify(layout)}).createWriter(); await w.write(Buffer.alloc(300000, 7));`,
    );
    const deadTemps = fs.readdirSync(blobs).filter((n) => n.startsWith(`.tmp-${deadPid}-`));
    expect(deadTemps).toHaveLength(1);
    // a temp file of a live writer (this process): never removed
    const live = await new BlobStore(layout).createWriter();
    await live.write(Buffer.alloc(1000, 1));
    const liveTemps = fs.readdirSync(blobs).filter((n) => n.startsWith(`.tmp-${process.pid}-`));
    expect(liveTemps).toHaveLength(1);
    const livePath = path.join(blobs, liveTemps[0]);
    // temp files named as older versions named them (no start time, no host): kept until untouched for an hour
    const legacy = path.join(blobs, `.tmp-${deadPid}-${randomBytes(6).toString('hex')}`);
    fs.writeFileSync(legacy, Buffer.alloc(5000));
    const legacyLive = path.join(blobs, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    fs.writeFileSync(legacyLive, Buffer.alloc(10));
    try {
      const before = listing(layout);
      const dry = JSON.parse((await mustRun(['gc', `oci:${layout}`, '--dry-run', '--json'])).stdout);
      expect(listing(layout)).toEqual(before);
      expect(dry.dryRun).toBe(true);
      const removedDigests = dry.removedBlobs.map((b: any) => b.digest);
      expect(removedDigests).toContain(orphanDigest);
      expect(removedDigests).toContain(oldApp.index.digest);
      expect(removedDigests).toContain(oldApp.chunkedManifest.digest);
      expect(removedDigests).not.toContain(newApp.index.digest);
      const tempNames = dry.removedTemps.map((t: any) => path.basename(t.path));
      expect(tempNames).toEqual([deadTemps[0]]);

      const done = JSON.parse((await mustRun(['gc', `oci:${layout}`, '--json'])).stdout);
      expect(done.dryRun).toBe(false);
      expect(done.removedBlobs).toEqual(dry.removedBlobs);
      expect(done.removedTemps.map((t: any) => path.basename(t.path)).sort()).toEqual(tempNames);
      const freed = [...done.removedBlobs, ...done.removedTemps].reduce((n: number, x: any) => n + x.size, 0);
      expect(done.bytesFreed).toBe(freed);
      expect(freed).toBeGreaterThan(orphan.length + 300_000);
      expect(done.missing).toEqual([]);
      for (const d of removedDigests) expect(fs.existsSync(path.join(blobs, d.slice(7)))).toBe(false);
      expect(fs.existsSync(path.join(blobs, deadTemps[0]))).toBe(false);
      expect(fs.existsSync(livePath)).toBe(true);
      expect(fs.existsSync(legacy)).toBe(true);
      // once an unknown owner's grace is over (0 here): the legacy file of the dead pid goes, never a live process's
      const late = await gc(`oci:${layout}`, { unknownGraceMs: 0 });
      expect(late.removedBlobs).toEqual([]);
      expect(late.removedTemps.map((t) => t.path)).toEqual([legacy]);
      expect(fs.existsSync(legacyLive)).toBe(true);
      expect(fs.existsSync(livePath)).toBe(true);
      fs.rmSync(legacyLive);
      expect(done.kept.blobs).toBe(fs.readdirSync(blobs).filter((n) => /^[a-f0-9]{64}$/.test(n)).length);
      await verifyAll(layout);
      expect(tags(layout).sort()).toEqual(['app', 'base']);

      const again = JSON.parse((await mustRun(['gc', `oci:${layout}`, '--json'])).stdout);
      expect(again.removedBlobs).toEqual([]);
      expect(again.removedTemps).toEqual([]);
      expect(again.bytesFreed).toBe(0);
      const text = (await mustRun(['gc', `oci:${layout}`])).stdout;
      expect(text).toMatch(/removed 0 unreferenced blob\(s\) \(0 B\) and 0 stale temp file\(s\)/);
    } finally {
      await live.abort();
    }
  });

  it('keeps referrers (--attach referrer): their chunked manifests, TOCs and packs', async () => {
    const work = tmpdir('safety-gc-ref');
    const layout = path.join(work, 'layout');
    await mustRun(['convert', `oci:${image('base')}:latest`, `oci:${layout}:base`, '--attach', 'referrer', '--quiet']);
    const idx = readIndex(layout);
    expect(idx.manifests.some((m: any) => m.annotations?.['dev.ocichunk.subject'])).toBe(true);
    const r = JSON.parse((await mustRun(['gc', `oci:${layout}`, '--json'])).stdout);
    expect(r.removedBlobs).toEqual([]);
    await verifyAll(layout);
  });

  it('removes nothing while a conversion is writing, and goes ahead once the writer is gone or dead', async () => {
    const work = tmpdir('safety-gc-busy');
    const layout = path.join(work, 'layout');
    await mustRun(['convert', MINI, `oci:${layout}:mini`, '--quiet']);
    const orphan = Buffer.from('not referenced by anything');
    const orphanFile = path.join(layout, 'blobs', 'sha256', createHash('sha256').update(orphan).digest('hex'));
    fs.writeFileSync(orphanFile, orphan);
    // a writer in this process: its blobs are not referenced until it sets its tag
    const sink = await openSink(`oci:${layout}:pending`);
    try {
      const r = await ocichunk(['gc', `oci:${layout}`, '--json']);
      expect(r.code).not.toBe(0);
      const err = JSON.parse(r.stdout).error;
      expect(['ELOCKED', 'EIO']).toContain(err.code);
      expect(err.message).toMatch(new RegExp(`1 process\\(es\\) are writing into the layout \\(pid ${process.pid}`));
      expect(fs.existsSync(orphanFile)).toBe(true);
    } finally {
      await sink.close();
    }
    // a writer killed with -9 does not block gc
    await crashAfter(`import { openSink } from './dist/index.js'; await openSink(${JSON.stringify(`oci:${layout}:doomed`)});`);
    expect(fs.readdirSync(path.join(layout, '.ocichunk')).filter((n) => n.startsWith('writer-'))).toHaveLength(1);
    const r = JSON.parse((await mustRun(['gc', `oci:${layout}`, '--json'])).stdout);
    expect(r.removedBlobs.map((b: any) => b.digest)).toEqual([`sha256:${path.basename(orphanFile)}`]);
    expect(r.removedTemps.map((t: any) => path.basename(t.path))).toEqual([expect.stringMatching(/^writer-/)]);
    expect(leftovers(layout)).toEqual([]);
    await verifyAll(layout);
  });

  it('refuses a reference with a tag, and a directory that is not a layout', async () => {
    const work = tmpdir('safety-gc-usage');
    const r = await ocichunk(['gc', `oci:${work}:tag`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/gc works on a whole layout/);
    const n = await ocichunk(['gc', `oci:${work}`]);
    expect(n.code).toBe(3);
    expect(fs.readdirSync(work)).toEqual([]);
  });
});
