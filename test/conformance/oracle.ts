/**
 * The conformance fixtures as images, and their expected trees: umoci's unpack of each.
 *
 * umoci gives a node the time of the unpack where the image says nothing about it (a parent
 * directory a layer implies without an entry, a directory whose children a later layer changed
 * without an entry for it): those mtimes are left out of the expected listing, so readers are not
 * compared on them. umoci runs with umask 022 (it makes implied parents with mode 0777 & ~umask).
 */
import fs from 'node:fs';
import path from 'node:path';
import { gzipLayer, writeLayout } from '../helpers/layout.js';
import { must } from '../helpers/run.js';
import { pyTar } from '../helpers/tars.js';
import { FIXTURES } from './fixtures.js';
import type { Tree } from './listing.js';
import { diskTree } from './readers.js';

/** The fixture's layers as an OCI layout, its image tagged `orig`; returns the layout's path. */
export function buildFixture(name: string, dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const layout = path.join(dir, 'layout');
  writeLayout(
    layout,
    'orig',
    FIXTURES[name].map((members) => gzipLayer(pyTar(dir, members))),
  );
  return layout;
}

/** What `umoci unpack` of the layout's `orig` makes, as a listing (mtimes umoci made up left out). */
export function umociTree(layout: string, dir: string): Tree {
  const bundle = path.join(dir, 'umoci');
  const since = Math.floor(Date.now() / 1000) - 1;
  must('sh', ['-c', 'umask 022 && exec umoci unpack --image "$1" "$2"', 'sh', `${layout}:orig`, bundle]);
  const until = Math.ceil(Date.now() / 1000) + 1;
  const t = diskTree(path.join(bundle, 'rootfs'));
  for (const n of t.values()) if (n.mtime !== undefined && n.mtime >= since && n.mtime <= until) delete n.mtime;
  fs.rmSync(bundle, { recursive: true, force: true });
  return t;
}
