/**
 * One interface per role. An ImageSource reads manifests and blobs for one reference; an ImageSink
 * receives blobs, manifests and finally a tag. oci:, oci-archive:, docker-archive: and docker:// implement them.
 */
import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/types.js';
import type { BlobWriter, RangeReader, StagedBlob } from '../store/blobstore.js';

export interface ImageSource {
  /** Human-readable reference, used in messages. */
  readonly name: string;
  /** Reads cost a network round trip (readers then coalesce more and run requests in parallel). */
  readonly remote?: boolean;
  /** The descriptor and bytes the reference points to (an index or a manifest), verified. */
  getTop(): Promise<{ desc: Descriptor; bytes: Buffer }>;
  /** A small blob (manifest, index, config, TOC), verified against the descriptor. */
  readBlob(desc: Descriptor, what: string, max?: number): Promise<Buffer>;
  /** A stream of a (large) blob that errors at the end if digest or size do not match. */
  openBlob(desc: Descriptor, what: string): Promise<Readable>;
  /** Positional reads of a blob (pack blobs); callers verify chunk digests. */
  openRanges(desc: Descriptor): Promise<RangeReader>;
  /** The blob's file on this machine, when the transport has one (lets sinks link or copy it). */
  blobFile?(desc: Descriptor): string | undefined;
  /** Manifests whose `subject` is `digest` (OCI 1.1 referrers), where the transport can list them. */
  referrers?(digest: string): Promise<Descriptor[]>;
  /** Network figures, for transports that have them. */
  transferReport?(): TransferReport;
  close(): Promise<void>;
}

/** A blob transfer, for progress output. */
export interface TransferEvent {
  kind: 'upload' | 'skip' | 'mount';
  digest: string;
  size: number;
  /** false when an upload starts, true when a transfer (or a skip) is complete */
  done: boolean;
}

export interface TransferReport {
  /** The registry (host) the figures are about. */
  endpoint?: string;
  blobsUploaded?: number;
  bytesUploaded?: number;
  /** blobs the destination already had */
  blobsSkipped?: number;
  bytesSkipped?: number;
  /** blobs mounted from the source repository instead of uploaded */
  blobsMounted?: number;
  bytesMounted?: number;
  bytesDownloaded?: number;
  requests?: number;
  retries?: number;
}

export interface ImageSink {
  readonly name: string;
  hasBlob(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean>;
  createBlobWriter(): Promise<BlobWriter>;
  putBlob(bytes: Buffer): Promise<{ digest: string; size: number }>;
  /** Whether the sink holds a manifest (registries keep them apart from blobs; others use hasBlob). */
  hasManifest?(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean>;
  /** Store a manifest or index (registries keep them apart from blobs); pushed before the tag. */
  putManifest(bytes: Buffer, mediaType: string): Promise<{ digest: string; size: number }>;
  /** Get the blob without sending its bytes (a registry's cross-repository mount); false if not possible. */
  mountFrom?(src: ImageSource, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean>;
  /** Attach a manifest (already given to putManifest) as a referrer of `subject`, leaving tags alone. */
  putReferrer?(desc: Descriptor, subject: Descriptor): Promise<{ via: 'api' | 'tag' | 'layout' }>;
  transferReport?(): TransferReport;
  /** Stage a blob from a local file (hardlink or kernel copy); commit it once its content is verified. */
  stageBlobFile?(file: string, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<StagedBlob>;
  /** Chunked manifests already in the sink, so their chunks can be reused; in a stable order. */
  chunkedManifests(): Promise<Descriptor[]>;
  /** A source view of what the sink holds (to read TOCs and packs already there). */
  asSource(): ImageSource;
  /** Point the sink's reference at `desc` (written last). */
  setTag(desc: Descriptor): Promise<void>;
  /** Flush (e.g. write an archive); called once after setTag. */
  close(): Promise<void>;
  /** Give up after a failure: remove temporary state (blobs already committed stay). */
  abort?(): Promise<void>;
}
