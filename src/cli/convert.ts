import type { Argv } from 'yargs';
import { readTrace } from '../lazy/mount.js';
import fsp from 'node:fs/promises';
import { convertBatch, isBatchFailure, parseBatch, type BatchFailure } from '../convert/batch.js';
import { convert, type ConvertProgress, type ConvertResult } from '../convert/convert.js';
import { OcichunkError, withContext } from '../errors.js';
import type { TransferEvent } from '../transports/types.js';
import { bar, bytes, ratio, table, PartialFailure, ProgressLine } from './format.js';
import {
  cancelOnSignals,
  chunkerOf,
  common,
  frameOptions,
  framesOf,
  type FrameArgs,
  platformOf,
  parseSize,
  sourceDateEpoch,
  transportOf,
  type Common,
} from './options.js';

export const command = 'convert [source] [destination]';
export const describe = 'Convert an image into a chunked, deduplicated image next to the original manifest';

const REFS = 'oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF], docker://HOST/REPO[:TAG]';

export function builder(y: Argv) {
  return frameOptions(common(y))
    .positional('source', { type: 'string', describe: REFS })
    .positional('destination', {
      type: 'string',
      describe: 'oci:DIR[:REF], oci-archive:FILE[:REF] or docker://HOST/REPO[:TAG] (may be the source itself)',
    })
    .option('keep-going', {
      type: 'boolean',
      default: false,
      describe: "with --batch: a conversion that fails is reported and the batch goes on (exit code: the first failure's)",
    })
    .option('batch', {
      type: 'string',
      describe:
        'convert every "SOURCE DESTINATION" line of this file (- : stdin) in one process, in order; conversions into one layout or repository read what it stores once',
    })
    .check((a) => {
      const pair = a.source !== undefined || a.destination !== undefined;
      if (a.batch !== undefined && pair) throw new OcichunkError('EUSAGE', 'give either SOURCE DESTINATION or --batch FILE, not both');
      if (a.batch === undefined && (a.source === undefined || a.destination === undefined))
        throw new OcichunkError('EUSAGE', 'convert needs SOURCE and DESTINATION (or --batch FILE)');
      if (a.batch !== undefined && a['prefetch-list'] !== undefined) throw new OcichunkError('EUSAGE', '--prefetch-list names one image: not with --batch');
      if (a.batch === undefined && a['keep-going']) throw new OcichunkError('EUSAGE', '--keep-going goes with --batch');
      return true;
    })
    .option('all-platforms', { type: 'boolean', default: false, describe: 'convert every platform of a multi-platform image into one index' })
    .option('attach', {
      choices: ['index', 'referrer'],
      default: 'index',
      describe: 'index: the tag points to [original, chunked]; referrer: the tag stays, the chunked manifest refers to the original (OCI 1.1 subject)',
    })
    .option('concurrency', { type: 'number', default: 4, describe: 'parallel blob uploads to a registry' })
    .option('chunker', { choices: ['cdc', 'fixed', 'file'], default: 'cdc', describe: 'how file contents are cut into chunks' })
    .option('chunk-min', { type: 'string', describe: 'cdc: minimum chunk size (default 16k)' })
    .option('chunk-avg', { type: 'string', describe: 'cdc: average chunk size (default 64k)' })
    .option('chunk-max', { type: 'string', describe: 'cdc: maximum chunk size (default 256k); file: largest single chunk (default 64m)' })
    .option('chunk-size', { type: 'string', describe: 'fixed: chunk size (default 1m)' })
    .option('source-date-epoch', {
      type: 'number',
      describe: 'clamp mtimes to at most this time (default: $SOURCE_DATE_EPOCH; unset: mtimes are kept). Changes the files: tools that trust mtimes see it',
    })
    .option('keep-mtime', { type: 'boolean', default: false, describe: 'keep mtimes even when $SOURCE_DATE_EPOCH is set (the default otherwise)' })
    .option('pack-size', { type: 'string', default: '64m', describe: 'target size of pack blobs' })
    .option('tmpdir', { type: 'string', describe: 'where to spool new chunks and stage uploads (default: system temp)' })
    .option('prefetch-list', { type: 'string', describe: 'a read trace (ocichunk mount --record-trace) stored in the TOC: mounts fetch it first' });
}

type Args = Common &
  FrameArgs & {
    source?: string;
    destination?: string;
    batch?: string;
    'keep-going'?: boolean;
    chunker: string;
    'all-platforms': boolean;
    attach: 'index' | 'referrer';
    concurrency: number;
    'source-date-epoch'?: number;
    'keep-mtime': boolean;
    'pack-size': string;
    'prefetch-list'?: string;
    tmpdir?: string;
  };

