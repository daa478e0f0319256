/**
 * A local chunk cache, content-addressed and shared by every image and process (the layout is
 * crates/core/src/cache.rs's, which the mount reads too): `<dir>/sha256/ab/<hex>` holds a chunk's
 * uncompressed bytes. Entries are written to a temp file and renamed (two processes
 * writing the same chunk write the same bytes), checked against their digest when read (a bad entry
 * is dropped and fetched again), and evicted oldest-used first when the cache outgrows its bound.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { OcichunkError } from '../errors.js';
import { native } from '../native/index.js';

export const DEFAULT_CACHE_DIR = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ocichunk', 'chunks');
export const DEFAULT_CACHE_MAX = 2 * 1024 ** 3;

export interface CacheStats {
  hits: number;
  misses: number;
  stored: number;
  storedBytes: number;
  evicted: number;
  corrupt: number;
}

/** chunks and sections stored by this process that a cache empty when opened keeps track of */
const STORED_HERE_MAX = 16384;
/**
 * How long after opening an empty cache its look-ups skip the file system: a cold start's first
 * seconds; later (a long-lived mount) the chunks other processes stored meanwhile are found again.
 */
const COLD_WINDOW_MS = 10_000;

export class ChunkCache {
  readonly stats: CacheStats = { hits: 0, misses: 0, stored: 0, storedBytes: 0, evicted: 0, corrupt: 0 };
  /** bytes in the cache, as last counted plus what this process added since */
  private approxBytes = -1;
  /** directories of the cache made (or found) by this process */
  private readonly dirs = new Set<string>();
  /**
   * The cache held no chunk when opened: for a while a look-up of a chunk this process did not
   * store needs no file system call (a cold start's look-ups all miss; another process filling the
   * cache meanwhile only costs a fetch). Off after `coldWindowMs`, or once this process has stored
   * STORED_HERE_MAX entries.
   */
  private emptyAtOpen = false;
  private coldUntil = 0;
  private readonly storedHere = new Set<string>();

  constructor(
    readonly dir: string = DEFAULT_CACHE_DIR,
    readonly maxBytes: number = DEFAULT_CACHE_MAX,
  ) {}

