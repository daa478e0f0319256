/**
 * Content digests derived from an original image: each layer scanned as a conversion scans it
 * (same chunker, same mtime handling), its chunks only hashed and named, nothing packed or written.
 * Conversion is deterministic, so these are the content digests a faithful chunked image records
 * (crates/core/src/format/build.rs): `verify --against-original` compares them.
 */
import type { Readable } from 'node:stream';
import { withContext } from '../errors.js';
import { native, type ChunkerSpec } from '../native/index.js';
import type { Descriptor } from '../oci/types.js';
import type { ImageSource } from '../transports/types.js';
import { throwIfAborted } from '../util/abort.js';
import { ChunkIndex } from './chunk-index.js';
import { canonOf, DEFAULT_BATCH_BYTES, LayerScanner, type LayerInput } from './scan.js';

export interface ContentOptions {
  chunker: ChunkerSpec;
  /** mtimes clamped to this; undefined: kept */
  sourceDateEpoch?: number;
  threads?: number;
  signal?: AbortSignal;
  /** called after each layer */
  progress?: (layer: number, layers: number) => void;
}

/** Each layer's content digest and the image's, as converting `layers` with these options would give them. */
export async function originalContentDigests(src: ImageSource, layers: Descriptor[], opts: ContentOptions): Promise<{ layers: string[]; image: string }> {
  const chunkIndex = new ChunkIndex();
  const scanOpts = {
    chunker: opts.chunker,
    threads: opts.threads ?? 0,
    batchBytes: DEFAULT_BATCH_BYTES,
    groupBelow: 0,
    ...canonOf(opts.sourceDateEpoch),
    signal: opts.signal,
  };
  const out: string[] = [];
  for (const [i, layer] of layers.entries()) {
    throwIfAborted(opts.signal, `content of ${src.name}`);
    const what = `${src.name} original layer ${i} (${layer.digest})`;
    const file = src.blobFile?.(layer);
    try {
      // digest and size are verified while the layer is read
      let input: LayerInput;
      if (file) input = { file, digest: layer.digest, size: layer.size };
      else input = { stream: (await src.openBlob(layer, what)) as Readable };
      const draft = await new LayerScanner(scanOpts, chunkIndex).scan(input, what);
      out.push(draft.contentDigest(chunkIndex.dict));
    } catch (e) {
      throw withContext(e, what, 'ECORRUPT');
    }
    opts.progress?.(i + 1, layers.length);
  }
  return { layers: out, image: native.imageContentDigest(out) };
}
