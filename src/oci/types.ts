/** OCI and Docker media types and document shapes, with validating parsers. */
import { OcichunkError } from '../errors.js';

export const MT = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNd: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNdGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNdZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

export type Compression = 'none' | 'gzip' | 'zstd';

/** Declared compression of a layer media type, or undefined if the type is not a layer type we read. */
export function layerCompression(mediaType: string): Compression | undefined {
  switch (mediaType) {
    case MT.ociLayer:
    case MT.ociLayerNd:
    case MT.dockerLayerTar:
      return 'none';
    case MT.ociLayerGzip:
    case MT.ociLayerNdGzip:
    case MT.dockerLayerGzip:
    case MT.dockerLayerForeignGzip:
      return 'gzip';
    case MT.ociLayerZstd:
    case MT.ociLayerNdZstd:
      return 'zstd';
    default:
      return undefined;
  }
}

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  rootfs?: { type: string; diff_ids: string[] };
  [k: string]: unknown;
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function assertDigest(d: unknown, what: string): asserts d is string {
  if (typeof d !== 'string' || !DIGEST_RE.test(d)) {
    throw new OcichunkError(
      typeof d === 'string' && /^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(d) ? 'EUNSUPPORTED' : 'ECORRUPT',
      `${what}: unsupported or invalid digest ${JSON.stringify(d)} (only sha256 is supported)`,
    );
  }
}

export function parseJson(bytes: Buffer | string, what: string): unknown {
  try {
    return JSON.parse(typeof bytes === 'string' ? bytes : bytes.toString('utf8'));
  } catch (e) {
    throw new OcichunkError('ECORRUPT', `${what}: invalid JSON (${(e as Error).message})`);
  }
}

export function checkDescriptor(d: unknown, what: string): Descriptor {
  const o = d as Descriptor;
  if (!o || typeof o !== 'object' || typeof o.mediaType !== 'string') {
    throw new OcichunkError('ECORRUPT', `${what}: descriptor without mediaType`);
  }
  assertDigest(o.digest, what);
  if (!Number.isSafeInteger(o.size) || o.size < 0) {
    throw new OcichunkError('ECORRUPT', `${what}: descriptor ${o.digest} has invalid size ${o.size}`);
  }
  return o;
}

export function isIndexType(mt: string | undefined): boolean {
  return mt === MT.ociIndex || mt === MT.dockerList;
}

export function isManifestType(mt: string | undefined): boolean {
  return mt === MT.ociManifest || mt === MT.dockerManifest;
}

/** Parse a manifest or index document; the media type comes from the descriptor or the document. */
export function parseManifestDoc(
  bytes: Buffer,
  descMediaType: string | undefined,
  what: string,
): { kind: 'index'; doc: ImageIndex; mediaType: string } | { kind: 'manifest'; doc: ImageManifest; mediaType: string } {
  const doc = parseJson(bytes, what) as Record<string, unknown>;
  if (!doc || typeof doc !== 'object') throw new OcichunkError('ECORRUPT', `${what}: not a JSON object`);
  const mt = (doc.mediaType as string | undefined) ?? descMediaType ?? (Array.isArray(doc.manifests) ? MT.ociIndex : MT.ociManifest);
  if (descMediaType && doc.mediaType && descMediaType !== doc.mediaType) {
    throw new OcichunkError('ECORRUPT', `${what}: media type ${String(doc.mediaType)} differs from its descriptor's ${descMediaType}`);
  }
  if (doc.schemaVersion !== 2) {
    throw new OcichunkError('EUNSUPPORTED', `${what}: unsupported schemaVersion ${String(doc.schemaVersion)}`);
  }
  if (isIndexType(mt)) {
    if (!Array.isArray(doc.manifests)) throw new OcichunkError('ECORRUPT', `${what}: index without manifests`);
    (doc.manifests as unknown[]).forEach((m, i) => checkDescriptor(m, `${what} manifests[${i}]`));
    return { kind: 'index', doc: doc as unknown as ImageIndex, mediaType: mt };
  }
  if (isManifestType(mt)) {
    checkDescriptor(doc.config, `${what} config`);
    if (!Array.isArray(doc.layers)) throw new OcichunkError('ECORRUPT', `${what}: manifest without layers`);
    (doc.layers as unknown[]).forEach((l, i) => checkDescriptor(l, `${what} layers[${i}]`));
    return { kind: 'manifest', doc: doc as unknown as ImageManifest, mediaType: mt };
  }
  throw new OcichunkError('EUNSUPPORTED', `${what}: unsupported manifest media type ${mt}`);
}

export function platformString(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}`;
}

const ARCH_MAP: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

export function hostPlatform(): Platform {
  const arch = ARCH_MAP[process.arch] ?? process.arch;
  return { os: 'linux', architecture: arch, ...(arch === 'arm64' ? { variant: 'v8' } : {}) };
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !p)) {
    throw new OcichunkError('EUSAGE', `invalid platform ${JSON.stringify(s)}: expected os/arch[/variant]`);
  }
  return { os: parts[0], architecture: parts[1], ...(parts[2] ? { variant: parts[2] } : {}) };
}

/** Does descriptor platform `have` satisfy the wanted platform? A missing variant matches the default. */
export function platformMatches(have: Platform | undefined, want: Platform): boolean {
  if (!have) return false;
  if (have.os !== want.os || have.architecture !== want.architecture) return false;
  if (!want.variant) return true;
  const hv = have.variant ?? (have.architecture === 'arm64' ? 'v8' : undefined);
  return hv === want.variant;
}
