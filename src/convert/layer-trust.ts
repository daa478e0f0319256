/**
 * Which converted layers may be reused without reading the source layer again.
 *
 * A destination (a shared layout, a registry anyone pushes to) may hold chunked manifests written
 * by someone else: one that names a clean image's layer digests next to a TOC of other files would
 * poison every later conversion of that image if its TOC layers were taken as they are. So a TOC
 * layer found in a destination is reused only when its content digest equals the one this user's
 * own conversion of the same source layer (same entry options) recorded here, under
 * `$XDG_CACHE_HOME/ocichunk/layers` (~/.cache/ocichunk/layers). Anything else is derived again
 * from the source layer, whose digest is verified while it is read.
 *
 * The content digest is the SHA-256 of the layer's TOC entries with chunk indexes replaced by chunk
 * digests: a function of the layer's files and the options, whatever TOC or destination holds it.
 */
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Toc } from '../chunked/toc.js';
import { tempName } from '../store/owner.js';

export const DEFAULT_TRUST_DIR = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ocichunk', 'layers');

/** SHA-256 of TOC layer `layer`'s entries, chunks named by digest (independent of the TOC's numbering). */
export function layerContentDigest(toc: Toc, layer: number): string {
  const h = createHash('sha256');
  for (const e of toc.layers[layer].entries) {
    h.update(JSON.stringify(e.chunks ? { ...e, chunks: e.chunks.map((c) => toc.chunks[c][0]) } : e));
    h.update('\n');
  }
  return `sha256:${h.digest('hex')}`;
}

export class LayerTrust {
  constructor(readonly dir: string = DEFAULT_TRUST_DIR) {}

  private file(layerDigest: string, entryOptions: string): string | undefined {
    const m = /^sha256:([a-f0-9]{64})$/.exec(layerDigest);
    if (!m || !/^[a-f0-9]+$/.test(entryOptions)) return undefined;
    return path.join(this.dir, entryOptions, m[1]);
  }

  /** Whether this user's own conversion of `layerDigest` gave exactly `contentDigest`. */
  async trusts(layerDigest: string, entryOptions: string, contentDigest: string): Promise<boolean> {
    const f = this.file(layerDigest, entryOptions);
    if (!f) return false;
    const known = await fsp.readFile(f, 'utf8').catch(() => undefined);
    return known?.trim() === contentDigest;
  }

  /** Record a layer this process derived from its source (best effort: a read-only home only loses the speed-up). */
  async record(layerDigest: string, entryOptions: string, contentDigest: string): Promise<void> {
    const f = this.file(layerDigest, entryOptions);
    if (!f) return;
    try {
      await fsp.mkdir(path.dirname(f), { recursive: true, mode: 0o700 });
      const tmp = path.join(path.dirname(f), tempName(`${path.basename(f)}.tmp-`));
      await fsp.writeFile(tmp, `${contentDigest}\n`, { mode: 0o600 });
      await fsp.rename(tmp, f);
    } catch {
      // not recorded: the layer is read again next time
    }
  }
}
