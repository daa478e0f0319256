/**
 * oci-archive:FILE[:REF] (a tarred OCI layout) and docker-archive:FILE[:REF] (`docker save` output,
 * both the classic form and Docker >= 25's, which embeds an OCI layout) as image sources.
 */
import type { Readable } from 'node:stream';
import { OcichunkError } from '../errors.js';
import { MT, checkDescriptor, parseJson, parseManifestDoc, type Descriptor, type ImageManifest } from '../oci/types.js';
import { sha256Digest, type RangeReader } from '../store/blobstore.js';
import { sniff } from '../layer/compression.js';
import { parseLayoutIndex, pickRef } from './oci-layout.js';
import { TarIndex, blobMember } from './tar-index.js';
import type { ImageSource } from './types.js';

/** Shared by both archive kinds: blobs addressed by digest, some of them synthesized in memory. */
abstract class ArchiveSource implements ImageSource {
  protected synthetic = new Map<string, Buffer>();
  /** digest -> member name, for blobs not stored under blobs/sha256/ (classic docker save). */
  protected memberOf = new Map<string, string>();
  constructor(
    protected readonly tar: TarIndex,
    private readonly transport: string,
    readonly file: string,
    readonly ref: string | undefined,
  ) {}
  get name(): string {
    return `${this.transport}:${this.file}${this.ref !== undefined ? ':' + this.ref : ''}`;
  }
  abstract getTop(): Promise<{ desc: Descriptor; bytes: Buffer }>;

  private member(desc: Descriptor, what: string): string {
    const name = this.memberOf.get(desc.digest) ?? blobMember(desc.digest);
    if (!this.tar.has(name)) throw new OcichunkError('ENOTFOUND', `${what}: blob ${desc.digest} is missing from ${this.tar.file}`);
    const m = this.tar.member(name);
    if (m.size !== desc.size) {
      throw new OcichunkError('EDIGEST', `${what}: blob ${desc.digest} has ${m.size} bytes, descriptor says ${desc.size}`);
    }
    return name;
  }

  async readBlob(desc: Descriptor, what: string, max = 64 << 20): Promise<Buffer> {
    const syn = this.synthetic.get(desc.digest);
    if (syn) return syn;
    const data = await this.tar.read(this.member(desc, what), max);
    const got = sha256Digest(data);
    if (got !== desc.digest) throw new OcichunkError('EDIGEST', `${what}: blob ${desc.digest} content hashes to ${got}`);
    return data;
  }

  async openBlob(desc: Descriptor, what: string): Promise<Readable> {
    return this.tar.verifiedStream(this.member(desc, what), desc.digest, desc.size, what);
  }

  async openRanges(desc: Descriptor): Promise<RangeReader> {
    return this.tar.ranges(this.member(desc, `blob ${desc.digest}`));
  }

  close(): Promise<void> {
    return this.tar.close();
  }
}

export class OciArchiveSource extends ArchiveSource {
  static async open(file: string, ref: string | undefined): Promise<OciArchiveSource> {
    return new OciArchiveSource(await TarIndex.open(file), 'oci-archive', file, ref);
  }
  async getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
    if (!this.tar.has('index.json')) throw new OcichunkError('ENOTFOUND', `${this.file} is not an OCI archive (no index.json)`);
    const idx = parseLayoutIndex(await this.tar.read('index.json'), `${this.file}:index.json`);
    const desc = pickRef(idx, this.ref, this.name);
    return { desc, bytes: await this.readBlob(desc, `${this.name} manifest`) };
  }
}

interface DockerSaveEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

const SNIFFED_TYPE = { gzip: MT.ociLayerGzip, zstd: MT.ociLayerZstd, none: MT.ociLayer } as const;

export class DockerArchiveSource extends ArchiveSource {
  static async open(file: string, ref: string | undefined): Promise<DockerArchiveSource> {
    return new DockerArchiveSource(await TarIndex.open(file), 'docker-archive', file, ref);
  }

