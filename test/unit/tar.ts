/** A small uncompressed tar of regular files and directories, for unit tests without tools. */

function field(h: Buffer, off: number, len: number, v: string): void {
  h.write(v, off, len, 'latin1');
}

function header(name: string, type: '0' | '5', size: number, mode: number): Buffer {
  const h = Buffer.alloc(512);
  field(h, 0, 100, name);
  field(h, 100, 8, `${mode.toString(8).padStart(7, '0')}\0`);
  field(h, 108, 8, '0000000\0');
  field(h, 116, 8, '0000000\0');
  field(h, 124, 12, `${size.toString(8).padStart(11, '0')}\0`);
  field(h, 136, 12, '00000000000\0');
  field(h, 156, 1, type);
  field(h, 257, 8, 'ustar\x0000');
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  field(h, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

/** `files`: path -> content (a path ending in '/' is a directory), written in the order given. */
export function tarOf(files: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, content] of Object.entries(files)) {
    if (name.endsWith('/')) {
      parts.push(header(name, '5', 0, 0o755));
      continue;
    }
    const data = Buffer.from(content);
    parts.push(header(name, '0', data.length, 0o644), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
