/** Run `ocichunk mount` as a user does, run checks while it is up, then unmount it with a signal. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import type { MountStats } from '../../src/lazy/mount.js';
import { REPO } from './env.js';

/** The mount's line of /proc/mounts (its options), while it is mounted. */
export function mountLine(mnt: string): string | undefined {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[1] === mnt);
}

export async function mounted(
  ref: string,
  mnt: string,
  extra: string[],
  run: () => void | Promise<void>,
  signal: NodeJS.Signals = 'SIGTERM',
  env: NodeJS.ProcessEnv = process.env,
): Promise<MountStats & { detached?: boolean }> {
  fs.mkdirSync(mnt, { recursive: true });
  const proc: ChildProcess = spawn(process.execPath, [path.join(REPO, 'bin', 'ocichunk.js'), 'mount', ref, mnt, '--json', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d));
  const ready = new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      err += d;
      if (err.includes('mounted ')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`mount exited ${code}: ${err}`)));
  });
  const exited = new Promise<number>((resolve) => proc.on('exit', (code) => resolve(code ?? -1)));
  await ready;
  try {
    expect(mountLine(mnt)).toMatch(/ fuse/);
    await run();
  } finally {
    proc.kill(signal);
  }
  expect(await exited, err).toBe(0);
  expect(mountLine(mnt)).toBeUndefined();
  return JSON.parse(out) as MountStats;
}
