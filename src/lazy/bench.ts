/**
 * `lazy-bench`: the same command, started several ways through a simulated WAN link to the registry:
 * (a) after a full pull and unpack of the original image (skopeo + umoci, what runtimes do today),
 * (b) on an ocichunk mount with a cold chunk cache, (c) the same with the reads of (b) prefetched
 * (or the image's own prefetch list), (d) with the cache (b) left warm; and in containerd
 * (containerd.ts): `ctr run` after (e) `ctr images pull` (overlayfs), or after `ctr-remote image
 * rpull` with the ocichunk snapshotter and (f) a cold, (g) a prefetched, (h) a warm chunk cache.
 * Time to the command's first output and to its end, bytes and requests over the link, the share
 * of the image fetched, and (containerd) the peak memory of containerd, the snapshotter and its
 * mount processes.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openChunked, resolveImage } from '../chunked/image.js';
import { OcichunkError } from '../errors.js';
import type { Platform } from '../oci/types.js';
import { openSource, parseRef, type TransportOptions } from '../ref.js';
import { formatDockerRef, parseDockerRef } from '../transports/docker-ref.js';
import { type PeakRss, runInContainerd } from './containerd.js';
import { LinkProxy, type LinkSpec } from './link.js';
import { MountedImage } from './mounted.js';

export const MOUNT_SCENARIOS = ['pull+unpack', 'mount-cold', 'mount-prefetch', 'mount-warm'] as const;
export const CONTAINERD_SCENARIOS = ['containerd-pull', 'containerd-cold', 'containerd-prefetch', 'containerd-warm'] as const;
export type Scenario = (typeof MOUNT_SCENARIOS)[number] | (typeof CONTAINERD_SCENARIOS)[number];

/** Scenarios by name, or the groups `mount` (a-d), `containerd` (e-h), `all`; in the order given. */
export function parseScenarios(list: string): Scenario[] {
  const all: readonly string[] = [...MOUNT_SCENARIOS, ...CONTAINERD_SCENARIOS];
  const out: Scenario[] = [];
  for (const name of list
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)) {
    const group = name === 'mount' ? MOUNT_SCENARIOS : name === 'containerd' ? CONTAINERD_SCENARIOS : name === 'all' ? all : undefined;
    if (!group && !all.includes(name))
      throw new OcichunkError('EUSAGE', `--scenarios: unknown scenario ${JSON.stringify(name)} (${all.join(', ')}, mount, containerd, all)`);
    for (const s of (group ?? [name]) as Scenario[]) if (!out.includes(s)) out.push(s);
  }
  if (!out.length) throw new OcichunkError('EUSAGE', '--scenarios: none given');
  return out;
}

export interface ScenarioResult {
  scenario: Scenario;
  /** from the start (of the pull, mount) to the command's end */
  seconds: number;
  /** from the start to the command's first output (none: the end) */
  firstOutputSeconds: number;
  bytesFetched: number;
  requests: number;
  /** bytesFetched / the original image's compressed layers */
  shareOfImage: number;
  exitCode: number;
  output: string;
  /** containerd scenarios: peak resident memory (MiB) of containerd, the snapshotter, its mount processes */
  peakRss?: PeakRss;
  /**
   * mount scenarios: reads that waited for the mount's fetcher (chunks missing from the cache, or
   * whose digest table section was not loaded yet: a warm cache loads those from disk)
   */
  waits?: number;
}

export interface LazyBenchResult {
  image: string;
  command: string;
  link: LinkSpec;
  imageBytes: number;
  results: ScenarioResult[];
}

export interface LazyBenchOptions {
  run: string;
  link: LinkSpec;
  platform?: Platform;
  transport?: TransportOptions;
  tmpDir?: string;
  /** scenarios to run (default: the four without containerd, in order) */
  scenarios?: Scenario[];
  onProgress?: (msg: string) => void;
}

interface Ran {
  code: number;
  out: string;
  /** performance.now() at the first byte of output */
  firstOutputAt?: number;
  /** performance.now() at the command's end, if not when the body returns */
  endAt?: number;
  peakRss?: PeakRss;
  waits?: number;
}

function exec(cmd: string, args: string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let firstOutputAt: number | undefined;
    const on = (d: Buffer) => {
      firstOutputAt ??= performance.now();
      out += d;
    };
    p.stdout.on('data', on);
    p.stderr.on('data', on);
    p.on('error', (e) => reject(new OcichunkError('ENOTFOUND', `${cmd}: ${e.message}`)));
    p.on('close', (code) => resolve({ code: code ?? -1, out, firstOutputAt }));
  });
}

