/**
 * chunked image -> root filesystem. Layers are applied in order like a container runtime applies tar
 * layers (whiteouts delete, opaque markers empty a directory); file contents come from verified chunks.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ChunkReader } from '../chunked/content.js';
import { openChunked, resolveImage, type ChunkedImage } from '../chunked/image.js';
import type { TocEntry } from '../chunked/toc.js';
import { OcichunkError, withContext } from '../errors.js';
import { native } from '../native/index.js';
import type { Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import type { TransferReport } from '../transports/types.js';
import { RootFs } from './rootfs.js';

export interface RestoreOptions {
  platform?: Platform;
  threads?: number;
  /** Uncompressed bytes of file content fetched per batch. */
  batchBytes?: number;
  /** Registry options for docker:// references. */
  transport?: TransportOptions;
  onProgress?: (p: { layer: number; layers: number; entries: number }) => void;
}

export interface RestoreResult {
  source: string;
  target: string;
  layers: number;
  entries: number;
  files: number;
  fileBytes: number;
  packBytesRead: number;
  /** Registry figures (bytes downloaded, requests, retries) for docker:// sources. */
  transfer?: TransferReport;
  ownership: boolean;
  seconds: number;
}

export async function restore(srcRef: string, target: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const src = await openSource(srcRef, opts.transport);
  try {
    const img = await openChunked(await resolveImage(src, opts.platform));
    return await restoreChunked(img, target, opts);
  } finally {
    await src.close();
  }
}

interface Pending {
  entry: TocEntry;
  what: string;
}

