/**
 * The fast hermetic tier (`npm run test:unit`): no Debian packages, no test images, no root, no
 * network beyond 127.0.0.1. The full suite (vitest.config.ts) runs everything else.
 */
import { defineConfig } from 'vitest/config';

/** Test files of the unit tier (the full suite leaves them to it). */
export const UNIT_TESTS = [
  'test/unit/**/*.test.ts',
  'test/chunk-index.test.ts',
  'test/chunk-cache.test.ts',
  'test/native-errors.test.ts',
  'test/lifecycle.test.ts',
];

export default defineConfig({
  test: {
    include: UNIT_TESTS,
    testTimeout: 60_000,
    reporters: ['default', './test/summary-reporter.ts'],
    setupFiles: ['./test/helpers/cleanup.ts'],
  },
});
