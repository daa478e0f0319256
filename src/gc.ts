/**
 * `ocichunk gc oci:DIR`: remove the blobs of an OCI image layout that index.json does not lead to,
 * and the temp files, spools and markers that dead processes left behind.
 *
 * Reachable: every descriptor of index.json (tags, untagged entries, `--attach referrer` entries
 * annotated dev.ocichunk.subject), and everything they lead to: index -> manifests (and subject),
 * manifest -> config, layers (and subject); a chunked manifest's layers are its TOC and packs, and
 * the packs its TOC names are kept too (even if the manifest failed to list one). Other JSON blobs
 * (configs, artifacts of unknown types) are scanned for descriptors. An index, manifest or TOC
 * that is referenced but missing or damaged stops gc before it removes anything: what it would
 * have kept cannot be known (run `ocichunk verify`).
 *
 * The rule that keeps a conversion in progress safe: a convert writes its blobs (packs, TOC,
 * copies of the original layers, manifests) before it sets the tag, and it may reuse a blob that
 * is present but not (yet, or any more) referenced — so neither "referenced" nor "recent" tells gc
 * which blobs a running convert needs. Instead every writer into the layout holds a marker
 * (`.ocichunk/writer-*`, created under the layout lock in OciLayoutSink.init(), removed at close()
 * or process exit), and gc, holding the layout lock for its whole run, removes unreferenced blobs
 * only when no live writer is registered; otherwise it fails with code ELOCKED naming them. New
 * writers cannot register while gc holds the lock, so none can start in the middle of it. A
 * writer killed with -9 leaves a marker of a dead process, which gc (and the next writer) drops.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { decodeToc } from './chunked/toc.js';
import { OcichunkError, withContext } from './errors.js';
import { isTocType } from './oci/chunked-media.js';
import { isIndexType, isManifestType, parseManifestDoc, type Descriptor } from './oci/types.js';
import { parseRef } from './ref.js';
import { BlobStore } from './store/blobstore.js';
import { LOCKED_CODE, cleanLayoutTemps, liveWriters, withLayoutLock } from './store/layout-lock.js';
import { SPOOL_PREFIX, cleanStale, type StaleFile } from './store/owner.js';
import { readLayoutIndex } from './transports/oci-layout.js';

export interface GcOptions {
  /** Report what would be removed; remove nothing. */
  dryRun?: boolean;
  /** Where convert spools (default the OS temp dir): stale spools there are removed too. */
  tmpDir?: string;
  /** How long to wait for the layout lock (default $OCICHUNK_LOCK_TIMEOUT seconds, else 60 s). */
  lockTimeoutMs?: number;
  /** Temp files whose owner cannot be checked (other hosts, older versions) go after this long untouched (default 1 h). */
  unknownGraceMs?: number;
}

export interface GcResult {
  layout: string;
  dryRun: boolean;
  /** Blobs kept: reachable from index.json. */
  kept: { blobs: number; bytes: number };
  /** Unreferenced blobs removed (or, with dryRun, that would be). */
  removedBlobs: Array<{ digest: string; size: number }>;
  /** Stale temp files, markers and spools removed (or that would be). */
  removedTemps: Array<{ path: string; size: number }>;
  /** Referenced blobs (layers, configs, packs) that the layout lacks: gc cannot fix these; `verify` reports them. */
  missing: string[];
  bytesFreed: number;
  seconds: number;
}

/** Largest JSON blob of an unknown type that gc scans for descriptors. */
const SCAN_JSON_MAX = 4 << 20;
const TOC_MAX = 1 << 30;

function looksLikeDescriptor(o: unknown): o is Descriptor {
  const d = o as Descriptor;
  return !!d && typeof d === 'object' && typeof d.digest === 'string' && /^sha256:[a-f0-9]{64}$/.test(d.digest) && Number.isSafeInteger(d.size);
}

/** Every descriptor-shaped object anywhere in a JSON document. */
function descriptorsIn(doc: unknown, out: Descriptor[] = [], depth = 0): Descriptor[] {
  if (depth > 64 || !doc || typeof doc !== 'object') return out;
  if (looksLikeDescriptor(doc)) out.push(doc);
  for (const v of Array.isArray(doc) ? doc : Object.values(doc)) descriptorsIn(v, out, depth + 1);
  return out;
}

