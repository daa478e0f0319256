import type { Argv } from 'yargs';
import { verify } from '../verify.js';
import { bytes } from './format.js';
import { common, platformOf, transportOf, type Common } from './options.js';

export const command = 'verify <image>';
export const describe = 'Re-hash every blob and chunk of a chunked image and check every reference';

export function builder(y: Argv) {
  return common(y).positional('image', { type: 'string', demandOption: true });
}

export async function run(a: Common & { image: string }): Promise<unknown> {
  const r = await verify(a.image, { platform: platformOf(a), threads: a.threads, transport: transportOf(a) });
  if (a.json) return { ok: true, ...r };
  return `ok: ${r.reference}: ${r.blobs} blobs (${bytes(r.blobBytes)}), ${r.chunks} chunks (${bytes(r.chunkBytes)}) of ${r.files} files verified in ${r.seconds.toFixed(2)} s`;
}
