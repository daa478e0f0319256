/** oci:DIR[:REF] — an OCI image layout directory, as source and as sink. */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { OcichunkError } from '../errors.js';
import { MT, checkDescriptor, parseJson, type Descriptor, type ImageIndex } from '../oci/types.js';
import { BlobStore, writeFileAtomic, type RangeReader } from '../store/blobstore.js';
import type { ImageSink, ImageSource } from './types.js';
import { isChunkedDescriptor, collectChunkedManifests } from './chunked-scan.js';
import { cleanLayoutTemps, registerWriter, withLayoutLock, type LockOptions } from '../store/layout-lock.js';

export const REF_ANNOTATION = 'org.opencontainers.image.ref.name';
/** On an index.json entry of a referrer: the digest of the manifest it refers to. */
export const SUBJECT_ANNOTATION = 'dev.ocichunk.subject';

export async function readLayoutIndex(dir: string): Promise<ImageIndex> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(path.join(dir, 'index.json'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new OcichunkError('ENOTFOUND', `${dir} is not an OCI image layout (no index.json)`);
    }
    throw e;
  }
  return parseLayoutIndex(raw, `${dir}/index.json`);
}

/** Parse and check an image layout's index.json. */
export function parseLayoutIndex(raw: Buffer, where: string): ImageIndex {
  const idx = parseJson(raw, where) as ImageIndex;
  if (!idx || !Array.isArray(idx.manifests)) throw new OcichunkError('ECORRUPT', `${where}: no manifests array`);
  idx.manifests.forEach((m, i) => checkDescriptor(m, `${where} manifests[${i}]`));
  return idx;
}

/**
 * Read-modify-write index.json atomically across processes: under the layout's lock
 * (store/layout-lock.ts) the current index.json is read, `update` returns the new one (or
 * undefined to leave it), which is written to an owner-named temp file and renamed over index.json.
 * Readers never lock: they see the old or the new file whole.
 */
export async function updateLayoutIndex(
  dir: string,
  update: (idx: ImageIndex) => ImageIndex | undefined | Promise<ImageIndex | undefined>,
  opts: LockOptions = {},
): Promise<ImageIndex> {
  return withLayoutLock(
    dir,
    async () => {
      const idx = await readLayoutIndex(dir);
      const out = await update(idx);
      if (!out) return idx;
      await writeFileAtomic(path.join(dir, 'index.json'), JSON.stringify(out));
      return out;
    },
    opts,
  );
}

/** Pick the descriptor for `ref` (or the only one when ref is absent). */
export function pickRef(idx: ImageIndex, ref: string | undefined, where: string): Descriptor {
  if (ref === undefined) {
    if (idx.manifests.length === 1) return idx.manifests[0];
    const tags = idx.manifests.map((m) => m.annotations?.[REF_ANNOTATION]).filter(Boolean);
    throw new OcichunkError('EUSAGE', `${where} holds ${idx.manifests.length} images; name one of them: ${tags.join(', ') || '(untagged)'}`);
  }
  const found = idx.manifests.filter((m) => m.annotations?.[REF_ANNOTATION] === ref);
  if (found.length === 0) {
    const tags = idx.manifests.map((m) => m.annotations?.[REF_ANNOTATION]).filter(Boolean);
    throw new OcichunkError('ENOTFOUND', `${where}: no image tagged ${JSON.stringify(ref)} (tags: ${tags.join(', ') || 'none'})`);
  }
  return found[found.length - 1];
}

export class OciLayoutSource implements ImageSource {
  readonly store: BlobStore;
  constructor(
    readonly dir: string,
    readonly ref: string | undefined,
  ) {
    this.store = new BlobStore(dir);
  }
  get name(): string {
    return `oci:${this.dir}${this.ref !== undefined ? ':' + this.ref : ''}`;
  }
  async getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
    const idx = await readLayoutIndex(this.dir);
    const desc = pickRef(idx, this.ref, this.name);
    return { desc, bytes: await this.readBlob(desc, `${this.name} manifest`) };
  }
  readBlob(desc: Descriptor, what: string, max?: number): Promise<Buffer> {
    return this.store.readAll(desc, what, max);
  }
  async openBlob(desc: Descriptor, what: string): Promise<Readable> {
    return this.store.openRead(desc, what);
  }
  openRanges(desc: Descriptor): Promise<RangeReader> {
    return this.store.openRanges(desc.digest);
  }
  blobFile(desc: Descriptor): string {
    return this.store.blobPath(desc.digest);
  }
  async referrers(digest: string): Promise<Descriptor[]> {
    const idx = await readLayoutIndex(this.dir);
    return idx.manifests.filter((m) => m.annotations?.[SUBJECT_ANNOTATION] === digest);
  }
  async close(): Promise<void> {}
}

