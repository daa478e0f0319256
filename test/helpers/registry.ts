/**
 * Debian's docker-registry (the CNCF distribution server) on 127.0.0.1, on a free port, with
 * filesystem storage in a temp directory, optionally behind htpasswd basic auth; stopped afterwards.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { must, stopProcess } from './run.js';

export function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, address, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Bytes of every file under a directory. */
export function dirBytes(dir: string): number {
  let n = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) n += fs.statSync(p).size;
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return n;
}

/** A request as the registry's access log (Apache combined format, on by default) records it. */
export interface AccessEntry {
  method: string;
  path: string;
  status: number;
  /** body bytes sent */
  bytes: number;
}

export class Registry {
  host = '';
  readonly data: string;
  private proc?: ChildProcess;
  private readonly logFile: string;
  /** `auth`: credentials (htpasswd is written for them unless `authConfig` configures another scheme). */
  constructor(
    readonly dir: string,
    readonly auth?: { user: string; password: string },
    readonly authConfig?: string[],
    /** Listen on this loopback address (default 127.0.0.1), with TLS when a certificate is given. */
    readonly listen: { address?: string; tls?: { cert: string; key: string } } = {},
  ) {
    this.data = path.join(dir, 'data');
    this.logFile = path.join(dir, 'registry.log');
  }

  async start(): Promise<this> {
    fs.mkdirSync(this.data, { recursive: true });
    const address = this.listen.address ?? '127.0.0.1';
    const port = await freePort(address);
    this.host = `${address}:${port}`;
    const cfg = [
      'version: 0.1',
      'log:',
      '  level: warn',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${this.data}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${this.host}`,
      ...(this.listen.tls ? ['  tls:', `    certificate: ${this.listen.tls.cert}`, `    key: ${this.listen.tls.key}`] : []),
    ];
    if (this.authConfig) cfg.push(...this.authConfig);
    else if (this.auth) {
      const htpasswd = path.join(this.dir, 'htpasswd');
      fs.writeFileSync(htpasswd, (await must('htpasswd', ['-Bbn', this.auth.user, this.auth.password])).stdout);
      cfg.push('auth:', '  htpasswd:', '    realm: ocichunk-test', `    path: ${htpasswd}`);
    }
    const file = path.join(this.dir, 'config.yml');
    fs.writeFileSync(file, cfg.join('\n') + '\n');
    const out = fs.openSync(this.logFile, 'a');
    this.proc = spawn('docker-registry', ['serve', file], { stdio: ['ignore', out, out] });
    for (let i = 0; i < 100; i++) {
      const up = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, address, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
      if (up) return this;
      if (this.proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`docker-registry did not start:\n${fs.readFileSync(this.logFile, 'utf8').slice(-3000)}`);
  }

  /** skopeo copy (a third-party client puts the test images there). */
  async push(src: string, repoTag: string): Promise<void> {
    const creds = this.auth ? ['--dest-creds', `${this.auth.user}:${this.auth.password}`] : [];
    await must('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', ...creds, src, `docker://${this.host}/${repoTag}`]);
  }

  /** The digest a tag points to, as skopeo sees it (undefined if the tag does not exist). */
  async tagDigest(repoTag: string): Promise<string | undefined> {
    const creds = this.auth ? ['--creds', `${this.auth.user}:${this.auth.password}`] : [];
    try {
      const raw = (await must('skopeo', ['inspect', '--raw', '--tls-verify=false', ...creds, `docker://${this.host}/${repoTag}`])).stdout;
      return 'sha256:' + createHash('sha256').update(raw).digest('hex');
    } catch {
      return undefined;
    }
  }

  /** The requests of the registry's own access log, from byte `since` of the log on (see logSize()). */
  accessLog(since = 0): AccessEntry[] {
    const text = fs.readFileSync(this.logFile).subarray(since).toString('utf8');
    const out: AccessEntry[] = [];
    for (const m of text.matchAll(/^\S+ - \S+ \[[^\]]*\] "(\w+) (\S+) [^"]*" (\d{3}) (\d+|-)/gm)) {
      out.push({ method: m[1], path: m[2], status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) });
    }
    return out;
  }

  /** Where the log ends now: accessLog(logSize()) later gives the requests made in between. */
  logSize(): number {
    return fs.statSync(this.logFile).size;
  }

  /** Where the registry stores a blob's bytes. */
  blobFile(digest: string): string {
    const hex = digest.split(':')[1];
    return path.join(this.data, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
  }

  /** Damage a stored blob: flip 8 bytes at `offset` (its digest no longer matches what it holds). */
  flipBytes(digest: string, offset: number): void {
    const fd = fs.openSync(this.blobFile(digest), 'r+');
    try {
      const b = Buffer.alloc(8);
      fs.readSync(fd, b, 0, 8, offset);
      for (let i = 0; i < 8; i++) b[i] ^= 0x5a;
      fs.writeSync(fd, b, 0, 8, offset);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Bytes of blob data the registry stores. */
  storedBytes(): number {
    return dirBytes(path.join(this.data, 'docker', 'registry', 'v2', 'blobs'));
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc);
  }
}
