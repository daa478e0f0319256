/**
 * What each level of dedup would store for a set of images, side by side: layer (a registry's
 * blob dedup), file, fixed-size chunks, content-defined chunks at several sizes — measured, not
 * estimated: every chunking strategy runs the real conversion pipeline into a CountingSink, which
 * keeps only manifests and TOCs, so "stored" is exactly what `convert` would store (packs of
 * per-chunk zstd frames + TOCs). Per image: the marginal bytes it adds (in the order given), and how
 * many bytes it shares with each other image. Duplicated files are ranked by bytes saved.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { decodeToc, type Toc } from '../chunked/toc.js';
import { resolveImage } from '../chunked/image.js';
import { convertImage, DEFAULT_ZSTD_LEVEL, type ConvertOptions, type ConvertResult } from '../convert/convert.js';
import { OcichunkError } from '../errors.js';
import type { ChunkerSpec } from '../native/index.js';
import { CMT } from '../oci/chunked-media.js';
import { parseManifestDoc, type Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import { CountingSink } from '../transports/counting-sink.js';
import { ChunkIndex } from '../convert/chunk-index.js';
import type { ChunkTable } from './chunk-table.js';

export type Strategy = { name: string; kind: 'layer' } | { name: string; kind: 'chunks'; chunker: ChunkerSpec };

const SIZE = /^(\d+)([kmg]?)$/i;
function size(s: string, what: string): number {
  const m = SIZE.exec(s.trim());
  if (!m) throw new OcichunkError('EUSAGE', `${what}: invalid size ${JSON.stringify(s)} (e.g. 64k, 1m)`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

/** Parse `layer`, `file`, `fixed:1M`, `cdc:16k/64k/256k` (comma-separated lists allowed). */
export function parseStrategies(list: string[]): Strategy[] {
  const out: Strategy[] = [];
  for (const raw of list
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [kind, arg] = raw.split(':', 2);
    const name = raw.toLowerCase();
    if (out.some((s) => s.name === name)) continue;
    if (kind === 'layer' && arg === undefined) out.push({ name, kind: 'layer' });
    else if (kind === 'file' && arg === undefined) out.push({ name, kind: 'chunks', chunker: { kind: 'file', max: 64 << 20 } });
    else if (kind === 'fixed' && arg) out.push({ name, kind: 'chunks', chunker: { kind: 'fixed', size: size(arg, raw) } });
    else if (kind === 'cdc' && arg) {
      const p = arg.split('/');
      if (p.length !== 3) throw new OcichunkError('EUSAGE', `${raw}: expected cdc:MIN/AVG/MAX, e.g. cdc:16k/64k/256k`);
      const [min, avg, max] = p.map((x) => size(x, raw));
      if (!(min <= avg && avg <= max)) throw new OcichunkError('EUSAGE', `${raw}: expected MIN <= AVG <= MAX`);
      out.push({ name, kind: 'chunks', chunker: { kind: 'cdc', min, avg, max } });
    } else throw new OcichunkError('EUSAGE', `unknown strategy ${JSON.stringify(raw)}: use layer, file, fixed:SIZE or cdc:MIN/AVG/MAX`);
  }
  if (!out.length) throw new OcichunkError('EUSAGE', 'no strategy given');
  return out;
}

export const DEFAULT_STRATEGIES = ['layer', 'file', 'fixed:1m', 'cdc:16k/64k/256k', 'cdc:4k/16k/64k'];

export interface StrategyResult {
  strategy: string;
  chunker?: ChunkerSpec;
  /** What users pull today: the compressed layers of every image, summed. */
  logicalBytes: number;
  /** Uncompressed file contents of every image, summed. */
  logicalFileBytes: number;
  /** Uncompressed bytes after dedup at this granularity (layer: the distinct layers' compressed bytes). */
  uniqueBytes: number;
  /** What would be stored: distinct layers (layer), or packs of per-chunk zstd frames + TOCs. */
  storedBytes: number;
  packBytes: number;
  /** TOCs and their digest tables */
  tocBytes: number;
  /** Distinct units (layers or chunks) and references to them. */
  units: number;
  unitRefs: number;
  /** logicalBytes / storedBytes */
  ratioVsLogical: number;
  /** layer-level stored bytes / storedBytes */
  ratioVsLayer: number;
  seconds: number;
  perImage: Array<{ image: string; marginalStoredBytes: number; marginalUniqueBytes: number }>;
}

export interface AnalyzeResult {
  images: string[];
  zstdLevel: number;
  strategies: StrategyResult[];
  /** shared[i][j]: uncompressed bytes of image i's distinct chunks that image j also has (strategy `sharingStrategy`). */
  sharing: { strategy: string; bytes: number[][] };
  /** The files whose duplicates save most bytes (file-level, over every layer of every image). */
  topDuplicates: Array<{ path: string; size: number; copies: number; savedBytes: number; images: number }>;
  /** Rows of the chunk-occurrence table the set figures were computed from (by DuckDB). */
  rows: number;
  /** Where that table was written with `parquet`. */
  parquet?: string;
  seconds: number;
}

