/** `ls` and `cat`: read a chunked image without pulling it (only the TOC and the chunks read are fetched). */
import fs from 'node:fs/promises';
import type { Argv } from 'yargs';
import { mountInThisThread } from '../lazy/mounted.js';
import { LazyImage, type LazyStat } from '../lazy/reader.js';
import { lazyBench, parseScenarios } from '../lazy/bench.js';
import { parseLink } from '../lazy/link.js';
import { bytes, ProgressLine, quoteName } from './format.js';
import { common, parseSize, platformOf, transportOf, type Common } from './options.js';

export type CacheArgs = { cache?: string; 'cache-max': string; 'no-cache'?: boolean };

export function cacheOptions<T>(y: Argv<T>) {
  return y
    .option('cache', { type: 'string', describe: 'chunk cache directory, shared by images and processes (default ~/.cache/ocichunk/chunks)' })
    .option('cache-max', { type: 'string', default: '2g', describe: 'evict least recently used chunks beyond this size' })
    .option('no-cache', { type: 'boolean', describe: 'fetch every chunk, keep nothing' });
}

export async function openLazy(a: Common & CacheArgs & { image: string }): Promise<LazyImage> {
  return LazyImage.open(a.image, {
    platform: platformOf(a),
    transport: transportOf(a),
    cacheDir: a['no-cache'] ? false : a.cache,
    cacheMaxBytes: parseSize(a['cache-max'], '--cache-max'),
  });
}

const TYPE_CHAR: Record<LazyStat['type'], string> = { reg: '-', dir: 'd', symlink: 'l', char: 'c', block: 'b', fifo: 'p' };

function modeString(s: LazyStat): string {
  const m = s.mode;
  const rwx = (v: number, sp: number, spc: string) => (v & 4 ? 'r' : '-') + (v & 2 ? 'w' : '-') + (sp ? (v & 1 ? spc : spc.toUpperCase()) : v & 1 ? 'x' : '-');
  return TYPE_CHAR[s.type] + rwx(m >> 6, m & 0o4000, 's') + rwx(m >> 3, m & 0o2000, 's') + rwx(m, m & 0o1000, 't');
}

export const ls = {
  command: 'ls <image> [path]',
  describe: 'List a directory of a chunked image (fetches only the TOC)',
  builder: (y: Argv) =>
    cacheOptions(common(y)).positional('image', { type: 'string', demandOption: true }).positional('path', { type: 'string', default: '/' }),
  run: async (a: Common & CacheArgs & { image: string; path: string }): Promise<unknown> => {
    const img = await openLazy(a);
    try {
      const st = img.stat(a.path, { follow: true });
      const names = st.type === 'dir' ? img.readdir(a.path) : [a.path.split('/').filter(Boolean).pop() ?? '/'];
      const base = a.path.replace(/\/+$/, '');
      const rows = names.map((n) => ({ name: n, ...(st.type === 'dir' ? img.stat(`${base}/${n}`) : img.stat(a.path)) }));
      if (a.json) return { image: img.name, path: a.path, entries: rows, stats: img.stats() };
      return rows
        .map((r) => {
          const size = r.type === 'char' || r.type === 'block' ? `${r.devMajor}, ${r.devMinor}` : String(r.size);
          const date = new Date(r.mtime * 1000).toISOString().slice(0, 16).replace('T', ' ');
          return `${modeString(r)} ${String(r.nlink).padStart(3)} ${String(r.uid).padStart(5)} ${String(r.gid).padStart(5)} ${size.padStart(10)} ${date} ${quoteName(r.name)}${r.link !== undefined ? ` -> ${quoteName(r.link)}` : ''}`;
        })
        .join('\n');
    } finally {
      await img.close();
    }
  },
};

export const cat = {
  command: 'cat <image> <paths..>',
  describe: 'Write files of a chunked image to stdout, one after another as cat(1) does, fetching only their chunks',
  builder: (y: Argv) =>
    cacheOptions(common(y))
      .positional('image', { type: 'string', demandOption: true })
      .positional('paths', { type: 'string', array: true, demandOption: true, describe: 'files, written in this order' })
      .option('stats', { type: 'boolean', default: false, describe: 'print what was fetched on stderr (with --json: as JSON on stdout, no content)' }),
  run: async (a: Common & CacheArgs & { image: string; paths: string[]; stats: boolean }): Promise<unknown> => {
    const img = await openLazy(a);
    try {
      // every path resolved before the first byte is written: a missing one fails the whole command
      const files = img.regularFiles(a.paths);
      for await (const b of img.readFiles(files)) {
        if (!a.json && b.length && !process.stdout.write(b)) await new Promise((r) => process.stdout.once('drain', r));
      }
      const s = img.stats();
      const size = files.reduce((t, f) => t + f.size, 0);
      if (a.json) return { image: img.name, ...(files.length === 1 ? { path: files[0].path } : { files }), size, ...s };
      if (a.stats) {
        process.stderr.write(
          `${files.length === 1 ? files[0].path : `${files.length} files`}: ${bytes(size)}; fetched ${bytes(s.packBytesFetched)} of packs (${s.chunksFetched} chunks) + TOC ${bytes(s.tocBytes)} + digests ${bytes(s.digestBytesFetched)}; ${s.cacheHits} chunks from the cache\n`,
        );
      }
      return undefined;
    } finally {
      await img.close();
    }
  },
};

