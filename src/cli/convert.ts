import type { Argv } from 'yargs';
import { convert, type ConvertProgress } from '../convert/convert.js';
import { bytes, ratio, table, ProgressLine } from './format.js';
import { chunkerOf, common, platformOf, parseSize, sourceDateEpoch, type Common } from './options.js';

export const command = 'convert <source> <destination>';
export const describe = 'Convert an image into a chunked, deduplicated image next to the original manifest';

export function builder(y: Argv) {
  return common(y)
    .positional('source', { type: 'string', demandOption: true, describe: 'oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF]' })
    .positional('destination', { type: 'string', demandOption: true, describe: 'oci:DIR[:REF] or oci-archive:FILE[:REF]' })
    .option('chunker', { choices: ['cdc', 'fixed', 'file'], default: 'cdc', describe: 'how file contents are cut into chunks' })
    .option('chunk-min', { type: 'string', describe: 'cdc: minimum chunk size (default 16k)' })
    .option('chunk-avg', { type: 'string', describe: 'cdc: average chunk size (default 64k)' })
    .option('chunk-max', { type: 'string', describe: 'cdc: maximum chunk size (default 256k); file: largest single chunk (default 64m)' })
    .option('chunk-size', { type: 'string', describe: 'fixed: chunk size (default 1m)' })
    .option('zstd-level', { type: 'number', default: 3, describe: 'zstd level of chunk frames (1-22)' })
    .option('source-date-epoch', { type: 'number', describe: 'clamp mtimes to this time (default: $SOURCE_DATE_EPOCH, else 0)' })
    .option('keep-mtime', { type: 'boolean', default: false, describe: 'keep file mtimes instead of clamping them' })
    .option('pack-size', { type: 'string', default: '64m', describe: 'target size of pack blobs' })
    .option('tmpdir', { type: 'string', describe: 'where to spool new chunks during conversion (default: system temp)' });
}

type Args = Common & {
  source: string;
  destination: string;
  chunker: string;
  'zstd-level': number;
  'source-date-epoch'?: number;
  'keep-mtime': boolean;
  'pack-size': string;
  tmpdir?: string;
};

export async function run(a: Args): Promise<unknown> {
  const line = new ProgressLine(a.quiet);
  const onProgress = (p: ConvertProgress) => {
    if (p.phase === 'scan' || p.phase === 'pack') line.update(`${p.phase} layer ${p.layer! + 1}/${p.layers}`, true);
    else line.update(p.phase, true);
  };
  const level = a['zstd-level'];
  const r = await convert(a.source, a.destination, {
    platform: platformOf(a),
    chunker: chunkerOf(a as never),
    zstdLevel: level,
    threads: a.threads,
    sourceDateEpoch: sourceDateEpoch(a),
    keepMtime: a['keep-mtime'],
    packTarget: parseSize(a['pack-size'], '--pack-size'),
    tmpDir: a.tmpdir,
    onProgress,
  }).finally(() => line.done());
  if (a.json) return r;
  return [
    `converted ${r.source} -> ${r.destination} (${r.platform})`,
    table([
      ['layers / entries / files', `${r.layers} / ${r.entries} / ${r.files}`],
      ['bytes in (original layers)', bytes(r.bytesIn)],
      ['file bytes (uncompressed)', bytes(r.fileBytes)],
      ['chunks (refs / unique)', `${r.chunkRefs} / ${r.uniqueChunks}`],
      ['chunks new / reused', `${r.newChunks} / ${r.reusedChunks}`],
      ['dedup ratio', ratio(r.dedupRatio)],
      ['bytes stored (new packs)', `${bytes(r.bytesStored)} in ${r.newPacks} pack(s)`],
      ['image frames + TOC', `${bytes(r.imageFrameBytes)} + ${bytes(r.tocBytes)}`],
      ['time', `${r.seconds.toFixed(2)} s`],
      ['index', r.index.digest],
    ]),
  ].join('\n');
}
