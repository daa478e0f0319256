/**
 * Where every ocichunk reader deliberately shows another tree than umoci's unpack (the suite's
 * oracle), and why. The checked-in listing stays umoci's, byte for byte; a deviation is applied to
 * it before readers are compared, and the suite checks that umoci still shows what `umoci` says
 * here, so that a change on either side is noticed. Keep this list short: a difference that is not
 * a deliberate choice documented in docs/format.md is a bug of a reader, not a deviation.
 */
import type { Node } from './listing.js';

export interface Deviation {
  fixture: string;
  path: string;
  /** the fields as umoci shows them (undefined: absent); null: umoci shows no such path */
  umoci: Partial<Node> | null;
  /** the fields as every ocichunk reader must show them (the whole node where umoci has none) */
  ocichunk: Partial<Node>;
  why: string;
}

/** The same deviation on several paths of a fixture: path -> [umoci's fields, ocichunk's]. */
function at(fixture: string, why: string, paths: Record<string, [Partial<Node> | null, Partial<Node>]>): Deviation[] {
  return Object.entries(paths).map(([path, [umoci, ocichunk]]) => ({ fixture, path, umoci, ocichunk, why }));
}

const T = (n: number) => 1_600_000_000 + n * 86_400;
const DEFAULT_MTIME = 1_700_000_000;

const LINK_HEADER =
  "containerd's applier applies a hardlink header's owner, xattrs, mode (not on a symlink) and mtime to the inode it " +
  "links, so to all its names; umoci links and ignores the header. ocichunk folds a layer's link headers into the " +
  "group's entry in tar order, and a link to a lower layer's file carries them (docs/format.md §3). The fixture's " +
  'link headers have tarfile defaults (0644, 0:0, mtime 1700000000), unlike real tar writers, which give a link its ' +
  "target's metadata.";
const ROOT =
  "containerd's applier skips an entry that resolves to the root: the root is the snapshot's directory (0755, 0:0); " +
  'umoci applies it. ocichunk shows the root as 0755, 0:0, no xattrs, mtime 0 (containerd: the time of the unpack).';

export const DEVIATIONS: Deviation[] = [
  {
    fixture: 'metadata',
    path: 'data/empty-attr',
    umoci: { xattrs: undefined },
    ocichunk: { xattrs: { 'user.empty': '' } },
    why:
      'an xattr with an empty value (PAX record SCHILY.xattr.user.empty=""): umoci 0.4.7 reads the deprecated Header.Xattrs ' +
      "of Go's archive/tar, which skips empty PAX values, and drops it; containerd's applier sets xattrs from " +
      'Header.PAXRecords and keeps it. docs/format.md §4 keeps xattr values byte for byte, as containerd does.',
  },
  ...at('metadata', "containerd's applier sets no mtime before 1970 or after 2262 (boundTime): it shows 0; umoci sets it", {
    'data/before-epoch': [{ mtime: -86_400 * 365 }, { mtime: 0 }],
  }),
  ...at('types', LINK_HEADER, {
    'bin/tool': [{ mode: 0o755 }, { mode: 0o644 }],
    'bin/hard': [{ mode: 0o755 }, { mode: 0o644 }],
    'dev/null': [{ mode: 0o666 }, { mode: 0o644 }],
    'dev/null-again': [{ mode: 0o666 }, { mode: 0o644 }],
    'dev/pipe': [
      { mode: 0o620, uid: 5 },
      { mode: 0o644, uid: 0 },
    ],
    'dev/pipe-again': [
      { mode: 0o620, uid: 5 },
      { mode: 0o644, uid: 0 },
    ],
    'link-rel': [{ mtime: T(1) }, { mtime: DEFAULT_MTIME }],
    'link-rel-again': [{ mtime: T(1) }, { mtime: DEFAULT_MTIME }],
  }),
  ...at('hardlinks', LINK_HEADER, {
    h1: [
      { mode: 0o640, uid: 7, mtime: T(1) },
      { mode: 0o644, uid: 0, mtime: DEFAULT_MTIME },
    ],
    h2: [
      { mode: 0o640, uid: 7, mtime: T(1) },
      { mode: 0o644, uid: 0, mtime: DEFAULT_MTIME },
    ],
    hg: [{ mtime: T(2) }, { mtime: DEFAULT_MTIME }],
  }),
  ...at('root', ROOT, {
    '.': [
      { mode: 0o751, uid: 7, mtime: T(2) },
      { mode: 0o755, uid: 0, mtime: 0 },
    ],
  }),
  ...at('whiteouts', "containerd's applier makes the missing parents of every header, a whiteout's too; umoci skips the whiteout", {
    nowhere: [null, { type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0 }],
  }),
  ...at(
    'replaced',
    "a directory entry over a directory: containerd's applier sets the entry's xattrs on the directory there and keeps " + 'the others; umoci replaces them',
    {
      t: [
        { xattrs: { 'user.new': 'a2VwdA==' } },
        { xattrs: { 'user.new': 'a2VwdA==', 'user.old': 'ZHJvcHBlZCB3aGVuIHRoZSBkaXJlY3RvcnkgZW50cnkgY29tZXMgYWdhaW4=' } },
      ],
    },
  ),
];

