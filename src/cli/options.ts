/** Options shared by several commands, and their translation into library options. */
import type { Argv } from 'yargs';
import { OcichunkError } from '../errors.js';
import { DEFAULT_DICT_SIZE, DEFAULT_FRAME_SIZE, DEFAULT_GROUP_BELOW, DEFAULT_RUN_FRAME_SIZE, DEFAULT_ZSTD_LEVEL } from '../convert/convert.js';
import type { ChunkerSpec } from '../native/index.js';
import { parsePlatform, type Platform } from '../oci/types.js';
import type { TransportOptions } from '../ref.js';
import type { ProgressMode } from './format.js';

/** The registry options (docker://) every command that talks to registries takes. */
export interface RegistryArgs {
  creds?: string;
  authfile?: string;
  'plain-http': boolean;
  insecure: boolean;
  retries: number;
  timeout: number;
}

export interface Common extends RegistryArgs {
  json: boolean;
  quiet: boolean;
  progress?: ProgressMode;
  platform?: string;
  threads: number;
}

export function common<T>(y: Argv<T>) {
  const withCommon = y
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON on stdout' })
    .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'no progress or retry messages on stderr' })
    .option('progress', {
      choices: ['auto', 'tty', 'plain', 'none'] as const,
      default: 'auto' as const,
      describe: 'progress on stderr: auto (a live line on a TTY, else none), plain (one line per step/transfer), none',
    })
    .option('platform', { type: 'string', describe: 'os/arch[/variant] to pick from a multi-platform image (default: this host)' })
    .option('threads', { type: 'number', default: 0, describe: 'worker threads for hashing/compression (0 = all cores)' });
  return registryOptions(withCommon);
}

export function registryOptions<T>(y: Argv<T>) {
  return y
    .option('creds', { type: 'string', describe: 'registry credentials USER:PASSWORD (default: auth file / credential helpers)' })
    .option('authfile', { type: 'string', describe: 'auth file (default: $REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json)' })
    .option('plain-http', { type: 'boolean', default: false, describe: 'talk HTTP to registries (automatic for localhost)' })
    .option('insecure', { type: 'boolean', default: false, describe: 'do not verify registry TLS certificates' })
    .option('retries', { type: 'number', default: 5, describe: 'retries of a failing registry request' })
    .option('timeout', { type: 'number', default: 60, describe: 'seconds without data before a registry connection is given up (and retried)' })
    .group(['creds', 'authfile', 'plain-http', 'insecure', 'retries', 'timeout'], 'Registry options (docker://):');
}

/** Registry options from their flags (credentials also from $OCICHUNK_CREDS). */
export function registryTransportOf(a: RegistryArgs): TransportOptions {
  const creds = a.creds ?? process.env.OCICHUNK_CREDS;
  return {
    ...(creds ? { creds } : {}),
    ...(a.authfile ? { authfile: a.authfile } : {}),
    plainHttp: a['plain-http'],
    insecure: a.insecure,
    retries: a.retries,
    timeoutMs: a.timeout * 1000,
  };
}

/** Registry options from the common flags; retries are reported on stderr unless quiet. */
export function transportOf(a: Common, extra: TransportOptions = {}): TransportOptions {
  return {
    ...registryTransportOf(a),
    onRetry: a.quiet ? undefined : (r) => process.stderr.write(`retry ${r.attempt}: ${r.what}: ${r.reason} (waiting ${r.delayMs} ms)\n`),
    ...extra,
  };
}

export function platformOf(a: { platform?: string }): Platform | undefined {
  return a.platform ? parsePlatform(a.platform) : undefined;
}

