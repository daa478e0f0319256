/** Where the real test images live (built by test/images/build-images.sh via `npm test`'s pretest). */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CACHE = process.env.OCICHUNK_IMAGE_CACHE ?? path.join(os.homedir(), '.cache', 'ocichunk', 'images');
export const LAYOUTS = path.join(CACHE, 'layouts');

/** Path of a cached test image; fails loudly (never skips) when the image builder has not run. */
export function image(name: string): string {
  const p = name.endsWith('.tar') ? path.join(CACHE, name) : path.join(LAYOUTS, name);
  if (!fs.existsSync(p)) {
    throw new Error(`test image ${p} is missing: run "bash test/images/build-images.sh" (npm test does it in pretest)`);
  }
  return p;
}

/** Temp dirs made by this test file; test/helpers/cleanup.ts removes them after the file. */
export const madeDirs: string[] = [];

export function tmpdir(prefix: string): string {
  const base = process.env.OCICHUNK_TEST_TMP ?? os.tmpdir();
  const d = fs.mkdtempSync(path.join(base, `ocichunk-${prefix}-`));
  madeDirs.push(d);
  return d;
}