export interface AnalyzeOptions {
  strategies?: string[];
  zstdLevel?: number;
  platform?: Platform;
  threads?: number;
  transport?: TransportOptions;
  tmpDir?: string;
  /** How many duplicated files to list (default 20). */
  top?: number;
  /** Write one row per chunk occurrence to this Parquet file (through an embedded DuckDB). */
  parquet?: string;
  /** DuckDB's memory limit for the chunk table (e.g. "1GB"); beyond it, it spills to tmpDir. */
  memoryLimit?: string;
  /** Frame grouping and dictionaries, as `convert` takes them. */
  groupBelow?: number;
  groupTarget?: number;
  runTarget?: number;
  dictSize?: number;
  onProgress?: (p: { strategy: string; image: string; index: number; images: number }) => void;
}

/** The converted image's TOC, dropped from the sink once read. */
function takeToc(sink: CountingSink, r: ConvertResult, what: string): Toc {
  const m = sink.get(r.chunkedManifest.digest);
  if (!m) throw new OcichunkError('EINTERNAL', `${what}: chunked manifest not kept`);
  const p = parseManifestDoc(m, r.chunkedManifest.mediaType, what);
  if (p.kind !== 'manifest') throw new OcichunkError('EINTERNAL', `${what}: not a manifest`);
  const tocDesc = p.doc.layers[0];
  const table = p.doc.layers.find((l) => l.mediaType === CMT.digests);
  return decodeToc(sink.take(tocDesc.digest)!, what, table ? sink.take(table.digest) : undefined);
}

/** The images' layers, from their manifests (what a registry stores: the layer level). */
interface ImageLayers {
  names: string[];
  perImage: Array<Array<{ digest: string; size: number }>>;
  /** compressed bytes of every layer reference */
  logicalBytes: number;
  /** compressed bytes of the distinct layers */
  layerStored: number;
  distinctLayers: number;
}

async function listLayers(refs: string[], opts: AnalyzeOptions): Promise<ImageLayers> {
  const names: string[] = [];
  const perImage: ImageLayers['perImage'] = [];
  for (const ref of refs) {
    const src = await openSource(ref, opts.transport);
    try {
      const img = await resolveImage(src, opts.platform);
      if (!img.original) throw new OcichunkError('EUNSUPPORTED', `${src.name}: no original image manifest to analyze`);
      names.push(src.name);
      perImage.push(img.original.manifest.layers.map((l) => ({ digest: l.digest, size: l.size })));
    } finally {
      await src.close();
    }
  }
  const layerSizes = new Map<string, number>();
  for (const ls of perImage) for (const l of ls) layerSizes.set(l.digest, l.size);
  return {
    names,
    perImage,
    logicalBytes: perImage.flat().reduce((a, l) => a + l.size, 0),
    layerStored: [...layerSizes.values()].reduce((a, b) => a + b, 0),
    distinctLayers: layerSizes.size,
  };
}

/** The layer strategy: each distinct layer blob stored once. */
function layerStrategy(name: string, L: ImageLayers): StrategyResult {
  const seen = new Set<string>();
  return {
    strategy: name,
    logicalBytes: L.logicalBytes,
    logicalFileBytes: 0,
    uniqueBytes: L.layerStored,
    storedBytes: L.layerStored,
    packBytes: L.layerStored,
    tocBytes: 0,
    units: L.distinctLayers,
    unitRefs: L.perImage.flat().length,
    ratioVsLogical: L.logicalBytes / Math.max(1, L.layerStored),
    ratioVsLayer: 1,
    seconds: 0,
    perImage: L.perImage.map((ls, i) => {
      let m = 0;
      for (const l of ls) {
        if (seen.has(l.digest)) continue;
        seen.add(l.digest);
        m += l.size;
      }
      return { image: L.names[i], marginalStoredBytes: m, marginalUniqueBytes: m };
    }),
  };
}

/**
 * A chunk strategy: every image converted into one in-memory sink with one chunk index (the sink's
 * TOCs are never re-read); chunk occurrences go to the on-disk DuckDB table as each TOC comes, and
 * the TOC is dropped. The set figures (unique bytes, units) come later from SQL.
 */