  private pickEntry(entries: DockerSaveEntry[]): DockerSaveEntry {
    if (!Array.isArray(entries) || entries.length === 0) {
      throw new OcichunkError('ECORRUPT', `${this.file}: manifest.json lists no images`);
    }
    if (this.ref === undefined) {
      if (entries.length === 1) return entries[0];
      throw new OcichunkError('EUSAGE', `${this.file} holds ${entries.length} images; name one (NAME:TAG or @N)`);
    }
    const at = /^@(\d+)$/.exec(this.ref);
    if (at) {
      const e = entries[Number(at[1])];
      if (!e) throw new OcichunkError('ENOTFOUND', `${this.file}: no image @${at[1]}`);
      return e;
    }
    const want = this.ref.includes(':') ? this.ref : `${this.ref}:latest`;
    const e = entries.find((x) => (x.RepoTags ?? []).some((t) => t === want || t.endsWith('/' + want)));
    if (!e) {
      const tags = entries.flatMap((x) => x.RepoTags ?? []);
      throw new OcichunkError('ENOTFOUND', `${this.file}: no image tagged ${want} (tags: ${tags.join(', ') || 'none'})`);
    }
    return e;
  }

  async getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
    if (!this.tar.has('manifest.json')) {
      throw new OcichunkError('ENOTFOUND', `${this.file} is not a docker-archive (no manifest.json)`);
    }
    const entries = parseJson(await this.tar.read('manifest.json'), `${this.file}:manifest.json`) as DockerSaveEntry[];
    const entry = this.pickEntry(entries);
    if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers)) {
      throw new OcichunkError('ECORRUPT', `${this.file}: manifest.json entry without Config/Layers`);
    }
    // Docker >= 25 embeds an OCI layout: keep its manifest byte-identical.
    if (this.tar.has('index.json') && this.tar.has('oci-layout')) {
      const found = await this.findOciManifest(entry);
      if (found) return found;
    }
    return this.synthesize(entry);
  }

  private async findOciManifest(entry: DockerSaveEntry): Promise<{ desc: Descriptor; bytes: Buffer } | undefined> {
    const idx = parseLayoutIndex(await this.tar.read('index.json'), `${this.file}:index.json`);
    const configHex = /blobs\/sha256\/([a-f0-9]{64})$/.exec(entry.Config)?.[1];
    if (!configHex) return undefined;
    const stack = [...idx.manifests];
    while (stack.length) {
      const d = checkDescriptor(stack.shift(), `${this.file}:index.json`);
      const bytes = await this.readBlob(d, `${this.name} manifest ${d.digest}`);
      const parsed = parseManifestDoc(bytes, d.mediaType, `${this.name} manifest ${d.digest}`);
      if (parsed.kind === 'index') stack.push(...parsed.doc.manifests);
      else if (parsed.doc.config.digest === `sha256:${configHex}`) return { desc: d, bytes };
    }
    return undefined;
  }

  /** Classic docker save has no registry manifest: build an OCI one from manifest.json. */
  private async synthesize(entry: DockerSaveEntry): Promise<{ desc: Descriptor; bytes: Buffer }> {
    const config = await this.tar.read(entry.Config);
    const configDigest = sha256Digest(config);
    this.memberOf.set(configDigest, entry.Config);
    const layers: Descriptor[] = [];
    for (const l of entry.Layers) {
      const { digest, size } = await this.tar.digestOf(l);
      const head = size >= 4 ? await this.tar.ranges(l).read(0, 4) : Buffer.alloc(4);
      this.memberOf.set(digest, l);
      layers.push({ mediaType: SNIFFED_TYPE[sniff(head)], digest, size });
    }
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: configDigest, size: config.length },
      layers,
    };
    const bytes = Buffer.from(JSON.stringify(manifest));
    const desc: Descriptor = { mediaType: MT.ociManifest, digest: sha256Digest(bytes), size: bytes.length };
    this.synthetic.set(desc.digest, bytes);
    return { desc, bytes };
  }
}
