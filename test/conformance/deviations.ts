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
  /** the fields as umoci shows them (undefined: absent) */
  umoci: Partial<Node>;
  /** the fields as every ocichunk reader must show them */
  ocichunk: Partial<Node>;
  why: string;
}

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
];

/**
 * Where containerd's applier (containerd 1.6, native snapshotter: each layer applied onto a copy of
 * the ones below, as `ctr run` unpacks) shows another tree than umoci and every ocichunk reader, per
 * fixture: the exact difference lines the suite sees (so a new difference fails it). All are corner
 * cases no real image builder produces; ocichunk keeps umoci's behaviour because it is deterministic
 * and follows the image:
 *
 * - the root: containerd never applies the image's root entry (mode, owner, mtime), and the root
 *   and any directory a later layer changes get the time of the unpack;
 * - hardlink headers: containerd applies a hardlink header's mode, owner and mtime to the linked
 *   inode (so to every name of it); tar writers give links the metadata of their target, ocichunk's
 *   canonical form keeps only the target (docs/format.md §3);
 * - mtimes before 1970 become 0;
 * - a whiteout under a missing directory creates that directory;
 * - a directory entry over a directory keeps the xattrs the new entry does not name (umoci and
 *   ocichunk give the directory exactly the new entry's xattrs);
 * - an opaque marker also removes what its own layer wrote into the directory through a symlinked
 *   parent (containerd remembers the tar's paths, not where they led; the OCI image spec applies
 *   opaque markers to lower layers only, as umoci and ocichunk do).
 */
export const CONTAINERD: Record<string, string[]> = {
  content: ['".": mtime 0 expected, <unpack time> shown'],
  'empty-layer': ['".": mtime 0 expected, <unpack time> shown'],
  hardlinks: [
    '".": mtime 0 expected, <unpack time> shown',
    '"h1": mode 0640 expected, 0644 shown',
    '"h1": uid 7 expected, 0 shown',
    '"h1": mtime 1600086400 expected, 1700000000 shown',
    '"h2": mode 0640 expected, 0644 shown',
    '"h2": uid 7 expected, 0 shown',
    '"h2": mtime 1600086400 expected, 1700000000 shown',
    '"hg": mtime 1600172800 expected, 1700000000 shown',
    '"real": mtime 1700000000 expected, <unpack time> shown',
  ],
  metadata: ['".": mtime 0 expected, <unpack time> shown', '"data/before-epoch": mtime -31536000 expected, 0 shown'],
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
    '"t": xattrs {"user.new":"a2VwdA=="} expected, {"user.new":"a2VwdA==","user.old":"ZHJvcHBlZCB3aGVuIHRoZSBkaXJlY3RvcnkgZW50cnkgY29tZXMgYWdhaW4="} shown',
    '"t": mtime 1600345600 expected, <unpack time> shown',
  ],
  root: ['".": mode 0751 expected, 0755 shown', '".": uid 7 expected, 0 shown', '".": mtime 1600172800 expected, <unpack time> shown'],
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
  types: [
    '".": mtime 0 expected, <unpack time> shown',
    '"bin/hard": mode 0755 expected, 0644 shown',
    '"bin/tool": mode 0755 expected, 0644 shown',
    '"dev/null": mode 0666 expected, 0644 shown',
    '"dev/null-again": mode 0666 expected, 0644 shown',
    '"dev/pipe": mode 0620 expected, 0644 shown',
    '"dev/pipe": uid 5 expected, 0 shown',
    '"dev/pipe-again": mode 0620 expected, 0644 shown',
    '"dev/pipe-again": uid 5 expected, 0 shown',
    '"link-rel": mtime 1600086400 expected, 1700000000 shown',
    '"link-rel-again": mtime 1600086400 expected, 1700000000 shown',
  ],
  whiteouts: [
    '".": mtime 0 expected, <unpack time> shown',
    '"a": mtime 1600086400 expected, <unpack time> shown',
    '"keep": mtime 1700000000 expected, <unpack time> shown',
    '"nowhere": not expected (dir shown)',
  ],
};
