/**
 * Layer fixtures of the conformance suite (test/conformance.test.ts): small images whose merged
 * trees exercise every rule of layer application. Each fixture is a list of layers, each layer a
 * list of tar members written by Python's tarfile (test/helpers/tars.ts) in the order given:
 * `[path, kind, content or link target, { mode, uid, gid, mtime, major, minor, xattrs }]`
 * (defaults: mode 0644, 0755 for directories; owner 0:0; mtime 1700000000). Whiteouts are what
 * they are in a real layer: empty files named `.wh.<name>` and `<dir>/.wh..wh..opq`.
 *
 * Their expected trees are what `umoci unpack` makes of them, checked in under
 * test/conformance/expected/ (regenerate with test/conformance/regen.sh). Nothing here says what
 * the result should be: the comments only say what a fixture is meant to exercise.
 */
import { createHash } from 'node:crypto';
import type { Member } from '../helpers/tars.js';

/** A distinct mtime per step, so that "which entry's metadata won" shows in the listing. */
const T = (n: number) => 1_600_000_000 + n * 86_400;

/** `n` bytes of deterministic text that does not repeat (content-defined chunks of it differ). */
function text(seed: string, n: number): string {
  const out: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest('hex');
    out.push(h);
    len += h.length;
  }
  return out.join('').slice(0, n);
}

const LONG_DIR = `${'d'.repeat(99)}/${'e'.repeat(99)}`;
const LONG_NAME = `${'n'.repeat(120)}.txt`;
/** the longest name a component may have (255 bytes), with 2-byte characters in it */
const MAX_NAME = `${'é'.repeat(100)}${'m'.repeat(55)}`;
/** a path past 1024 bytes: six components of 200 bytes */
const DEEP = Array.from({ length: 6 }, (_, i) => String(i).repeat(200)).join('/');

/** security.capability granting cap_net_bind_service, effective (vfs_cap_data revision 2; every byte below 0x80) */
const CAP_NET_BIND_SERVICE = String.fromCharCode(0x01, 0, 0, 0x02, 0, 0x04, 0, 0, ...new Array(12).fill(0));

