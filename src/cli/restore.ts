import type { Argv } from 'yargs';
import { restore } from '../restore/restore.js';
import { bytes, table, ProgressLine } from './format.js';
import { cancelOnSignals, common, platformOf, transportOf, type Common } from './options.js';

export const command = 'restore <source> <target>';
export const describe = "Materialize a chunked image's root filesystem in a directory";

export function builder(y: Argv) {
  return common(y)
    .positional('source', { type: 'string', demandOption: true })
    .positional('target', { type: 'string', demandOption: true, describe: 'directory to create the root filesystem in (absent or empty)' });
}

export async function run(a: Common & { source: string; target: string }): Promise<unknown> {
  const line = new ProgressLine(a);
  const r = await restore(a.source, a.target, {
    platform: platformOf(a),
    threads: a.threads,
    transport: transportOf(a),
    signal: cancelOnSignals('the restore'),
    onProgress: (p) => line.update(`file content: ${p.done}/${p.chunks} chunks`, true),
  }).finally(() => line.done());
  if (a.json) return r;
  return [
    `restored ${r.source} -> ${r.target}`,
    table([
      ['layers / entries / files', `${r.layers} / ${r.entries} / ${r.files}`],
      ['written', `${r.written.files} files (${bytes(r.written.bytes)}), ${r.written.dirs} directories, ${r.written.hardlinks} more hardlinks`],
      ['pack bytes read', bytes(r.packBytesRead)],
      ['ownership applied', r.ownership ? 'yes' : 'no (not root)'],
      ['time', `${r.seconds.toFixed(2)} s`],
    ]),
  ].join('\n');
}
