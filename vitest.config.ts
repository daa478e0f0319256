import { defineConfig } from 'vitest/config';
import { UNIT_TESTS } from './vitest.unit.config.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // the unit tier runs these (npm run test:unit)
    exclude: ['node_modules/**', ...UNIT_TESTS],
    testTimeout: 600_000,
    hookTimeout: 1_800_000,
    // two test files at a time: most wait on registries, containerd, mounts and child processes
    // (one file alone keeps ~1.3 of 2 cores busy); OCICHUNK_TEST_WORKERS=1 runs them one by one
    fileParallelism: true,
    maxWorkers: Number(process.env.OCICHUNK_TEST_WORKERS ?? 2),
    minWorkers: 1,
    reporters: ['default', './test/summary-reporter.ts'],
    setupFiles: ['./test/helpers/cleanup.ts'],
  },
});
