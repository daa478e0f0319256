/** `snapshotter`: serve containerd's snapshots API on a unix socket until SIGINT/SIGTERM. */
import type { Argv } from 'yargs';
import { SnapshotterServer, type LogEvent } from '../snapshotter/server.js';
import { terminalText } from './format.js';

export const command = 'snapshotter';
export const describe =
  'Serve containerd\'s snapshots API on a unix socket (a proxy snapshotter: [proxy_plugins.ocichunk] type = "snapshot"); SIGINT or SIGTERM stops it';

interface Args {
  root: string;
  address: string;
  'log-level': 'debug' | 'info' | 'warn' | 'error';
  'log-json': boolean;
}

export function builder(y: Argv) {
  return y
    .option('root', { type: 'string', demandOption: true, describe: 'directory of the state and the snapshots (made mode 0700)' })
    .option('address', { type: 'string', demandOption: true, describe: "unix socket to serve on (the proxy plugin's address in containerd's config)" })
    .option('log-level', {
      choices: ['debug', 'info', 'warn', 'error'] as const,
      default: 'info' as const,
      describe: 'log lines on stderr from this level up (debug: every call)',
    })
    .option('log-json', { type: 'boolean', default: false, describe: 'log one JSON object per line' });
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
  server = await SnapshotterServer.start({ root: a.root, address: a.address, onLog: log });
  const sig = await stop;
  log({ level: 'info', msg: `${sig}: stopping` });
  await server.stop();
  return undefined;
}
