/** Media types and annotations of the ocichunk format (docs/format.md). Constants only. */
export const FORMAT_VERSION = 1;
export const CMT = {
  /** artifactType of the chunked image manifest. */
  artifact: 'application/vnd.ocichunk.image.v1',
  /** Config media type of the chunked manifest: the original config's bytes under a type runtimes will not unpack. */
  config: 'application/vnd.ocichunk.image.config.v1+json',
  /** The table of contents: zstd-compressed JSON. */
  toc: 'application/vnd.ocichunk.toc.v1.json+zstd',
  /** A pack: concatenated independent zstd frames (itself a valid zstd stream). */
  pack: 'application/vnd.ocichunk.pack.v1+zstd',
} as const;

/** The platform of a chunked manifest's index entry: matches no real platform, so runtimes skip it. */
export const CHUNKED_PLATFORM = { os: 'unknown', architecture: 'unknown' } as const;

export const ANN = {
  version: 'org.ocichunk.version',
  source: 'org.ocichunk.source.manifest',
  /** On the chunked manifest's index entry: the original's platform, os/arch[/variant]. */
  platform: 'org.ocichunk.platform',
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
