/**
 * docker://HOST[:PORT]/REPO[:TAG|@DIGEST] — an OCI distribution registry, as source and as sink.
 * The sink uploads blobs in the background with bounded concurrency (from a local temp file, so a
 * failed upload can be resumed or restarted), skips blobs the repository already has, mounts
 * blobs from the source repository when both live on one registry, and writes manifests only
 * after every blob they reference is there — the tag last.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OcichunkError } from '../errors.js';
import { MT, isIndexType, isManifestType, parseManifestDoc, type Descriptor, type ImageIndex } from '../oci/types.js';
import { Limiter, mapLimit } from '../util/limit.js';
import { acquireClient, type RegistryClient, type RegistryOptions } from '../registry/client.js';
import { createTempBlob, sha256Digest, type BlobWriter, type RangeReader, type StagedBlob } from '../store/blobstore.js';
import { collectChunkedManifests } from './chunked-scan.js';
import type { ImageSink, ImageSource, TransferEvent, TransferReport } from './types.js';

import { type DockerRef, formatDockerRef, parseDockerRef } from './docker-ref.js';

export { type DockerRef, formatDockerRef, parseDockerRef };

export interface RegistryTransportOptions extends RegistryOptions {
  /** Parallel blob uploads (default 4). */
  concurrency?: number;
  /** Where upload staging files go (default: the system temp directory). */
  tmpDir?: string;
  onTransfer?: (e: TransferEvent) => void;
}

function isManifestLike(mt: string): boolean {
  return isIndexType(mt) || isManifestType(mt);
}

export class RegistrySource implements ImageSource {
  readonly client: RegistryClient;
  readonly remote = true;
  private readonly release: () => void;
  /** `client`: read through a sink's client (the sink holds it; closing this source lets nothing go). */
  constructor(
    readonly ref: DockerRef,
    readonly opts: RegistryTransportOptions = {},
    client?: RegistryClient,
  ) {
    if (client) {
      this.client = client;
      this.release = () => {};
    } else ({ client: this.client, release: this.release } = acquireClient(ref.apiHost, opts));
  }
  get name(): string {
    return formatDockerRef(this.ref);
  }
  get repo(): string {
    return this.ref.repo;
  }
  async getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
    const r = this.ref.digest ?? this.ref.tag!;
    const m = await this.client.getManifest(this.repo, r, this.name);
    return { desc: { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length }, bytes: m.bytes };
  }
  async readBlob(desc: Descriptor, what: string, max = 64 << 20): Promise<Buffer> {
    if (isManifestLike(desc.mediaType)) {
      const m = await this.client.getManifest(this.repo, desc.digest, what);
      if (m.bytes.length !== desc.size) {
        throw new OcichunkError('EDIGEST', `${what}: manifest ${desc.digest} has ${m.bytes.length} bytes, descriptor says ${desc.size}`);
      }
      return m.bytes;
    }
    return this.client.getBlobBytes(this.repo, desc, what, max);
  }
  async openBlob(desc: Descriptor, what: string): Promise<Readable> {
    return this.client.openBlob(this.repo, desc, what);
  }
  async openRanges(desc: Descriptor): Promise<RangeReader> {
    return new RegistryRangeReader(this.client, this.repo, desc, this.opts.tmpDir ?? os.tmpdir());
  }
  /** Referrers of a manifest: the referrers API where the registry has it, else the tag schema. */
  async referrers(digest: string): Promise<Descriptor[]> {
    const viaApi = await this.client.referrers(this.repo, digest, `${this.name} referrers of ${digest}`);
    if (viaApi) return viaApi.manifests ?? [];
    const tag = referrersTag(digest);
    try {
      const m = await this.client.getManifest(this.repo, tag, `${this.name} referrers tag ${tag}`);
      const p = parseManifestDoc(m.bytes, m.mediaType, `${this.name}:${tag}`);
      return p.kind === 'index' ? p.doc.manifests : [];
    } catch (e) {
      if (e instanceof OcichunkError && e.code === 'ENOTFOUND') return [];
      throw e;
    }
  }
  transferReport(): TransferReport {
    return {
      endpoint: this.client.host,
      bytesDownloaded: this.client.stats.bytesDownloaded,
      requests: this.client.stats.requests,
      retries: this.client.stats.retries,
    };
  }
  async close(): Promise<void> {
    this.release();
  }
}

