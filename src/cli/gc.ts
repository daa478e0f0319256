import type { Argv } from 'yargs';
import { gc } from '../gc.js';
import { bytes } from './format.js';

export const command = 'gc <layout>';
export const describe = 'Remove the blobs of an OCI layout that no tag or entry of its index.json leads to, and temp files dead processes left';

interface Args {
  layout: string;
  json: boolean;
  quiet: boolean;
  'dry-run': boolean;
  tmpdir?: string;
  'lock-timeout'?: number;
}

export function builder(y: Argv) {
  return y
    .positional('layout', { type: 'string', demandOption: true, describe: 'oci:DIR (a whole layout, no :REF)' })
    .option('dry-run', { alias: 'n', type: 'boolean', default: false, describe: 'list what would be removed; remove nothing' })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON on stdout' })
    .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'print nothing but errors' })
    .option('tmpdir', { type: 'string', describe: 'where conversions spool (default: $TMPDIR): stale spools there are removed too' })
    .option('lock-timeout', { type: 'number', describe: 'seconds to wait for the layout lock (default $OCICHUNK_LOCK_TIMEOUT, else 60)' });
}

export async function run(a: Args): Promise<unknown> {
  const r = await gc(a.layout, {
    dryRun: a['dry-run'],
    tmpDir: a.tmpdir,
    lockTimeoutMs: a['lock-timeout'] !== undefined ? a['lock-timeout'] * 1000 : undefined,
  });
  if (a.json) return r;
  if (a.quiet) return undefined;
  const verb = r.dryRun ? 'would remove' : 'removed';
  const blobBytes = r.removedBlobs.reduce((n, b) => n + b.size, 0);
  const tempBytes = r.removedTemps.reduce((n, t) => n + t.size, 0);
  const lines = [
    `gc oci:${r.layout}: ${verb} ${r.removedBlobs.length} unreferenced blob(s) (${bytes(blobBytes)}) and ` +
      `${r.removedTemps.length} stale temp file(s) (${bytes(tempBytes)}); kept ${r.kept.blobs} blob(s) (${bytes(r.kept.bytes)})`,
  ];
  if (r.dryRun) {
    for (const b of r.removedBlobs) lines.push(`  blob ${b.digest} (${bytes(b.size)})`);
    for (const t of r.removedTemps) lines.push(`  temp ${t.path} (${bytes(t.size)})`);
  }
  if (r.missing.length) lines.push(`warning: ${r.missing.length} referenced blob(s) are missing from the layout (run ocichunk verify)`);
  return lines.join('\n');
}