export class OciLayoutSink implements ImageSink {
  readonly store: BlobStore;
  private unregister: (() => Promise<void>) | undefined;
  constructor(
    readonly dir: string,
    readonly ref: string,
  ) {
    this.store = new BlobStore(dir);
  }
  get name(): string {
    return `oci:${this.dir}:${this.ref}`;
  }
  /**
   * Create the layout if needed and register this sink as a writer (a marker `ocichunk gc` waits
   * for: blobs written before the tag is set are not yet reachable from index.json), both under
   * the layout's lock; then remove what dead writers left (temp files, markers). The marker goes
   * at close() (or when the process exits).
   */
  async init(): Promise<void> {
    await fsp.mkdir(this.store.dir, { recursive: true });
    await withLayoutLock(this.dir, async () => {
      const layoutFile = path.join(this.dir, 'oci-layout');
      try {
        const cur = parseJson(await fsp.readFile(layoutFile), layoutFile) as { imageLayoutVersion?: string };
        if (cur.imageLayoutVersion !== '1.0.0') {
          throw new OcichunkError('EUNSUPPORTED', `${layoutFile}: unsupported imageLayoutVersion ${cur.imageLayoutVersion}`);
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await writeFileAtomic(layoutFile, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      }
      try {
        await fsp.access(path.join(this.dir, 'index.json'));
      } catch {
        await writeFileAtomic(path.join(this.dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: [] }));
      }
      this.unregister ??= await registerWriter(this.dir, this.name);
    });
    // best effort: a failure to clean up after others never fails this write
    await cleanLayoutTemps(this.dir).catch(() => undefined);
  }
  hasBlob(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean> {
    return this.store.has(desc.digest, desc.size);
  }
  createBlobWriter() {
    return this.store.createWriter();
  }
  putBlob(bytes: Buffer) {
    return this.store.putBytes(bytes);
  }
  putManifest(bytes: Buffer) {
    return this.store.putBytes(bytes);
  }
  /** A referrer in a layout: an untagged entry of index.json, annotated with its subject. */
  async putReferrer(desc: Descriptor, subject: Descriptor): Promise<{ via: 'layout' }> {
    await updateLayoutIndex(this.dir, (idx) => {
      if (idx.manifests.some((m) => m.digest === desc.digest && !m.annotations?.[REF_ANNOTATION])) return undefined;
      idx.manifests.push({ ...desc, annotations: { ...(desc.annotations ?? {}), [SUBJECT_ANNOTATION]: subject.digest } });
      return { ...idx, schemaVersion: 2, mediaType: MT.ociIndex };
    });
    return { via: 'layout' };
  }
  stageBlobFile(file: string, desc: Pick<Descriptor, 'digest' | 'size'>) {
    return this.store.stageFile(file, desc);
  }
  asSource(): ImageSource {
    return new OciLayoutSource(this.dir, undefined);
  }
  async chunkedManifests(): Promise<Descriptor[]> {
    const idx = await readLayoutIndex(this.dir);
    return collectChunkedManifests(this.asSource(), idx.manifests);
  }
  async setTag(desc: Descriptor): Promise<void> {
    await updateLayoutIndex(this.dir, (idx) => {
      const manifests = idx.manifests.filter((m) => m.annotations?.[REF_ANNOTATION] !== this.ref);
      manifests.push({ ...desc, annotations: { ...(desc.annotations ?? {}), [REF_ANNOTATION]: this.ref } });
      return { schemaVersion: 2, mediaType: MT.ociIndex, manifests };
    });
  }
  async close(): Promise<void> {
    const u = this.unregister;
    this.unregister = undefined;
    await u?.();
  }
}

export { isChunkedDescriptor };
