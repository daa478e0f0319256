/**
 * The snapshotter's gRPC server: containerd's snapshots service (proto.ts) on a unix socket, over
 * a SnapshotStore. containerd registers it as a proxy plugin:
 *
 *   [proxy_plugins.ocichunk]
 *     type = "snapshot"
 *     address = "<socket>"
 *
 * Errors become the gRPC status codes containerd's proxy client turns back into its errors
 * (errdefs.FromGRPC): ENOTFOUND → NotFound, EEXIST → AlreadyExists, EPRECONDITION →
 * FailedPrecondition, EUSAGE → InvalidArgument, ECANCELED → Unavailable, anything else → Unknown.
 */
import type fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { OcichunkError, type ErrorCode } from '../errors.js';
import { KIND, snapshotsService, type InfoMsg, type MountMsg, type TimestampMsg } from './proto.js';
import { SnapshotStore, type Info, type Mount, type StoreOptions } from './store.js';

export interface LogEvent {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  /** the RPC a debug line is about, and how long it took */
  rpc?: string;
  ms?: number;
  code?: string;
}

export interface SnapshotterOptions {
  /** the state and the snapshots' directories (made mode 0700) */
  root: string;
  /** the unix socket to serve on (a stale socket there is replaced; a live one is an error) */
  address: string;
  layers?: StoreOptions['layers'];
  /** Log lines (the library never prints): every RPC at debug level, start/stop and problems above. */
  onLog?: (e: LogEvent) => void;
}

const STATUS: Partial<Record<ErrorCode, grpc.status>> = {
  ENOTFOUND: grpc.status.NOT_FOUND,
  EEXIST: grpc.status.ALREADY_EXISTS,
  EPRECONDITION: grpc.status.FAILED_PRECONDITION,
  EUSAGE: grpc.status.INVALID_ARGUMENT,
  ECANCELED: grpc.status.UNAVAILABLE,
};

/** Infos per List message. */
const LIST_BATCH = 100;

function timestamp(d: Date): TimestampMsg {
  const ms = d.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
}

function infoMsg(i: Info): InfoMsg {
  return {
    name: i.name,
    parent: i.parent ?? '',
    kind: i.kind === 'active' ? KIND.ACTIVE : i.kind === 'view' ? KIND.VIEW : KIND.COMMITTED,
    created_at: timestamp(i.created),
    updated_at: timestamp(i.updated),
    labels: i.labels,
  };
}

function mountMsgs(ms: Mount[]): { mounts: MountMsg[] } {
  return { mounts: ms.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options })) };
}

/** Is something accepting connections on this unix socket? */
function live(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
}

