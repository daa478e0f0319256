/**
 * A source that answers reads of small documents (index, manifests, config, TOC) from bytes read
 * before, by another source for the same reference (another thread's: MountedImage fetches them
 * while its mount worker starts), and sends everything else to the source it wraps. Each document
 * is checked against the descriptor asked for (size and SHA-256), as a transport checks what it
 * reads; one that does not match is read again.
 */
import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/types.js';
import { sha256Digest, type RangeReader } from '../store/blobstore.js';
import type { ImageSource, TransferReport } from './types.js';

export interface KnownDocuments {
  top?: { desc: Descriptor; bytes: Uint8Array };
  /** documents read, by digest */
  docs: Array<{ digest: string; bytes: Uint8Array }>;
  /** why the reads stopped, if they failed */
  error?: { code: string; message: string };
}

const asBuffer = (u: Uint8Array) => (Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength));

export class KnownDocumentsSource implements ImageSource {
  private readonly docs = new Map<string, Buffer>();
  private readonly top?: { desc: Descriptor; bytes: Buffer };
  readonly blobFile?: (desc: Descriptor) => string | undefined;
  readonly referrers?: (digest: string) => Promise<Descriptor[]>;
  readonly transferReport?: () => TransferReport;

  constructor(
    private readonly src: ImageSource,
    known: KnownDocuments,
  ) {
    for (const d of known.docs) this.docs.set(d.digest, asBuffer(d.bytes));
    if (known.top) this.top = { desc: known.top.desc, bytes: asBuffer(known.top.bytes) };
    if (src.blobFile) this.blobFile = (d) => src.blobFile!(d);
    if (src.referrers) this.referrers = (d) => src.referrers!(d);
    if (src.transferReport) this.transferReport = () => src.transferReport!();
  }

  get name(): string {
    return this.src.name;
  }
  get remote(): boolean | undefined {
    return this.src.remote;
  }

  getTop(): Promise<{ desc: Descriptor; bytes: Buffer }> {
    return this.top ? Promise.resolve(this.top) : this.src.getTop();
  }

  readBlob(desc: Descriptor, what: string, max?: number): Promise<Buffer> {
    const b = this.docs.get(desc.digest);
    if (b && b.length === desc.size && (max === undefined || b.length <= max) && sha256Digest(b) === desc.digest) return Promise.resolve(b);
    return this.src.readBlob(desc, what, max);
  }

  openBlob(desc: Descriptor, what: string): Promise<Readable> {
    return this.src.openBlob(desc, what);
  }
  openRanges(desc: Descriptor): Promise<RangeReader> {
    return this.src.openRanges(desc);
  }
  close(): Promise<void> {
    return this.src.close();
  }
}