export const mount = {
  command: 'mount <image> <mountpoint>',
  describe: 'Mount a chunked image read-only (FUSE), fetching chunks as they are read; unmounts on SIGINT/SIGTERM',
  builder: (y: Argv) =>
    cacheOptions(common(y))
      .positional('image', { type: 'string', demandOption: true })
      .positional('mountpoint', { type: 'string', demandOption: true })
      .option('record-trace', { type: 'string', describe: 'write the files (and ranges) read to this file at unmount' })
      .option('prefetch', { type: 'string', describe: "fetch the chunks of a recorded trace in the background (default: the image's prefetch list, if any)" })
      .option('no-prefetch', { type: 'boolean', describe: "do not prefetch the image's prefetch list" })
      .option('allow-other', { type: 'boolean', default: false, describe: 'let other users enter the mount (FUSE allow_other)' })
      .option('allow-suid', {
        type: 'boolean',
        default: false,
        describe: 'honour setuid/setgid bits: trusts the image with root for whoever can enter (default nosuid)',
      })
      .option('allow-dev', {
        type: 'boolean',
        default: false,
        describe: "let the image's device nodes be opened: trusts the image with the host's devices (default nodev)",
      })
      .option('layers', {
        type: 'boolean',
        default: false,
        describe:
          'show each layer as an overlayfs layer directory (0, 1, ... lowest first; whiteouts as 0/0 devices, opaque xattrs), for a snapshotter to stack with overlayfs',
      })
      .option('memory-cache', {
        type: 'string',
        default: '64m',
        describe: "verified chunks kept in memory, so that reads of a chunk's pieces hash it once (the kernel caches file pages itself)",
      })
      .option('read-ahead-file', {
        type: 'string',
        default: '0',
        describe:
          'fetch a file of at most this size whole, in the background, when it is first read (e.g. 16m: a cold start takes less time and fetches more; 0: only what reads need, and 1 MiB past each)',
      })
      .option('read-ahead-dir', {
        type: 'string',
        default: '0',
        describe:
          "when a second file of a directory is read, fetch the directory's other files in the background if they add up to at most this size (e.g. 8m; 0: off)",
      })
      .option('ready-file', {
        type: 'string',
        describe: 'once mounted, write {pid, image, layerCount, layerUsage, tocBytes} as JSON to this file (for a supervisor such as the snapshotter)',
      }),
  run: async (
    a: Common &
      CacheArgs & {
        image: string;
        mountpoint: string;
        'record-trace'?: string;
        prefetch?: string;
        'no-prefetch'?: boolean;
        'allow-other': boolean;
        'allow-suid': boolean;
        'allow-dev': boolean;
        layers: boolean;
        'memory-cache': string;
        'read-ahead-file': string;
        'read-ahead-dir': string;
        'ready-file'?: string;
      },
  ): Promise<unknown> => {
    // handlers first, so that whoever waits for the message below may signal at once; a signal
    // before the mount is up ends the process as it would have without handlers
    let up = false;
    const stop = new Promise<void>((resolve) => {
      const on = (sig: NodeJS.Signals) => () => (up ? resolve() : process.exit(sig === 'SIGINT' ? 130 : 143));
      process.once('SIGINT', on('SIGINT'));
      process.once('SIGTERM', on('SIGTERM'));
    });
    // this process does nothing else: the mount runs on its main thread (no worker isolate)
    const img = await mountInThisThread(a.image, a.mountpoint, {
      platform: platformOf(a),
      transport: transportOf(a),
      cacheDir: a['no-cache'] ? false : a.cache,
      cacheMaxBytes: parseSize(a['cache-max'], '--cache-max'),
      recordTrace: a['record-trace'],
      prefetch: a['no-prefetch'] ? false : a.prefetch,
      allowOther: a['allow-other'],
      allowSuid: a['allow-suid'],
      allowDev: a['allow-dev'],
      layers: a.layers,
      memoryCacheBytes: parseSize(a['memory-cache'], '--memory-cache'),
      wholeFileBytes: parseSize(a['read-ahead-file'], '--read-ahead-file'),
      wholeDirBytes: parseSize(a['read-ahead-dir'], '--read-ahead-dir'),
      onWarning: a.quiet ? undefined : (m) => process.stderr.write(`ocichunk mount: ${m}\n`),
    });
    up = true;
    if (a['ready-file']) {
      const info = { pid: process.pid, image: img.name, layerCount: img.layerCount, layerUsage: img.layerUsage, tocBytes: img.tocBytes };
      await fs.writeFile(`${a['ready-file']}.tmp`, JSON.stringify(info) + '\n');
      await fs.rename(`${a['ready-file']}.tmp`, a['ready-file']);
    }
    const what = a.layers ? `layers 0-${img.layerCount - 1} of ${img.name}` : img.name;
    if (!a.quiet) process.stderr.write(`mounted ${what} at ${a.mountpoint} (TOC ${bytes(img.tocBytes)}); SIGINT or SIGTERM unmounts\n`);
    await stop;
    const s = await img.unmount();
    if (s.detached && !a.quiet) process.stderr.write(`ocichunk mount: ${a.mountpoint} was busy: detached (programs still using it lose it now)\n`);
    if (a.json) return { image: img.name, mountpoint: a.mountpoint, ...s };
    return `unmounted ${a.mountpoint}: ${s.reads} reads, ${bytes(s.fileBytesServed)} served; fetched ${bytes(s.packBytesFetched)} of packs (${s.chunksFetched} chunks) + TOC ${bytes(s.tocBytes)} + digests ${bytes(s.digestBytesFetched)}${s.prefetchedChunks ? `, ${s.prefetchedChunks} chunks prefetched` : ''}${s.readAheadChunks ? `, ${s.readAheadChunks} read ahead` : ''}`;
  },
};

