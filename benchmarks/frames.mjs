// What a lazy reader fetches from a chunked image, replayed from the library (no FUSE, no network):
//   node benchmarks/frames.mjs REF TRACE [SMALL_FILES]
// REF: a chunked image (any transport); TRACE: reads recorded by `ocichunk mount --record-trace`.
// Prints JSON: bytes the trace reads, bytes fetched to serve them cold (one reader with an empty
// chunk cache, which keeps the other chunks of each frame fetched as a mount does), and for SMALL_FILES (default 200) files of
// 1-64 KiB picked at random with a fixed seed, the median and mean bytes fetched to read one of
// them alone (a fresh reader without cache each time).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LazyImage } from '../dist/index.js';
import { readTrace } from '../dist/lazy/mount.js';

const [ref, traceFile, smallArg] = process.argv.slice(2);
if (!ref || !traceFile) {
  console.error('usage: node benchmarks/frames.mjs REF TRACE [SMALL_FILES]');
  process.exit(2);
}
const reads = await readTrace(traceFile);

// a fresh chunk cache, as a cold mount has: the other chunks of each frame fetched are kept there
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ocichunk-frames-cache-'));
let img = await LazyImage.open(ref, { cacheDir });
let readBytes = 0;
for (const r of reads) {
  const st = img.stat(r.path);
  const len = Math.max(0, Math.min(st.size, r.offset + r.length) - r.offset);
  readBytes += (await img.read(r.path, r.offset, len)).length;
}
const trace = { reads: reads.length, readBytes, fetched: img.stats().packBytesFetched, tocBytes: img.stats().tocBytes };

// small files: a seeded walk of the tree
/** @type {string[]} */
const files = [];
/** @param {string} dir */
const walk = (dir) => {
  for (const name of img.readdir(dir)) {
    const p = dir === '/' ? `/${name}` : `${dir}/${name}`;
    const st = img.stat(p, { follow: false });
    if (st.type === 'dir') walk(p);
    else if (st.type === 'reg' && st.size >= 1024 && st.size <= 64 << 10) files.push(p);
  }
};
walk('/');
files.sort();
// removed once the reader is closed: chunks it fetched may still be on their way into the cache
await img.close();
fs.rmSync(cacheDir, { recursive: true, force: true });
let seed = 42;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
const n = Math.min(Number(smallArg ?? 200), files.length);
const picked = new Set();
while (picked.size < n) picked.add(files[Math.floor(rand() * files.length)]);
const per = [];
let fileBytes = 0;
for (const p of picked) {
  img = await LazyImage.open(ref, { cacheDir: false });
  fileBytes += (await img.read(p)).length;
  per.push(img.stats().packBytesFetched);
  await img.close();
}
per.sort((a, b) => a - b);
console.log(
  JSON.stringify({
    ref,
    trace,
    smallFiles: { count: n, meanFileBytes: fileBytes / n, medianFetched: per[Math.floor(n / 2)], meanFetched: per.reduce((a, b) => a + b, 0) / n },
  }),
);
