/**
 * Setup file (vitest.config.ts): after each test file, remove the temp dirs it made (a full run
 * writes several GB of layouts, registries and root filesystems). OCICHUNK_KEEP_TMP=1 keeps them.
 */
import fs from 'node:fs';
import { afterAll } from 'vitest';
import { madeDirs } from './env.js';

afterAll(() => {
  if (process.env.OCICHUNK_KEEP_TMP) return;
  for (const d of madeDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
