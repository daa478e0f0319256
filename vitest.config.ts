import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 600_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    reporters: ['default', './test/summary-reporter.ts'],
    setupFiles: ['./test/helpers/cleanup.ts'],
  },
});
