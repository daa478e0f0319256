/** Human-readable output helpers for the CLI. */
export function bytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${u[i]}`;
}

export function ratio(r: number): string {
  return `${r.toFixed(2)}x`;
}

export function table(rows: Array<[string, string]>): string {
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

/** Progress on stderr, only on a TTY and unless quiet: one rewritten line. */
export class ProgressLine {
  private readonly on: boolean;
  private last = 0;
  constructor(quiet: boolean) {
    this.on = !quiet && !!process.stderr.isTTY;
  }
  update(text: string, force = false): void {
    if (!this.on) return;
    const now = Date.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    process.stderr.write(`\r\x1b[2K${text}`);
  }
  done(): void {
    if (this.on) process.stderr.write('\r\x1b[2K');
  }
}
