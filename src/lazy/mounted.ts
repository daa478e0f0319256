/**
 * A mounted chunked image: MountedImage runs the mount and its fetches in a worker thread
 * (mount-worker.ts), so reads through the mount never depend on this thread's event loop: it may be
 * busy, or blocked in a synchronous call that itself reads from the mount. `ocichunk mount`, a
 * process that does nothing else, serves it on its main thread (mountInThisThread).
 */
import { Worker } from 'node:worker_threads';
import { OcichunkError, type ErrorCode } from '../errors.js';
import { type LayerUsage, MountCore, type MountOptions, type MountStats } from './mount.js';
import { resolveImage } from '../chunked/image.js';
import type { Platform } from '../oci/types.js';
import { openSource, type TransportOptions } from '../ref.js';
import type { KnownDocuments } from '../transports/known-documents.js';
import type { ImageSource } from '../transports/types.js';
import type { FromWorker, ToWorker } from './mount-worker.js';

export type { LayerUsage, MountOptions, MountStats } from './mount.js';

/** A mounted image, whichever thread serves it. */
export interface ImageMount {
  readonly name: string;
  readonly mountpoint: string;
  readonly tocBytes: number;
  /** layers of the image (the directories of a --layers mount) */
  readonly layerCount: number;
  /** per layer: file bytes and entries, from the TOC */
  readonly layerUsage: LayerUsage[];
  stats(): Promise<MountStats>;
  /** Unmount (a busy mount point is detached), write the trace; the final figures. */
  unmount(): Promise<MountStats>;
}

/**
 * The mount served on this thread's own event loop (MountCore), for a process that does nothing
 * else while the image is mounted: `ocichunk mount`, one process per image under the snapshotter.
 * It saves the worker's V8 isolate (about 25 MiB of memory). Never in a process that may block
 * its event loop, or read the mount synchronously: a read that needs a fetch would wait forever.
 */
export async function mountInThisThread(ref: string, mountpoint: string, opts: MountOptions = {}): Promise<ImageMount> {
  const core = await MountCore.mount(ref, mountpoint, opts);
  const { name, image } = core.image;
  return {
    name,
    mountpoint,
    tocBytes: image.tocBytes,
    layerCount: core.layerUsage.length,
    layerUsage: core.layerUsage,
    stats: async () => core.stats(),
    unmount: () => core.unmount(),
  };
}

export class MountedImage implements ImageMount {
  /** answers come in the order questions were asked */
  private waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private exited = false;

  private constructor(
    private readonly worker: Worker,
    readonly name: string,
    readonly mountpoint: string,
    readonly tocBytes: number,
    /** layers of the image (the directories of a --layers mount) */
    readonly layerCount: number,
    /** per layer: file bytes and entries, from the TOC */
    readonly layerUsage: LayerUsage[],
  ) {
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'stats' || m.type === 'unmounted') this.waiting.shift()?.resolve(m.stats);
      else if (m.type === 'error') this.waiting.shift()?.reject(new OcichunkError(m.code as ErrorCode, m.message));
    });
    worker.on('exit', () => {
      this.exited = true;
      for (const w of this.waiting.splice(0)) w.reject(new OcichunkError('EINTERNAL', 'the mount worker stopped'));
    });
  }

  static async mount(ref: string, mountpoint: string, opts: MountOptions = {}): Promise<MountedImage> {
    const { onWarning, transport, ...rest } = opts;
    const retries = !!transport?.onRetry;
    // functions stay here: the worker reports retries and warnings by message
    const { onRetry: _r, onTransfer: _t, ...plainTransport } = transport ?? {};
    const worker = new Worker(new URL('./mount-worker.js', import.meta.url), {
      workerData: { ref, mountpoint, opts: { ...rest, transport: plainTransport }, retries },
    });
    // the image's top document, manifests, config and TOC are read here while the worker starts
    // and loads its modules (two round trips that overlap them)
    void readDocuments(ref, rest.platform, transport).then((known) => worker.postMessage({ type: 'known', known } satisfies ToWorker));
    return new Promise<MountedImage>((resolve, reject) => {
      const onMessage = (m: FromWorker) => {
        if (m.type === 'warning') onWarning?.(m.message);
        else if (m.type === 'retry') onWarning?.(m.message);
        else if (m.type === 'ready') resolve(new MountedImage(worker, m.name, mountpoint, m.tocBytes, m.layerCount, m.layerUsage));
        else if (m.type === 'error') {
          worker.off('message', onMessage);
          reject(new OcichunkError(m.code as ErrorCode, m.message));
        }
      };
      worker.on('message', onMessage);
      worker.once('error', (e) => reject(new OcichunkError('EINTERNAL', `mount worker: ${e.message}`, { cause: e })));
      worker.once('exit', (code) => reject(new OcichunkError('EINTERNAL', `mount worker exited (${code}) before mounting`)));
    });
  }

  private ask<T>(type: 'stats' | 'unmount'): Promise<T> {
    if (this.exited) return Promise.reject(new OcichunkError('EUSAGE', `${this.mountpoint} is not mounted`));
    return new Promise<T>((resolve, reject) => {
      this.waiting.push({ resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ type });
    });
  }

  stats(): Promise<MountStats> {
    return this.ask<MountStats>('stats');
  }

  /** Unmount (a busy mount point is detached), write the trace; the final figures. */
  async unmount(): Promise<MountStats> {
    const s = await this.ask<MountStats>('unmount');
    await this.worker.terminate().catch(() => {});
    return s;
  }
}

/**
 * The documents a mount reads before its TOC (the top document, the manifests, the config, the
 * TOC), for its worker; or why they could not be read (the worker reports that, rather than
 * trying again: a registry that is down fails once, not twice).
 */
export async function readDocuments(ref: string, platform: Platform | undefined, transport: TransportOptions | undefined): Promise<KnownDocuments> {
  let src: ImageSource | undefined;
  try {
    src = await openSource(ref, transport);
    const top = await src.getTop();
    const img = await resolveImage(src, platform, top, { readToc: true });
    const docs = [img.original, img.chunked, img.config].flatMap((d) => (d ? [{ digest: d.desc.digest, bytes: d.bytes }] : []));
    const tocDesc = img.chunked?.manifest.layers[0];
    if (img.tocBlob && tocDesc) docs.push({ digest: tocDesc.digest, bytes: await img.tocBlob });
    return { top, docs };
  } catch (e) {
    return { docs: [], error: { code: e instanceof OcichunkError ? e.code : 'EINTERNAL', message: (e as Error).message } };
  } finally {
    await src?.close().catch(() => {});
  }
}
