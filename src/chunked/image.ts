/**
 * Resolve a reference to one platform's image: the original manifest (what old clients pull), its
 * config, and — when present — the ocichunk chunked manifest next to it in the index.
 */
import { OcichunkError } from '../errors.js';
import { CMT, ANN, isTocType } from '../oci/chunked-media.js';
import {
  hostPlatform,
  isIndexType,
  parseJson,
  parseManifestDoc,
  parsePlatform,
  platformMatches,
  platformString,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  type Platform,
} from '../oci/types.js';
import type { ImageSource } from '../transports/types.js';
import { loadDigestTable, openToc, TOC_MAX_BLOB, type Toc } from './toc.js';
import type { NativeCheckedToc } from '../native/index.js';

export interface ManifestRef {
  desc: Descriptor;
  bytes: Buffer;
  manifest: ImageManifest;
}

export interface ResolvedImage {
  source: ImageSource;
  top: Descriptor;
  platform: Platform;
  original?: ManifestRef;
  chunked?: ManifestRef;
  config: { desc: Descriptor; bytes: Buffer; parsed: ImageConfig };
  /** the chunked manifest's TOC blob, being read along with the config (`resolveImage`'s `readToc`) */
  tocBlob?: Promise<Buffer>;
}

export interface ResolveOptions {
  /**
   * Start reading the chunked manifest's TOC along with the config (one round trip fewer for a
   * reader that opens the TOC next: a lazy mount).
   */
  readToc?: boolean;
}

function platformOfConfig(c: ImageConfig): Platform {
  return { os: c.os ?? 'linux', architecture: c.architecture ?? 'amd64', ...(c.variant ? { variant: c.variant } : {}) };
}

async function loadManifest(src: ImageSource, desc: Descriptor, bytes?: Buffer): Promise<ManifestRef> {
  const what = `${src.name} manifest ${desc.digest}`;
  const b = bytes ?? (await src.readBlob(desc, what));
  const parsed = parseManifestDoc(b, desc.mediaType, what);
  if (parsed.kind !== 'manifest') throw new OcichunkError('ECORRUPT', `${what}: expected an image manifest, found an index`);
  return { desc, bytes: b, manifest: parsed.doc };
}

/**
 * `top`: the source's top document when the caller has it already (saves fetching it again).
 * Documents known at once are fetched together: the original and the chunked manifest, then the
 * config (and with `readToc` the TOC).
 */
export async function resolveImage(
  src: ImageSource,
  wanted?: Platform,
  known?: { desc: Descriptor; bytes: Buffer },
  opts: ResolveOptions = {},
): Promise<ResolvedImage> {
  const top = known ?? (await src.getTop());
  const parsed = parseManifestDoc(top.bytes, top.desc.mediaType, `${src.name}`);
  let original: ManifestRef | undefined;
  let chunked: ManifestRef | undefined;
  let platform: Platform | undefined;
  let early: EarlyReads | undefined;
  if (parsed.kind === 'manifest') {
    const m = { desc: top.desc, bytes: top.bytes, manifest: parsed.doc };
    if (parsed.doc.artifactType === CMT.artifact) chunked = m;
    else original = m;
  } else {
    let index: ImageIndex = parsed.doc;
    const want = wanted ?? hostPlatform();
    // one level of nesting (an index of indexes) is followed for the wanted platform
    const nested = index.manifests.find((d) => isIndexType(d.mediaType) && platformMatches(d.platform, want));
    if (nested) {
      const b = await src.readBlob(nested, `${src.name} index ${nested.digest}`);
      const p = parseManifestDoc(b, nested.mediaType, `${src.name} index ${nested.digest}`);
      if (p.kind === 'index') index = p.doc;
    }
    const candidates = index.manifests.filter((d) => !isIndexType(d.mediaType));
    // a chunked entry's platform is unknown/unknown; its own platform is in an annotation
    const platformOf = (d: Descriptor): Platform | undefined =>
      d.artifactType === CMT.artifact && d.annotations?.[ANN.platform] ? parsePlatform(d.annotations[ANN.platform]) : d.platform;
    const images = candidates.filter((d) => d.artifactType === CMT.artifact || (d.platform?.os !== 'unknown' && d.platform?.architecture !== 'unknown'));
    const matching = images.filter((d) => platformMatches(platformOf(d), want));
    const pool = matching.length ? matching : images.length === 1 && !images[0].platform ? images : [];
    const paired = pool.find((d) => d.artifactType === CMT.artifact)?.annotations?.[ANN.source];
    const origDesc = pool.find((d) => d.artifactType !== CMT.artifact) ?? candidates.find((d) => d.digest === paired && d.artifactType !== CMT.artifact);
    if (!origDesc && !pool.some((d) => d.artifactType === CMT.artifact)) {
      const have = [...new Set(images.filter((d) => d.artifactType !== CMT.artifact).map((d) => platformString(d.platform)))].join(', ');
      throw new OcichunkError('ENOTFOUND', `${src.name}: no image for platform ${platformString(want)} (available: ${have || 'none'})`);
    }
    const chunkDesc =
      candidates.find((d) => d.artifactType === CMT.artifact && origDesc && d.annotations?.[ANN.source] === origDesc.digest) ??
      (origDesc ? undefined : pool.find((d) => d.artifactType === CMT.artifact));
    // a reader that opens the TOC next reads it (and the config) along with the manifests when the
    // index entry names them; the manifests decide whether those reads are the right ones
    if (opts.readToc && chunkDesc) early = earlyReads(src, chunkDesc);
    [original, chunked] = await Promise.all([origDesc && loadManifest(src, origDesc), chunkDesc && loadManifest(src, chunkDesc)]);
    platform = origDesc?.platform ?? (chunkDesc ? platformOf(chunkDesc) : undefined);
  }
  if (original && !chunked && src.referrers) {
    // attached with `convert --attach referrer`: the chunked manifest refers to the original
    const refs = (await src.referrers(original.desc.digest)).filter((d) => d.artifactType === CMT.artifact);
    if (refs.length) chunked = await loadManifest(src, refs[refs.length - 1]);
  }
  const cfgDesc = (original ?? chunked)!.manifest.config;
  const tocDesc = chunked?.manifest.layers[0];
  let tocBlob: Promise<Buffer> | undefined;
  if (opts.readToc && tocDesc && isTocType(tocDesc.mediaType) && tocDesc.size <= TOC_MAX_BLOB) {
    tocBlob = early?.toc && sameBlob(early.toc.desc, tocDesc) ? early.toc.bytes : src.readBlob(tocDesc, `${src.name} TOC ${tocDesc.digest}`, TOC_MAX_BLOB);
    // awaited by openChunked (or nobody, when reading the config fails)
    tocBlob.catch(() => {});
  }
  const cfgBytes = await (early?.config && sameBlob(early.config.desc, cfgDesc)
    ? early.config.bytes
    : src.readBlob(cfgDesc, `${src.name} config ${cfgDesc.digest}`));
  const cfg = parseJson(cfgBytes, `${src.name} config`) as ImageConfig;
  return {
    source: src,
    top: top.desc,
    platform: platform ?? platformOfConfig(cfg),
    original,
    chunked,
    config: { desc: cfgDesc, bytes: cfgBytes, parsed: cfg },
    ...(tocBlob ? { tocBlob } : {}),
  };
}

