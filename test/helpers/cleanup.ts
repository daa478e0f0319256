/**
 * Setup file (vitest.config.ts): after each test file, remove the temp dirs it made (a full run
 * writes several GB of layouts, registries and root filesystems). OCICHUNK_KEEP_TMP=1 keeps them.
 * A mount a failed test left behind under them is detached first.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll } from 'vitest';
import { madeDirs } from './env.js';

// Removal runs off the event loop (fs.promises): removing gigabytes synchronously can block the
// test worker past vitest's 60 s RPC timeout ("Timeout calling onTaskUpdate") on a slow disk.
afterAll(async () => {
  if (process.env.OCICHUNK_KEEP_TMP) return;
  const dirs = madeDirs.splice(0);
  const mounts = fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter(Boolean);
  for (const m of mounts) if (dirs.some((d) => m.startsWith(d + '/'))) spawnSync('umount', ['-l', m]);
  for (const d of dirs) await fs.promises.rm(d, { recursive: true, force: true });
});
