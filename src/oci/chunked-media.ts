/** Media types and annotations of the ocichunk format (docs/format.md). Constants only. */
/** The TOC version this converter writes (readers read 1 and 2: docs/format.md §7). */
export const FORMAT_VERSION = 2;
export const CMT = {
  /** artifactType of the chunked image manifest. */
  artifact: 'application/vnd.ocichunk.image.v1',
  /** Config media type of the chunked manifest: the original config's bytes under a type runtimes will not unpack. */
  config: 'application/vnd.ocichunk.image.config.v1+json',
  /** The table of contents: zstd-compressed JSON, version 2 (chunk digests in the digest table). */
  toc: 'application/vnd.ocichunk.toc.v2.json+zstd',
  /** A version 1 TOC (chunk digests in its rows): read, no longer written. */
  tocV1: 'application/vnd.ocichunk.toc.v1.json+zstd',
  /** The digest table of a version 2 TOC: 32 raw bytes of SHA-256 per chunk, in TOC chunk order. */
  digests: 'application/vnd.ocichunk.digests.v1',
  /** A pack: concatenated independent zstd frames (itself a valid zstd stream). */
  pack: 'application/vnd.ocichunk.pack.v1+zstd',
} as const;

/** A TOC layer's media type (either version). */
export function isTocType(mediaType: string): boolean {
  return mediaType === CMT.toc || mediaType === CMT.tocV1;
}

/** The platform of a chunked manifest's index entry: matches no real platform, so runtimes skip it. */
export const CHUNKED_PLATFORM = { os: 'unknown', architecture: 'unknown' } as const;

export const ANN = {
  version: 'org.ocichunk.version',
  source: 'org.ocichunk.source.manifest',
  /** On the chunked manifest's index entry: the original's platform, os/arch[/variant]. */
  platform: 'org.ocichunk.platform',
  /**
   * On the chunked manifest's index entry: `{"digest","size"}` of its TOC, and of its config. A
   * hint that lets a reader fetch both along with the manifests (one round trip fewer); what
   * counts is the manifest, and a hint that differs from it is ignored.
   */
  tocHint: 'org.ocichunk.toc',
  configHint: 'org.ocichunk.config',
  tocUncompressedSize: 'org.ocichunk.toc.uncompressed-size',
  /** JSON array of the original layer digests, in TOC layer order. */
  sourceLayers: 'org.ocichunk.source.layers',
  /** Fingerprint of the options that shape TOC entries and chunk digests (chunker, mtime handling). */
  entryOptions: 'org.ocichunk.entry-options',
  /**
   * The image's content digest: of its files as the TOC holds them (entries with chunk digests for
   * chunk numbers), whatever frames, packs or destination hold them (docs/format.md §9).
   */
  contentDigest: 'org.ocichunk.content.digest',
  /** Present when mtimes were clamped: the time they were clamped to (seconds since the epoch). */
  sourceDateEpoch: 'org.ocichunk.source-date-epoch',
} as const;
