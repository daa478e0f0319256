/** Human-readable output helpers for the CLI. */
import type { OcichunkError } from '../errors.js';
export { bytes } from '../format.js';

export function ratio(r: number): string {
  return `${r.toFixed(2)}x`;
}

export function table(rows: Array<[string, string]>): string {
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'none';

/**
 * Progress on stderr. 'auto': on a TTY one rewritten line, nothing otherwise; 'plain': only
 * `event()` lines (phase changes, finished transfers), for logs; 'none' (or --quiet): nothing.
 */
export class ProgressLine {
  private readonly on: boolean;
  private readonly plain: boolean;
  private last = 0;
  constructor(a: { quiet: boolean; progress?: ProgressMode }) {
    const mode = a.quiet ? 'none' : (a.progress ?? 'auto');
    this.on = mode === 'tty' || (mode === 'auto' && !!process.stderr.isTTY);
    this.plain = mode === 'plain';
  }
  /** A discrete event: shown on the TTY line, or printed as a line of its own. */
  event(text: string): void {
    if (this.plain) process.stderr.write(text + '\n');
    else this.update(text, true);
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

/** A text progress bar: [#####.....] */
export function bar(done: number, total: number, width = 20): string {
  const f = total > 0 ? Math.min(1, done / total) : 0;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
}

const SAFE = /^[A-Za-z0-9_./+,:@%=^-]+$/;
const C_ESCAPES: Record<string, string> = {
  '\n': '\\n',
  '\t': '\\t',
  '\r': '\\r',
  '\x07': '\\a',
  '\b': '\\b',
  '\f': '\\f',
  '\v': '\\v',
  '\x1b': '\\E',
  '\\': '\\\\',
  "'": "\\'",
};

/**
 * A name from an image as a terminal may show it, quoted as GNU ls's `shell-escape` style does: as
 * it is when it holds only safe characters, in single quotes when it holds others, and as $'...'
 * with escapes when it holds control characters (a newline or ESC in a name can forge output
 * lines or drive the terminal). --json output keeps names exact instead.
 */
export function quoteName(s: string): string {
  if (s !== '' && SAFE.test(s)) return s;
  // control characters: C0, DEL, C1, and the Unicode line/paragraph separators
  if (!/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(s)) return `'${s.replace(/'/g, `'\\''`)}'`;
  let out = "$'";
  for (const ch of s) {
    const code = ch.codePointAt(0)!;
    if (C_ESCAPES[ch]) out += C_ESCAPES[ch];
    else if (code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0x2028 || code === 0x2029) {
      for (const b of Buffer.from(ch, 'utf8')) out += `\\${b.toString(8).padStart(3, '0')}`;
    } else out += ch;
  }
  return `${out}'`;
}

/**
 * Text for the terminal that may quote an image (error messages naming entries, tags or
 * annotations): control characters shown as escapes (`\n`, `\x1b`, ...), newlines too unless
 * `lines`, so that none can forge output lines or drive the terminal. Tabs stay.
 */
export function terminalText(s: string, lines = false): string {
  return s.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]/g, (ch) => {
    if (ch === '\n') return lines ? ch : '\\n';
    if (ch === '\r') return '\\r';
    const code = ch.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * What a command returns when it printed results and still failed (`convert --batch --keep-going`):
 * the CLI prints `output` as any result, then `error` as any error, and exits with its code.
 */
export class PartialFailure {
  constructor(
    readonly output: unknown,
    readonly error: OcichunkError,
  ) {}
}
