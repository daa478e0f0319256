/**
 * `lazy-bench`: the same command, started four ways through a simulated WAN link to the registry:
 * (a) after a full pull and unpack of the original image (skopeo + umoci, what runtimes do today),
 * (b) on an ocichunk mount with a cold chunk cache, (c) the same with the reads of (b) prefetched
 * (or the image's own prefetch list), (d) with the cache (b) left warm. Time to completion, bytes and
 * requests over the link, and the share of the image fetched.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { resolveImage } from '../chunked/image.js';
import { OcichunkError } from '../errors.js';
import type { Platform } from '../oci/types.js';
import { openSource, parseRef, type TransportOptions } from '../ref.js';
import { formatDockerRef, parseDockerRef } from '../transports/registry.js';
import { LinkProxy, type LinkSpec } from './link.js';
import { MountedImage } from './mounted.js';

export type Scenario = 'pull+unpack' | 'mount-cold' | 'mount-prefetch' | 'mount-warm';

export interface ScenarioResult {
  scenario: Scenario;
  seconds: number;
  bytesFetched: number;
  requests: number;
  /** bytesFetched / the original image's compressed layers */
  shareOfImage: number;
  exitCode: number;
  output: string;
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
  /** scenarios to run (default: all four, in order) */
  scenarios?: Scenario[];
  onProgress?: (msg: string) => void;
}

function exec(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (out += d));
    p.on('error', (e) => reject(new OcichunkError('ENOTFOUND', `${cmd}: ${e.message}`)));
    p.on('close', (code) => resolve({ code: code ?? -1, out }));
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
  const scenarios = opts.scenarios ?? ['pull+unpack', 'mount-cold', 'mount-prefetch', 'mount-warm'];
  try {
    const src = await openSource(ref, opts.transport);
    let imageBytes: number;
    try {
      const img = await resolveImage(src, opts.platform);
      if (!img.original || !img.chunked) throw new OcichunkError('ENOTFOUND', `${ref}: needs an original and a chunked manifest (convert it first)`);
      imageBytes = img.original.manifest.layers.reduce((a, l) => a + l.size, 0);
    } finally {
      await src.close();
    }
    const trace = path.join(work, 'trace.txt');
    const warmCache = path.join(work, 'cache-warm');
    const measure = async (scenario: Scenario, body: () => Promise<{ code: number; out: string }>) => {
      opts.onProgress?.(scenario);
      proxy.reset();
      const t0 = performance.now();
      const { code, out } = await body();
      results.push({
        scenario,
        seconds: (performance.now() - t0) / 1000,
        bytesFetched: proxy.bytes,
        requests: proxy.requests,
        shareOfImage: proxy.bytes / imageBytes,
        exitCode: code,
        output: out,
      });
    };
    const inChroot = (root: string) => exec('chroot', [root, '/bin/sh', '-c', opts.run]);
    const onMount = async (cache: string, extra: { recordTrace?: string; prefetch?: string | false }) => {
      const mnt = path.join(work, `mnt-${results.length}`);
      await fs.mkdir(mnt);
      const m = await MountedImage.mount(via, mnt, { transport, platform: opts.platform, cacheDir: cache, ...extra });
      try {
        return await inChroot(mnt);
      } finally {
        await m.unmount();
      }
    };
    for (const s of scenarios) {
      if (s === 'pull+unpack') {
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
