/**
 * Unit tier: the frame options of convert and analyze (--frame-size, --group-below,
 * --run-frame-size, --zstd-level, --dict-size) as the library receives them, and the limits the
 * library puts on them (an OCI layout written here, no test images).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { framesOf } from '../../src/cli/options.js';
import { convert, DEFAULT_RUN_FRAME_SIZE } from '../../src/convert/convert.js';
import type { OcichunkError } from '../../src/errors.js';
import { tmpdir } from '../helpers/env.js';
import { plainLayer, writeLayout } from '../helpers/layout.js';
import { tarOf } from './tar.js';

describe('frame options', () => {
  it('maps the flags to the library options; absent flags keep the defaults', () => {
    expect(framesOf({})).toEqual({});
    expect(framesOf({ 'run-frame-size': '512k', 'frame-size': '64k', 'group-below': '32k', 'zstd-level': 9, 'dict-size': '0' })).toEqual({
      runTarget: 512 << 10,
      groupTarget: 64 << 10,
      groupBelow: 32 << 10,
      zstdLevel: 9,
      dictSize: 0,
    });
    expect(framesOf({ 'run-frame-size': '0' })).toEqual({ runTarget: 0 });
    expect(DEFAULT_RUN_FRAME_SIZE).toBe(0);
    expect(() => framesOf({ 'run-frame-size': 'big' })).toThrow(/--run-frame-size: invalid size/);
  });

  it('refuses frame options over their limits before it opens or creates anything', async () => {
    const dir = tmpdir('frame-options');
    writeLayout(path.join(dir, 'in'), 'x', [plainLayer(tarOf({ a: 'hello' }))]);
    for (const [opts, message] of [
      [{ runTarget: 128 << 20 }, /run frame size 134217728 is over the format's limit/],
      [{ groupTarget: 65 << 20 }, /frame size 68157440 is over the format's limit/],
      [{ dictSize: 100 }, /dictionary size 100: 0 \(none\) or 1 KiB to 1 MiB/],
    ] as const) {
      const err = (await convert(`oci:${dir}/in:x`, `oci:${dir}/out:x`, opts).catch((e: unknown) => e)) as OcichunkError;
      expect(err.code).toBe('EUSAGE');
      expect(err.message).toMatch(message);
      expect(fs.existsSync(path.join(dir, 'out'))).toBe(false);
    }
  });
});
