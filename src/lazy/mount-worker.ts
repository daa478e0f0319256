/**
 * The worker thread a mount runs in: it opens the image, mounts it and fetches missing chunks on
 * its own event loop, so that reads never wait for (or deadlock with) the thread that asked for the
 * mount, however busy or blocked that one is. Talks to MountedImage (mounted.ts) by messages.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { type ErrorCode, OcichunkError } from '../errors.js';
import { openSource } from '../ref.js';
import { type KnownDocuments, KnownDocumentsSource } from '../transports/known-documents.js';
import type { LayerUsage, MountOptions } from './mount.js';

export type { LayerUsage } from './mount.js';

export type ToWorker = { type: 'stats' } | { type: 'unmount' } | { type: 'known'; known?: KnownDocuments };
export type FromWorker =
  | { type: 'ready'; name: string; tocBytes: number; layerCount: number; layerUsage: LayerUsage[] }
  | { type: 'error'; code: string; message: string }
  | { type: 'warning'; message: string }
  | { type: 'retry'; message: string }
  | { type: 'stats' | 'unmounted'; stats: unknown };

const { ref, mountpoint, opts, retries } = workerData as { ref: string; mountpoint: string; opts: MountOptions; retries: boolean };
const port = parentPort!;
const send = (m: FromWorker) => port.postMessage(m);
// the image's top document, manifests, config and TOC, read by the thread that asked for the mount
// while this one started (MountedImage), or the error that stopped those reads
const fromParent = new Promise<KnownDocuments | undefined>((resolve) => {
  const first = (m: ToWorker) => {
    if (m.type !== 'known') return;
    port.off('message', first);
    resolve(m.known);
  };
  port.on('message', first);
});

try {
  const transport = {
    ...opts.transport,
    onRetry: retries
      ? (r: { attempt: number; what: string; reason: string; delayMs: number }) =>
          send({ type: 'retry', message: `retry ${r.attempt}: ${r.what}: ${r.reason} (waiting ${r.delayMs} ms)` })
      : undefined,
  };
  // the documents are on their way (read by the thread that asked for the mount) while the rest
  // of the mount's modules load
  const opened = openSource(ref, transport).then(async (base) => {
    const known = await fromParent;
    if (known?.error) {
      await base.close();
      throw new OcichunkError(known.error.code as ErrorCode, known.error.message);
    }
    const source = known ? new KnownDocumentsSource(base, known) : base;
    const top = source.getTop();
    top.catch(() => {}); // awaited by LazyImage.open
    return { source, top };
  });
  opened.catch(() => {});
  const { MountCore } = await import('./mount.js');
  const m = await MountCore.mount(ref, mountpoint, {
    ...opts,
    transport,
    opened,
    onWarning: (message) => send({ type: 'warning', message }),
  });
  const layerUsage = m.layerUsage;
  send({ type: 'ready', name: m.image.name, tocBytes: m.image.image.tocBytes, layerCount: m.layerUsage.length, layerUsage });
  port.on('message', async (msg: ToWorker) => {
    if (msg.type === 'known') return;
    try {
      if (msg.type === 'stats') send({ type: 'stats', stats: m.stats() });
      else {
        const stats = await m.unmount();
        send({ type: 'unmounted', stats });
        port.close();
      }
    } catch (e) {
      send({ type: 'error', code: e instanceof OcichunkError ? e.code : 'EINTERNAL', message: (e as Error).message });
    }
  });
} catch (e) {
  send({ type: 'error', code: e instanceof OcichunkError ? e.code : 'EINTERNAL', message: (e as Error).message });
  port.close();
}
