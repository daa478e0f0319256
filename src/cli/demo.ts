import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Argv } from 'yargs';
import { run as convertRun } from './convert.js';
import { run as inspectRun } from './inspect.js';

export const command = 'demo';
export const describe = 'Convert the bundled example image (examples/debian-mini) into ./out/example and inspect it';

export function builder(y: Argv) {
  return y.option('out', { type: 'string', default: 'out/example', describe: 'output OCI layout' });
}

export async function run(a: { out: string }): Promise<unknown> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const example = path.relative(process.cwd(), path.resolve(here, '..', '..', 'examples', 'debian-mini')) || '.';
  await fs.rm(a.out, { recursive: true, force: true });
  const base = { json: false, quiet: false, threads: 0, 'plain-http': false, insecure: false, retries: 5, timeout: 60 };
  const conv = await convertRun({
    ...base,
    source: `oci:${example}:latest`,
    destination: `oci:${a.out}:latest`,
    chunker: 'cdc',
    'keep-mtime': false,
    'pack-size': '64m',
    'all-platforms': false,
    attach: 'index',
    concurrency: 4,
  });
  const insp = await inspectRun({ ...base, image: `oci:${a.out}:latest` });
  return `${String(conv)}\n\n${String(insp)}\n\nnext: npx ocichunk restore oci:${a.out}:latest ./rootfs`;
}
