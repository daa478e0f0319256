// The work any conversion must do, measured alone on the same bytes with ocichunk's own native
// code: reading and verifying the layer (SHA-256), parsing the tar, cutting (FastCDC) and hashing
// (SHA-256) chunks; compressing them into zstd frames of convert's default size and level (64 KiB,
// level 6: convert's group frames; its run frames of up to 256 KiB cost about the same per byte;
// convert also uses a per-layer dictionary, which costs about what the level does);
// hashing the pack bytes. Their CPU
// time over the machine's cores (or the scan's own time, if longer) is the best a pipeline of these
// parts can do on this machine.
// Usage: node benchmarks/floor.mjs LAYERS.tar [BLOB...] -> one JSON line on stdout. The scan reads
// the BLOBs (the layers one by one, uncompressed, or gzip'd as stored: then it includes inflating
// them) or else LAYERS.tar (whose scan stops at the first layer's end-of-archive);
// compression always works on LAYERS.tar (the uncompressed layers). OCICHUNK_LEVEL: zstd level (6),
// OCICHUNK_FRAME: frame bytes (65536).
import fs from 'node:fs';
import os from 'node:os';
import { native } from '../dist/native/index.js';

const [file, ...blobs] = process.argv.slice(2);
const level = Number(process.env.OCICHUNK_LEVEL ?? 6);
const frame = Number(process.env.OCICHUNK_FRAME ?? 64 << 10);
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const now = () => performance.now() / 1000;

// 1. scan: read + SHA-256 of the blob + tar + FastCDC + chunk SHA-256 (batches dropped at once)
let t = now();
let c = cpu();
let chunks = 0;
for (const f of blobs.length ? blobs : [file]) {
  const s = native.layerScanner('auto', { kind: 'cdc' }, 8 << 20, 0, 6);
  s.openFile(f);
  /** @param {import('../dist/native/index.js').ScanBatch[]} bs */
  const drop = (bs) => {
    for (const b of bs) {
      chunks += b.lengths.length;
      s.done(b);
    }
  };
  for (let eof = false; !eof; ) {
    const r = await s.pull();
    drop(r.batches);
    eof = r.eof;
  }
  drop((await s.finish()).batches);
}
const scan = { wall: now() - t, cpu: cpu() - c };

// 2. zstd frames over the same bytes, all cores (reads not counted)
const win = Buffer.allocUnsafe(64 << 20);
const fd = fs.openSync(file, 'r');
const outs = [];
const compress = { wall: 0, cpu: 0 };
for (let pos = 0; ; ) {
  const n = fs.readSync(fd, win, 0, win.length, pos);
  if (n === 0) break;
  pos += n;
  const frames = Math.ceil(n / frame);
  const parts = new Uint32Array(frames * 2);
  for (let i = 0; i < frames; i++) {
    parts[2 * i] = i * frame;
    parts[2 * i + 1] = Math.min(frame, n - i * frame);
  }
  t = now();
  c = cpu();
  const r = await native.compressFrames(win.subarray(0, n), parts, new Uint32Array(frames).fill(1), level, 0);
  compress.wall += now() - t;
  compress.cpu += cpu() - c;
  outs.push(r.data);
}
fs.closeSync(fd);

// 3. SHA-256 of the compressed bytes (the pack blobs' digests)
t = now();
c = cpu();
for (const o of outs) await native.hashRanges(o, new Uint32Array([0, o.length]), 1);
const packHash = { wall: now() - t, cpu: cpu() - c };

const cores = os.availableParallelism();
const total = scan.cpu + compress.cpu + packHash.cpu;
console.log(
  JSON.stringify({
    cores,
    chunks,
    compressedBytes: outs.reduce((a, o) => a + o.length, 0),
    scan,
    compress,
    packHash,
    cpuSeconds: total,
    // all the CPU time spread over every core, but never less than the scan alone (its inflate and
    // parse are serial)
    idealSeconds: Math.max(total / cores, scan.wall),
  }),
);