  static async open(dir = DEFAULT_CACHE_DIR, maxBytes = DEFAULT_CACHE_MAX, coldWindowMs = COLD_WINDOW_MS): Promise<ChunkCache> {
    try {
      await fsp.mkdir(path.join(dir, 'sha256'), { recursive: true });
      await fsp.mkdir(path.join(dir, 'tmp'), { recursive: true });
    } catch (e) {
      throw new OcichunkError('EIO', `chunk cache ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const c = new ChunkCache(dir, maxBytes);
    c.emptyAtOpen = (await fsp.readdir(path.join(dir, 'sha256'))).length === 0;
    c.coldUntil = performance.now() + coldWindowMs;
    return c;
  }

  /** false: surely not in the cache; true: look (see emptyAtOpen) */
  private mayHold(hex: string): boolean {
    if (this.emptyAtOpen && performance.now() > this.coldUntil) this.endCold();
    return !this.emptyAtOpen || this.storedHere.has(hex);
  }

  private endCold(): void {
    this.emptyAtOpen = false;
    this.storedHere.clear();
  }

  private noteStored(hex: string): void {
    if (!this.emptyAtOpen) return;
    this.storedHere.add(hex);
    if (this.storedHere.size > STORED_HERE_MAX) this.endCold();
  }

  /** Whether the cache holds the chunk (or section) now. */
  has(hex: string): boolean {
    return this.mayHold(hex) && fs.existsSync(this.pathOf(hex));
  }

  pathOf(hex: string): string {
    return native.chunkCachePath(this.dir, hex);
  }

  /** The chunk's bytes if cached and intact. */
  async get(hex: string): Promise<Buffer | undefined> {
    const b = await this.read(hex);
    if (b) this.stats.hits++;
    else this.stats.misses++;
    return b;
  }

  /**
   * Digest table sections (docs/format.md §3) live here too, under their own digests; reading them
   * is not counted with the chunks.
   */
  readonly sections = {
    get: (hex: string) => this.read(hex),
    putMany: (hexes: string[], bytes: Buffer[]) => this.putMany(hexes, bytes, false),
  };

  private async read(hex: string): Promise<Buffer | undefined> {
    if (!this.mayHold(hex)) return undefined;
    let b: Buffer;
    try {
      b = await fsp.readFile(this.pathOf(hex));
    } catch {
      return undefined;
    }
    if (createHash('sha256').update(b).digest('hex') !== hex) {
      this.stats.corrupt++;
      await fsp.rm(this.pathOf(hex), { force: true });
      return undefined;
    }
    // most recently used: eviction goes by mtime
    const now = new Date();
    fsp.utimes(this.pathOf(hex), now, now).catch(() => {});
    return b;
  }

  /** Store verified chunk bytes (the caller checked the digest); false if it was there already. */
  async put(hex: string, bytes: Buffer): Promise<boolean> {
    const final = this.pathOf(hex);
    this.noteStored(hex);
    if (fs.existsSync(final)) return false;
    const tmp = path.join(this.dir, 'tmp', `${hex}.${process.pid}.${randomBytes(4).toString('hex')}`);
    try {
      const dir = path.dirname(final);
      if (!this.dirs.has(dir)) {
        await fsp.mkdir(dir, { recursive: true });
        this.dirs.add(dir);
      }
      await fsp.writeFile(tmp, bytes, { mode: 0o644 });
      await fsp.rename(tmp, final).catch(async (e: NodeJS.ErrnoException) => {
        // its directory removed meanwhile (by another process)
        if (e.code !== 'ENOENT') throw e;
        await fsp.mkdir(dir, { recursive: true });
        await fsp.rename(tmp, final);
      });
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw new OcichunkError('EIO', `chunk cache ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    this.stats.stored++;
    this.stats.storedBytes += bytes.length;
    if (this.approxBytes >= 0) this.approxBytes += bytes.length;
    await this.maybeEvict();
    return true;
  }

  /**
   * Store verified chunks (the caller checked their digests), written off this thread by the
   * native core; per chunk, whether it was stored now (false: it was there already). `count`: in
   * the chunk figures (digest table sections are not).
   */
  async putMany(hexes: string[], chunks: Buffer[], count = true): Promise<boolean[]> {
    if (!hexes.length) return [];
    for (const h of hexes) this.noteStored(h);
    let flags: Uint8Array;
    try {
      flags = await native.cachePutMany(this.dir, hexes, chunks);
    } catch (e) {
      throw new OcichunkError('EIO', `chunk cache ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    const stored = [...flags].map((f) => f === 1);
    stored.forEach((s, i) => {
      if (!s) return;
      if (this.approxBytes >= 0) this.approxBytes += chunks[i].length;
      if (!count) return;
      this.stats.stored++;
      this.stats.storedBytes += chunks[i].length;
    });
    await this.maybeEvict();
    return stored;
  }

  private async maybeEvict(): Promise<void> {
    if (this.approxBytes < 0) this.approxBytes = (await this.list()).reduce((a, f) => a + f.size, 0);
    if (this.approxBytes <= this.maxBytes) return;
    await this.evict(Math.floor(this.maxBytes * 0.9));
  }

  private async list(): Promise<Array<{ file: string; size: number; mtime: number }>> {
    const out: Array<{ file: string; size: number; mtime: number }> = [];
    const top = path.join(this.dir, 'sha256');
    for (const sub of await fsp.readdir(top).catch(() => [] as string[])) {
      for (const f of await fsp.readdir(path.join(top, sub)).catch(() => [] as string[])) {
        const file = path.join(top, sub, f);
        const st = await fsp.stat(file).catch(() => undefined);
        if (st) out.push({ file, size: st.size, mtime: st.mtimeMs });
      }
    }
    return out;
  }

  /** Remove least recently used chunks until the cache holds at most `target` bytes. */
  async evict(target: number): Promise<number> {
    const files = await this.list();
    let total = files.reduce((a, f) => a + f.size, 0);
    files.sort((a, b) => a.mtime - b.mtime || (a.file < b.file ? -1 : 1));
    let n = 0;
    for (const f of files) {
      if (total <= target) break;
      // another process may have removed it already
      await fsp.rm(f.file, { force: true });
      total -= f.size;
      n++;
    }
    this.stats.evicted += n;
    this.approxBytes = total;
    return n;
  }

  /** Bytes and entries in the cache now. */
  async usage(): Promise<{ bytes: number; chunks: number }> {
    const files = await this.list();
    return { bytes: files.reduce((a, f) => a + f.size, 0), chunks: files.length };
  }
}