async function chunkStrategy(
  s: Extract<Strategy, { kind: 'chunks' }>,
  refs: string[],
  L: ImageLayers,
  table: ChunkTable,
  opts: AnalyzeOptions,
): Promise<StrategyResult> {
  const ts = performance.now();
  const sink = new CountingSink(`memory:${s.name}`);
  const chunkIndex = new ChunkIndex();
  const perImage: StrategyResult['perImage'] = [];
  let packBytes = 0;
  let tocBytes = 0;
  let unitRefs = 0;
  let fileBytes = 0;
  for (const [i, ref] of refs.entries()) {
    opts.onProgress?.({ strategy: s.name, image: L.names[i], index: i, images: refs.length });
    const src = await openSource(ref, opts.transport);
    let r: ConvertResult;
    try {
      const co: ConvertOptions = {
        chunker: s.chunker,
        zstdLevel: opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL,
        threads: opts.threads,
        tmpDir: opts.tmpDir,
        platform: opts.platform,
        groupBelow: opts.groupBelow,
        groupTarget: opts.groupTarget,
        runTarget: opts.runTarget,
        dictSize: opts.dictSize,
        chunkIndex,
        recordTrust: false,
      };
      r = await convertImage(src, sink, co);
    } finally {
      await src.close();
    }
    table.appendToc(
      s.name,
      i,
      L.names[i],
      L.perImage[i].map((l) => l.digest),
      takeToc(sink, r, `${L.names[i]} (${s.name})`),
    );
    packBytes += r.bytesStored;
    tocBytes += r.tocBytes + r.digestTableBytes;
    unitRefs += r.chunkRefs;
    fileBytes += r.fileBytes;
    perImage.push({ image: L.names[i], marginalStoredBytes: r.bytesStored + r.tocBytes + r.digestTableBytes, marginalUniqueBytes: 0 });
  }
  const stored = packBytes + tocBytes;
  return {
    strategy: s.name,
    chunker: s.chunker,
    logicalBytes: L.logicalBytes,
    logicalFileBytes: fileBytes,
    uniqueBytes: 0,
    storedBytes: stored,
    packBytes,
    tocBytes,
    units: 0,
    unitRefs,
    ratioVsLogical: L.logicalBytes / Math.max(1, stored),
    ratioVsLayer: L.layerStored / Math.max(1, stored),
    seconds: (performance.now() - ts) / 1000,
    perImage,
  };
}

export async function analyze(refs: string[], opts: AnalyzeOptions = {}): Promise<AnalyzeResult> {
  const t0 = performance.now();
  if (!refs.length) throw new OcichunkError('EUSAGE', 'name at least one image');
  const strategies = parseStrategies(opts.strategies ?? DEFAULT_STRATEGIES);
  const L = await listLayers(refs, opts);
  // DuckDB loads only when an analysis runs (its import alone costs ~150 ms of every CLI start)
  const { ChunkTable } = await import('./chunk-table.js');
  const table = await ChunkTable.open(
    path.join(opts.tmpDir ?? os.tmpdir(), `ocichunk-analyze-${process.pid}-${randomBytes(4).toString('hex')}`),
    opts.memoryLimit,
  );
  try {
    const results: StrategyResult[] = [];
    let sharingStrategy: string | undefined;
    let fileStrategy: string | undefined;
    let logicalFileBytes = 0;
    for (const s of strategies) {
      if (s.kind === 'layer') {
        results.push(layerStrategy(s.name, L));
        continue;
      }
      const r = await chunkStrategy(s, refs, L, table, opts);
      results.push(r);
      logicalFileBytes = r.logicalFileBytes;
      // sharing from the first content-defined strategy (else the first chunk strategy)
      if (!sharingStrategy || (s.chunker.kind === 'cdc' && !sharingStrategy.startsWith('cdc'))) sharingStrategy = s.name;
      if (s.chunker.kind === 'file' && !fileStrategy) fileStrategy = s.name;
    }
    // the set figures, by SQL over the chunk table (DuckDB spills to disk beyond its memory limit)
    const sql = await table.summarize(L.names.length, sharingStrategy, fileStrategy, opts.top ?? 20);
    for (const r of results) {
      const q = sql.strategies.find((x) => x.strategy === r.strategy);
      if (!q) continue;
      r.uniqueBytes = q.uniqueBytes;
      r.units = q.units;
      if (q.unitRefs !== r.unitRefs) throw new OcichunkError('EINTERNAL', `${r.strategy}: ${q.unitRefs} chunk rows for ${r.unitRefs} chunk references`);
      sql.marginalUniqueBytes[r.strategy]?.forEach((b, i) => (r.perImage[i].marginalUniqueBytes = b));
    }
    for (const r of results) if (r.strategy === 'layer') r.logicalFileBytes = logicalFileBytes;
    if (opts.parquet) await table.writeParquet(opts.parquet);
    return {
      images: L.names,
      zstdLevel: opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL,
      strategies: results,
      sharing: sharingStrategy ? sql.sharing : { strategy: 'layer', bytes: [] },
      topDuplicates: sql.topDuplicates,
      rows: sql.rows,
      ...(opts.parquet ? { parquet: opts.parquet } : {}),
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await table.close();
  }
}