async function clearSocket(sock: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fsp.lstat(sock);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new OcichunkError('EUSAGE', `--address ${sock} exists and is not a socket`);
  if (await live(sock)) throw new OcichunkError('ELOCKED', `--address ${sock}: another server is listening there`);
  await fsp.rm(sock, { force: true });
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;
interface KeyReq {
  key: string;
}
interface CreateReq {
  key: string;
  parent: string;
  labels: Record<string, string>;
}

export class SnapshotterServer {
  private stopping?: Promise<void>;

  private constructor(
    readonly store: SnapshotStore,
    private readonly server: grpc.Server,
    readonly address: string,
    private readonly log: (e: LogEvent) => void,
  ) {}

  /** Open the store at `root` and serve it on `address`. */
  static async start(opts: SnapshotterOptions): Promise<SnapshotterServer> {
    const log = opts.onLog ?? (() => undefined);
    const address = path.resolve(opts.address);
    const store = await SnapshotStore.open(opts.root, {
      layers: opts.layers,
      onEvent: (e) => log({ level: e.level, msg: e.msg }),
    });
    const server = new grpc.Server();
    const s = new SnapshotterServer(store, server, address, log);
    try {
      server.addService(snapshotsService(), s.handlers());
      await fsp.mkdir(path.dirname(address), { recursive: true });
      await clearSocket(address);
      await new Promise<void>((resolve, reject) =>
        server.bindAsync(`unix://${address}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())),
      ).catch((e: unknown) => {
        throw new OcichunkError('EIO', `cannot listen on ${address}: ${(e as Error).message}`, { cause: e });
      });
      await fsp.chmod(address, 0o600);
    } catch (e) {
      server.forceShutdown();
      await store.close();
      throw e;
    }
    log({ level: 'info', msg: `serving ${store.list().length} snapshot(s) from ${store.root} on ${address}` });
    return s;
  }

  /**
   * Stop: refuse new calls, let running ones finish (up to `graceMs`, then cut them), remove the
   * socket, release the root. Every change is persisted as it is made: nothing is lost.
   */
  stop(graceMs = 5000): Promise<void> {
    this.stopping ??= (async () => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.server.forceShutdown();
          resolve();
        }, graceMs);
        this.server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      await fsp.rm(this.address, { force: true });
      await this.store.close();
      this.log({ level: 'info', msg: 'stopped' });
    })();
    return this.stopping;
  }

  /** Wrap a handler: log it, and turn errors into gRPC statuses. */
  private unary<Req, Res>(rpc: string, describe: (r: Req) => string, fn: (r: Req) => Res | Promise<Res>): Unary<Req, Res> {
    return (call, cb) => {
      const t0 = performance.now();
      const what = `${rpc} ${describe(call.request)}`;
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (res) => {
            this.log({ level: 'debug', msg: `${what}: ok`, rpc, ms: performance.now() - t0 });
            cb(null, res);
          },
          (e: unknown) => cb(this.failure(rpc, what, e, t0)),
        );
    };
  }

  private failure(rpc: string, what: string, e: unknown, t0: number): Partial<grpc.StatusObject> {
    const code = e instanceof OcichunkError ? e.code : 'EINTERNAL';
    const status = STATUS[code] ?? grpc.status.UNKNOWN;
    const message = e instanceof OcichunkError ? e.message : ((e as Error)?.stack ?? String(e));
    // NotFound and AlreadyExists are answers containerd asks for (Stat probes, remote layers); the rest is worth a line
    const level = status === grpc.status.UNKNOWN ? 'error' : status === grpc.status.NOT_FOUND || status === grpc.status.ALREADY_EXISTS ? 'debug' : 'warn';
    this.log({ level, msg: `${what}: ${message}`, rpc, ms: performance.now() - t0, code });
    return { code: status, details: message };
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const st = this.store;
    const q = JSON.stringify;
    const create = (r: CreateReq) => `${q(r.key)}${r.parent ? ` parent ${q(r.parent)}` : ''}${Object.keys(r.labels).length ? ` labels ${q(r.labels)}` : ''}`;
    return {
      Prepare: this.unary('Prepare', create, async (r: CreateReq) => mountMsgs(await st.prepare(r.key, r.parent, r.labels))),
      View: this.unary('View', create, async (r: CreateReq) => mountMsgs(await st.view(r.key, r.parent, r.labels))),
      Mounts: this.unary(
        'Mounts',
        (r: KeyReq) => q(r.key),
        (r: KeyReq) => mountMsgs(st.mounts(r.key)),
      ),
      Commit: this.unary(
        'Commit',
        (r: CreateReq & { name: string }) => `${q(r.key)} as ${q(r.name)}`,
        async (r: CreateReq & { name: string }) => {
          await st.commit(r.name, r.key, r.labels);
          return {};
        },
      ),
      Remove: this.unary(
        'Remove',
        (r: KeyReq) => q(r.key),
        async (r: KeyReq) => {
          await st.remove(r.key);
          return {};
        },
      ),
      Stat: this.unary(
        'Stat',
        (r: KeyReq) => q(r.key),
        (r: KeyReq) => ({ info: infoMsg(st.stat(r.key)) }),
      ),
      Update: this.unary(
        'Update',
        (r: { info: InfoMsg | null; update_mask: { paths: string[] } | null }) => `${q(r.info?.name ?? '')} ${q(r.update_mask?.paths ?? [])}`,
        async (r: { info: InfoMsg | null; update_mask: { paths: string[] } | null }) => {
          if (!r.info) throw new OcichunkError('EUSAGE', 'no snapshot info given');
          return { info: infoMsg(await st.update(r.info.name, r.info.labels ?? {}, r.update_mask?.paths ?? [])) };
        },
      ),
      Usage: this.unary(
        'Usage',
        (r: KeyReq) => q(r.key),
        (r: KeyReq) => st.usage(r.key),
      ),
      Cleanup: this.unary(
        'Cleanup',
        () => '',
        async () => {
          const removed = await st.cleanup();
          if (removed.length)
            this.log({ level: 'info', msg: `cleanup: removed ${removed.length} unused snapshot director${removed.length === 1 ? 'y' : 'ies'}` });
          return {};
        },
      ),
      List: (call: grpc.ServerWritableStream<{ filters: string[] }, { info: InfoMsg[] }>) => {
        const t0 = performance.now();
        const what = `List ${q(call.request.filters)}`;
        try {
          const all = st.list(call.request.filters);
          for (let i = 0; i < all.length; i += LIST_BATCH) call.write({ info: all.slice(i, i + LIST_BATCH).map(infoMsg) });
          this.log({ level: 'debug', msg: `${what}: ${all.length}`, rpc: 'List', ms: performance.now() - t0 });
          call.end();
        } catch (e) {
          call.emit('error', this.failure('List', what, e, t0));
        }
      },
    };
  }
}
