/**
 * containerd's snapshots gRPC service (`containerd.services.snapshots.v1.Snapshots`, as containerd
 * 1.6 calls a proxy snapshotter), written here as a protobuf.js JSON descriptor from the API's
 * field names and numbers (docs/design/snapshotter-plan.md §1). Only the service path, the field
 * numbers and their wire types matter to containerd; the message names follow its API for
 * readability. Kept in code (not a .proto file) so that the published package (`dist/`) carries it.
 */
import type * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

type Field = { type: string; id: number; rule?: 'repeated'; keyType?: string };
const str = (id: number): Field => ({ type: 'string', id });
const i64 = (id: number): Field => ({ type: 'int64', id });
const msg = (type: string, id: number): Field => ({ type, id });
const repeated = (type: string, id: number): Field => ({ type, id, rule: 'repeated' });
const labels = (id: number): Field => ({ keyType: 'string', type: 'string', id });
const fields = (f: Record<string, Field>) => ({ fields: f });

/** `Kind` of a snapshot on the wire. */
export const KIND = { UNKNOWN: 0, VIEW: 1, ACTIVE: 2, COMMITTED: 3 } as const;

export const SERVICE = 'containerd.services.snapshots.v1.Snapshots';

const DESCRIPTOR = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Empty: fields({}),
            Timestamp: fields({ seconds: i64(1), nanos: { type: 'int32', id: 2 } }),
            FieldMask: fields({ paths: repeated('string', 1) }),
          },
        },
      },
    },
    containerd: {
      nested: {
        types: {
          nested: {
            Mount: fields({ type: str(1), source: str(2), target: str(3), options: repeated('string', 4) }),
          },
        },
        services: {
          nested: {
            snapshots: {
              nested: {
                v1: {
                  nested: {
                    Snapshots: {
                      methods: {
                        Prepare: { requestType: 'PrepareSnapshotRequest', responseType: 'PrepareSnapshotResponse' },
                        View: { requestType: 'ViewSnapshotRequest', responseType: 'ViewSnapshotResponse' },
                        Mounts: { requestType: 'MountsRequest', responseType: 'MountsResponse' },
                        Commit: { requestType: 'CommitSnapshotRequest', responseType: 'google.protobuf.Empty' },
                        Remove: { requestType: 'RemoveSnapshotRequest', responseType: 'google.protobuf.Empty' },
                        Stat: { requestType: 'StatSnapshotRequest', responseType: 'StatSnapshotResponse' },
                        Update: { requestType: 'UpdateSnapshotRequest', responseType: 'UpdateSnapshotResponse' },
                        List: { requestType: 'ListSnapshotsRequest', responseType: 'ListSnapshotsResponse', responseStream: true },
                        Usage: { requestType: 'UsageRequest', responseType: 'UsageResponse' },
                        Cleanup: { requestType: 'CleanupRequest', responseType: 'google.protobuf.Empty' },
                      },
                    },
                    PrepareSnapshotRequest: fields({ snapshotter: str(1), key: str(2), parent: str(3), labels: labels(4) }),
                    PrepareSnapshotResponse: fields({ mounts: repeated('containerd.types.Mount', 1) }),
                    ViewSnapshotRequest: fields({ snapshotter: str(1), key: str(2), parent: str(3), labels: labels(4) }),
                    ViewSnapshotResponse: fields({ mounts: repeated('containerd.types.Mount', 1) }),
                    MountsRequest: fields({ snapshotter: str(1), key: str(2) }),
                    MountsResponse: fields({ mounts: repeated('containerd.types.Mount', 1) }),
                    RemoveSnapshotRequest: fields({ snapshotter: str(1), key: str(2) }),
                    CommitSnapshotRequest: fields({ snapshotter: str(1), name: str(2), key: str(3), labels: labels(4) }),
                    StatSnapshotRequest: fields({ snapshotter: str(1), key: str(2) }),
                    Kind: { values: { ...KIND } },
                    Info: fields({
                      name: str(1),
                      parent: str(2),
                      kind: msg('Kind', 3),
                      created_at: msg('google.protobuf.Timestamp', 4),
                      updated_at: msg('google.protobuf.Timestamp', 5),
                      labels: labels(6),
                    }),
                    StatSnapshotResponse: fields({ info: msg('Info', 1) }),
                    UpdateSnapshotRequest: fields({ snapshotter: str(1), info: msg('Info', 2), update_mask: msg('google.protobuf.FieldMask', 3) }),
                    UpdateSnapshotResponse: fields({ info: msg('Info', 1) }),
                    ListSnapshotsRequest: fields({ snapshotter: str(1), filters: repeated('string', 2) }),
                    ListSnapshotsResponse: fields({ info: repeated('Info', 1) }),
                    UsageRequest: fields({ snapshotter: str(1), key: str(2) }),
                    UsageResponse: fields({ size: i64(1), inodes: i64(2) }),
                    CleanupRequest: fields({ snapshotter: str(1) }),
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

/** How messages look in JavaScript: field names as in the API (snake_case), 64-bit integers as numbers, every field present. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: Number, defaults: true, arrays: true, objects: true };

let cached: grpc.ServiceDefinition | undefined;

/** The service definition for grpc-js (`server.addService`, `makeGenericClientConstructor`). */
export function snapshotsService(): grpc.ServiceDefinition {
  if (!cached) {
    const pkg = protoLoader.fromJSON(DESCRIPTOR as unknown as Parameters<typeof protoLoader.fromJSON>[0], LOADER_OPTIONS);
    cached = pkg[SERVICE] as grpc.ServiceDefinition;
  }
  return cached;
}

// The messages as this code sees them (LOADER_OPTIONS).
export interface MountMsg {
  type: string;
  source: string;
  target: string;
  options: string[];
}
export interface TimestampMsg {
  seconds: number;
  nanos: number;
}
export interface InfoMsg {
  name: string;
  parent: string;
  kind: number;
  created_at: TimestampMsg | null;
  updated_at: TimestampMsg | null;
  labels: Record<string, string>;
}
