/**
 * A sink that stores nothing big: it keeps manifests, configs and TOCs in memory, hashes and counts
 * pack blobs without keeping them, and says it already has every original blob (so conversions do
 * not copy layers). Converting images into it tells exactly what a layout or registry would store,
 * which is how `analyze` predicts conversions.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { OcichunkError } from '../errors.js';
import type { Descriptor } from '../oci/types.js';
import { sha256Digest, type BlobWriter, type RangeReader } from '../store/blobstore.js';
import { collectChunkedManifests } from './chunked-scan.js';
import type { ImageSink, ImageSource } from './types.js';

export class CountingSink implements ImageSink {
  readonly name: string;
  /** Small blobs and manifests, kept. */
  private readonly kept = new Map<string, Buffer>();
  /** Sizes of blobs written through writers (packs), not kept. */
  readonly counted = new Map<string, number>();
  private readonly tops: Descriptor[] = [];

  constructor(name = 'memory:analysis') {
    this.name = name;
  }

  /** Every original blob counts as present (nothing is copied); our own blobs are. */
  async hasBlob(): Promise<boolean> {
    return true;
  }
  async hasManifest(): Promise<boolean> {
    return true;
  }

  async createBlobWriter(): Promise<BlobWriter> {
    const h = createHash('sha256');
    let size = 0;
    return {
      get size() {
        return size;
      },
      write: async (chunk: Buffer) => {
        h.update(chunk);
        size += chunk.length;
      },
      commit: async (expected) => {
        const digest = 'sha256:' + h.digest('hex');
        if (expected && (expected.digest !== digest || (expected.size !== undefined && expected.size !== size))) {
          throw new OcichunkError('EDIGEST', `blob ${expected.digest}: content hashes to ${digest}`);
        }
        this.counted.set(digest, size);
        return { digest, size };
      },
      abort: async () => {},
    };
  }

  async putBlob(bytes: Buffer): Promise<{ digest: string; size: number }> {
    const digest = sha256Digest(bytes);
    this.kept.set(digest, bytes);
    return { digest, size: bytes.length };
  }
  putManifest(bytes: Buffer): Promise<{ digest: string; size: number }> {
    return this.putBlob(bytes);
  }

  async chunkedManifests(): Promise<Descriptor[]> {
    return collectChunkedManifests(this.asSource(), this.tops);
  }

  asSource(): ImageSource {
    const kept = this.kept;
    const name = this.name;
    return {
      name,
      async getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
        throw new OcichunkError('EUNSUPPORTED', `${name} has no tags`);
      },
      async readBlob(desc: Descriptor, what: string): Promise<Buffer> {
        const b = kept.get(desc.digest);
        if (!b) throw new OcichunkError('ENOTFOUND', `${what}: ${desc.digest} is not kept by ${name}`);
        return b;
      },
      async openBlob(desc: Descriptor): Promise<Readable> {
        throw new OcichunkError('EUNSUPPORTED', `${name} keeps no content for ${desc.digest}`);
      },
      async openRanges(desc: Descriptor): Promise<RangeReader> {
        throw new OcichunkError('EUNSUPPORTED', `${name} keeps no content for ${desc.digest}`);
      },
      async close(): Promise<void> {},
    };
  }

  async setTag(desc: Descriptor): Promise<void> {
    this.tops.push(desc);
  }
  async close(): Promise<void> {}

  /** A kept blob (TOC, manifest). */
  get(digest: string): Buffer | undefined {
    return this.kept.get(digest);
  }

  /** A kept blob, no longer kept. */
  take(digest: string): Buffer | undefined {
    const b = this.kept.get(digest);
    this.kept.delete(digest);
    return b;
  }
}
