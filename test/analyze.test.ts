/**
 * `analyze` on real images (app and its independent rebuild app2), checked against independent
 * computations: Python over the layer tars for file-level figures, the manifests for layer-level
 * ones, and what `convert` actually stores for the chunk strategy it uses.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { image, tmpdir } from './helpers/env.js';
import { cli, cliJson, must } from './helpers/run.js';

interface StrategyResult {
  strategy: string;
  logicalBytes: number;
  uniqueBytes: number;
  storedBytes: number;
  packBytes: number;
  tocBytes: number;
  units: number;
  unitRefs: number;
  logicalFileBytes: number;
  perImage: Array<{ marginalStoredBytes: number; marginalUniqueBytes: number }>;
}
interface Analysis {
  rows: number;
  parquet: string;
  images: string[];
  strategies: StrategyResult[];
  sharing: { strategy: string; bytes: number[][] };
  topDuplicates: Array<{ path: string; size: number; copies: number; savedBytes: number }>;
}

// Independent file-level figures: every regular file of every layer (last entry per path within a
// layer; hardlinks carry no content), distinct contents by SHA-256.
const PY = `
import hashlib, json, os, sys, tarfile
seen = {}; copies = {}
for layout in sys.argv[1:]:
    b = lambda d: os.path.join(layout, 'blobs', 'sha256', d.split(':')[1])
    idx = json.load(open(os.path.join(layout, 'index.json')))
    man = json.load(open(b(idx['manifests'][0]['digest'])))
    for l in man['layers']:
        last = {}
        with tarfile.open(b(l['digest']), 'r:*') as t:
            for m in t:
                last[m.name.lstrip('./') or '.'] = m
            for name, m in last.items():
                if not m.isreg() or m.size == 0:
                    continue
                h = hashlib.sha256(t.extractfile(m).read()).hexdigest()
                seen[h] = m.size
                copies.setdefault(h, [m.size, 0, name])[1] += 1
top = max(copies.values(), key=lambda c: (c[0] * (c[1] - 1), c[2]))
print(json.dumps({'unique': sum(seen.values()), 'distinct': len(seen), 'top': {'path': top[2], 'size': top[0], 'copies': top[1]}}))
`;

let work: string;
let a: Analysis;
const layouts = () => [image('app'), image('app2')];

beforeAll(async () => {
  work = tmpdir('analyze');
  a = await cliJson<Analysis>([
    'analyze',
    ...layouts().map((l) => `oci:${l}:latest`),
    '--chunker',
    'layer,file,cdc:16k/64k/256k,fixed:1m',
    '--csv',
    path.join(work, 'out', 'a.csv'),
    '--html',
    path.join(work, 'out', 'report.html'),
    '--parquet',
    path.join(work, 'out', 'chunks.parquet'),
  ]);
});

const strat = (name: string) => a.strategies.find((s) => s.strategy === name)!;

describe('ocichunk analyze', () => {
  it('file level: unique bytes are the distinct file contents (Python over the layer tars)', async () => {
    const py = JSON.parse((await must('python3', ['-c', PY, ...layouts()])).stdout);
    expect(strat('file').uniqueBytes).toBe(py.unique);
    expect(strat('file').units).toBe(py.distinct);
    expect(a.topDuplicates[0].size).toBe(py.top.size);
    expect(a.topDuplicates[0].copies).toBe(py.top.copies);
    expect(a.topDuplicates[0].path).toBe(py.top.path);
  });

  it('layer level: what a registry stores, from the manifests', () => {
    const sizes = new Map<string, number>();
    let logical = 0;
    const marginal: number[] = [];
    for (const l of layouts()) {
      const idx = JSON.parse(fs.readFileSync(path.join(l, 'index.json'), 'utf8'));
      const man = JSON.parse(fs.readFileSync(path.join(l, 'blobs', 'sha256', idx.manifests[0].digest.slice(7)), 'utf8'));
      let m = 0;
      for (const layer of man.layers) {
        if (!sizes.has(layer.digest)) m += layer.size;
        sizes.set(layer.digest, layer.size);
        logical += layer.size;
      }
      marginal.push(m);
    }
    const unique = [...sizes.values()].reduce((x, y) => x + y, 0);
    expect(strat('layer').logicalBytes).toBe(logical);
    expect(strat('layer').storedBytes).toBe(unique);
    expect(strat('layer').perImage.map((p) => p.marginalStoredBytes)).toEqual(marginal);
    // the rebuild shares no layer with the original: layer-level dedup saves nothing on it
    expect(marginal[1]).toBeGreaterThan(marginal[0] * 0.9);
  });

  it('the strategy convert uses predicts what convert stores', async () => {
    const out = path.join(work, 'layout');
    let stored = 0;
    for (const [i, l] of layouts().entries()) {
      const r = await cliJson<{ bytesStored: number; tocBytes: number; digestTableBytes: number }>(['convert', `oci:${l}:latest`, `oci:${out}:img${i}`]);
      stored += r.bytesStored + r.tocBytes + r.digestTableBytes;
    }
    const cdc = strat('cdc:16k/64k/256k');
    expect(Math.abs(cdc.storedBytes - stored) / stored).toBeLessThan(0.01);
    // and with packs and TOCs on disk (the layout also holds the original layers, configs and manifests)
    const blobs = path.join(out, 'blobs', 'sha256');
    const onDisk = fs.readdirSync(blobs).reduce((n, f) => n + fs.statSync(path.join(blobs, f)).size, 0);
    expect(onDisk).toBeGreaterThan(cdc.storedBytes + strat('layer').storedBytes);
    expect(onDisk).toBeLessThan(cdc.storedBytes + strat('layer').storedBytes + (64 << 10));
  });

  it('reports marginal bytes, sharing and ratios consistently', () => {
    const cdc = strat('cdc:16k/64k/256k');
    // the rebuild adds little once the original is there
    expect(cdc.perImage[1].marginalStoredBytes).toBeLessThan(cdc.perImage[0].marginalStoredBytes * 0.02);
    expect(cdc.perImage[0].marginalStoredBytes + cdc.perImage[1].marginalStoredBytes).toBe(cdc.storedBytes);
    expect(cdc.perImage[0].marginalUniqueBytes + cdc.perImage[1].marginalUniqueBytes).toBe(cdc.uniqueBytes);
    // sharing: symmetric, and image 2 shares with image 1 all but its marginal bytes
    expect(a.sharing.bytes[0][1]).toBe(a.sharing.bytes[1][0]);
    expect(a.sharing.strategy).toBe('cdc:16k/64k/256k');
    const own2 = a.sharing.bytes[1][1];
    expect(own2 - a.sharing.bytes[1][0]).toBe(cdc.perImage[1].marginalUniqueBytes);
    // chunking beats layer dedup on rebuilds by about 2x here
    expect(cdc.storedBytes).toBeLessThan(strat('layer').storedBytes * 0.6);
    // the CSV has one row per strategy
    const rows = fs
      .readFileSync(path.join(work, 'out', 'a.csv'), 'utf8')
      .trim()
      .split('\n');
    expect(rows[0].split(',')[0]).toBe('strategy');
    expect(rows.slice(1).map((r) => r.split(',')[0])).toEqual(a.strategies.map((s) => s.strategy));
  });

  it('writes an HTML report whose charts render in headless Chromium, offline', async () => {
    const file = path.join(work, 'out', 'report.html');
    const html = fs.readFileSync(file, 'utf8');
    // nothing to fetch: no external scripts, styles, images or fonts
    expect(html).not.toMatch(/\b(src|href)\s*=\s*["']?(https?:|\/\/)/i);
    expect(html).not.toMatch(/@import|url\(/);
    const dom = (
      await must('chromium', [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--user-data-dir=${path.join(work, 'chromium-profile')}`,
        '--dump-dom',
        `file://${file}`,
      ])
    ).stdout;
    // the drawing code ran: each chart marked itself and drew its marks
    for (const id of ['chart-stored', 'chart-marginal', 'chart-sharing']) expect(dom).toMatch(new RegExp(`id="${id}"[^>]*data-rendered="true"`));
    const n = a.images.length;
    const s = a.strategies.length;
    const bars = (dom.match(/<rect[^>]*class="bar"/g) ?? []).length;
    const cells = (dom.match(/<rect[^>]*class="cell"/g) ?? []).length;
    expect(bars).toBe(s + s * n);
    expect(cells).toBe(n * n);
    for (const st of a.strategies) expect(dom).toContain(st.strategy);
  });

  it('writes every chunk occurrence to Parquet; the figures follow from that table', async () => {
    const { DuckDBInstance } = await import('@duckdb/node-api');
    const db = await DuckDBInstance.create(':memory:');
    const c = await db.connect();
    const file = path.join(work, 'out', 'chunks.parquet').replace(/'/g, "''");
    expect(a.parquet).toBe(path.join(work, 'out', 'chunks.parquet'));
    const q = async (sql: string) => (await c.runAndReadAll(sql)).getRowObjects();
    const rows = await q(
      `select strategy, count(*) as n, count(distinct digest) as u, sum(length) as l from read_parquet('${file}') group by strategy order by strategy`,
    );
    const unique = await q(
      `select strategy, sum(len) as b from (select distinct strategy, digest, length as len from read_parquet('${file}')) group by strategy`,
    );
    // an image's marginal bytes: its distinct chunks that the image before it does not have;
    // sharing: image 2's distinct chunks that image 1 has too
    const [A, B] = a.images.map((n) => `'${n.replace(/'/g, "''")}'`);
    const marginal = await q(`with d as (select distinct strategy, image, digest, length from read_parquet('${file}')),
        a0 as (select strategy, digest from d where image = ${A})
      select d.strategy, sum(length) filter (where image = ${A}) as m0,
        sum(length) filter (where image = ${B} and not exists (select 1 from a0 where a0.strategy = d.strategy and a0.digest = d.digest)) as m1,
        sum(length) filter (where image = ${B} and exists (select 1 from a0 where a0.strategy = d.strategy and a0.digest = d.digest)) as shared
      from d group by d.strategy`);
    const cols = (await q(`describe select * from read_parquet('${file}')`)).map((r) => String(r.column_name));
    c.closeSync();
    db.closeSync();
    expect(cols).toEqual(['image', 'layer_index', 'layer', 'path', 'strategy', 'digest', 'offset', 'length', 'compressed_length']);
    const chunkStrategies = a.strategies.filter((s) => s.strategy !== 'layer');
    expect(rows.map((r) => String(r.strategy))).toEqual(chunkStrategies.map((s) => s.strategy).sort());
    expect(rows.reduce((t, r) => t + Number(r.n), 0)).toBe(a.rows);
    for (const r of rows) {
      const s = strat(String(r.strategy));
      expect(Number(r.u)).toBe(s.units);
      expect(Number(r.n)).toBe(s.unitRefs);
      expect(Number(r.l)).toBe(s.logicalFileBytes);
      expect(Number(unique.find((x) => x.strategy === r.strategy)!.b)).toBe(s.uniqueBytes);
    }
    for (const m of marginal) {
      const s = strat(String(m.strategy));
      expect([Number(m.m0), Number(m.m1)]).toEqual(s.perImage.map((p) => p.marginalUniqueBytes));
      if (s.strategy === a.sharing.strategy) expect(Number(m.shared)).toBe(a.sharing.bytes[1][0]);
    }
    expect(marginal.map((m) => String(m.strategy)).sort()).toEqual(chunkStrategies.map((s) => s.strategy).sort());
  });

  it('streams: fine chunks under a tight memory limit for the chunk table give the same figures (DuckDB spills)', async () => {
    const refs = layouts().map((l) => `oci:${l}:latest`);
    const args = ['analyze', ...refs, '--chunker', 'cdc:256/1k/4k', '--tmpdir', tmpdir('analyze-spill')];
    const strip = (r: Analysis & { seconds?: number }) => ({ ...r, seconds: 0, strategies: r.strategies.map((s) => ({ ...s, seconds: 0 })) });
    const free = strip(await cliJson<Analysis>(args));
    const tight = strip(await cliJson<Analysis>([...args, '--memory-limit', '64MB']));
    expect(free.rows).toBeGreaterThan(150_000);
    expect(tight).toEqual(free);
    const starved = await cli([...args, '--memory-limit', '16MB']);
    expect(starved.code).toBe(8);
    expect(starved.stderr).toMatch(/chunk table ran out of memory \(--memory-limit 16MB\)/);
  });

  it('prints a readable table and refuses unknown strategies', async () => {
    const r = await cli(['analyze', `oci:${image('base')}:latest`, '--chunker', 'layer,cdc:16k/64k/256k']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/strategy\s+logical\s+unique\s+stored/);
    expect(r.stdout).toMatch(/cdc:16k\/64k\/256k/);
    const bad = await cli(['analyze', `oci:${image('base')}:latest`, '--chunker', 'cdc:64k']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/cdc:MIN\/AVG\/MAX/);
  });
});
