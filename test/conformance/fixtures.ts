/**
 * Layer fixtures of the conformance suite (test/conformance.test.ts): small images whose merged
 * trees exercise every rule of layer application. Each is a list of layers, each layer a list of
 * tar members written by Python's tarfile (test/helpers/tars.ts). Their expected trees are what
 * `umoci unpack` makes of them, checked in under test/conformance/expected/.
 */
import type { Member } from '../helpers/tars.js';

const LONG_DIR = `${'d'.repeat(99)}/${'e'.repeat(99)}`;
const LONG_NAME = `${'n'.repeat(120)}.txt`;

export const FIXTURES: Record<string, Member[][]> = {
  /** every entry type, modes, owners, xattrs, long and non-ASCII names */
  types: [
    [
      ['bin', 'dir', null, { mode: 0o755 }],
      ['bin/tool', 'file', '#!/bin/sh\necho tool\n', { mode: 0o4755, uid: 0, gid: 0 }],
      ['bin/sgid', 'file', 'sgid', { mode: 0o2711, uid: 1000, gid: 50 }],
      ['data', 'dir', null, { mode: 0o700, uid: 1000, gid: 1000 }],
      ['data/empty', 'file', '', { mode: 0o600, uid: 1000, gid: 1000 }],
      ['data/attrs', 'file', 'with attributes', { xattrs: { 'user.comment': 'hello', 'user.zz': 'last' } }],
      ['tmp', 'dir', null, { mode: 0o1777 }],
      ['link-rel', 'symlink', 'bin/tool'],
      ['link-abs', 'symlink', '/bin/tool'],
      ['link-dangling', 'symlink', '../nowhere/at/all'],
      ['bin/hard', 'hardlink', 'bin/tool'],
      ['dev', 'dir'],
      ['dev/null', 'char', null, { mode: 0o666, major: 1, minor: 3 }],
      ['dev/loop9', 'block', null, { mode: 0o660, major: 7, minor: 9 }],
      ['dev/pipe', 'fifo', null, { mode: 0o644 }],
      [LONG_DIR.split('/')[0], 'dir'],
      [LONG_DIR, 'dir'],
      [`${LONG_DIR}/${LONG_NAME}`, 'file', 'a path longer than 255 bytes'],
      ['été', 'dir'],
      ['été/ünïcödé ✓.txt', 'file', 'non-ASCII names'],
      ['spaces and\ttab', 'file', 'odd characters'],
    ],
  ],
  /** whiteouts, opaque directories, and what comes back after them */
  whiteouts: [
    [
      ['a', 'dir'],
      ['a/x', 'file', 'x0'],
      ['a/y', 'file', 'y0'],
      ['d', 'dir'],
      ['d/old', 'file', 'old'],
      ['d/sub', 'dir'],
      ['d/sub/z', 'file', 'z'],
      ['gone', 'dir'],
      ['gone/deep', 'file', 'deep'],
      ['f', 'file', 'file'],
    ],
    [
      ['a/.wh.x', 'file', ''],
      ['d/.wh..wh..opq', 'file', ''],
      ['d/new', 'file', 'new'],
      ['.wh.gone', 'file', ''],
      ['.wh.f', 'file', ''],
    ],
    [
      ['a/x', 'dir', null, { mode: 0o750 }],
      ['a/x/back', 'file', 'a directory where a file was'],
      ['gone', 'file', 'a file where a directory was'],
    ],
  ],
  /** hardlinks within and across layers, and a group whose first name is removed */
  hardlinks: [
    [
      ['f', 'file', 'shared content', { mode: 0o640, uid: 7 }],
      ['h1', 'hardlink', 'f'],
      ['z', 'file', 'z content'],
      ['a-link-to-z', 'hardlink', 'z'],
    ],
    [['h2', 'hardlink', 'f']],
    [['.wh.f', 'file', '']],
  ],
  /** symlinked parents resolved inside the root (absolute, relative, climbing above /) */
  'symlinked-parents': [
    [
      ['real', 'dir'],
      ['real/base', 'file', 'base'],
      ['lib', 'symlink', '/real'],
      ['rel', 'symlink', 'real'],
      ['up', 'symlink', '../../../real'],
    ],
    [
      ['lib/file', 'file', 'through an absolute link'],
      ['rel/other', 'file', 'through a relative link'],
      ['up/third', 'file', 'through a link that climbs above the root'],
    ],
    [['lib/.wh.base', 'file', '']],
  ],
  /** directories, files and symlinks replacing each other */
  replaced: [
    [
      ['d', 'dir'],
      ['d/x', 'file', 'x'],
      ['f', 'file', 'f'],
      ['s', 'symlink', 'd'],
      ['t', 'dir'],
      ['t/keep', 'file', 'keep'],
    ],
    [
      ['d', 'file', 'now a file'],
      ['f', 'dir'],
      ['f/inner', 'file', 'inner'],
      ['s', 'dir'],
      ['s/own', 'file', 'own'],
      ['t', 'dir', null, { mode: 0o711, uid: 3 }],
    ],
    [['d', 'symlink', 'f']],
  ],
  /** an empty layer between two others */
  'empty-layer': [[['one', 'file', '1']], [], [['two', 'file', '2']]],
};
