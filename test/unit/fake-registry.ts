/**
 * An in-process registry for the unit tier: the part of the OCI distribution API the client uses
 * (blobs with ranges, monolithic and chunked uploads, manifests by tag and digest, tag lists), in
 * memory, on 127.0.0.1. Faults on demand: corrupt blobs, basic auth, a log of requests.
 */
import { createHash, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export class FakeRegistry {
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, { type: string; body: Buffer }>();
  readonly tags = new Map<string, string>();
  private readonly uploads = new Map<string, Buffer[]>();
  /** digests whose GET answers other bytes (a registry or network that damages content) */
  readonly corrupt = new Set<string>();
  /** required `user:password` (basic auth), if any */
  auth?: string;
  readonly log: string[] = [];
  private server!: http.Server;
  host = '';

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => this.handle(req, Buffer.concat(parts), res));
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  private handle(req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) {
    const url = new URL(req.url!, `http://${this.host}`);
    const method = req.method!;
    this.log.push(`${method} ${url.pathname}`);
    const send = (status: number, headers: Record<string, string | number> = {}, data?: Buffer) => {
      res.writeHead(status, { 'docker-distribution-api-version': 'registry/2.0', ...headers });
      res.end(method === 'HEAD' ? undefined : data);
    };
    const error = (status: number, code: string) =>
      send(status, { 'content-type': 'application/json' }, Buffer.from(JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] })));
    if (this.auth && req.headers.authorization !== `Basic ${Buffer.from(this.auth).toString('base64')}`) {
      send(401, { 'www-authenticate': 'Basic realm="fake"' });
      return;
    }
    if (url.pathname === '/v2/') return send(200, {}, Buffer.from('{}'));
    let m = /^\/v2\/(.+)\/blobs\/uploads\/([\w-]*)$/.exec(url.pathname);
    if (m) {
      const [, name, id] = m;
      if (method === 'POST') {
        const uuid = randomUUID();
        this.uploads.set(uuid, []);
        return send(202, { location: `/v2/${name}/blobs/uploads/${uuid}`, range: '0-0', 'content-length': 0 });
      }
      const up = this.uploads.get(id);
      if (!up) return error(404, 'BLOB_UPLOAD_UNKNOWN');
      const have = () => up.reduce((a, b) => a + b.length, 0);
      if (method === 'PATCH') {
        up.push(body);
        return send(202, { location: `/v2/${name}/blobs/uploads/${id}`, range: `0-${have() - 1}`, 'content-length': 0 });
      }
      if (method === 'GET') return send(204, { location: `/v2/${name}/blobs/uploads/${id}`, range: `0-${Math.max(0, have() - 1)}` });
      if (method === 'DELETE') {
        this.uploads.delete(id);
        return send(204);
      }
      if (method === 'PUT') {
        up.push(body);
        const data = Buffer.concat(up);
        const digest = url.searchParams.get('digest');
        if (digest !== sha(data)) return error(400, 'DIGEST_INVALID');
        this.uploads.delete(id);
        this.blobs.set(digest, data);
        return send(201, { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest, 'content-length': 0 });
      }
    }
    m = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname);
    if (m && (method === 'GET' || method === 'HEAD')) {
      let data = this.blobs.get(m[2]);
      if (!data) return error(404, 'BLOB_UNKNOWN');
      if (this.corrupt.has(m[2])) data = Buffer.from(data.map((b, i) => (i === data!.length >> 1 ? b ^ 1 : b)));
      const r = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
      if (r && method === 'GET') {
        const [from, to] = [Number(r[1]), Math.min(Number(r[2]), data.length - 1)];
        return send(206, { 'content-range': `bytes ${from}-${to}/${data.length}`, 'content-length': to - from + 1 }, data.subarray(from, to + 1));
      }
      return send(200, { 'content-length': data.length, 'docker-content-digest': m[2], 'content-type': 'application/octet-stream' }, data);
    }
    m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const [, name, ref] = m;
      if (method === 'PUT') {
        const digest = sha(body);
        this.manifests.set(digest, { type: String(req.headers['content-type']), body });
        if (!ref.startsWith('sha256:')) this.tags.set(`${name}:${ref}`, digest);
        else if (ref !== digest) return error(400, 'DIGEST_INVALID');
        return send(201, { location: `/v2/${name}/manifests/${digest}`, 'docker-content-digest': digest, 'content-length': 0 });
      }
      const digest = ref.startsWith('sha256:') ? ref : this.tags.get(`${name}:${ref}`);
      const mf = digest && this.manifests.get(digest);
      if (!mf) return error(404, 'MANIFEST_UNKNOWN');
      return send(200, { 'content-type': mf.type, 'content-length': mf.body.length, 'docker-content-digest': digest! }, mf.body);
    }
    m = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    if (m) {
      const tags = [...this.tags.keys()].filter((k) => k.startsWith(`${m![1]}:`)).map((k) => k.slice(m![1].length + 1));
      return send(200, { 'content-type': 'application/json' }, Buffer.from(JSON.stringify({ name: m[1], tags })));
    }
    error(404, 'NAME_UNKNOWN');
  }
}