interface EarlyReads {
  toc?: { desc: Descriptor; bytes: Promise<Buffer> };
  config?: { desc: Descriptor; bytes: Promise<Buffer> };
}

/** The value of a TOC or config hint (ANN.tocHint, ANN.configHint) naming this blob. */
export function blobHintValue(d: { digest: string; size: number }): string {
  return JSON.stringify({ digest: d.digest, size: d.size });
}

/** A `{"digest","size"}` hint of an index entry (ANN.tocHint, ANN.configHint), or undefined. */
function blobHint(d: Descriptor, key: string, mediaType: string, max: number): Descriptor | undefined {
  const raw = d.annotations?.[key];
  if (typeof raw !== 'string' || raw.length > 200) return undefined;
  try {
    const h = JSON.parse(raw) as { digest?: unknown; size?: unknown };
    if (typeof h.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(h.digest)) return undefined;
    if (typeof h.size !== 'number' || !Number.isSafeInteger(h.size) || h.size < 0 || h.size > max) return undefined;
    return { mediaType, digest: h.digest, size: h.size };
  } catch {
    return undefined;
  }
}

/** Start reading the TOC and config an index entry names (hints: a wrong one costs a read, nothing else). */
function earlyReads(src: ImageSource, chunkDesc: Descriptor): EarlyReads {
  const out: EarlyReads = {};
  const toc = blobHint(chunkDesc, ANN.tocHint, CMT.toc, TOC_MAX_BLOB);
  const config = blobHint(chunkDesc, ANN.configHint, CMT.config, CONFIG_HINT_MAX);
  if (toc) out.toc = { desc: toc, bytes: src.readBlob(toc, `${src.name} TOC ${toc.digest}`, TOC_MAX_BLOB) };
  if (config) out.config = { desc: config, bytes: src.readBlob(config, `${src.name} config ${config.digest}`, CONFIG_HINT_MAX) };
  // awaited only when the manifests confirm them
  out.toc?.bytes.catch(() => {});
  out.config?.bytes.catch(() => {});
  return out;
}

/** the largest config read on a hint alone (a real one is a few KiB; convert names none larger) */
export const CONFIG_HINT_MAX = 4 << 20;

const sameBlob = (a: Descriptor, b: Descriptor) => a.digest === b.digest && a.size === b.size;

/**
 * What is wrong with the TOC and config hints of the chunked manifest's index entry (readers ignore
 * a wrong hint; `verify` reports it): a hint that is present must name the manifest's blob.
 */
