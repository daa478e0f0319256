/** test/helpers/hang.ts: a run that hangs is given up with its stacks captured, whatever keeps it. */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { tmpdir } from '../helpers/env.js';
import { runWatched } from '../helpers/hang.js';

describe('runWatched', () => {
  process.env.OCICHUNK_HANG_DIR = tmpdir('hang');

  it('a run that ends: its code and output, nothing given up', async () => {
    const r = await runWatched(process.execPath, ['-e', 'process.stdout.write("out"); process.exitCode = 3'], 30_000);
    expect(r).toMatchObject({ code: 3, stderr: '', hung: false });
    expect(r.stdout.toString()).toBe('out');
  });

  it('a process that never exits: stacks captured, then killed', async () => {
    const r = await runWatched(process.execPath, ['-e', 'process.stdout.write("before"); setInterval(() => {}, 1000)'], 1000, 'idle');
    expect(r.hung).toBe(true);
    expect(r.exitedButOpen).toBeUndefined();
    expect(r.stdout.toString()).toBe('before');
    const evidence = fs.readFileSync(r.evidence!, 'utf8');
    expect(evidence).toContain('idle: no end after 1 s');
    expect(evidence).toMatch(/-- thread \d+ node state/);
  });

  it('a process that exited while another holds its pipes: given up without waiting for them', async () => {
    const t0 = Date.now();
    // the shell's background sleep inherits its stdout and stderr, and outlives it
    const r = await runWatched('sh', ['-c', 'echo hi; sleep 10 & exit 0'], 1000);
    expect(r).toMatchObject({ code: 0, hung: true, exitedButOpen: true });
    expect(r.stdout.toString()).toBe('hi\n');
    expect(Date.now() - t0).toBeLessThan(9_000);
  });
});
