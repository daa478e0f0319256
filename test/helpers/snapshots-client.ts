/**
 * A gRPC client of containerd's snapshots service (the same wire API containerd's proxy uses), for
 * calling an ocichunk snapshotter directly. Failures reject with the gRPC status `code`.
 */
import * as grpc from '@grpc/grpc-js';
import { snapshotsService, type InfoMsg, type MountMsg } from '../../src/snapshotter/proto.js';

export interface CallError extends Error {
  code: grpc.status;
  details: string;
}

export class SnapshotsClient {
  private readonly c: grpc.Client & Record<string, (...a: unknown[]) => unknown>;
  constructor(readonly sock: string) {
    const Ctor = grpc.makeGenericClientConstructor(snapshotsService(), 'Snapshots');
    this.c = new Ctor(`unix://${sock}`, grpc.credentials.createInsecure()) as unknown as typeof this.c;
  }

  call<T>(method: string, req: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.c[method] as (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(
        this.c,
        { snapshotter: 'ocichunk', ...req },
        { deadline: Date.now() + 30_000 },
        (e, r) => (e ? reject(e) : resolve(r)),
      );
    });
  }

  prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<MountMsg[]> {
    return this.call<{ mounts: MountMsg[] }>('Prepare', { key, parent, labels }).then((r) => r.mounts);
  }
  view(key: string, parent = '', labels: Record<string, string> = {}): Promise<MountMsg[]> {
    return this.call<{ mounts: MountMsg[] }>('View', { key, parent, labels }).then((r) => r.mounts);
  }
  mounts(key: string): Promise<MountMsg[]> {
    return this.call<{ mounts: MountMsg[] }>('Mounts', { key }).then((r) => r.mounts);
  }
  commit(name: string, key: string, labels: Record<string, string> = {}): Promise<unknown> {
    return this.call('Commit', { name, key, labels });
  }
  remove(key: string): Promise<unknown> {
    return this.call('Remove', { key });
  }
  stat(key: string): Promise<InfoMsg> {
    return this.call<{ info: InfoMsg }>('Stat', { key }).then((r) => r.info);
  }
  update(name: string, labels: Record<string, string>, paths?: string[]): Promise<InfoMsg> {
    return this.call<{ info: InfoMsg }>('Update', { info: { name, labels }, ...(paths ? { update_mask: { paths } } : {}) }).then((r) => r.info);
  }
  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.call('Usage', { key });
  }
  cleanup(): Promise<unknown> {
    return this.call('Cleanup', {});
  }

  /** List: every Info of every streamed message, and how many messages there were. */
  list(filters: string[] = []): Promise<{ infos: InfoMsg[]; messages: number }> {
    return new Promise((resolve, reject) => {
      const stream = (this.c.List as (r: unknown) => grpc.ClientReadableStream<{ info: InfoMsg[] }>).call(this.c, { snapshotter: 'ocichunk', filters });
      const infos: InfoMsg[] = [];
      let messages = 0;
      stream.on('data', (m: { info: InfoMsg[] }) => {
        messages++;
        infos.push(...m.info);
      });
      stream.on('error', reject);
      stream.on('end', () => resolve({ infos, messages }));
    });
  }

  close(): void {
    this.c.close();
  }
}

/** Expect a promise to fail with this gRPC status code. */
export async function statusOf(p: Promise<unknown>): Promise<grpc.status | 'ok'> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return (e as CallError).code;
  }
}
