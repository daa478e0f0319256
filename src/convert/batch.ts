/**
 * Many conversions in one go (`ocichunk convert --batch FILE`): each is an ordinary conversion, but
 * conversions into the same store share one chunk index, so that store's TOCs are read once, not
 * once per image, and the layers converted before are at hand without being read again.
 */
import path from 'node:path';
import { OcichunkError, withContext } from '../errors.js';
import { parseRef } from '../ref.js';
import { parseDockerRef } from '../transports/docker-ref.js';
import { ChunkIndex } from './chunk-index.js';
import { checkFrameOptions, convert, type ConvertOptions, type ConvertProgress, type ConvertResult } from './convert.js';

/** One conversion of a batch: references as `convert` takes them. */
export interface BatchItem {
  source: string;
  destination: string;
}

export interface BatchOptions extends Omit<ConvertOptions, 'chunkIndex' | 'onProgress'> {
  /** Progress of the conversion under way: `item` counts from 0. */
  onProgress?: (p: ConvertProgress & { item: number; items: number }) => void;
  /** Go on after a conversion fails (it is given as a BatchFailure); default: stop and throw. */
  keepGoing?: boolean;
}

/** A conversion of a batch that failed (with `keepGoing`); the error names the item. */
export interface BatchFailure {
  source: string;
  destination: string;
  error: OcichunkError;
}

export function isBatchFailure(r: ConvertResult | BatchFailure): r is BatchFailure {
  return 'error' in r && r.error instanceof OcichunkError;
}

/**
 * The store a destination writes into, where two destinations share one (an OCI layout directory,
 * a registry repository); undefined where none is shared (an archive is written whole).
 */
function storeOf(destination: string): string | undefined {
  const r = parseRef(destination);
  if (r.transport === 'oci') return `oci:${path.resolve(r.path)}`;
  if (r.transport === 'docker') {
    const d = parseDockerRef(r.path);
    return `docker://${d.host}/${d.repo}`;
  }
  return undefined;
}

/**
 * Parse a batch file: one conversion per line, `SOURCE DESTINATION` apart by white space; blank
 * lines and lines starting with `#` are skipped. `what` names the file in errors.
 */
export function parseBatch(text: string, what: string): BatchItem[] {
  const items: BatchItem[] = [];
  text.split('\n').forEach((line, i) => {
    const t = line.trim();
    if (!t || t.startsWith('#')) return;
    const f = t.split(/\s+/);
    if (f.length !== 2) {
      throw new OcichunkError('EUSAGE', `${what} line ${i + 1}: expected SOURCE DESTINATION, found ${f.length} field(s)`);
    }
    items.push({ source: f[0], destination: f[1] });
  });
  if (!items.length) throw new OcichunkError('EUSAGE', `${what}: no conversion listed`);
  return items;
}

/**
 * Convert each item in order; the first failure stops the batch (the conversions before it stay
 * done, with their tags) and is thrown naming the item, or with `keepGoing` takes its place in the
 * results and the batch goes on. Every reference is checked before anything is opened.
 */
export async function convertBatch(items: BatchItem[], { onProgress, keepGoing, ...opts }: BatchOptions = {}): Promise<Array<ConvertResult | BatchFailure>> {
  checkFrameOptions(opts);
  const stores = items.map(({ source, destination }) => {
    parseRef(source);
    return storeOf(destination);
  });
  const indexes = new Map<string, ChunkIndex>();
  const results: Array<ConvertResult | BatchFailure> = [];
  for (const [i, { source, destination }] of items.entries()) {
    const store = stores[i];
    let chunkIndex: ChunkIndex | undefined;
    if (store !== undefined) {
      chunkIndex = indexes.get(store) ?? new ChunkIndex();
      indexes.set(store, chunkIndex);
    }
    try {
      results.push(
        await convert(source, destination, {
          ...opts,
          ...(chunkIndex ? { chunkIndex } : {}),
          onProgress: onProgress && ((p) => onProgress({ ...p, item: i, items: items.length })),
        }),
      );
    } catch (e) {
      // the shared index may hold chunks this conversion claimed and never wrote: the next
      // conversion into that store reads it again
      if (store !== undefined) indexes.delete(store);
      const error = withContext(e, `conversion ${i + 1} of ${items.length} (${source} -> ${destination})`);
      if (!keepGoing || error.code === 'ECANCELED') throw error;
      results.push({ source, destination, error });
    }
  }
  return results;
}