export function referrersTag(digest: string): string {
  return digest.replace(':', '-');
}

/**
 * Positional reads with single-range requests. A registry that answers with the whole blob is
 * read once into a verified temp file, and later reads come from there.
 */
class RegistryRangeReader implements RangeReader {
  private whole: Promise<fsp.FileHandle> | undefined;
  private tmp: string | undefined;
  constructor(
    private readonly client: RegistryClient,
    private readonly repo: string,
    private readonly desc: Descriptor,
    private readonly tmpDir: string,
  ) {}
  get size(): number {
    return this.desc.size;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.desc.size) {
      throw new OcichunkError('ECORRUPT', `blob ${this.desc.digest}: range ${offset}+${length} beyond its ${this.desc.size} bytes`);
    }
    if (length === 0) return Buffer.alloc(0);
    if (!this.whole) {
      const what = `${this.client.host}/${this.repo} blob ${this.desc.digest}`;
      const r = await this.client.getRange(this.repo, this.desc.digest, offset, length, what);
      if ('bytes' in r) return r.bytes;
      r.whole.destroy();
      this.whole ??= this.fetchWhole(what);
    }
    const fh = await this.whole;
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new OcichunkError('ECORRUPT', `blob ${this.desc.digest}: short read at ${offset}`);
    return buf;
  }
  private async fetchWhole(what: string): Promise<fsp.FileHandle> {
    await fsp.mkdir(this.tmpDir, { recursive: true });
    this.tmp = path.join(this.tmpDir, `ocichunk-blob-${process.pid}-${randomBytes(6).toString('hex')}`);
    await pipeline(this.client.openBlob(this.repo, this.desc, what), fs.createWriteStream(this.tmp, { mode: 0o600 }));
    return fsp.open(this.tmp, 'r');
  }
  async close(): Promise<void> {
    if (this.whole) await (await this.whole.catch(() => undefined))?.close();
    if (this.tmp) await fsp.rm(this.tmp, { force: true });
  }
}

interface PendingManifest {
  bytes: Buffer;
  mediaType: string;
}

export class RegistrySink implements ImageSink {
  readonly client: RegistryClient;
  private readonly releaseClient: () => void;
  private readonly known = new Set<string>();
  private readonly uploads = new Map<string, Promise<void>>();
  private readonly manifests = new Map<string, PendingManifest>();
  /** digest -> whether the registry said it processed the manifest's subject (OCI-Subject) */
  private readonly pushedManifests = new Map<string, boolean>();
  private failure: unknown;
  /** uploads running at once */
  private readonly uploadSlots: Limiter;
  private readonly tmpDir: string;
  private readonly temps = new Set<string>();
  readonly report = { blobsUploaded: 0, bytesUploaded: 0, blobsSkipped: 0, bytesSkipped: 0, blobsMounted: 0, bytesMounted: 0 };

  constructor(
    readonly ref: DockerRef,
    readonly opts: RegistryTransportOptions = {},
  ) {
    if (ref.digest) throw new OcichunkError('EUSAGE', `${formatDockerRef(ref)}: a destination needs a tag, not a digest`);
    ({ client: this.client, release: this.releaseClient } = acquireClient(ref.apiHost, opts));
    this.uploadSlots = new Limiter(Math.max(1, opts.concurrency ?? 4));
    this.tmpDir = opts.tmpDir ?? os.tmpdir();
  }
  get name(): string {
    return formatDockerRef(this.ref);
  }
  get repo(): string {
    return this.ref.repo;
  }
  private what(d: string): string {
    return `${this.name} blob ${d}`;
  }

