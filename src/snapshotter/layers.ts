/**
 * The seam for remote (lazily fetched) layers. The store (store.ts) handles every snapshot as
 * containerd's overlayfs snapshotter does; a LayerProvider may take over the Prepare of a layer —
 * an active snapshot whose labels name its target (`containerd.io/snapshot.ref`) and, for a chunked
 * image, its image and layer (the CRI `containerd.io/snapshot/cri.*` labels, or stargz's
 * `containerd.io/snapshot/remote/stargz.*`) — and serve that layer's files at `<dir>/fs` itself
 * (a FUSE mount of the layer with overlay whiteouts). The store then records the snapshot as
 * committed under the target name at once and answers AlreadyExists, so containerd fetches and
 * applies nothing (docs/design/snapshotter-plan.md §1, "Layer already exists").
 *
 * remote.ts implements it for ocichunk images (`RemoteLayers`); without a provider every layer
 * takes the ordinary path.
 */
import type { Usage } from './state.js';

export interface PrepareRequest {
  /** the active snapshot's key, as containerd sent it */
  key: string;
  parent?: string;
  /** the Prepare's labels (non-empty values only) */
  labels: Record<string, string>;
  /** the snapshot's directory, `<root>/snapshots/<id>`: serve the layer at `<dir>/fs` (exists, empty) */
  dir: string;
  /** the parents' directories, nearest first (a layer view may need the layers below it) */
  parentDirs: string[];
}

export interface RemoteLayer {
  /** labels added to the committed snapshot (e.g. `containerd.io/snapshot/remote`) */
  labels: Record<string, string>;
  /** what restore() needs to serve the layer again after a restart (JSON, persisted in the state) */
  remote: Record<string, unknown>;
  /** the layer's usage (known from its TOC: never walk a lazy mount for it) */
  usage: Usage;
}

export interface LayerProvider {
  /**
   * At start, with the root's lock held, before anything else: clear what a previous process left
   * (mounts of a killed snapshotter under the root). Optional.
   */
  start?(): Promise<void>;
  /**
   * Serve this layer lazily at `<dir>/fs`, or return undefined to let containerd download and
   * apply it. A rejection is treated like undefined (the store falls back and logs why).
   */
  prepare(req: PrepareRequest): Promise<RemoteLayer | undefined>;
  /** At start: serve a remote layer again from its persisted record. */
  restore(layer: { name: string; dir: string; labels: Record<string, string>; remote: Record<string, unknown> }): Promise<void>;
  /** At start, after restore() was called for every remote snapshot. Optional. */
  restored?(): Promise<void>;
  /**
   * Before the store deletes a snapshot directory (Remove, Cleanup, leftovers at start): stop
   * serving anything under `dir` (detach its mounts). Called for every directory, remote or not.
   */
  release(dir: string): Promise<void>;
  /** When the store closes (the snapshotter stops): stop serving every layer. Optional. */
  close?(): Promise<void>;
}
