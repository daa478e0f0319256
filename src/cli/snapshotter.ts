/** `snapshotter`: serve containerd's snapshots API on a unix socket until SIGINT/SIGTERM. */
import type { Argv } from 'yargs';
// the server (gRPC) loads when the command runs: other commands do not pay for it
import type { RemoteLayers as RemoteLayersT } from '../snapshotter/remote.js';
import type { LogEvent, SnapshotterServer } from '../snapshotter/server.js';
import { terminalText } from './format.js';
import { parseSize, platformOf, type RegistryArgs, registryOptions, registryTransportOf } from './options.js';

export const command = 'snapshotter';
export const describe =
  'Serve containerd\'s snapshots API on a unix socket (a proxy snapshotter: [proxy_plugins.ocichunk] type = "snapshot"); SIGINT or SIGTERM stops it';

interface Args extends RegistryArgs {
  root: string;
  address: string;
  'log-level': 'debug' | 'info' | 'warn' | 'error';
  'log-json': boolean;
  lazy: boolean;
  cache?: string;
  'cache-max': string;
  'mount-memory-cache': string;
  /** false: --no-prefetch (yargs negates the option) */
  prefetch?: string | false;
  'no-prefetch'?: boolean;
  'lookup-timeout': number;
  platform?: string;
}

export function builder(y: Argv) {
  return registryOptions(y)
    .option('root', { type: 'string', demandOption: true, describe: 'directory of the state and the snapshots (made mode 0700)' })
    .option('address', { type: 'string', demandOption: true, describe: "unix socket to serve on (the proxy plugin's address in containerd's config)" })
    .option('log-level', {
      choices: ['debug', 'info', 'warn', 'error'] as const,
      default: 'info' as const,
      describe: 'log lines on stderr from this level up (debug: every call)',
    })
    .option('log-json', { type: 'boolean', default: false, describe: 'log one JSON object per line' })
    .option('lazy', {
      type: 'boolean',
      default: true,
      describe: 'serve layers of converted images lazily when a Prepare names the image (CRI or ctr-remote labels); --no-lazy: containerd applies every layer',
    })
    .option('cache', { type: 'string', describe: 'chunk cache directory, shared with ocichunk mount and every image (default ~/.cache/ocichunk/chunks)' })
    .option('cache-max', { type: 'string', default: '2g', describe: 'evict least recently used chunks beyond this size' })
    .option('mount-memory-cache', {
      type: 'string',
      default: '4m',
      describe: "verified chunks each image's mount process keeps in memory (ocichunk mount --memory-cache)",
    })
    .option('prefetch', {
      type: 'string',
      describe: "a read trace (ocichunk mount --record-trace) whose chunks every image's mount prefetches (default: the image's prefetch list, if any)",
    })
    .option('no-prefetch', { type: 'boolean', describe: "do not prefetch images' prefetch lists" })
    .option('lookup-timeout', {
      type: 'number',
      default: 20,
      describe: "seconds to find and mount a layer's image; after that containerd downloads and applies the layer",
    })
    .option('platform', { type: 'string', describe: 'os/arch[/variant] to pick from a multi-platform image (default: this host)' })
    .group(['lazy', 'cache', 'cache-max', 'mount-memory-cache', 'prefetch', 'no-prefetch', 'lookup-timeout', 'platform'], 'Lazy layers:');
}

const LEVELS = { debug: 0, info: 1, warn: 2, error: 3 } as const;

export async function run(a: Args): Promise<unknown> {
  const min = LEVELS[a['log-level']];
  const log = (e: LogEvent) => {
    if (LEVELS[e.level] < min) return;
    const time = new Date().toISOString();
    if (a['log-json']) process.stderr.write(JSON.stringify({ time, ...e, ...(e.ms !== undefined ? { ms: Math.round(e.ms * 10) / 10 } : {}) }) + '\n');
    else
      process.stderr.write(`${time} ${e.level.padEnd(5)} ${terminalText(e.msg, e.level === 'error')}${e.ms !== undefined ? ` (${e.ms.toFixed(1)} ms)` : ''}\n`);
  };
  // handlers first: a signal before the server is up ends the process as it would without them;
  // a second signal while stopping quits at once
  let server: SnapshotterServer | undefined;
  let signalled: NodeJS.Signals | undefined;
  const stop = new Promise<NodeJS.Signals>((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      if (!server || signalled) process.exit(sig === 'SIGINT' ? 130 : 143);
      signalled = sig;
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
  const [{ RemoteLayers }, { SnapshotterServer }] = await Promise.all([import('../snapshotter/remote.js'), import('../snapshotter/server.js')]);
  const layers: RemoteLayersT | undefined = a.lazy
    ? new RemoteLayers({
        root: a.root,
        ...(a.cache ? { cacheDir: a.cache } : {}),
        cacheMaxBytes: parseSize(a['cache-max'], '--cache-max'),
        mountMemoryCacheBytes: parseSize(a['mount-memory-cache'], '--mount-memory-cache'),
        ...(a['no-prefetch'] || a.prefetch === false ? { prefetch: false as const } : a.prefetch ? { prefetch: a.prefetch } : {}),
        lookupTimeoutMs: a['lookup-timeout'] * 1000,
        platform: platformOf(a),
        transport: registryTransportOf(a),
        onEvent: (e) => log(e),
      })
    : undefined;
  server = await SnapshotterServer.start({ root: a.root, address: a.address, layers, onLog: log });
  const sig = await stop;
  log({ level: 'info', msg: `${sig}: stopping` });
  await server.stop();
  return undefined;
}
