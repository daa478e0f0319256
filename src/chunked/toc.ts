/**
 * The table of contents (docs/format.md): canonical entries per layer plus the chunk, frame and pack
 * tables that locate every byte. Encoded as compact JSON, then zstd, by the format's one writer
 * (crates/core/src/format/build.rs); here the model readers use and the checked way in.
 */
import { OcichunkError } from '../errors.js';
import type { EntryType } from '../layer/entry.js';
import { native, type ChunkerSpec, type NativeCheckedToc } from '../native/index.js';

/** One zstd frame of a pack (on the wire a row `[pack, offset, compressedLength, length]`). */
export interface TocFrame {
  /** index into `packs` */
  pack: number;
  /** where the frame starts in the pack blob */
  offset: number;
  compressedLength: number;
  /** bytes it decompresses to */
  length: number;
  /** index into `dicts`: the frame was compressed with that dictionary */
  dict?: number;
}

/** A zstd dictionary: a zstd frame of it in a pack (on the wire `[pack, offset, compressedLength, length]`). */
export type TocDict = TocFrame;

/**
 * One chunk of file content (on the wire a row `[frame, offsetInFrame, length]`; in version 1
 * `[sha256 hex, frame, offsetInFrame, length]`).
 */
export interface TocChunk {
  /**
   * sha256 hex of its bytes: from the digest table (version 2) once loaded and checked (whole, or
   * the sections a lazy reader needed: `loadDigestTable`, `addDigestSection`); '' until then
   */
  digest: string;
  /** index into `frames` */
  frame: number;
  /** where it starts in the frame's uncompressed bytes */
  offset: number;
  length: number;
}

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

/** The TOC as readers and writers use it; `TocWire` is its JSON (docs/format.md). */
export interface Toc {
  version: number;
  chunker: ChunkerSpec;
  packs: string[];
  /** zstd dictionaries frames were compressed with (docs/format.md §5) */
  dicts?: TocDict[];
  frames: TocFrame[];
  chunks: TocChunk[];
  /** version 2: the digest table blob, chunks per section, the sections' SHA-256s (base64) */
  digests?: { blob: string; section: number; sections: string };
  layers: Array<{ entries: TocEntry[] }>;
  /**
   * Optional: what a lazy reader should fetch first (`convert --prefetch-list`), in order:
   * [path in the merged view, offset, length].
   */
  prefetch?: Array<[string, number, number]>;
}

/** The TOC's JSON: the frame and chunk tables are rows of numbers (compact, and what digests cover). */
export type TocWire = Omit<Toc, 'frames' | 'chunks' | 'dicts'> & {
  dicts?: Array<[number, number, number, number]>;
  frames: Array<[number, number, number, number] | [number, number, number, number, number]>;
  chunks: Array<[number, number, number] | [string, number, number, number]>;
};

function fromWire(wire: TocWire): Toc {
  const { dicts, ...w } = wire;
  return {
    ...w,
    ...(dicts ? { dicts: dicts.map(([pack, offset, compressedLength, length]) => ({ pack, offset, compressedLength, length })) } : {}),
    frames: w.frames.map(([pack, offset, compressedLength, length, dict]) => ({
      pack,
      offset,
      compressedLength,
      length,
      ...(dict === undefined ? {} : { dict }),
    })),
    chunks: w.chunks.map((r) =>
      r.length === 4 ? { digest: r[0], frame: r[1], offset: r[2], length: r[3] } : { digest: '', frame: r[0], offset: r[1], length: r[2] },
    ),
  };
}

/** Largest TOC blob a reader fetches (its JSON is limited to 128 MiB: crates/core/src/format). */
export const TOC_MAX_BLOB = 128 << 20;
/** Uncompressed bytes of one frame (and so of one chunk) a reader accepts (crates/core/src/format limits::FRAME). */
export const FRAME_MAX = 64 << 20;

export interface TocViolation {
  code: 'ECORRUPT' | 'EUNSAFE' | 'EUNSUPPORTED';
  layer?: number;
  path?: string;
  /** names the layer and entry; names from the image are escaped */
  message: string;
}

/**
 * Decode a TOC blob under the format's limits and check every rule of docs/format.md (schema,
 * types, ranges, path rules, the merged tree): crates/core/src/format. Either the JSON of a TOC
 * every reader can trust, or every violation found (up to 1000, then only counted).
 */
export function checkToc(blob: Buffer): { json?: Buffer; violations: TocViolation[]; more: number } {
  const r = native.checkToc(blob);
  return { ...(r.json ? { json: r.json } : {}), violations: r.violations as TocViolation[], more: r.more };
}

/** The error for a failed check: the first violation's code and message, every violation counted. */
export class TocError extends OcichunkError {
  constructor(
    what: string,
    readonly violations: TocViolation[],
    readonly more: number,
    list = false,
  ) {
    const rest = violations.length - 1 + more;
    const tail = rest > 0 ? ` (and ${rest} more violation(s)${list ? '' : '; verify lists them'})` : '';
    const details = list && violations.length > 1 ? [...violations.map((v) => v.message), ...(more ? [`... ${more} more`] : [])] : undefined;
    super(violations[0].code, `${what}: ${violations[0].message}${tail}`, { details });
  }
}

/**
 * Decode and validate a TOC (every command runs this before anything else); with its digest table
 * (version 2) every chunk's digest is loaded and checked too.
 */
export function decodeToc(blob: Buffer, what: string, digestTable?: Buffer): Toc {
  if (digestTable) return openToc(blob, what, digestTable).toc;
  const { json, violations, more } = checkToc(blob);
  if (!json) throw new TocError(what, violations, more);
  return fromWire(JSON.parse(json.toString('utf8')) as TocWire);
}

/** A TOC every reader can trust: its model, and the native format's checked and merged form. */
export interface OpenedToc {
  toc: Toc;
  /** crates/core/src/format Checked: the merged tree, and where a file's bytes are */
  checked: NativeCheckedToc;
}

/**
 * Decode, check and merge a TOC once, for a reader (restore, ls and cat, the mount). `digestTable`:
 * the version 2 TOC's digest table blob (its digest checked by whoever read it), loaded whole.
 */
export function openToc(blob: Buffer, what: string, digestTable?: Buffer): OpenedToc {
  let checked: NativeCheckedToc;
  try {
    checked = native.openToc(blob, what);
  } catch (e) {
    const { violations, more } = checkToc(blob);
    if (violations.length) throw new TocError(what, violations, more);
    throw e;
  }
  const json = checked.takeJson();
  if (!json) throw new OcichunkError('EINTERNAL', `${what}: the checked TOC's JSON was taken before`);
  const opened = { checked, toc: fromWire(JSON.parse(json.toString('utf8')) as TocWire) };
  if (digestTable) loadDigestTable(opened, digestTable);
  return opened;
}

/** Load a version 2 TOC's whole digest table (each section checked against the TOC) into both models. */
export function loadDigestTable({ checked, toc }: OpenedToc, table: Buffer): void {
  checked.loadDigests(table);
  for (let c = 0; c < toc.chunks.length; c++) toc.chunks[c].digest = table.toString('hex', c * 32, c * 32 + 32);
}

/** Load section `i` of a version 2 TOC's digest table, checked against the TOC; false if it was loaded. */
export function addDigestSection({ checked, toc }: OpenedToc, i: number, bytes: Buffer): boolean {
  if (!checked.addDigestSection(i, bytes)) return false;
  const first = i * checked.digestInfo().section;
  for (let k = 0; k * 32 < bytes.length; k++) toc.chunks[first + k].digest = bytes.toString('hex', k * 32, k * 32 + 32);
  return true;
}