export const FIXTURES: Record<string, Member[][]> = {
  /** every entry type, including hardlinks to things that are not regular files */
  types: [
    [
      ['bin', 'dir'],
      ['bin/tool', 'file', '#!/bin/sh\necho tool\n', { mode: 0o755 }],
      ['bin/hard', 'hardlink', 'bin/tool'],
      ['empty', 'file', ''],
      ['link-rel', 'symlink', 'bin/tool', { mtime: T(1) }],
      ['link-abs', 'symlink', '/bin/tool', { mtime: T(2) }],
      ['link-dangling', 'symlink', '../nowhere/at/all', { mtime: T(3) }],
      ['link-dir', 'symlink', 'bin'],
      ['link-long', 'symlink', `/${'t'.repeat(150)}/target`],
      ['dev', 'dir'],
      ['dev/null', 'char', null, { mode: 0o666, major: 1, minor: 3 }],
      ['dev/loop9', 'block', null, { mode: 0o660, major: 7, minor: 9, gid: 6 }],
      ['dev/nvme', 'block', null, { mode: 0o600, major: 259, minor: 70_000 }],
      ['dev/pipe', 'fifo', null, { mode: 0o620, uid: 5 }],
      ['dev/null-again', 'hardlink', 'dev/null'],
      ['dev/pipe-again', 'hardlink', 'dev/pipe'],
      ['link-rel-again', 'hardlink', 'link-rel'],
    ],
  ],
  /** modes (setuid, setgid, sticky, none at all), owners (past the ustar field), mtimes, xattrs */
  metadata: [
    [
      ['bin', 'dir', null, { mtime: T(1) }],
      ['bin/suid', 'file', 'setuid', { mode: 0o4755, mtime: T(2) }],
      ['bin/sgid', 'file', 'setgid', { mode: 0o2711, uid: 1000, gid: 50, mtime: T(3) }],
      ['bin/all', 'file', 'every bit', { mode: 0o7777, mtime: T(4) }],
      ['data', 'dir', null, { mode: 0o700, uid: 1000, gid: 1000, mtime: T(5) }],
      ['data/none', 'file', 'no permission at all', { mode: 0, uid: 1000, gid: 1000 }],
      ['data/big-ids', 'file', 'ids past the ustar field', { uid: 3_000_000, gid: 4_000_000_000 }],
      ['data/future', 'file', 'mtime past 2038', { mtime: 4_102_444_800 }],
      ['data/epoch', 'file', 'mtime 0', { mtime: 0 }],
      ['data/before-epoch', 'file', 'mtime before 1970', { mtime: -86_400 * 365 }],
      ['data/caps', 'file', 'a file capability', { mode: 0o755, xattrs: { 'security.capability': CAP_NET_BIND_SERVICE } }],
      ['data/empty-attr', 'file', 'an xattr with an empty value', { xattrs: { 'user.empty': '' } }],
      ['data/attrs', 'file', 'with attributes', { xattrs: { 'user.zz': 'last', 'user.comment': 'hello', 'user.utf8': 'ünï ✓' } }],
      ['shared', 'dir', null, { mode: 0o2775, gid: 100, mtime: T(6), xattrs: { 'user.dir': 'on a directory' } }],
      ['tmp', 'dir', null, { mode: 0o1777, mtime: T(7) }],
      ['locked', 'dir', null, { mode: 0o000, mtime: T(8) }],
      ['locked/inside', 'file', 'under a directory nobody may enter'],
    ],
  ],
  /** long, deep, non-ASCII and odd names (and link targets) */
  names: [
    [
      [LONG_DIR.split('/')[0], 'dir'],
      [LONG_DIR, 'dir'],
      [`${LONG_DIR}/${LONG_NAME}`, 'file', 'a path longer than 255 bytes'],
      [MAX_NAME, 'file', 'a 255-byte name'],
      ...DEEP.split('/').map((_, i, a): Member => [a.slice(0, i + 1).join('/'), 'dir']),
      [`${DEEP}/leaf`, 'file', 'a path longer than 1024 bytes'],
      ['été', 'dir'],
      ['été/ünïcödé ✓.txt', 'file', 'non-ASCII names'],
      ['été/\u00e9', 'file', 'precomposed'],
      ['été/e\u0301', 'file', 'decomposed'],
      ['emoji-😀', 'file', 'outside the BMP'],
      ['spaces and\ttab', 'file', 'odd characters'],
      ['new\nline', 'file', 'a newline'],
      ['back\\slash', 'file', 'a backslash'],
      ['-dash', 'file', 'a leading dash'],
      ['...', 'file', 'three dots'],
      ['to-long', 'symlink', `${LONG_DIR}/${LONG_NAME}`],
      ['hard-long', 'hardlink', `${LONG_DIR}/${LONG_NAME}`],
      ['to-unicode', 'symlink', 'été/ünïcödé ✓.txt'],
      ['./dotted', 'dir', null, { mode: 0o750 }],
      ['./dotted/file', 'file', 'named ./dotted/file in the tar'],
      ['dotted//twice', 'file', 'named with a double slash'],
      ['dotted/./here', 'file', 'named with a dot component'],
      ['dup', 'file', 'the first of two members with one name'],
      ['dup', 'file', 'the second of two members with one name', { mode: 0o600 }],
    ],
  ],
  /** files of several chunks (offset -> chunk lookup), repeated chunks, content shared across layers */
  content: [
    [
      ['big', 'file', text('big', 1_500_000)],
      ['zeros', 'file', null, { zeros: 700_000 }],
      ['one-byte', 'file', 'x'],
      ['copy-a', 'file', text('copy', 300_000)],
    ],
    [
      ['copy-b', 'file', text('copy', 300_000)],
      ['big', 'file', text('big', 1_400_000) + text('tail', 50_000)],
      ['.wh.copy-a', 'file', ''],
    ],
  ],
  /** whiteouts: files, directories, symlinks (the link goes, not its target), missing paths, re-created names */
  whiteouts: [
    [
      ['a', 'dir', null, { mtime: T(1) }],
      ['a/x', 'file', 'x0'],
      ['a/y', 'file', 'y0'],
      ['a/z', 'file', 'z0'],
      ['gone', 'dir'],
      ['gone/deep', 'file', 'deep'],
      ['f', 'file', 'file'],
      ['ln', 'symlink', 'a'],
      ['keep', 'dir'],
      ['keep/child', 'file', 'child'],
      ['gone/linked', 'file', 'its other name survives the whiteout of its directory'],
      ['keep/survivor', 'hardlink', 'gone/linked'],
    ],
    [
      ['a/.wh.x', 'file', ''],
      ['a/.wh.y', 'file', ''],
      ['a/y', 'file', 'y1 (whited out and written again in one layer)', { mtime: T(2) }],
      ['.wh.gone', 'file', ''],
      ['.wh.f', 'file', ''],
      ['.wh.ln', 'file', ''],
      ['.wh.never-was', 'file', ''],
      ['nowhere/.wh.nothing', 'file', ''],
    ],
    [
      ['a/x', 'dir', null, { mode: 0o750, mtime: T(3) }],
      ['a/x/back', 'file', 'a directory where a file was'],
      ['gone', 'file', 'a file where a directory was'],
    ],
  ],
  /** opaque directories: emptied below, kept from this layer, new, nested, through a symlink */
  opaque: [
    [
      ['d', 'dir', null, { mtime: T(1) }],
      ['d/old', 'file', 'old'],
      ['d/sub', 'dir'],
      ['d/sub/z', 'file', 'z'],
      ['n', 'dir'],
      ['n/inner', 'dir', null, { mtime: T(2) }],
      ['n/inner/old', 'file', 'old'],
      ['n/inner/linked', 'file', 'its other name survives the opaque directory'],
      ['n/kept', 'file', 'kept'],
      ['real', 'dir'],
      ['real/old', 'file', 'old'],
      ['lnk', 'symlink', 'real'],
      ['survivor', 'hardlink', 'n/inner/linked'],
    ],
    [
      ['d', 'dir', null, { mode: 0o711, mtime: T(3) }],
      ['d/.wh..wh..opq', 'file', ''],
      ['d/new', 'file', 'new'],
      ['d/sub', 'dir', null, { mtime: T(4) }],
      ['fresh', 'dir'],
      ['fresh/.wh..wh..opq', 'file', ''],
      ['fresh/f', 'file', 'an opaque directory nothing was below'],
      ['n/inner/.wh..wh..opq', 'file', ''],
      ['n/inner/new', 'file', 'new'],
      ['lnk/.wh..wh..opq', 'file', ''],
    ],
  ],
  /** an opaque root: only the layer's own entries are left */
  'opaque-root': [
    [
      ['d', 'dir'],
      ['d/old', 'file', 'old'],
      ['top', 'file', 'at the root'],
    ],
    [
      ['.wh..wh..opq', 'file', ''],
      ['after', 'file', 'the only file left after an opaque root'],
      ['d', 'dir', null, { mtime: T(1) }],
      ['d/again', 'file', 'again'],
    ],
  ],
  /** hardlinks within and across layers; a group whose first name is removed, or replaced */
  hardlinks: [
    [
      ['f', 'file', 'shared content', { mode: 0o640, uid: 7, mtime: T(1) }],
      ['h1', 'hardlink', 'f'],
      ['z', 'file', 'z content'],
      ['a-link-to-z', 'hardlink', 'z'],
      ['g', 'file', 'g before', { mtime: T(2) }],
      ['hg', 'hardlink', 'g'],
      ['real', 'dir'],
      ['real/base', 'file', 'reached through a symlinked parent'],
      ['lib', 'symlink', '/real'],
      ['three-1', 'file', 'three names'],
      ['three-2', 'hardlink', 'three-1'],
      ['three-3', 'hardlink', 'three-1'],
    ],
    [
      ['h2', 'hardlink', 'f'],
      ['g', 'file', 'g after: a new file, the old one keeps its other name', { mtime: T(3) }],
      ['via-lib', 'hardlink', 'lib/base'],
      ['.wh.three-2', 'file', ''],
      ['z2', 'file', 'other', { mtime: T(4) }],
    ],
    [
      ['.wh.f', 'file', ''],
      ['z2', 'hardlink', 'z'],
    ],
  ],
  /** symlinked parents resolved inside the root: absolute, relative, chained, climbing above /, inside a subdirectory */
  'symlinked-parents': [
    [
      ['real', 'dir', null, { mtime: T(1) }],
      ['real/base', 'file', 'base'],
      ['real/gone', 'file', 'removed through a link'],
      ['lib', 'symlink', '/real'],
      ['rel', 'symlink', 'real'],
      ['up', 'symlink', '../../../real'],
      ['chain', 'symlink', 'rel'],
      ['abs-dots', 'symlink', '/../real/../real'],
      ['usr', 'dir'],
      ['usr/lib', 'dir', null, { mtime: T(2) }],
      ['usr/lib64', 'symlink', 'lib'],
      ['usr/back', 'symlink', '../real'],
    ],
    [
      ['lib/file', 'file', 'through an absolute link'],
      ['rel/other', 'file', 'through a relative link'],
      ['up/third', 'file', 'through a link that climbs above the root'],
      ['chain/fourth', 'file', 'through two links'],
      ['abs-dots/fifth', 'file', 'through a link with .. in it'],
      ['usr/lib64/libc.so', 'file', 'through a link relative to its directory'],
      ['usr/back/sixth', 'file', 'through a link that climbs out of its directory'],
      ['lib/sub', 'dir', null, { mode: 0o700, mtime: T(3) }],
      ['lib/sub/deeper', 'file', 'below a directory made through a link'],
      ['lib/made-link', 'symlink', 'base'],
    ],
    [
      ['lib/.wh.gone', 'file', ''],
      ['rel/base', 'file', 'replaced through a link', { mtime: T(4) }],
    ],
  ],
  /** directories, files, symlinks and special files replacing each other */
  replaced: [
    [
      ['d', 'dir'],
      ['d/x', 'file', 'x'],
      ['f', 'file', 'f'],
      ['s', 'symlink', 'd'],
      ['t', 'dir', null, { xattrs: { 'user.old': 'dropped when the directory entry comes again' } }],
      ['t/keep', 'file', 'keep'],
      ['u', 'dir'],
      ['u/child', 'file', 'gone with its directory'],
      ['u/sub', 'dir'],
      ['u/sub/deeper', 'file', 'gone too'],
      ['p', 'fifo'],
      ['c', 'char', null, { major: 1, minor: 5 }],
      ['to-file', 'symlink', 'f'],
      ['file-to-link', 'file', 'becomes a link'],
      ['same', 'file', 'first content', { mode: 0o600, uid: 1, mtime: T(1) }],
    ],
    [
      ['d', 'file', 'now a file', { mtime: T(2) }],
      ['f', 'dir', null, { mtime: T(3) }],
      ['f/inner', 'file', 'inner'],
      ['s', 'dir'],
      ['s/own', 'file', 'own'],
      ['t', 'dir', null, { mode: 0o711, uid: 3, mtime: T(4), xattrs: { 'user.new': 'kept' } }],
      ['u', 'symlink', 't'],
      ['p', 'dir'],
      ['c', 'file', 'a file where a device was'],
      ['to-file', 'file', 'a file where a link was'],
      ['file-to-link', 'symlink', '/f/inner'],
      ['same', 'file', 'second content', { mode: 0o644, uid: 2, mtime: T(5) }],
    ],
    [
      ['d', 'symlink', 'f'],
      ['p', 'fifo', null, { mode: 0o600 }],
    ],
  ],
  /** the root's own entry (its metadata), and implied parent directories */
  root: [
    [
      ['.', 'dir', null, { mode: 0o750, uid: 5, gid: 6, mtime: T(1) }],
      ['a', 'file', 'a'],
      ['implied/one/two/file', 'file', 'parents without entries'],
      ['later', 'dir'],
    ],
    [
      ['.', 'dir', null, { mode: 0o751, uid: 7, mtime: T(2) }],
      ['implied/one', 'dir', null, { mode: 0o700, mtime: T(3) }],
      ['later/implied/file', 'file', 'a parent without an entry below one with'],
    ],
  ],
  /**
   * a layer that writes through a symlink into a directory it also makes opaque, or whites out a
   * name it also writes through a symlink: a layer's whiteouts hide the layers below, not itself
   */
  'same-layer': [
    [
      ['real', 'dir'],
      ['real/old', 'file', 'old'],
      ['lnk', 'symlink', 'real'],
      ['other', 'dir'],
      ['other/c', 'file', 'c0'],
      ['o', 'symlink', '/other'],
    ],
    [
      ['lnk/new', 'file', 'written through a link in the layer that makes its directory opaque'],
      ['real/.wh..wh..opq', 'file', ''],
      ['o/c', 'file', 'c1, written through a link in the layer that whites it out'],
      ['other/.wh.c', 'file', ''],
    ],
  ],
  /** an empty layer between two others */
  'empty-layer': [[['one', 'file', '1']], [], [['two', 'file', '2']]],
  /** an image of one empty layer: the root alone */
  'only-empty': [[]],
};
