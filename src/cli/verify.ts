import type { Argv } from 'yargs';
import { verify } from '../verify.js';
import { bytes } from './format.js';
import { common, platformOf, transportOf, type Common } from './options.js';

export const command = 'verify <image>';
export const describe = 'Re-hash every blob and chunk of a chunked image, check every reference and its content digest';

export function builder(y: Argv) {
  return common(y).positional('image', { type: 'string', demandOption: true }).option('against-original', {
    type: 'boolean',
    default: false,
    describe: "derive the content digest again from the original image's layers and compare (a signature on the original then covers the chunked form)",
  });
}

export async function run(a: Common & { image: string; 'against-original': boolean }): Promise<unknown> {
  const r = await verify(a.image, { platform: platformOf(a), threads: a.threads, transport: transportOf(a), againstOriginal: a['against-original'] });
  if (a.json) return { ok: true, ...r };
  const content = r.matchesOriginal
    ? `content ${r.contentDigest} = the original's`
    : `content ${r.contentDigest}${r.contentDigestStated ? '' : ' (not stated by the manifest)'}`;
  return `ok: ${r.reference}: ${r.blobs} blobs (${bytes(r.blobBytes)}), ${r.chunks} chunks (${bytes(r.chunkBytes)}) of ${r.files} files verified, ${content}, in ${r.seconds.toFixed(2)} s`;
}