export async function restoreChunked(img: ChunkedImage, target: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const t0 = performance.now();
  await fsp.mkdir(target, { recursive: true });
  const root = await fsp.realpath(target);
  const fs = new RootFs(root);
  const reader = new ChunkReader(img, opts.threads ?? 0);
  const asRoot = process.getuid?.() === 0;
  const batchBytes = opts.batchBytes ?? 32 << 20;
  const dirTimes: Array<[string, number]> = [];
  const toc = img.toc;
  let pending: Pending[] = [];
  let pendingBytes = 0;
  let entries = 0;
  let files = 0;
  let fileBytes = 0;

  const applyMeta = async (host: string, e: TocEntry, what: string) => {
    if (asRoot) await fsp.lchown(host, e.uid ?? 0, e.gid ?? 0);
    if (e.type !== 'symlink') await fsp.chmod(host, e.mode ?? 0o644);
    for (const [name, b64] of Object.entries(e.xattrs ?? {})) {
      try {
        native.lsetxattr(host, name, Buffer.from(b64, 'base64'));
      } catch (err) {
        throw withContext(err, what);
      }
    }
    if (e.type === 'dir') dirTimes.push([host, e.mtime ?? 0]);
    else await fsp.lutimes(host, e.mtime ?? 0, e.mtime ?? 0);
  };

  /** Remove whatever is at host path (unless it is a directory and keepDir). */
  const clear = async (host: string, keepDir: boolean): Promise<boolean> => {
    let st;
    try {
      st = await fsp.lstat(host);
    } catch {
      return false;
    }
    if (st.isDirectory()) {
      if (keepDir) return true;
      await fsp.rm(host, { recursive: true, force: true });
      fs.invalidate();
      return false;
    }
    await fsp.unlink(host);
    return false;
  };

  const flush = async () => {
    if (!pending.length) return;
    const batch = pending;
    pending = [];
    pendingBytes = 0;
    const chunks = await reader.fetch(batch.flatMap((p) => p.entry.chunks ?? []));
    for (const { entry: e, what } of batch) {
      const host = await fs.hostPath(e.path, what);
      await clear(host, false);
      const fh = await fsp.open(host, 'wx', 0o600);
      try {
        const bufs = (e.chunks ?? []).map((c) => chunks.get(c)!);
        for (let i = 0; i < bufs.length; i += 512) {
          const part = bufs.slice(i, i + 512);
          const { bytesWritten } = await fh.writev(part);
          const want = part.reduce((a, b) => a + b.length, 0);
          if (bytesWritten !== want) throw new OcichunkError('EIO', `${what}: short write`);
        }
      } finally {
        await fh.close();
      }
      await applyMeta(host, e, what);
    }
  };

  try {
    for (const [li, layer] of toc.layers.entries()) {
      for (const e of layer.entries) {
        entries++;
        const what = `layer ${li} entry ${JSON.stringify(e.path)}`;
        if (e.path !== '.' && (e.path.startsWith('/') || e.path.split('/').some((c) => c === '..' || c === '' || c === '.'))) {
          throw new OcichunkError('EUNSAFE', `${what}: path is not a normalized relative path`);
        }
        if (e.type === 'reg') {
          files++;
          fileBytes += e.size ?? 0;
          pending.push({ entry: e, what });
          pendingBytes += e.size ?? 0;
          if (pendingBytes >= batchBytes) await flush();
          continue;
        }
        // File contents are written in batches. Entries sorted after a pending file never touch it
        // (paths are unique within a layer; whiteouts and opaque markers concern lower layers and
        // sort before the entries they precede), except a hardlink, whose target must exist.
        if (e.type === 'hardlink' || e.path === '.') await flush();
        if (e.path === '.') {
          if (e.type === 'dir') await applyMeta(root, e, what);
          else if (e.type === 'opaque') {
            for (const n of await fsp.readdir(root)) await fsp.rm(path.join(root, n), { recursive: true, force: true });
            fs.invalidate();
          } else throw new OcichunkError('EUNSAFE', `${what}: the root can only be a directory`);
          continue;
        }
        const host = await fs.hostPath(e.path, what);
        switch (e.type) {
          case 'whiteout':
            await fsp.rm(host, { recursive: true, force: true });
            fs.invalidate();
            break;
          case 'opaque': {
            let names: string[] = [];
            try {
              names = await fsp.readdir(host);
            } catch {
              names = [];
            }
            // entries of this layer under the directory come after this marker, so all present are lower
            for (const n of names) await fsp.rm(path.join(host, n), { recursive: true, force: true });
            fs.invalidate();
            break;
          }
          case 'dir': {
            const exists = await clear(host, true);
            if (!exists) await fsp.mkdir(host, { mode: 0o700 });
            await applyMeta(host, e, what);
            break;
          }
          case 'symlink': {
            const wasDir = (await fsp.lstat(host).catch(() => undefined))?.isDirectory();
            await clear(host, false);
            await fsp.symlink(e.link!, host);
            if (wasDir) fs.invalidate();
            await applyMeta(host, e, what);
            break;
          }
          case 'hardlink': {
            const linkWhat = `${what} (hardlink to ${JSON.stringify(e.link)})`;
            const link = e.link!;
            if (link.startsWith('/') || link.split('/').some((c) => c === '..' || c === '' || c === '.')) {
              throw new OcichunkError('EUNSAFE', `${linkWhat}: target escapes the root`);
            }
            const targetHost = await fs.hostPath(link, linkWhat);
            const st = await fsp.lstat(targetHost).catch(() => undefined);
            if (!st) throw new OcichunkError('ECORRUPT', `${linkWhat}: target does not exist`);
            if (st.isDirectory()) throw new OcichunkError('EUNSAFE', `${linkWhat}: target is a directory`);
            await clear(host, false);
            await fsp.link(targetHost, host);
            break;
          }
          case 'char':
          case 'block':
          case 'fifo':
            await clear(host, false);
            native.mknod(host, e.type, e.mode ?? 0o644, e.devMajor ?? 0, e.devMinor ?? 0);
            await applyMeta(host, e, what);
            break;
          default:
            throw new OcichunkError('EUNSUPPORTED', `${what}: unknown entry type ${String(e.type)}`);
        }
      }
      await flush();
      opts.onProgress?.({ layer: li, layers: toc.layers.length, entries });
    }
    // Directory times last (creating children changed them), deepest first.
    for (let i = dirTimes.length - 1; i >= 0; i--) {
      const [p, t] = dirTimes[i];
      await fsp.utimes(p, t, t).catch(() => {});
    }
  } finally {
    await reader.close();
  }
  return {
    source: img.image.source.name,
    target: root,
    layers: toc.layers.length,
    entries,
    files,
    fileBytes,
    packBytesRead: reader.bytesRead,
    ...(img.image.source.transferReport ? { transfer: img.image.source.transferReport() } : {}),
    ownership: asRoot,
    seconds: (performance.now() - t0) / 1000,
  };
}