export async function lazyBench(ref: string, opts: LazyBenchOptions): Promise<LazyBenchResult> {
  const r = parseRef(ref);
  if (r.transport !== 'docker') throw new OcichunkError('EUSAGE', `lazy-bench needs a docker:// image (got ${ref})`);
  const d = parseDockerRef(r.path);
  const local = /^(localhost|127\.[\d.]+|\[::1\])(:\d+)?$/.test(d.apiHost);
  const proxy = await new LinkProxy(d.apiHost, opts.link, !(local || opts.transport?.plainHttp), !!opts.transport?.insecure).start();
  const via = formatDockerRef({ ...d, host: proxy.host, apiHost: proxy.host });
  const work = await fs.mkdtemp(path.join(opts.tmpDir ?? os.tmpdir(), 'ocichunk-lazy-bench-'));
  const transport: TransportOptions = { ...opts.transport, plainHttp: true };
  const results: ScenarioResult[] = [];
  const scenarios = opts.scenarios ?? [...MOUNT_SCENARIOS];
  try {
    const src = await openSource(ref, opts.transport);
    let imageBytes: number;
    let ownPrefetch: boolean;
    try {
      const img = await resolveImage(src, opts.platform);
      if (!img.original || !img.chunked) throw new OcichunkError('ENOTFOUND', `${ref}: needs an original and a chunked manifest (convert it first)`);
      imageBytes = img.original.manifest.layers.reduce((a, l) => a + l.size, 0);
      ownPrefetch = scenarios.includes('containerd-prefetch') && !!(await openChunked(img)).toc.prefetch?.length;
    } finally {
      await src.close();
    }
    const trace = path.join(work, 'trace.txt');
    const warmCache = path.join(work, 'cache-warm');
    const measure = async (scenario: Scenario, body: (t0: { at?: number }) => Promise<Ran>) => {
      opts.onProgress?.(scenario);
      proxy.reset();
      // the body may set the start itself (after starting containerd, say)
      const t0: { at?: number } = { at: performance.now() };
      const r = await body(t0);
      const end = r.endAt ?? performance.now();
      const start = t0.at ?? end;
      results.push({
        scenario,
        seconds: (end - start) / 1000,
        firstOutputSeconds: ((r.firstOutputAt ?? end) - start) / 1000,
        bytesFetched: proxy.bytes,
        requests: proxy.requests,
        shareOfImage: proxy.bytes / imageBytes,
        exitCode: r.code,
        output: r.out,
        ...(r.peakRss ? { peakRss: r.peakRss } : {}),
        ...(r.waits !== undefined ? { waits: r.waits } : {}),
      });
    };
    const inChroot = (root: string) => exec('chroot', [root, '/bin/sh', '-c', opts.run]);
    const onMount = async (cache: string, extra: { recordTrace?: string; prefetch?: string | false }) => {
      const mnt = path.join(work, `mnt-${results.length}`);
      await fs.mkdir(mnt);
      const m = await MountedImage.mount(via, mnt, { transport, platform: opts.platform, cacheDir: cache, ...extra });
      let ran: Ran;
      try {
        ran = await inChroot(mnt);
      } catch (e) {
        await m.unmount();
        throw e;
      }
      // the command's end; the unmount after it (cache files still being written) is not timed
      const endAt = performance.now();
      return { ...ran, endAt, waits: (await m.unmount()).fetchRequests };
    };
    const viaRef = via.replace(/^docker:\/\//, '');
    let runs = 0;
    const inContainerd = (t0: { at?: number }, lazy?: { cacheDir: string; prefetch?: string | false }) =>
      runInContainerd(
        {
          dir: path.join(work, `containerd-${runs++}`),
          ref: viaRef,
          run: opts.run,
          lazy,
          platform: opts.platform,
          transport: opts.transport,
          onProgress: opts.onProgress,
        },
        t0,
      ).then(async (r) => {
        // the directory goes now: a full pull unpacked the image there
        await fs.rm(path.join(work, `containerd-${runs - 1}`), { recursive: true, force: true });
        return { code: r.code, out: r.out, firstOutputAt: r.firstOutputAt, endAt: r.endAt, peakRss: r.rss };
      });
    const ctrdCache = path.join(work, 'cache-containerd');
    for (const s of scenarios) {
      if (s === 'containerd-pull') {
        await measure(s, (t0) => inContainerd(t0));
      } else if (s === 'containerd-cold') {
        await measure(s, (t0) => inContainerd(t0, { cacheDir: ctrdCache, prefetch: false }));
      } else if (s === 'containerd-prefetch') {
        // the image's own prefetch list, else a trace: that of mount-cold, or one recorded now (not timed)
        let list: string | undefined;
        if (!ownPrefetch) {
          list = trace;
          if (!existsSync(trace)) {
            opts.onProgress?.('recording a read trace (not timed)');
            await onMount(path.join(work, 'cache-trace'), { recordTrace: trace, prefetch: false });
          }
        }
        await measure(s, (t0) => inContainerd(t0, { cacheDir: path.join(work, 'cache-containerd-prefetch'), ...(list ? { prefetch: list } : {}) }));
      } else if (s === 'containerd-warm') {
        await measure(s, (t0) => inContainerd(t0, { cacheDir: ctrdCache, prefetch: false }));
      } else if (s === 'pull+unpack') {
        await measure(s, async () => {
          const layout = path.join(work, 'pull');
          const creds = opts.transport?.creds ? ['--src-creds', opts.transport.creds] : [];
          const plat = opts.platform ? ['--override-os', opts.platform.os, '--override-arch', opts.platform.architecture] : [];
          const c = await exec('skopeo', ['copy', '--quiet', '--src-tls-verify=false', ...creds, ...plat, via, `oci:${layout}:img`]);
          if (c.code !== 0) throw new OcichunkError('EIO', `skopeo copy ${via}: ${c.out.trim()}`);
          const u = await exec('umoci', ['unpack', '--image', `${layout}:img`, path.join(work, 'bundle')]);
          if (u.code !== 0) throw new OcichunkError('EIO', `umoci unpack: ${u.out.trim()}`);
          return inChroot(path.join(work, 'bundle', 'rootfs'));
        });
      } else if (s === 'mount-cold') {
        await measure(s, () => onMount(warmCache, { recordTrace: trace, prefetch: false }));
      } else if (s === 'mount-prefetch') {
        const list = await fs.stat(trace).then(
          () => trace,
          () => undefined,
        );
        await measure(s, () => onMount(path.join(work, 'cache-prefetch'), list ? { prefetch: list } : {}));
      } else {
        await measure(s, () => onMount(warmCache, { prefetch: false }));
      }
    }
    return { image: ref, command: opts.run, link: opts.link, imageBytes, results };
  } finally {
    await proxy.stop();
    await fs.rm(work, { recursive: true, force: true });
  }
}
