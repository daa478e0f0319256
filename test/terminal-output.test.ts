/**
 * Terminal-safe output: what an image names (files, link targets, tags) reaches a terminal quoted or
 * escaped, never as raw control characters (a newline forges lines, ESC drives the terminal);
 * --json keeps it exact.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { quoteName, terminalText } from '../src/cli/format.js';
import { tmpdir } from './helpers/env.js';
import { plainLayer, writeLayout } from './helpers/layout.js';
import { cli } from './helpers/run.js';
import { pyTar } from './helpers/tars.js';

const EVIL = '\x1b[31mred\nforged line';
let work: string;
let out: string;

beforeAll(async () => {
  work = tmpdir('terminal');
  const src = path.join(work, 'src');
  writeLayout(src, 'x', [
    plainLayer(
      pyTar(work, [
        ['d', 'dir'],
        ['d/a\nb', 'file', 'x'],
        ['d/\x1b[31mred', 'file', 'y'],
        ['d/ok', 'file', 'z'],
      ]),
    ),
  ]);
  out = path.join(work, 'out');
  for (const tag of ['a', 'b']) {
    const r = await cli(['convert', `oci:${src}:x`, `oci:${out}:${tag}`, '--quiet']);
    expect(r.code, r.stderr).toBe(0);
  }
  // a layout from elsewhere: one of its tags holds an escape sequence and a newline
  const idxFile = path.join(out, 'index.json');
  const idx = JSON.parse(fs.readFileSync(idxFile, 'utf8'));
  for (const m of idx.manifests) if (m.annotations?.['org.opencontainers.image.ref.name'] === 'b') m.annotations['org.opencontainers.image.ref.name'] = EVIL;
  fs.writeFileSync(idxFile, JSON.stringify(idx));
});

const noControl = (s: string) => expect(s).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);

describe('terminal-safe output', () => {
  it('quoteName: GNU ls shell-escape style', () => {
    expect(quoteName('plain-name_1.txt')).toBe('plain-name_1.txt');
    expect(quoteName('with space')).toBe("'with space'");
    expect(quoteName("it's")).toBe(`'it'\\''s'`);
    expect(quoteName('a\nb')).toBe(`$'a\\nb'`);
    expect(quoteName('\x1b[31mred')).toBe(`$'\\E[31mred'`);
    expect(quoteName('\x9b2J')).toBe(`$'\\302\\2332J'`);
    expect(quoteName('')).toBe("''");
  });

  it('ls: one line per entry, no raw control characters; --json gives the exact names', async () => {
    const r = await cli(['ls', `oci:${out}:a`, '/d', '--no-cache']);
    expect(r.code, r.stderr).toBe(0);
    noControl(r.stdout);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines.map((l) => l.slice(l.lastIndexOf(' ') + 1))).toEqual([`$'\\E[31mred'`, `$'a\\nb'`, 'ok']);
    const j = JSON.parse((await cli(['ls', `oci:${out}:a`, '/d', '--no-cache', '--json'])).stdout);
    expect(j.entries.map((e: { name: string }) => e.name)).toEqual(['\x1b[31mred', 'a\nb', 'ok']);
  });

  it('inspect of a layout quotes its tags; --json keeps them exact', async () => {
    const r = await cli(['inspect', `oci:${out}`]);
    expect(r.code, r.stderr).toBe(0);
    noControl(r.stdout);
    expect(r.stdout).toContain(`$'oci:${out}:\\E[31mred\\nforged line'`);
    expect(r.stdout.split('\n').some((l) => l.startsWith('forged line'))).toBe(false);
    const j = JSON.parse((await cli(['inspect', `oci:${out}`, '--json'])).stdout);
    expect(j.images.map((i: { reference: string }) => i.reference)).toContain(`oci:${out}:${EVIL}`);
  });

  it('error messages quoting the image escape its control characters', async () => {
    const r = await cli(['ls', `oci:${out}:nope`, '/']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('\\x1b[31mred\\nforged line');
    noControl(r.stderr);
    expect(r.stderr.split('\n').some((l) => l.startsWith('forged line'))).toBe(false);
    // --json: the message as it is
    const j = JSON.parse((await cli(['ls', `oci:${out}:nope`, '/', '--json'])).stdout);
    expect(j.error.message).toContain(EVIL);
  });

  it('terminalText keeps the lines of a stack trace when asked', () => {
    expect(terminalText('a\nb\x1b\tc\r\u2028')).toBe('a\\nb\\x1b\tc\\r\\u2028');
    expect(terminalText('a\nb\x1b', true)).toBe('a\nb\\x1b');
  });
});
