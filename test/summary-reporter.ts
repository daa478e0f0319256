/** Prints one closing line that any CI can read: "Tests: N passed, N failed[, N skipped]". */
import type { Reporter } from 'vitest/reporters';

interface Task {
  type: string;
  mode?: string;
  result?: { state?: string };
  tasks?: Task[];
}

export default class SummaryReporter implements Reporter {
  onFinished(files: Task[] = [], errors: unknown[] = []): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const walk = (t: Task) => {
      if (t.tasks) t.tasks.forEach(walk);
      if (t.type !== 'test') return;
      if (t.result?.state === 'pass') passed++;
      else if (t.result?.state === 'fail') failed++;
      else skipped++;
    };
    files.forEach((f) => {
      walk(f);
      if (f.result?.state === 'fail' && !f.tasks?.length) failed++;
    });
    if (errors.length) failed += errors.length;
    process.stdout.write(`\nTests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  }
}