  async hasBlob(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean> {
    this.rethrow();
    if (this.known.has(desc.digest) || this.uploads.has(desc.digest)) return true;
    const size = await this.client.headBlob(this.repo, desc.digest, this.what(desc.digest));
    if (size === undefined) return false;
    if (Number.isFinite(size) && size !== desc.size) {
      throw new OcichunkError('EDIGEST', `${this.what(desc.digest)}: the registry holds ${size} bytes, expected ${desc.size}`);
    }
    this.known.add(desc.digest);
    return true;
  }

  private rethrow(): void {
    if (this.failure) throw this.failure;
  }

  /** Upload a local file in the background (unless the registry has the blob); `done` cleans up. */
  private enqueue(file: string, desc: { digest: string; size: number }, done?: () => Promise<void>): void {
    if (this.uploads.has(desc.digest) || this.known.has(desc.digest)) {
      void done?.();
      return;
    }
    const what = this.what(desc.digest);
    const p = (async () => {
      try {
        await this.uploadSlots.run(async () => {
          if (await this.client.headBlob(this.repo, desc.digest, what)) {
            this.count('skip', desc);
          } else {
            this.opts.onTransfer?.({ kind: 'upload', digest: desc.digest, size: desc.size, done: false });
            await this.client.uploadFile(this.repo, file, desc, what);
            this.count('upload', desc);
          }
          this.known.add(desc.digest);
        });
      } finally {
        await done?.();
      }
    })();
    p.catch((e) => {
      this.failure ??= e;
    });
    this.uploads.set(desc.digest, p);
  }

  private count(kind: 'upload' | 'skip' | 'mount', desc: { digest: string; size: number }): void {
    if (kind === 'upload') {
      this.report.blobsUploaded++;
      this.report.bytesUploaded += desc.size;
    } else if (kind === 'skip') {
      this.report.blobsSkipped++;
      this.report.bytesSkipped += desc.size;
    } else {
      this.report.blobsMounted++;
      this.report.bytesMounted += desc.size;
    }
    this.opts.onTransfer?.({ kind, digest: desc.digest, size: desc.size, done: true });
  }

  /** Wait for every background upload; the first failure is thrown. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.uploads.values()]);
    this.rethrow();
  }

  async createBlobWriter(): Promise<BlobWriter> {
    await fsp.mkdir(this.tmpDir, { recursive: true });
    const t = await createTempBlob(path.join(this.tmpDir, `ocichunk-upload-${process.pid}-${randomBytes(6).toString('hex')}`), 0o600);
    this.temps.add(t.path);
    const remove = async () => {
      this.temps.delete(t.path);
      await t.discard();
    };
    return {
      get size() {
        return t.size;
      },
      write: (chunk: Buffer) => t.write(chunk),
      commit: async (expected) => {
        let got: { digest: string; size: number };
        try {
          got = await t.finish(expected);
        } catch (e) {
          this.temps.delete(t.path);
          throw e;
        }
        this.rethrow();
        if (this.known.has(got.digest) || this.uploads.has(got.digest)) {
          this.count('skip', got);
          await remove();
        } else this.enqueue(t.path, got, remove);
        return got;
      },
      abort: remove,
    };
  }

  async putBlob(bytes: Buffer): Promise<{ digest: string; size: number }> {
    this.rethrow();
    const digest = sha256Digest(bytes);
    const desc = { digest, size: bytes.length };
    if (!(await this.hasBlob(desc))) {
      this.opts.onTransfer?.({ kind: 'upload', digest, size: bytes.length, done: false });
      await this.client.uploadBytes(this.repo, bytes, digest, this.what(digest));
      this.known.add(digest);
      this.count('upload', desc);
    }
    return desc;
  }

  async stageBlobFile(file: string, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<StagedBlob> {
    return {
      commit: async () => this.enqueue(file, desc),
      abort: async () => {},
    };
  }

  async mountFrom(src: ImageSource, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean> {
    if (!(src instanceof RegistrySource) || src.client !== this.client || src.repo === this.repo) return false;
    if (this.known.has(desc.digest) || this.uploads.has(desc.digest)) return true;
    if (await this.client.mountBlob(this.repo, src.repo, desc.digest, this.what(desc.digest))) {
      this.known.add(desc.digest);
      this.count('mount', { digest: desc.digest, size: desc.size });
      return true;
    }
    return false;
  }

  async hasManifest(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean> {
    if (this.manifests.has(desc.digest)) return true;
    return (await this.client.headManifest(this.repo, desc.digest, `${this.name} manifest ${desc.digest}`))?.digest === desc.digest;
  }

  async putManifest(bytes: Buffer, mediaType: string): Promise<{ digest: string; size: number }> {
    const digest = sha256Digest(bytes);
    this.manifests.set(digest, { bytes, mediaType });
    return { digest, size: bytes.length };
  }

  /** Push a remembered manifest by digest (after the blobs it needs). */
  private async pushManifest(digest: string, ref = digest): Promise<{ subjectAccepted: boolean }> {
    const m = this.manifests.get(digest);
    if (!m) throw new OcichunkError('EINTERNAL', `${this.name}: manifest ${digest} was never given to the sink`);
    const done = this.pushedManifests.get(digest);
    if (ref === digest && done !== undefined) return { subjectAccepted: done };
    const r = await this.client.putManifest(this.repo, ref, m.bytes, m.mediaType, `${this.name} manifest ${ref}`);
    if (ref === digest) this.pushedManifests.set(digest, r.subjectAccepted);
    return r;
  }

  /** Manifests are pushed children first: image manifests, then indexes, then the tag. */
  private async pushAllManifests(): Promise<void> {
    await this.flush();
    const order = [...this.manifests.entries()].sort((a, b) => Number(isIndexType(a[1].mediaType)) - Number(isIndexType(b[1].mediaType)));
    for (const [d] of order) await this.pushManifest(d);
  }

  async putReferrer(desc: Descriptor, subject: Descriptor): Promise<{ via: 'api' | 'tag' }> {
    await this.pushAllManifests();
    const r = await this.pushManifest(desc.digest, desc.digest);
    // registries with the referrers API answer with OCI-Subject; others need the tag schema
    const api = r.subjectAccepted || (await this.client.referrers(this.repo, subject.digest, `${this.name} referrers`)) !== undefined;
    if (api) return { via: 'api' };
    const tag = referrersTag(subject.digest);
    let index: ImageIndex = { schemaVersion: 2, mediaType: MT.ociIndex, manifests: [] };
    try {
      const cur = await this.client.getManifest(this.repo, tag, `${this.name}:${tag}`);
      const p = parseManifestDoc(cur.bytes, cur.mediaType, `${this.name}:${tag}`);
      if (p.kind === 'index') index = { ...p.doc, mediaType: MT.ociIndex };
    } catch (e) {
      if (!(e instanceof OcichunkError && e.code === 'ENOTFOUND')) throw e;
    }
    if (!index.manifests.some((m) => m.digest === desc.digest)) index.manifests.push(desc);
    const bytes = Buffer.from(JSON.stringify(index));
    await this.client.putManifest(this.repo, tag, bytes, MT.ociIndex, `${this.name}:${tag}`);
    return { via: 'tag' };
  }

  async chunkedManifests(): Promise<Descriptor[]> {
    const tags = (await this.client.listTags(this.repo, `${this.name} tags`)).sort().slice(0, 500);
    // a few requests at a time; results kept in tag order so the outcome does not depend on timing
    const found = await mapLimit(tags, 8, async (tag): Promise<Descriptor | undefined> => {
      // only a way to find chunks to reuse: a tag that cannot be read is skipped, and only
      // indexes are fetched (HEAD first: registries do not count it as a pull)
      try {
        const head = await this.client.headManifest(this.repo, tag, `${this.name}:${tag}`);
        if (head?.mediaType && !isIndexType(head.mediaType)) return undefined;
        const m = await this.client.getManifest(this.repo, tag, `${this.name}:${tag}`);
        if (isIndexType(m.mediaType)) return { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length };
      } catch (e) {
        if (!(e instanceof OcichunkError)) throw e;
      }
      return undefined;
    });
    return collectChunkedManifests(
      this.asSource(),
      found.filter((d): d is Descriptor => !!d),
    );
  }

  asSource(): ImageSource {
    return new RegistrySource({ ...this.ref, tag: undefined, digest: undefined }, this.opts, this.client);
  }

  async setTag(desc: Descriptor): Promise<void> {
    await this.pushAllManifests();
    if (!this.manifests.has(desc.digest)) {
      throw new OcichunkError('EINTERNAL', `${this.name}: setTag(${desc.digest}) for a manifest never given to the sink`);
    }
    const cur = await this.client.headManifest(this.repo, this.ref.tag!, `${this.name}`).catch(() => undefined);
    if (cur?.digest === desc.digest) return;
    await this.pushManifest(desc.digest, this.ref.tag!);
  }

  transferReport(): TransferReport {
    return {
      endpoint: this.client.host,
      ...this.report,
      bytesDownloaded: this.client.stats.bytesDownloaded,
      requests: this.client.stats.requests,
      retries: this.client.stats.retries,
    };
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.releaseClient();
    }
  }

  async abort(): Promise<void> {
    try {
      await Promise.allSettled([...this.uploads.values()]);
      await Promise.all([...this.temps].map((t) => fsp.rm(t, { force: true })));
      this.temps.clear();
    } finally {
      this.releaseClient();
    }
  }
}