/**
 * Where containerd's applier (containerd 1.6, native snapshotter: each layer applied onto a copy of
 * the ones below, as `ctr run` unpacks) shows another tree than every ocichunk reader, per fixture:
 * the exact difference lines the suite sees (so a new difference fails it). Two kinds are left:
 *
 * - the time of the unpack: containerd gives it to the root, to directories its applier makes and
 *   to directories a later layer writes into (the kernel sets it; ocichunk shows the entry's mtime,
 *   or 0, so that every reader and every restore shows the same tree);
 * - a whiteout that comes after a write of the same layer to its path (here through a symlinked
 *   parent): containerd removes what it just wrote, depending on the tar's order; the OCI image
 *   spec applies whiteouts to lower layers only, and so does ocichunk (canonical order puts a
 *   path's whiteout before its entry, docs/format.md §4).
 */
export const CONTAINERD: Record<string, string[]> = {
  content: ['".": mtime 0 expected, <unpack time> shown'],
  'empty-layer': ['".": mtime 0 expected, <unpack time> shown'],
  hardlinks: ['".": mtime 0 expected, <unpack time> shown', '"real": mtime 1700000000 expected, <unpack time> shown'],
  metadata: ['".": mtime 0 expected, <unpack time> shown'],
  names: ['".": mtime 0 expected, <unpack time> shown'],
  'only-empty': ['".": mtime 0 expected, <unpack time> shown'],
  opaque: [
    '".": mtime 0 expected, <unpack time> shown',
    '"n": mtime 1700000000 expected, <unpack time> shown',
    '"n/inner": mtime 1600172800 expected, <unpack time> shown',
    '"real": mtime 1700000000 expected, <unpack time> shown',
  ],
  'opaque-root': ['".": mtime 0 expected, <unpack time> shown'],
  replaced: [
    '".": mtime 0 expected, <unpack time> shown',
    '"f": mtime 1600259200 expected, <unpack time> shown',
    '"s": mtime 1700000000 expected, <unpack time> shown',
    '"t": mtime 1600345600 expected, <unpack time> shown',
  ],
  root: ['".": mtime 0 expected, <unpack time> shown'],
  'same-layer': [
    '".": mtime 0 expected, <unpack time> shown',
    '"other": mtime 1700000000 expected, <unpack time> shown',
    '"other/c": missing (expected reg)',
    '"real": mtime 1700000000 expected, <unpack time> shown',
  ],
  'symlinked-parents': [
    '".": mtime 0 expected, <unpack time> shown',
    '"real": mtime 1600086400 expected, <unpack time> shown',
    '"real/sub": mtime 1600259200 expected, <unpack time> shown',
    '"usr": mtime 1700000000 expected, <unpack time> shown',
    '"usr/lib": mtime 1600172800 expected, <unpack time> shown',
  ],
  types: ['".": mtime 0 expected, <unpack time> shown'],
  whiteouts: [
    '".": mtime 0 expected, <unpack time> shown',
    '"a": mtime 1600086400 expected, <unpack time> shown',
    '"keep": mtime 1700000000 expected, <unpack time> shown',
    '"nowhere": mtime 0 expected, <unpack time> shown',
  ],
};
