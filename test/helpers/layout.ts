/** Build small OCI layouts around tar files made by real tools, for synthetic and hostile inputs. */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

function sha(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

function putBlob(dir: string, b: Buffer): string {
  const d = sha(b);
  const p = path.join(dir, 'blobs', 'sha256', d.slice(7));
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, b);
  return d;
}

export interface LayerSpec {
  /** The layer blob as stored (maybe compressed). */
  blob: Buffer;
  mediaType?: string;
  /** Uncompressed tar, for diff_ids (defaults to blob). */
  tar?: Buffer;
}

export function gzipLayer(tar: Buffer): LayerSpec {
  return { blob: zlib.gzipSync(tar), tar, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
}

export function plainLayer(tar: Buffer): LayerSpec {
  return { blob: tar, tar, mediaType: 'application/vnd.oci.image.layer.v1.tar' };
}

/** Write (or add to) an OCI layout with one image tagged `tag`; returns the manifest digest. */
export function writeLayout(dir: string, tag: string, layers: LayerSpec[], opts: { manifestPatch?: (m: any) => void } = {}): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => sha(l.tar ?? l.blob)) },
    }),
  );
  const manifest: any = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: putBlob(dir, config), size: config.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType ?? 'application/vnd.oci.image.layer.v1.tar', digest: putBlob(dir, l.blob), size: l.blob.length })),
  };
  opts.manifestPatch?.(manifest);
  const mb = Buffer.from(JSON.stringify(manifest));
  const md = putBlob(dir, mb);
  const idxPath = path.join(dir, 'index.json');
  const idx = fs.existsSync(idxPath) ? JSON.parse(fs.readFileSync(idxPath, 'utf8')) : { schemaVersion: 2, manifests: [] };
  idx.manifests = idx.manifests.filter((m: any) => m.annotations?.['org.opencontainers.image.ref.name'] !== tag);
  idx.manifests.push({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: md,
    size: mb.length,
    annotations: { 'org.opencontainers.image.ref.name': tag },
  });
  fs.writeFileSync(idxPath, JSON.stringify(idx));
  return md;
}

/** Every blob file in a layout hashes to its name, and no temp file is left behind. */
export function checkBlobs(dir: string): string[] {
  const bad: string[] = [];
  const bdir = path.join(dir, 'blobs', 'sha256');
  if (!fs.existsSync(bdir)) return bad;
  for (const n of fs.readdirSync(bdir)) {
    const p = path.join(bdir, n);
    if (!/^[a-f0-9]{64}$/.test(n)) {
      bad.push(`stray file ${n}`);
      continue;
    }
    const d = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    if (d !== n) bad.push(`blob ${n} hashes to ${d}`);
  }
  return bad;
}

export function readIndex(dir: string): any {
  return JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
}

export function blob(dir: string, digest: string): Buffer {
  return fs.readFileSync(path.join(dir, 'blobs', 'sha256', digest.replace('sha256:', '')));
}

/** Store a blob in a layout under its digest; its descriptor fields. */
export function putRaw(dir: string, b: Buffer): { digest: string; size: number } {
  return { digest: putBlob(dir, b), size: b.length };
}

export interface Zstd {
  compress: (json: Buffer) => Buffer;
  decompress: (b: Buffer) => Buffer;
}

/**
 * Forge the chunked image tagged `tag` in a converted layout as an attacker would: rewrite its TOC
 * (an object edit, or the JSON text itself) and/or its chunked manifest, then re-point the chunked
 * manifest, the index and the tag at the new blobs, so every digest is valid.
 */
export function forgeChunked(
  dir: string,
  tag: string,
  edits: { toc?: (toc: any, text: string) => unknown; manifest?: (m: any) => void; entry?: (d: any) => void },
  zstd: Zstd,
): void {
  const idx = readIndex(dir);
  const slot = idx.manifests.findIndex((m: any) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  const top = JSON.parse(blob(dir, idx.manifests[slot].digest).toString());
  const ci = top.manifests.findIndex((m: any) => m.artifactType === 'application/vnd.ocichunk.image.v1');
  const cm = JSON.parse(blob(dir, top.manifests[ci].digest).toString());
  if (edits.toc) {
    const text = zstd.decompress(blob(dir, cm.layers[0].digest)).toString();
    const toc = JSON.parse(text);
    const out = edits.toc(toc, text);
    const json = typeof out === 'string' ? out : JSON.stringify(out ?? toc);
    Object.assign(cm.layers[0], putRaw(dir, zstd.compress(Buffer.from(json))));
  }
  edits.manifest?.(cm);
  const entry = top.manifests[ci];
  // the index entry's hints name the forged TOC and config (`entry` may forge them too)
  if (entry.annotations?.['org.ocichunk.toc']) entry.annotations['org.ocichunk.toc'] = JSON.stringify({ digest: cm.layers[0].digest, size: cm.layers[0].size });
  if (entry.annotations?.['org.ocichunk.config']) entry.annotations['org.ocichunk.config'] = JSON.stringify({ digest: cm.config.digest, size: cm.config.size });
  edits.entry?.(entry);
  Object.assign(entry, putRaw(dir, Buffer.from(JSON.stringify(cm))));
  Object.assign(idx.manifests[slot], putRaw(dir, Buffer.from(JSON.stringify(top))));
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(idx));
}
