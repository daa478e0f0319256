/**
 * oci-archive:FILE[:REF] as a sink: an OCI layout is assembled in a temporary directory next to FILE
 * (reusing FILE's blobs if it already exists), then packed with sorted members and fixed metadata,
 * so the same content gives the same archive bytes; FILE is replaced atomically.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { OciLayoutSink } from './oci-layout.js';
import { TarIndex } from './tar-index.js';

export class OciArchiveSink extends OciLayoutSink {
  private constructor(
    readonly file: string,
    tmpDir: string,
    ref: string,
  ) {
    super(tmpDir, ref);
  }

  static async create(file: string, ref: string): Promise<OciArchiveSink> {
    const tmpDir = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.tmp-${randomBytes(6).toString('hex')}`);
    await fsp.mkdir(tmpDir, { recursive: true });
    const sink = new OciArchiveSink(file, tmpDir, ref);
    // Start from the existing archive's content, so a second image shares its chunks.
    let existing: TarIndex | undefined;
    try {
      existing = await TarIndex.open(file);
    } catch {
      existing = undefined;
    }
    if (existing) {
      try {
        for (const name of existing.members.keys()) {
          if (name !== 'index.json' && name !== 'oci-layout' && !name.startsWith('blobs/sha256/')) continue;
          const dest = path.join(tmpDir, name);
          await fsp.mkdir(path.dirname(dest), { recursive: true });
          await pipeline(existing.stream(name), fs.createWriteStream(dest));
        }
      } finally {
        await existing.close();
      }
    }
    await sink.init();
    return sink;
  }

  override get name(): string {
    return `oci-archive:${this.file}:${this.ref}`;
  }

  async abort(): Promise<void> {
    await fsp.rm(this.dir, { recursive: true, force: true });
  }

  override async close(): Promise<void> {
    const names: string[] = ['oci-layout', 'index.json'];
    const blobs = (await fsp.readdir(this.store.dir)).filter((n) => /^[a-f0-9]{64}$/.test(n)).sort();
    const pack = tar.pack();
    const tmpFile = `${this.file}.tmp-${randomBytes(6).toString('hex')}`;
    const out = pipeline(pack, fs.createWriteStream(tmpFile));
    const header = { mtime: new Date(0), uid: 0, gid: 0, uname: '', gname: '' };
    pack.entry({ ...header, name: 'blobs/', type: 'directory', mode: 0o755 });
    pack.entry({ ...header, name: 'blobs/sha256/', type: 'directory', mode: 0o755 });
    const entry = (name: string, file: string, size: number) =>
      new Promise<void>((resolve, reject) => {
        const w = pack.entry({ ...header, name, size, mode: 0o644 }, (err) => (err ? reject(err) : resolve()));
        fs.createReadStream(file).on('error', reject).pipe(w);
      });
    for (const n of names) {
      const f = path.join(this.dir, n);
      await entry(n, f, (await fsp.stat(f)).size);
    }
    for (const b of blobs) {
      const f = path.join(this.store.dir, b);
      await entry(`blobs/sha256/${b}`, f, (await fsp.stat(f)).size);
    }
    pack.finalize();
    await out;
    await fsp.rename(tmpFile, this.file);
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}