const SIZE_RE = /^(\d+)([kKmMgG]?)(i?[bB])?$/;
export function parseSize(s: string | number, what: string): number {
  if (typeof s === 'number') return s;
  const m = SIZE_RE.exec(s.trim());
  if (!m) throw new OcichunkError('EUSAGE', `${what}: invalid size ${JSON.stringify(s)} (e.g. 64k, 1m)`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

export function chunkerOf(a: { chunker: string; 'chunk-min'?: string; 'chunk-avg'?: string; 'chunk-max'?: string; 'chunk-size'?: string }): ChunkerSpec {
  switch (a.chunker) {
    case 'cdc':
      return {
        kind: 'cdc',
        min: parseSize(a['chunk-min'] ?? '16k', '--chunk-min'),
        avg: parseSize(a['chunk-avg'] ?? '64k', '--chunk-avg'),
        max: parseSize(a['chunk-max'] ?? '256k', '--chunk-max'),
      };
    case 'fixed':
      return { kind: 'fixed', size: parseSize(a['chunk-size'] ?? '1m', '--chunk-size') };
    case 'file':
      return { kind: 'file', max: parseSize(a['chunk-max'] ?? '64m', '--chunk-max') };
    default:
      throw new OcichunkError('EUSAGE', `--chunker must be cdc, fixed or file (got ${JSON.stringify(a.chunker)})`);
  }
}

/** The time mtimes are clamped to: --source-date-epoch, else $SOURCE_DATE_EPOCH; none (mtimes kept) without either or with --keep-mtime. */
export function sourceDateEpoch(a: { 'source-date-epoch'?: number; 'keep-mtime'?: boolean }): number | undefined {
  if (a['source-date-epoch'] !== undefined) {
    if (a['keep-mtime']) throw new OcichunkError('EUSAGE', '--keep-mtime and --source-date-epoch exclude each other');
    if (!Number.isSafeInteger(a['source-date-epoch']) || a['source-date-epoch'] < 0) {
      throw new OcichunkError('EUSAGE', `--source-date-epoch must be a non-negative integer (got ${a['source-date-epoch']})`);
    }
    return a['source-date-epoch'];
  }
  if (a['keep-mtime']) return undefined;
  const env = process.env.SOURCE_DATE_EPOCH;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isSafeInteger(n) || n < 0) throw new OcichunkError('EUSAGE', `SOURCE_DATE_EPOCH must be a non-negative integer (got ${JSON.stringify(env)})`);
    return n;
  }
  return undefined;
}

export interface FrameArgs {
  'frame-size'?: string;
  'group-below'?: string;
  'run-frame-size'?: string;
  'zstd-level'?: number;
  'dict-size'?: string;
}

/** --frame-size / --group-below, for convert and for analyze (which predicts what convert stores). */
export function frameOptions<T>(y: Argv<T>) {
  return y
    .option('frame-size', {
      type: 'string',
      default: `${DEFAULT_FRAME_SIZE >> 10}k`,
      describe: 'chunks below --group-below share zstd frames of about this size (larger: smaller storage, more bytes per lazy read)',
    })
    .option('group-below', {
      type: 'string',
      default: `${DEFAULT_GROUP_BELOW >> 10}k`,
      describe: 'chunks smaller than this are grouped into shared frames; larger ones go into run frames',
    })
    .option('run-frame-size', {
      type: 'string',
      default: DEFAULT_RUN_FRAME_SIZE === 0 ? '0' : `${DEFAULT_RUN_FRAME_SIZE >> 10}k`,
      describe: "a file's consecutive chunks of --group-below or more share frames of up to this size (0: a frame each)",
    })
    .option('zstd-level', { type: 'number', default: DEFAULT_ZSTD_LEVEL, describe: 'zstd level of chunk frames (1-22)' })
    .option('dict-size', {
      type: 'string',
      default: `${DEFAULT_DICT_SIZE >> 10}k`,
      describe: "each layer's zstd dictionary, trained from its first chunks and used by all its frames (0: none)",
    });
}

/** The library's frame options; absent flags leave the library defaults. */
export function framesOf(a: FrameArgs): { groupTarget?: number; groupBelow?: number; runTarget?: number; zstdLevel?: number; dictSize?: number } {
  return {
    ...(a['zstd-level'] !== undefined ? { zstdLevel: a['zstd-level'] } : {}),
    ...(a['dict-size'] !== undefined ? { dictSize: a['dict-size'] === '0' ? 0 : parseSize(a['dict-size'], '--dict-size') } : {}),
    ...(a['frame-size'] !== undefined ? { groupTarget: parseSize(a['frame-size'], '--frame-size') } : {}),
    ...(a['group-below'] !== undefined ? { groupBelow: parseSize(a['group-below'], '--group-below') } : {}),
    ...(a['run-frame-size'] !== undefined ? { runTarget: a['run-frame-size'] === '0' ? 0 : parseSize(a['run-frame-size'], '--run-frame-size') } : {}),
  };
}

/**
 * A signal aborted by the first SIGINT or SIGTERM, so that long work stops cleanly (temp files and
 * spools removed, the destination untouched) and exits 130; a second signal exits at once.
 */
export function cancelOnSignals(what: string): AbortSignal {
  const ac = new AbortController();
  const on = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted) process.exit(sig === 'SIGINT' ? 130 : 143);
    process.stderr.write(`\n${sig}: stopping ${what} (again to quit at once)\n`);
    ac.abort(`${sig}`);
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return ac.signal;
}