export async function run(a: Args): Promise<unknown> {
  const line = new ProgressLine(a);
  let lastPhase = '';
  const onProgress = (p: ConvertProgress, item: string) => {
    const where = `${item}${p.platform ? `${p.platform} ` : ''}`;
    const text = p.phase === 'scan' || p.phase === 'pack' ? `${where}${p.phase} layer ${p.layer! + 1}/${p.layers}` : `${where}${p.phase}`;
    if (text !== lastPhase) line.event(text);
    lastPhase = text;
  };
  const up = { started: 0, done: 0, bytes: 0, total: 0 };
  const onTransfer = (e: TransferEvent) => {
    if (e.kind === 'upload' && !e.done) {
      up.started++;
      up.total += e.size;
      line.update(`upload ${bar(up.bytes, up.total)} ${up.done}/${up.started} blobs ${bytes(up.bytes)}/${bytes(up.total)}`);
      return;
    }
    if (e.kind === 'upload') {
      up.done++;
      up.bytes += e.size;
      line.event(`uploaded ${e.digest.slice(0, 19)} ${bytes(e.size)} ${bar(up.bytes, up.total)} ${up.done}/${up.started}`);
    } else if (e.kind === 'mount') line.event(`mounted ${e.digest.slice(0, 19)} ${bytes(e.size)}`);
  };
  const opts = {
    platform: platformOf(a),
    allPlatforms: a['all-platforms'],
    attach: a.attach,
    chunker: chunkerOf(a as never),
    threads: a.threads,
    sourceDateEpoch: sourceDateEpoch(a),
    packTarget: parseSize(a['pack-size'], '--pack-size'),
    ...framesOf(a),
    ...(a['prefetch-list']
      ? {
          prefetch: (await readTrace(a['prefetch-list'])).map(
            (r) => [r.path, r.offset, Number.isFinite(r.length) ? r.length : 2 ** 53 - 1] as [string, number, number],
          ),
        }
      : {}),
    tmpDir: a.tmpdir,
    transport: transportOf(a, { concurrency: a.concurrency, tmpDir: a.tmpdir, onTransfer }),
    signal: cancelOnSignals('the conversion'),
  };
  if (a.batch !== undefined) {
    const what = a.batch === '-' ? 'the batch on stdin' : `batch file ${a.batch}`;
    const text = await (a.batch === '-' ? readAll(process.stdin) : fsp.readFile(a.batch, 'utf8')).catch((e: unknown) => {
      throw withContext(e, what);
    });
    const items = parseBatch(text, what);
    const rs = await convertBatch(items, {
      ...opts,
      keepGoing: !!a['keep-going'],
      onProgress: (p) => onProgress(p, `${p.item + 1}/${p.items} `),
    }).finally(() => line.done());
    const failures = rs.filter(isBatchFailure);
    const out = a.json
      ? rs.map((r) => (isBatchFailure(r) ? { source: r.source, destination: r.destination, error: { code: r.error.code, message: r.error.message } } : r))
      : [...rs.map((r) => (isBatchFailure(r) ? `failed ${r.source} -> ${r.destination}` : summary(r))), batchTotals(rs)].join('\n\n');
    if (!failures.length) return out;
    const first = failures[0].error;
    return new PartialFailure(
      out,
      new OcichunkError(first.code, `${failures.length} of ${items.length} conversions failed`, { details: failures.map((f) => f.error.message) }),
    );
  }
  const r = await convert(a.source!, a.destination!, { ...opts, onProgress: (p) => onProgress(p, '') }).finally(() => line.done());
  if (a.json) return r;
  return summary(r);
}

async function readAll(s: NodeJS.ReadableStream): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts).toString('utf8');
}

function batchTotals(all: Array<ConvertResult | BatchFailure>): string {
  const rs = all.filter((r): r is ConvertResult => !isBatchFailure(r));
  const sum = (k: 'bytesIn' | 'bytesStored' | 'tocBytes' | 'digestTableBytes' | 'seconds') => rs.reduce((a, r) => a + r[k], 0);
  const stored = sum('bytesStored') + sum('tocBytes') + sum('digestTableBytes');
  return [
    `${rs.length} conversions${rs.length < all.length ? `, ${all.length - rs.length} failed` : ''}`,
    table([
      ['bytes in (original layers, summed over the images)', bytes(sum('bytesIn'))],
      ['bytes stored (new packs + TOCs + digest tables)', `${bytes(stored)} (${(stored / Math.max(sum('bytesIn'), 1)).toFixed(3)}x those)`],
      ['time', `${sum('seconds').toFixed(2)} s`],
    ]),
  ].join('\n');
}

function summary(r: ConvertResult): string {
  const rows: Array<[string, string]> = [
    ['layers / entries / files', `${r.layers} / ${r.entries} / ${r.files}`],
    ['bytes in (original layers)', bytes(r.bytesIn)],
    ['file bytes (uncompressed)', bytes(r.fileBytes)],
    ['chunks (refs / unique)', `${r.chunkRefs} / ${r.uniqueChunks}`],
    [
      'chunks new / reused',
      `${r.newChunks} / ${r.reusedChunks}${r.chunksVerified ? ` (${r.chunksVerified} found in the destination read and verified first)` : ''}`,
    ],
    ['dedup ratio', ratio(r.dedupRatio)],
    ['bytes stored (new packs)', `${bytes(r.bytesStored)} in ${r.newPacks} pack(s)`],
    ['image frames + TOC + digest table', `${bytes(r.imageFrameBytes)} + ${bytes(r.tocBytes)} + ${bytes(r.digestTableBytes)}`],
  ];
  const t = r.transfer;
  if (t && t.blobsUploaded !== undefined) {
    rows.push(['uploaded', `${t.blobsUploaded} blob(s), ${bytes(t.bytesUploaded ?? 0)}`]);
    rows.push(['skipped (already there)', `${t.blobsSkipped} blob(s), ${bytes(t.bytesSkipped ?? 0)}`]);
    if (t.blobsMounted) rows.push(['mounted from source repo', `${t.blobsMounted} blob(s), ${bytes(t.bytesMounted ?? 0)}`]);
  }
  if (t?.bytesDownloaded !== undefined) rows.push(['downloaded', `${bytes(t.bytesDownloaded)} in ${t.requests} request(s), ${t.retries} retried`]);
  rows.push(['time', `${r.seconds.toFixed(2)} s`]);
  rows.push([r.attach === 'referrer' ? `tag (unchanged), referrer via ${r.attachedVia}` : 'index', r.index.digest]);
  return [`converted ${r.source} -> ${r.destination} (${r.platform})`, table(rows)].join('\n');
}
