/**
 * The conformance fixtures as images, and their expected trees: umoci's unpack of each.
 *
 * umoci gives a node the time of the unpack where the image says nothing about it (a parent
 * directory a layer implies without an entry, a directory whose children a later layer changed
 * without an entry for it): those mtimes are left out of the expected listing, so readers are not
 * compared on them. umoci runs with umask 022 (it makes implied parents with mode 0777 & ~umask).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Containerd } from '../helpers/containerd.js';
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
export async function umociTree(layout: string, dir: string): Promise<Tree> {
  const bundle = path.join(dir, 'umoci');
  const since = Math.floor(Date.now() / 1000) - 1;
  await must('sh', ['-c', 'umask 022 && exec umoci unpack --image "$1" "$2"', 'sh', `${layout}:orig`, bundle]);
  const until = Math.ceil(Date.now() / 1000) + 1;
  const t = diskTree(path.join(bundle, 'rootfs'));
  for (const n of t.values()) if (n.mtime !== undefined && n.mtime >= since && n.mtime <= until) delete n.mtime;
  fs.rmSync(bundle, { recursive: true, force: true });
  return t;
}

/**
 * The tree containerd's runtime view shows of the layout's `orig`: the image imported into a
 * private containerd (its applier unpacks each layer into an overlayfs snapshot), a read-only view
 * of the top snapshot mounted as overlayfs, as a container would see its root.
 */
const SNAP = process.env.OCICHUNK_SNAP ?? 'native';
export async function containerdTree(ctrd: Containerd, layout: string, name: string, dir: string): Promise<Tree> {
  const ctr = async (args: string[]) => {
    const r = await ctrd.ctr(args);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  };
  const archive = path.join(dir, 'orig.oci.tar');
  await must('tar', ['-cf', archive, '-C', layout, '.']);
  await ctr(['images', 'import', '--base-name', `conformance/${name}`, '--snapshotter', SNAP, archive]);
  // the top snapshot is named by the chain ID of the image's diff IDs
  const blob = (d: string) => fs.readFileSync(path.join(layout, 'blobs', 'sha256', d.slice(7)));
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8'));
  const manifest = JSON.parse(blob(index.manifests[0].digest).toString());
  const diffIds: string[] = JSON.parse(blob(manifest.config.digest).toString()).rootfs.diff_ids;
  const chain = diffIds.reduce((c, d) => (c ? `sha256:${createHash('sha256').update(`${c} ${d}`).digest('hex')}` : d), '');
  const key = `conformance-view-${name}`;
  const target = path.join(dir, 'containerd-view');
  fs.mkdirSync(target);
  // the mount command comes with the view (a view no lease holds may be collected at any time)
  const mount = await ctr(['snapshots', '--snapshotter', SNAP, 'view', '--target', target, key, chain]);
  await must('sh', ['-c', mount]);
  try {
    return diskTree(target);
  } finally {
    await must('umount', [target]);
    await ctrd.ctr(['snapshots', '--snapshotter', SNAP, 'rm', key]);
  }
}