export function hintProblems(img: ResolvedImage): string[] {
  const m = img.chunked;
  if (!m) return [];
  const out: string[] = [];
  const check = (key: string, mediaType: string, max: number, want: Descriptor | undefined) => {
    if (m.desc.annotations?.[key] === undefined) return;
    const h = blobHint(m.desc, key, mediaType, max);
    if (!h) out.push(`index entry of ${m.desc.digest}: ${key} is not {"digest","size"} of a blob`);
    else if (!want || !sameBlob(h, want))
      out.push(
        `index entry of ${m.desc.digest}: ${key} names ${h.digest} (${h.size} bytes), the manifest ${want ? `${want.digest} (${want.size} bytes)` : 'nothing'}`,
      );
  };
  check(ANN.tocHint, CMT.toc, TOC_MAX_BLOB, m.manifest.layers[0]);
  check(ANN.configHint, CMT.config, CONFIG_HINT_MAX, m.manifest.config);
  return out;
}

export interface ChunkedImage {
  image: ResolvedImage;
  manifest: ManifestRef;
  tocDesc: Descriptor;
  toc: Toc;
  /** the TOC checked and merged by the format module (crates/core/src/format): restore, the tree and the mount use it */
  checked: NativeCheckedToc;
  tocBytes: number;
  /** version 2: the digest table blob (loaded whole unless opened with `lazyDigests`) */
  digestsDesc?: Descriptor;
  /** bytes of the digest table read (the whole blob, or the sections a lazy reader needed) */
  digestBytes: number;
  packs: Descriptor[];
}

export interface OpenChunkedOptions {
  /**
   * Load no chunk digest now (version 2): a lazy reader loads the digest table sections of the
   * chunks it reads (ChunkReader). By default the whole table is read and checked.
   */
  lazyDigests?: boolean;
}

/** Open the chunked manifest of a resolved image and decode its TOC (and its digest table). */
export async function openChunked(img: ResolvedImage, opts: OpenChunkedOptions = {}): Promise<ChunkedImage> {
  const m = img.chunked;
  if (!m) {
    throw new OcichunkError('ENOTFOUND', `${img.source.name}: no ocichunk chunked manifest for ${platformString(img.platform)} (convert it first)`);
  }
  const tocDesc = m.manifest.layers[0];
  if (!tocDesc || !isTocType(tocDesc.mediaType)) {
    throw new OcichunkError('ECORRUPT', `${img.source.name}: chunked manifest ${m.desc.digest} has no TOC as its first layer`);
  }
  for (const l of m.manifest.layers.slice(1)) {
    if (l.mediaType !== CMT.digests && l.mediaType !== CMT.pack) {
      throw new OcichunkError('EUNSUPPORTED', `${img.source.name}: unknown layer media type ${l.mediaType} in chunked manifest`);
    }
  }
  const what = `${img.source.name} TOC ${tocDesc.digest}`;
  if (tocDesc.size > TOC_MAX_BLOB)
    throw new OcichunkError('ECORRUPT', `${what}: TOC blob of ${tocDesc.size} bytes is over the format's limit (${TOC_MAX_BLOB})`);
  const blob = await (img.tocBlob ?? img.source.readBlob(tocDesc, what, TOC_MAX_BLOB));
  const opened = openToc(blob, what);
  const { toc, checked } = opened;
  const info = checked.digestInfo();
  const v1 = tocDesc.mediaType === CMT.tocV1;
  if (v1 !== (info.version === 1)) {
    throw new OcichunkError('ECORRUPT', `${what}: a version ${info.version} TOC under media type ${tocDesc.mediaType}`);
  }
  const tables = m.manifest.layers.filter((l) => l.mediaType === CMT.digests);
  let digestsDesc: Descriptor | undefined;
  let digestBytes = 0;
  if (info.blob) {
    digestsDesc = tables[0];
    if (tables.length !== 1 || m.manifest.layers[1] !== digestsDesc || digestsDesc.digest !== info.blob || digestsDesc.size !== info.blobSize) {
      throw new OcichunkError('ECORRUPT', `${what}: the chunked manifest's second layer must be the TOC's digest table ${info.blob} of ${info.blobSize} bytes`);
    }
    if (!opts.lazyDigests) {
      const table = await img.source.readBlob(digestsDesc, `${img.source.name} digest table ${digestsDesc.digest}`, info.blobSize);
      loadDigestTable(opened, table);
      digestBytes = table.length;
    }
  } else if (tables.length) {
    throw new OcichunkError('ECORRUPT', `${what}: a version 1 TOC has no digest table, the manifest lists one`);
  }
  const packs = m.manifest.layers.filter((l) => l.mediaType === CMT.pack);
  const byDigest = new Map(packs.map((p) => [p.digest, p]));
  for (const p of toc.packs) {
    if (!byDigest.has(p)) throw new OcichunkError('ECORRUPT', `${what}: pack ${p} is not a layer of the chunked manifest`);
  }
  return {
    image: img,
    manifest: m,
    tocDesc,
    toc,
    checked,
    tocBytes: blob.length,
    ...(digestsDesc ? { digestsDesc } : {}),
    digestBytes,
    packs: toc.packs.map((p) => byDigest.get(p)!),
  };
}
