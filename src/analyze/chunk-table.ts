/**
 * The chunk-occurrence table behind `analyze`: one row per chunk occurrence (image, layer, path,
 * strategy, chunk digest, offset, length, compressed length) appended to an on-disk embedded DuckDB
 * database (it spills to disk beyond its memory limit, so the table may exceed memory). Every set
 * figure (unique bytes, marginal bytes per image, sharing, top duplicates) is SQL over it; with
 * `--parquet` it is exported so the same questions can be asked of a corpus too large for one
 * machine (DuckDB, Spark, Trino).
 * Compressed length: a chunk's share of its zstd frame (frames may group small chunks).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { DuckDBInstance, type DuckDBAppender, type DuckDBConnection } from '@duckdb/node-api';
import type { Toc } from '../chunked/toc.js';
import { OcichunkError } from '../errors.js';

export interface SqlSummary {
  strategies: Array<{ strategy: string; logicalFileBytes: number; unitRefs: number; units: number; uniqueBytes: number; uniqueCompressedBytes: number }>;
  /** per strategy, per image (in order): uncompressed bytes of chunks first seen in that image */
  marginalUniqueBytes: Record<string, number[]>;
  sharing: { strategy: string; bytes: number[][] };
  topDuplicates: Array<{ path: string; size: number; copies: number; savedBytes: number; images: number }>;
  rows: number;
}

const num = (v: unknown) => Number(v ?? 0);

export class ChunkTable {
  private appender?: DuckDBAppender;
  rows = 0;
  private constructor(
    private readonly dir: string,
    private readonly instance: DuckDBInstance,
    private readonly conn: DuckDBConnection,
    private readonly memoryLimit?: string,
  ) {}

