/**
 * What a conversion may take from a destination without reading it again.
 *
 * A destination (a shared layout, a registry anyone pushes to) may hold chunked manifests written
 * by someone else, and what they claim is only a claim:
 *
 * - **Converted layers.** A manifest may name a clean image's layer digests next to a TOC of other
 *   files; taken as it is, it would poison every later conversion of that image. A TOC layer found
 *   in a destination is reused only when its content digest equals the one this user's own
 *   conversion of the same source layer (same entry options) recorded; anything else is derived
 *   again from the source layer, whose digest is verified while it is read. The content digest is
 *   the SHA-256 of the layer's entries with chunk indexes replaced by chunk digests
 *   (crates/core/src/format/build.rs `layer_content_digest`): a function of the layer's files and
 *   the options, whatever TOC or destination holds it.
 * - **Chunk locations.** A TOC may claim that chunk D lies at some frame of a pack when it does not.
 *   A location this user's own conversion wrote (or verified by reading) is recorded per pack; any
 *   other location a conversion reuses is read and hashed first, and a mismatch refuses the
 *   conversion (an image pointing at the wrong bytes would be broken, though never silently: every
 *   reader checks every chunk).
 *
 * Records live under `$XDG_CACHE_HOME/ocichunk/trust` (~/.cache/ocichunk/trust): `layers/<options>/<layer hex>`
 * and `packs/<pack hex>` (one line per chunk: offset, offset in frame, length, digest, and where the
 * frame's dictionary is; the lines are made by crates/core/src/format/dict.rs `location_key`).
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { tempName } from '../store/owner.js';

export const DEFAULT_TRUST_DIR = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ocichunk', 'trust');

const hexOf = (digest: string) => /^sha256:([a-f0-9]{64})$/.exec(digest)?.[1];

export class ConvertTrust {
  private packs = new Map<string, Promise<Set<string>>>();

  constructor(readonly dir: string = DEFAULT_TRUST_DIR) {}

  private layerFile(layerDigest: string, entryOptions: string): string | undefined {
    const h = hexOf(layerDigest);
    if (!h || !/^[a-f0-9]+$/.test(entryOptions)) return undefined;
    return path.join(this.dir, 'layers', entryOptions, h);
  }

  /** Whether this user's own conversion of `layerDigest` gave exactly `contentDigest`. */
  async trustsLayer(layerDigest: string, entryOptions: string, contentDigest: string): Promise<boolean> {
    const f = this.layerFile(layerDigest, entryOptions);
    if (!f) return false;
    const known = await fsp.readFile(f, 'utf8').catch(() => undefined);
    return known?.trim() === contentDigest;
  }

  /** Record a layer this process derived from its source. */
  async recordLayer(layerDigest: string, entryOptions: string, contentDigest: string): Promise<void> {
    const f = this.layerFile(layerDigest, entryOptions);
    if (f) await this.write(f, `${contentDigest}\n`);
  }

  private known(pack: string): Promise<Set<string>> {
    let p = this.packs.get(pack);
    if (!p) {
      const h = hexOf(pack);
      p = h
        ? fsp.readFile(path.join(this.dir, 'packs', h), 'utf8').then(
            (t) => new Set(t.split('\n').filter(Boolean)),
            () => new Set<string>(),
          )
        : Promise.resolve(new Set<string>());
      this.packs.set(pack, p);
    }
    return p;
  }

  /** Whether a location was written or verified by this user before. */
  async knowsLocation(pack: string, key: string): Promise<boolean> {
    return (await this.known(pack)).has(key);
  }

  /** Record locations known good (written by this process, or read and verified). */
  async recordLocations(pack: string, keys: string[]): Promise<void> {
    const h = hexOf(pack);
    if (!h || !keys.length) return;
    const set = await this.known(pack);
    const fresh = keys.filter((k) => !set.has(k));
    if (!fresh.length) return;
    for (const k of fresh) set.add(k);
    await this.write(path.join(this.dir, 'packs', h), [...set].join('\n') + '\n');
  }

  /** Atomic write (temp file + rename); best effort: a read-only home only loses the speed-up. */
  private async write(f: string, text: string): Promise<void> {
    try {
      await fsp.mkdir(path.dirname(f), { recursive: true, mode: 0o700 });
      const tmp = path.join(path.dirname(f), tempName(`${path.basename(f)}.tmp-`));
      await fsp.writeFile(tmp, text, { mode: 0o600 });
      await fsp.rename(tmp, f);
    } catch {
      // not recorded: read or derived again next time
    }
  }
}