export const lazyBenchCmd = {
  command: 'lazy-bench <image>',
  describe:
    'Time a command after a full pull, and on mounts with a cold, prefetched and warm cache, through a simulated WAN link; or in containerd, with and without the ocichunk snapshotter (root: uses chroot, FUSE, containerd)',
  builder: (y: Argv) =>
    common(y)
      .positional('image', { type: 'string', demandOption: true, describe: 'a converted image, docker://HOST/REPO:TAG' })
      .option('run', { type: 'string', demandOption: true, describe: 'the command, run with /bin/sh -c in a chroot of the image (or its container)' })
      .option('link', { type: 'string', default: '50ms,100mbit', describe: 'round-trip time and bandwidth of the simulated link' })
      .option('scenarios', {
        type: 'string',
        default: 'mount',
        describe:
          'comma-separated: pull+unpack, mount-cold, mount-prefetch, mount-warm (group: mount), containerd-pull, containerd-cold, containerd-prefetch, containerd-warm (group: containerd: needs containerd, ctr, ctr-remote), or all',
      })
      .option('tmpdir', { type: 'string', describe: 'where to unpack, mount and cache (default: system temp)' }),
  run: async (a: Common & { image: string; run: string; link: string; scenarios: string; tmpdir?: string }): Promise<unknown> => {
    const scenarios = parseScenarios(a.scenarios);
    const line = new ProgressLine(a);
    const r = await lazyBench(a.image, {
      run: a.run,
      link: parseLink(a.link),
      platform: platformOf(a),
      transport: transportOf(a),
      tmpDir: a.tmpdir,
      scenarios,
      onProgress: (s) => line.event(s),
    }).finally(() => line.done());
    if (a.json) return r;
    const mib = (n?: number) => (n === undefined ? '' : `${n.toFixed(0)} MiB`);
    const withRss = r.results.some((x) => x.peakRss);
    const rows = [
      ['scenario', 'to output', 'to end', 'fetched', 'requests', 'waits', 'of image', 'exit', ...(withRss ? ['containerd', 'snapshotter', 'mounts'] : [])],
      ...r.results.map((x) => [
        x.scenario,
        `${x.firstOutputSeconds.toFixed(2)} s`,
        `${x.seconds.toFixed(2)} s`,
        bytes(x.bytesFetched),
        String(x.requests),
        x.waits === undefined ? '-' : String(x.waits),
        `${(x.shareOfImage * 100).toFixed(1)}%`,
        String(x.exitCode),
        ...(withRss ? [mib(x.peakRss?.containerd), mib(x.peakRss?.snapshotter), mib(x.peakRss?.mounts)] : []),
      ]),
    ];
    const w = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
    const notes = [];
    if (withRss) notes.push("memory: peak RSS (VmHWM); mounts: the snapshotter's mount processes, added up");
    const full = r.results.find((x) => x.scenario === 'containerd-pull');
    const cold = r.results.find((x) => x.scenario === 'containerd-cold');
    if (full && cold) notes.push(`containerd-cold / containerd-pull, time to output: ${(cold.firstOutputSeconds / full.firstOutputSeconds).toFixed(2)}x`);
    return [
      `${r.image}: ${JSON.stringify(r.command)} over ${a.link} (image: ${bytes(r.imageBytes)} compressed)`,
      ...rows.map((row) => row.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ')),
      ...notes,
    ].join('\n');
  },
};