/** Digests of every blob reachable from the layout's index.json. */
async function reachable(dir: string, store: BlobStore, roots: Descriptor[]): Promise<{ keep: Set<string>; missing: string[] }> {
  const keep = new Set<string>();
  const missing: string[] = [];
  const walked = new Set<string>();
  const visit = async (d: Descriptor, what: string, depth: number): Promise<void> => {
    keep.add(d.digest);
    if (walked.has(d.digest)) return;
    walked.add(d.digest);
    if (depth > 32) throw new OcichunkError('EUNSUPPORTED', `${what}: references nested too deep`);
    const isDoc = isIndexType(d.mediaType) || isManifestType(d.mediaType) || isTocType(d.mediaType);
    if (!isDoc) {
      if (!(await store.has(d.digest))) {
        missing.push(d.digest);
        return;
      }
      // configs and artifacts of other types: anything descriptor-shaped inside is kept too
      if (/(\+|\/)json$/.test(d.mediaType) && d.size <= SCAN_JSON_MAX) {
        let doc: unknown;
        try {
          doc = JSON.parse((await fsp.readFile(store.blobPath(d.digest))).toString('utf8'));
        } catch {
          return;
        }
        for (const c of descriptorsIn(doc)) await visit(c, `${what} -> ${c.digest}`, depth + 1);
      }
      return;
    }
    const children: Descriptor[] = [];
    try {
      const bytes = await store.readAll(d, what, isTocType(d.mediaType) ? TOC_MAX : undefined);
      if (isTocType(d.mediaType)) {
        for (const p of decodeToc(bytes, what).packs) keep.add(p);
        return;
      }
      const parsed = parseManifestDoc(bytes, d.mediaType, what);
      children.push(...(parsed.kind === 'index' ? parsed.doc.manifests : [parsed.doc.config, ...parsed.doc.layers]));
      const subject = (parsed.doc as { subject?: unknown }).subject;
      if (looksLikeDescriptor(subject)) children.push(subject);
    } catch (e) {
      throw withContext(e, `gc ${dir}: cannot tell what ${what} references, so nothing was removed (run ocichunk verify)`, 'ECORRUPT');
    }
    for (const c of children) await visit(c, `${what} -> ${c.digest}`, depth + 1);
  };
  for (const [i, d] of roots.entries()) await visit(d, `index.json manifests[${i}] ${d.digest}`, 0);
  return { keep, missing };
}

function layoutDir(ref: string): string {
  const r = parseRef(ref);
  if (r.transport !== 'oci') throw new OcichunkError('EUSAGE', `gc works on OCI image layouts (oci:DIR), not ${JSON.stringify(ref)}`);
  if (r.ref !== undefined) {
    throw new OcichunkError('EUSAGE', `gc works on a whole layout: drop ":${r.ref}" from ${JSON.stringify(ref)}`);
  }
  return r.path;
}

/** Remove unreferenced blobs and stale temp files of an OCI layout (see the module comment for the rules). */
export async function gc(ref: string, opts: GcOptions = {}): Promise<GcResult> {
  const t0 = performance.now();
  const dir = layoutDir(ref);
  const dryRun = !!opts.dryRun;
  const store = new BlobStore(dir);
  const idx = await readLayoutIndex(dir); // ENOTFOUND before any lock file is made in a non-layout
  return withLayoutLock(
    dir,
    async () => {
      const { live } = await liveWriters(dir, { dryRun: true });
      if (live.length > 0) {
        const who = live.map((w) => `pid ${w.pid}${w.host ? ` on ${w.host}` : ''}${w.since ? ` since ${w.since}` : ''}`).join(', ');
        throw new OcichunkError(
          LOCKED_CODE,
          `gc ${dir}: ${live.length} process(es) are writing into the layout (${who}); ` +
            'their blobs are not referenced until they finish, so gc removes nothing now: run it again when they are done',
        );
      }
      const current = await readLayoutIndex(dir).catch(() => idx);
      const { keep, missing } = await reachable(dir, store, current.manifests);
      const removedBlobs: GcResult['removedBlobs'] = [];
      let keptBlobs = 0;
      let keptBytes = 0;
      for (const name of (await fsp.readdir(store.dir).catch(() => [] as string[])).sort()) {
        if (!/^[a-f0-9]{64}$/.test(name)) continue;
        const file = path.join(store.dir, name);
        const st = await fsp.lstat(file).catch(() => undefined);
        if (!st?.isFile()) continue;
        const digest = `sha256:${name}`;
        if (keep.has(digest)) {
          keptBlobs++;
          keptBytes += st.size;
          continue;
        }
        if (!dryRun) await fsp.rm(file, { force: true });
        removedBlobs.push({ digest, size: st.size });
      }
      const temps: StaleFile[] = await cleanLayoutTemps(dir, { dryRun, unknownGraceMs: opts.unknownGraceMs });
      temps.push(...(await cleanStale(opts.tmpDir ?? os.tmpdir(), [SPOOL_PREFIX], { dryRun, unknownGraceMs: opts.unknownGraceMs })));
      const removedTemps = temps.map((t) => ({ path: t.path, size: t.size }));
      const bytesFreed = removedBlobs.reduce((a, b) => a + b.size, 0) + removedTemps.reduce((a, b) => a + b.size, 0);
      return {
        layout: dir,
        dryRun,
        kept: { blobs: keptBlobs, bytes: keptBytes },
        removedBlobs,
        removedTemps,
        missing,
        bytesFreed,
        seconds: (performance.now() - t0) / 1000,
      };
    },
    { timeoutMs: opts.lockTimeoutMs },
  );
}
