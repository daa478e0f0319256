/**
 * The table of contents (docs/format.md): canonical entries per layer plus the chunk, frame and pack
 * tables that locate every byte. Encoded as compact JSON, then zstd. Same model -> same bytes.
 */
import { OcichunkError } from '../errors.js';
import type { Entry, EntryType } from '../layer/entry.js';
import { native, type ChunkerSpec } from '../native/index.js';
import { FORMAT_VERSION } from '../oci/chunked-media.js';

/** [packIndex, compressedOffset, compressedLength, uncompressedLength] */
export type FrameRef = [number, number, number, number];
/** [sha256 hex, frameIndex, offsetInFrame, length] */
export type ChunkRef = [string, number, number, number];

export interface TocEntry {
  path: string;
  type: EntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: number;
  link?: string;
  devMajor?: number;
  devMinor?: number;
  /** name -> base64 value, names sorted */
  xattrs?: Record<string, string>;
  /** indices into chunks[], in file order */
  chunks?: number[];
}

export interface Toc {
  version: number;
  chunker: ChunkerSpec;
  packs: string[];
  frames: FrameRef[];
  chunks: ChunkRef[];
  layers: Array<{ entries: TocEntry[] }>;
  /**
   * Optional: what a lazy reader should fetch first (`convert --prefetch-list`), in order:
   * [path in the merged view, offset, length].
   */
  prefetch?: Array<[string, number, number]>;
}

export const TOC_MAX_UNCOMPRESSED = 1 << 30;

export function toTocEntry(e: Entry, chunks: number[] | undefined): TocEntry {
  const t: TocEntry = { path: e.path, type: e.type };
  if (e.type === 'whiteout' || e.type === 'opaque') return t;
  if (e.type === 'hardlink') {
    t.link = e.link;
    return t;
  }
  t.mode = e.mode;
  if (e.uid) t.uid = e.uid;
  if (e.gid) t.gid = e.gid;
  if (e.mtime) t.mtime = e.mtime;
  if (e.type === 'reg') {
    t.size = e.size;
    t.chunks = chunks ?? [];
  }
  if (e.type === 'symlink') t.link = e.link;
  if (e.type === 'char' || e.type === 'block') {
    t.devMajor = e.devMajor ?? 0;
    t.devMinor = e.devMinor ?? 0;
  }
  if (e.xattrs?.length) t.xattrs = Object.fromEntries(e.xattrs.map(([k, v]) => [k, v.toString('base64')]));
  return t;
}

export function encodeToc(toc: Toc, level: number): { json: Buffer; blob: Buffer } {
  const json = Buffer.from(JSON.stringify(toc));
  return { json, blob: native.compressSync(json, level) };
}

const TYPES = new Set<EntryType>(['reg', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout', 'opaque']);

/** Decode and validate a TOC: every index in range, every number sane. */
export function decodeToc(blob: Buffer, what: string): Toc {
  const json = native.decompressSync(blob, TOC_MAX_UNCOMPRESSED);
  let toc: Toc;
  try {
    toc = JSON.parse(json.toString('utf8')) as Toc;
  } catch (e) {
    throw new OcichunkError('ECORRUPT', `${what}: TOC is not valid JSON (${(e as Error).message})`);
  }
  const bad = (m: string): never => {
    throw new OcichunkError('ECORRUPT', `${what}: invalid TOC: ${m}`);
  };
  if (toc?.version !== FORMAT_VERSION) {
    throw new OcichunkError('EUNSUPPORTED', `${what}: TOC version ${String(toc?.version)} is not supported (this reader: ${FORMAT_VERSION})`);
  }
  if (!Array.isArray(toc.packs) || !Array.isArray(toc.frames) || !Array.isArray(toc.chunks) || !Array.isArray(toc.layers)) {
    bad('missing tables');
  }
  const isInt = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0;
  toc.packs.forEach((p) => typeof p === 'string' && /^sha256:[a-f0-9]{64}$/.test(p) || bad(`pack ${String(p)}`));
  toc.frames.forEach((f, i) => {
    if (!Array.isArray(f) || f.length !== 4 || !f.every(isInt) || f[0] >= toc.packs.length || f[3] > 1 << 30) bad(`frame ${i}`);
  });
  toc.chunks.forEach((c, i) => {
    if (!Array.isArray(c) || c.length !== 4 || typeof c[0] !== 'string' || !/^[a-f0-9]{64}$/.test(c[0])) bad(`chunk ${i}`);
    if (!isInt(c[1]) || c[1] >= toc.frames.length || !isInt(c[2]) || !isInt(c[3])) bad(`chunk ${i}`);
    if (c[2] + c[3] > toc.frames[c[1]][3]) bad(`chunk ${i} lies outside its frame`);
  });
  toc.layers.forEach((l, li) => {
    if (!Array.isArray(l?.entries)) bad(`layer ${li}`);
    for (const e of l.entries) {
      if (typeof e?.path !== 'string' || !TYPES.has(e.type)) bad(`layer ${li} entry ${JSON.stringify(e?.path)}`);
      if (e.type === 'reg') {
        if (!isInt(e.size) || !Array.isArray(e.chunks)) bad(`entry ${e.path}: size/chunks`);
        let sum = 0;
        for (const c of e.chunks!) {
          if (!isInt(c) || c >= toc.chunks.length) bad(`entry ${e.path}: chunk index ${c}`);
          sum += toc.chunks[c][3];
        }
        if (sum !== e.size) bad(`entry ${e.path}: chunks add up to ${sum} bytes, size is ${e.size}`);
      }
      if ((e.type === 'symlink' || e.type === 'hardlink') && typeof e.link !== 'string') bad(`entry ${e.path}: link`);
    }
  });
  if (toc.prefetch !== undefined) {
    if (!Array.isArray(toc.prefetch)) bad('prefetch list');
    toc.prefetch.forEach((r, i) => {
      if (!Array.isArray(r) || r.length !== 3 || typeof r[0] !== 'string' || !isInt(r[1]) || !isInt(r[2])) bad(`prefetch entry ${i}`);
    });
  }
  return toc;
}
