import fs from 'node:fs/promises';
import path from 'node:path';
import type { Argv } from 'yargs';
import { analyze, DEFAULT_STRATEGIES, type AnalyzeResult } from '../analyze/analyze.js';
import { renderHtml } from '../analyze/html.js';
import { writeFileAtomic } from '../store/blobstore.js';
import { bytes, quoteName, ratio, ProgressLine } from './format.js';
import { common, frameOptions, framesOf, type FrameArgs, platformOf, transportOf, type Common } from './options.js';

export const command = 'analyze <images..>';
export const describe = 'What each level of dedup (layer, file, fixed, content-defined chunks) would store for a set of images';

export function builder(y: Argv) {
  return frameOptions(common(y))
    .positional('images', { type: 'string', array: true, demandOption: true, describe: 'image references, any transport, in order' })
    .option('chunker', {
      type: 'string',
      array: true,
      default: DEFAULT_STRATEGIES,
      describe: 'strategies: layer, file, fixed:SIZE, cdc:MIN/AVG/MAX (comma-separated or repeated)',
    })
    .option('csv', { type: 'string', describe: 'also write one row per strategy to this CSV file' })
    .option('parquet', { type: 'string', describe: 'also write one row per chunk occurrence to this Parquet file (via embedded DuckDB)' })
    .option('html', { type: 'string', describe: 'also write a self-contained HTML report with charts (opens offline)' })
    .option('top', { type: 'number', default: 20, describe: 'how many duplicated files to list' })
    .option('memory-limit', {
      type: 'string',
      describe: "DuckDB's memory for the chunk table (e.g. 2GB; default 80% of RAM); beyond it the table spills to --tmpdir",
    })
    .option('tmpdir', { type: 'string', describe: 'where conversions spool chunks and the chunk table lives (default: system temp)' });
}

type Args = Common &
  FrameArgs & {
    images: string[];
    chunker: string[];
    csv?: string;
    html?: string;
    parquet?: string;
    top: number;
    tmpdir?: string;
    'memory-limit'?: string;
  };

export function csv(r: AnalyzeResult): string {
  const cols = [
    'strategy',
    'logicalBytes',
    'logicalFileBytes',
    'uniqueBytes',
    'storedBytes',
    'packBytes',
    'tocBytes',
    'units',
    'unitRefs',
    'ratioVsLogical',
    'ratioVsLayer',
    'seconds',
  ] as const;
  const rows = r.strategies.map((s) => cols.map((c) => (typeof s[c] === 'number' ? String(Number((s[c] as number).toFixed(6))) : String(s[c]))).join(','));
  return [cols.join(','), ...rows].join('\n') + '\n';
}

export async function run(a: Args): Promise<unknown> {
  const line = new ProgressLine(a);
  const r = await analyze(a.images, {
    strategies: a.chunker,
    platform: platformOf(a),
    threads: a.threads,
    transport: transportOf(a),
    tmpDir: a.tmpdir,
    top: a.top,
    parquet: a.parquet,
    memoryLimit: a['memory-limit'],
    ...framesOf(a),
    onProgress: (p) => line.event(`${p.strategy}: ${p.image} (${p.index + 1}/${p.images})`),
  }).finally(() => line.done());
  for (const [file, content] of [
    [a.csv, () => csv(r)],
    [a.html, () => renderHtml(r)],
  ] as const) {
    if (!file) continue;
    await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
    await writeFileAtomic(file, content());
  }
  if (a.json) return r;
  return text(r);
}

function pad(cells: string[][]): string {
  const w = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ')).join('\n');
}

function text(r: AnalyzeResult): string {
  const out: string[] = [];
  out.push(`${r.images.length} image(s), zstd level ${r.zstdLevel}: ${r.images.join(', ')}`);
  out.push('');
  out.push(
    pad([
      ['strategy', 'logical', 'unique', 'stored', 'TOC', 'units', 'vs logical', 'vs layer'],
      ...r.strategies.map((s) => [
        s.strategy,
        bytes(s.logicalBytes),
        bytes(s.uniqueBytes),
        bytes(s.storedBytes),
        bytes(s.tocBytes),
        String(s.units),
        ratio(s.ratioVsLogical),
        ratio(s.ratioVsLayer),
      ]),
    ]),
  );
  out.push('', 'marginal bytes stored per image (in the order given):');
  out.push(
    pad([
      ['image', ...r.strategies.map((s) => s.strategy)],
      ...r.images.map((img, i) => [img, ...r.strategies.map((s) => bytes(s.perImage[i].marginalStoredBytes))]),
    ]),
  );
  if (r.images.length > 1) {
    out.push('', `bytes each image (row) shares with another (column), ${r.sharing.strategy}:`);
    out.push(
      pad([
        ['', ...r.images.map((_, j) => `#${j + 1}`)],
        ...r.sharing.bytes.map((row, i) => [`#${i + 1} ${r.images[i]}`, ...row.map((b, j) => (i === j ? '-' : bytes(b)))]),
      ]),
    );
  }
  if (r.topDuplicates.length) {
    out.push('', 'duplicated files saving most (file level):');
    out.push(
      pad([
        ['path', 'size', 'copies', 'images', 'saved'],
        ...r.topDuplicates.map((d) => [quoteName(d.path), bytes(d.size), String(d.copies), String(d.images), bytes(d.savedBytes)]),
      ]),
    );
  }
  out.push('', `${r.seconds.toFixed(1)} s`);
  return out.join('\n');
}
