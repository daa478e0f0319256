import { defineConfig } from 'vitest/config';
import { UNIT_TESTS } from './vitest.unit.config.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // the unit tier runs these (npm run test:unit)
    exclude: ['node_modules/**', ...UNIT_TESTS],
    testTimeout: 600_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    reporters: ['default', './test/summary-reporter.ts'],
    setupFiles: ['./test/helpers/cleanup.ts'],
  },
});
