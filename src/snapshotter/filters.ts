/**
 * containerd's filter syntax, as `Walk` (the List RPC) receives it: each filter is a comma-separated
 * list of selectors that must all match (`<fieldpath>[<op><value>]`, ops `==`, `!=`, `~=` (regular
 * expression); a bare fieldpath tests presence); a snapshot is listed when any filter matches.
 * Field paths are `name`, `parent`, `kind` (active, view, committed) and `labels.<key>`; a field or
 * key may be quoted (`labels."containerd.io/snapshot.ref"`) with `"…"` (Go escapes), `/…/` or `|…|`.
 * A filter that does not parse is an EUSAGE error (containerd: InvalidArgument).
 */
import { OcichunkError } from '../errors.js';

export type Op = '==' | '!=' | '~=';
export interface Selector {
  path: string[];
  op?: Op;
  value?: string;
  re?: RegExp;
}
/** One filter: all selectors must match. */
export type Filter = Selector[];

/** What a filter sees of a snapshot. */
export interface Filterable {
  name: string;
  parent?: string;
  kind: 'active' | 'view' | 'committed';
  labels: Record<string, string>;
}

const QUOTES = new Set(['"', '/', '|']);
const ESCAPES: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' };

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  private fail(what: string): never {
    throw new OcichunkError('EUSAGE', `filter ${JSON.stringify(this.s)}: ${what} at ${this.i}`);
  }

  private skipSpace(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++;
  }

  private quoted(): string {
    const q = this.s[this.i++];
    let out = '';
    while (this.i < this.s.length) {
      const c = this.s[this.i++];
      if (c === q) return out;
      if (c === '\\') {
        const e = this.s[this.i++];
        if (e === undefined) break;
        if (e === q) out += q;
        else if (ESCAPES[e] !== undefined) out += ESCAPES[e];
        else if (e === 'x' || e === 'u' || e === 'U' || /[0-7]/.test(e)) {
          const [n, base] = e === 'x' ? [2, 16] : e === 'u' ? [4, 16] : e === 'U' ? [8, 16] : [2, 8];
          const digits = e === 'x' || e === 'u' || e === 'U' ? this.s.slice(this.i, this.i + n) : e + this.s.slice(this.i, this.i + n);
          if (!new RegExp(`^[0-${base === 8 ? '7' : '9a-fA-F'}]{${base === 8 ? 3 : n}}$`).test(digits)) this.fail('illegal escape sequence');
          this.i += n;
          out += String.fromCodePoint(Number.parseInt(digits, base));
        } else this.fail('illegal escape sequence');
      } else out += c;
    }
    return this.fail('unterminated quoted string');
  }

  private field(): string {
    this.skipSpace();
    if (QUOTES.has(this.s[this.i])) return this.quoted();
    const m = /^[A-Za-z][A-Za-z0-9_]*/.exec(this.s.slice(this.i));
    if (!m) this.fail('expected a field name');
    this.i += m[0].length;
    return m[0];
  }

  private selector(): Selector {
    const path = [this.field()];
    while (this.s[this.i] === '.') {
      this.i++;
      path.push(this.field());
    }
    this.skipSpace();
    if (this.i >= this.s.length || this.s[this.i] === ',') return { path };
    const op = this.s.slice(this.i, this.i + 2);
    if (op !== '==' && op !== '!=' && op !== '~=') this.fail('expected ==, != or ~=');
    this.i += 2;
    this.skipSpace();
    let value: string;
    if (QUOTES.has(this.s[this.i])) value = this.quoted();
    else {
      const m = /^[^\s,]+/.exec(this.s.slice(this.i));
      if (!m) this.fail('expected a value');
      value = m[0];
      this.i += value.length;
    }
    this.skipSpace();
    const sel: Selector = { path, op, value };
    if (op === '~=') {
      try {
        sel.re = new RegExp(value);
      } catch {
        this.fail(`bad regular expression ${JSON.stringify(value)}`);
      }
    }
    return sel;
  }

  parse(): Filter {
    const out: Filter = [this.selector()];
    while (this.i < this.s.length) {
      if (this.s[this.i] !== ',') this.fail('expected ,');
      this.i++;
      out.push(this.selector());
    }
    return out;
  }
}

/** Parse one filter string ('' matches everything). */
export function parseFilter(s: string): Filter {
  if (s === '') return [];
  return new Parser(s).parse();
}

/** The value of a field path, as containerd's snapshot adaptor gives it (undefined: absent). */
function fieldValue(x: Filterable, path: string[]): string | undefined {
  switch (path[0]) {
    case 'name':
      return x.name;
    case 'parent':
      return x.parent ?? '';
    case 'kind':
      return x.kind;
    case 'labels': {
      const key = path.slice(1).join('.');
      return Object.hasOwn(x.labels, key) ? x.labels[key] : undefined;
    }
    default:
      return undefined;
  }
}

function matchSelector(x: Filterable, s: Selector): boolean {
  const v = fieldValue(x, s.path);
  // as containerd: an absent field equals nothing, differs from every value, and a regular expression sees ''
  if (s.op === undefined) return v !== undefined;
  if (s.op === '==') return v !== undefined && v === s.value;
  if (s.op === '!=') return (v ?? '') !== s.value;
  return s.re!.test(v ?? '');
}

/** A predicate for a list of filters: true when any filter matches (no filters: everything). */
export function matcher(filters: string[]): (x: Filterable) => boolean {
  const parsed = filters.map(parseFilter);
  if (parsed.length === 0) return () => true;
  return (x) => parsed.some((f) => f.every((s) => matchSelector(x, s)));
}