  static async open(dir: string, memoryLimit?: string): Promise<ChunkTable> {
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, 'chunks.duckdb');
    await fs.rm(file, { force: true });
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(file, {
        temp_directory: path.join(dir, 'spill'),
        // rows are ordered explicitly where order matters (the Parquet export): less to keep in memory
        preserve_insertion_order: 'false',
        ...(memoryLimit ? { memory_limit: memoryLimit } : {}),
      });
    } catch (e) {
      await fs.rm(dir, { recursive: true, force: true });
      throw new OcichunkError('EUSAGE', `chunk table (DuckDB${memoryLimit ? `, memory limit ${JSON.stringify(memoryLimit)}` : ''}): ${(e as Error).message}`, {
        cause: e,
      });
    }
    const conn = await instance.connect();
    await conn.run(
      `create table chunks (image_index integer, image varchar, layer_index integer, layer varchar, path varchar, strategy varchar,
        digest varchar, "offset" bigint, length integer, compressed_length integer)`,
    );
    const t = new ChunkTable(dir, instance, conn, memoryLimit);
    t.appender = await conn.createAppender('chunks');
    return t;
  }

  /** Every chunk reference of a converted image's TOC. */
  appendToc(strategy: string, imageIndex: number, image: string, layers: string[], toc: Toc): void {
    const a = this.appender!;
    for (const [li, layer] of toc.layers.entries()) {
      for (const e of layer.entries) {
        if (e.type !== 'reg' || !e.chunks?.length) continue;
        let off = 0;
        for (const c of e.chunks) {
          const { digest: hex, frame: fi, length: len } = toc.chunks[c];
          const { compressedLength: clen, length: ulen } = toc.frames[fi];
          a.appendInteger(imageIndex);
          a.appendVarchar(image);
          a.appendInteger(li);
          a.appendVarchar(layers[li] ?? '');
          a.appendVarchar(e.path);
          a.appendVarchar(strategy);
          a.appendVarchar(hex);
          a.appendBigInt(BigInt(off));
          a.appendInteger(len);
          a.appendInteger(ulen ? Math.round((clen * len) / ulen) : 0);
          a.endRow();
          off += len;
          // commit in bounded batches: rows waiting in the appender are held in memory
          if (++this.rows % 50_000 === 0) this.guard(() => a.flushSync());
        }
      }
    }
    this.guard(() => a.flushSync());
  }

  /** DuckDB's errors (out of memory above all) as ours, with what to do about them. */
  private guard<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw this.wrap(e);
    }
  }

  private wrap(e: unknown): OcichunkError {
    const m = (e as Error).message ?? String(e);
    const oom = /out of memory|could not allocate|failed to allocate|failed to pin/i.test(m);
    return new OcichunkError(
      'EIO',
      oom
        ? `the chunk table ran out of memory${this.memoryLimit ? ` (--memory-limit ${this.memoryLimit})` : ''}: give it more (64MB is about the least that works) — ${m.split('\n')[0]}`
        : `chunk table (DuckDB): ${m.split('\n')[0]}`,
      { cause: e },
    );
  }

  async summarize(images: number, sharingStrategy: string | undefined, fileStrategy: string | undefined, top: number): Promise<SqlSummary> {
    this.guard(() => this.appender?.closeSync());
    this.appender = undefined;
    const q = async (sql: string) => {
      try {
        return (await this.conn.runAndReadAll(sql)).getRowObjects();
      } catch (e) {
        throw this.wrap(e);
      }
    };
    const strategies = (
      await q(`with d as (select strategy, digest, any_value(length) as len, any_value(compressed_length) as clen from chunks group by strategy, digest),
        u as (select strategy, count(*) as units, sum(len) as unique_bytes, sum(clen) as unique_c from d group by strategy),
        l as (select strategy, sum(length) as logical, count(*) as refs from chunks group by strategy)
        select l.strategy, logical, refs, units, unique_bytes, unique_c from l join u using (strategy) order by l.strategy`)
    ).map((r) => ({
      strategy: String(r.strategy),
      logicalFileBytes: num(r.logical),
      unitRefs: num(r.refs),
      units: num(r.units),
      uniqueBytes: num(r.unique_bytes),
      uniqueCompressedBytes: num(r.unique_c),
    }));
    const marginalUniqueBytes: Record<string, number[]> = {};
    for (const r of await q(`with d as (select strategy, digest, min(image_index) as first, any_value(length) as len from chunks group by strategy, digest)
        select strategy, first, sum(len) as bytes from d group by strategy, first`)) {
      const s = String(r.strategy);
      marginalUniqueBytes[s] ??= new Array(images).fill(0);
      marginalUniqueBytes[s][num(r.first)] = num(r.bytes);
    }
    const bytes = Array.from({ length: images }, () => new Array<number>(images).fill(0));
    if (sharingStrategy) {
      const s = sharingStrategy.replace(/'/g, "''");
      for (const r of await q(`with d as (select distinct image_index, digest, length from chunks where strategy = '${s}')
          select a.image_index as i, b.image_index as j, sum(a.length) as bytes from d a join d b on a.digest = b.digest group by all`)) {
        bytes[num(r.i)][num(r.j)] = num(r.bytes);
      }
    }
    // files (whole-file chunks) by content: copies, and the path of the first occurrence
    let topDuplicates: SqlSummary['topDuplicates'] = [];
    if (fileStrategy && top > 0) {
      const s = fileStrategy.replace(/'/g, "''");
      topDuplicates = (
        await q(`with f as (select image_index, layer_index, path, string_agg(digest, ',' order by "offset") as content, sum(length) as size
              from chunks where strategy = '${s}' group by image_index, layer_index, path)
            select any_value(size) as size, count(*) as copies, count(distinct image_index) as images,
              min({'i': image_index, 'l': layer_index, 'p': path}).p as path
            from f group by content having count(*) > 1
            order by (count(*) - 1) * any_value(size) desc, path limit ${Math.floor(top)}`)
      ).map((r) => ({
        path: String(r.path),
        size: num(r.size),
        copies: num(r.copies),
        savedBytes: (num(r.copies) - 1) * num(r.size),
        images: num(r.images),
      }));
    }
    return { strategies, marginalUniqueBytes, sharing: { strategy: sharingStrategy ?? '', bytes }, topDuplicates, rows: this.rows };
  }

  async writeParquet(file: string): Promise<void> {
    const tmp = `${file}.tmp-${process.pid}`;
    await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
    try {
      await this.conn.run(
        `copy (select image, layer_index, layer, path, strategy, digest, "offset", length, compressed_length from chunks order by strategy, image_index, layer_index, path, "offset")
          to '${tmp.replace(/'/g, "''")}' (format parquet, compression zstd)`,
      );
      await fs.rename(tmp, file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw new OcichunkError('EIO', `writing ${file}: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    try {
      this.appender?.closeSync();
    } catch {
      // already closed
    }
    this.conn.closeSync();
    this.instance.closeSync();
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}
