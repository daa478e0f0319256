/** Finds ocichunk chunked manifests reachable from a set of top-level descriptors. */
import { CMT } from '../oci/chunked-media.js';
import { isIndexType, parseManifestDoc, type Descriptor } from '../oci/types.js';
import type { ImageSource } from './types.js';

export function isChunkedDescriptor(d: Descriptor): boolean {
  return d.artifactType === CMT.artifact;
}

export async function collectChunkedManifests(src: ImageSource, tops: Descriptor[]): Promise<Descriptor[]> {
  const out: Descriptor[] = [];
  const seen = new Set<string>();
  for (const top of tops) {
    if (isChunkedDescriptor(top) && !seen.has(top.digest)) {
      seen.add(top.digest); // a referrer entry
      out.push(top);
      continue;
    }
    if (!isIndexType(top.mediaType)) continue;
    let bytes: Buffer;
    try {
      bytes = await src.readBlob(top, `index ${top.digest}`);
    } catch {
      continue; // a dangling entry in someone else's layout is not our problem here
    }
    const parsed = parseManifestDoc(bytes, top.mediaType, `index ${top.digest}`);
    if (parsed.kind !== 'index') continue;
    for (const m of parsed.doc.manifests) {
      if (isChunkedDescriptor(m) && !seen.has(m.digest)) {
        seen.add(m.digest);
        out.push(m);
      }
    }
  }
  return out;
}
