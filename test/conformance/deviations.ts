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
