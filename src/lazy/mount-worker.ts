/**
 * The worker thread a mount runs in: it opens the image, mounts it and fetches missing chunks on
 * its own event loop, so that reads never wait for (or deadlock with) the thread that asked for the
 * mount, however busy or blocked that one is. Talks to MountedImage (mounted.ts) by messages.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { OcichunkError } from '../errors.js';
import { openSource } from '../ref.js';
import type { LayerUsage, MountOptions } from './mount.js';

export type { LayerUsage } from './mount.js';

export type ToWorker = { type: 'stats' } | { type: 'unmount' };
export type FromWorker =
  | { type: 'ready'; name: string; tocBytes: number; layerCount: number; layerUsage: LayerUsage[] }
  | { type: 'error'; code: string; message: string }
  | { type: 'warning'; message: string }
  | { type: 'retry'; message: string }
  | { type: 'stats' | 'unmounted'; stats: unknown };

const { ref, mountpoint, opts, retries } = workerData as { ref: string; mountpoint: string; opts: MountOptions; retries: boolean };
const port = parentPort!;
const send = (m: FromWorker) => port.postMessage(m);

try {
  const transport = {
    ...opts.transport,
    onRetry: retries
      ? (r: { attempt: number; what: string; reason: string; delayMs: number }) =>
          send({ type: 'retry', message: `retry ${r.attempt}: ${r.what}: ${r.reason} (waiting ${r.delayMs} ms)` })
      : undefined,
  };
  // the image's top document is on its way while the rest of the mount's modules load: the
  // registry's answer (a round trip) and the loading overlap
  const opened = openSource(ref, transport).then((source) => {
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
