import type { Argv } from 'yargs';
import { inspect, type ImageStats } from '../inspect.js';
import { bytes, quoteName, ratio, table } from './format.js';
import { common, platformOf, transportOf, type Common } from './options.js';

export const command = 'inspect <image>';
export const describe = 'Files, chunks, unique chunks, bytes stored and ratios of a chunked image (or of a whole layout)';

export function builder(y: Argv) {
  return common(y).positional('image', { type: 'string', demandOption: true, describe: 'an image, or oci:DIR for every image in a layout' });
}

function imageText(s: ImageStats): string {
  return [
    // the reference holds a tag and the platform an annotation of the image: quoted for the terminal
    `${quoteName(s.reference)} (${quoteName(s.platform)})`,
    table([
      ['index', s.index],
      ['original manifest', s.originalManifest ?? '-'],
      ['chunked manifest', s.chunkedManifest],
      ['layers', String(s.layers)],
      [
        'entries',
        Object.entries(s.entries)
          .map(([k, v]) => `${k} ${v}`)
          .join(', '),
      ],
      ['file bytes', bytes(s.fileBytes)],
      ['chunks (refs / unique)', `${s.chunkRefs} / ${s.uniqueChunks} (${bytes(s.uniqueChunkBytes)})`],
      ['frames', `${s.frames} (${bytes(s.frameBytes)} compressed)`],
      ['packs', `${s.packs} (${bytes(s.packBytes)})`],
      ['TOC', `${bytes(s.tocBytes)} (${bytes(s.tocUncompressedBytes)} uncompressed)`],
      ['digest table', bytes(s.digestTableBytes)],
      ['original layers', `${s.originalLayers} (${bytes(s.originalLayerBytes)})`],
      ['dedup / compression', `${ratio(s.dedupRatio)} / ${ratio(s.compressionRatio)}`],
      ['original / chunked size', ratio(s.sizeVsOriginal)],
    ]),
  ].join('\n');
}

export async function run(a: Common & { image: string }): Promise<unknown> {
  const r = await inspect(a.image, platformOf(a), transportOf(a));
  if (a.json) return r.image ?? r.layout;
  if (r.image) return imageText(r.image);
  const l = r.layout!;
  const t = l.totals;
  return [
    ...l.images.map(imageText),
    `layout ${l.layout}: ${t.images} chunked image(s)`,
    table([
      ['file bytes (all images)', bytes(t.fileBytes)],
      ['original layers', bytes(t.originalLayerBytes)],
      ['unique chunks', `${t.uniqueChunks} (${bytes(t.uniqueChunkBytes)})`],
      ['shared between images', `${t.sharedChunks} chunks (${bytes(t.sharedChunkBytes)})`],
      ['packs on disk', `${t.packs} (${bytes(t.packBytes)})`],
      ['dedup ratio', ratio(t.dedupRatio)],
    ]),
  ].join('\n\n');
}
