/**
 * An in-process registry for the unit tier: the part of the OCI distribution API the client uses
 * (blobs with ranges, monolithic and chunked uploads with their status, cross-repository mounts,
 * manifests by tag and digest, paginated tag lists), in memory, on 127.0.0.1. Auth on demand:
 * basic, or bearer tokens from its own token endpoint with scopes. Faults on demand: corrupt
 * content, error answers (with Retry-After), answers lost after the request was processed,
 * connections cut in the middle of a body, ranges ignored. Every request is logged.
 */
import { createHash, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** One fault, for the requests it matches (in the order the faults were added). */
export interface Fault {
  method?: string;
  path: RegExp;
  /** matching requests let through before the fault fires */
  skip?: number;
  /** how many matching requests it hits (default 1) */
  times?: number;
  /** answer this status (with an error body) instead of handling the request */
  status?: number;
  /** the Retry-After header sent with `status` */
  retryAfter?: string;
  /** handle the request first (what it stores stays stored), then answer `status` instead */
  afterHandling?: boolean;
  /** send the real answer's headers and this many bytes of its body, then cut the connection */
  cutAfter?: number;
}

interface Reply {
  status: number;
  headers?: Record<string, string | number>;
  body?: Buffer;
}

export class FakeRegistry {
  /** every blob by digest (which repositories hold it: `repoBlobs`) */
  readonly blobs = new Map<string, Buffer>();
  readonly repoBlobs = new Map<string, Set<string>>();
  readonly manifests = new Map<string, { type: string; body: Buffer }>();
  readonly tags = new Map<string, string>();
  private readonly uploads = new Map<string, Buffer[]>();
  /** digests (blobs or manifests) whose GET answers other bytes (a registry or network that damages content) */
  readonly corrupt = new Set<string>();
  /** required `user:password` (basic auth), if any */
  auth?: string;
  /** bearer tokens required, issued by /token to these users (and to anyone for pulls, if `anonymousPull`) */
  bearer?: { users: Record<string, string>; anonymousPull?: boolean };
  /** what /token was asked for, by whom (undefined: anonymous) */
  readonly tokenRequests: Array<{ user?: string; scopes: string[] }> = [];
  private readonly tokens = new Map<string, Set<string>>();
  readonly faults: Fault[] = [];
  /** answer range requests with the whole blob, as some registries and proxies do */
  ignoreRange = false;
  /** `METHOD /path [range=...]` of every request */
  readonly log: string[] = [];
  private server!: http.Server;
  host = '';

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => this.serve(req, Buffer.concat(parts), res));
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  /** Which repositories hold `digest`. */
  holders(digest: string): string[] {
    return [...this.repoBlobs].filter(([, s]) => s.has(digest)).map(([name]) => name);
  }

  private fault(method: string, path: string): Fault | undefined {
    const i = this.faults.findIndex((f) => (f.method ?? method) === method && f.path.test(path));
    if (i < 0) return undefined;
    const f = this.faults[i];
    if (f.skip) {
      f.skip--;
      return undefined;
    }
    f.times = (f.times ?? 1) - 1;
    if (f.times <= 0) this.faults.splice(i, 1);
    return f;
  }

  private serve(req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) {
    const url = new URL(req.url!, `http://${this.host}`);
    const method = req.method!;
    this.log.push(`${method} ${url.pathname}${req.headers.range ? ` range=${req.headers.range}` : ''}`);
    const write = (r: Reply) => {
      res.writeHead(r.status, { 'docker-distribution-api-version': 'registry/2.0', ...r.headers });
      res.end(method === 'HEAD' ? undefined : r.body);
    };
    const f = url.pathname === '/token' ? undefined : this.fault(method, url.pathname);
    if (f?.status !== undefined && !f.afterHandling) return write(errorReply(f.status, 'INJECTED', f.retryAfter));
    const reply = this.handle(req, url, body);
    if (f?.status !== undefined) return write(errorReply(f.status, 'INJECTED', f.retryAfter));
    if (f?.cutAfter !== undefined && reply.body && method !== 'HEAD') {
      res.writeHead(reply.status, { 'docker-distribution-api-version': 'registry/2.0', ...reply.headers });
      res.write(reply.body.subarray(0, f.cutAfter), () => res.destroy());
      return;
    }
    write(reply);
  }

  /** The scopes `repository:NAME:ACTIONS` granted to a bearer token's holder. */
  private token(url: URL, authorization: string | undefined): Reply {
    let user: string | undefined;
    if (authorization?.startsWith('Basic ')) {
      const [name, ...rest] = Buffer.from(authorization.slice(6), 'base64').toString().split(':');
      if (this.bearer!.users[name] !== rest.join(':')) return errorReply(401, 'UNAUTHORIZED');
      user = name;
    }
    const scopes = url.searchParams.getAll('scope');
    this.tokenRequests.push({ user, scopes });
    const granted = new Set<string>();
    for (const s of scopes) {
      const [type, name, actions] = s.split(':');
      if (type !== 'repository') continue;
      for (const a of actions.split(',')) if (user || (a === 'pull' && this.bearer!.anonymousPull)) granted.add(`${name}:${a}`);
    }
    const token = randomUUID();
    this.tokens.set(token, granted);
    return json(200, { token, expires_in: 300 });
  }

  /** Whether the request may go on: undefined, or the 401 to answer. */
  private authorize(req: http.IncomingMessage, url: URL): Reply | undefined {
    const authorization = req.headers.authorization;
    if (this.auth && authorization !== `Basic ${Buffer.from(this.auth).toString('base64')}`) {
      return { status: 401, headers: { 'www-authenticate': 'Basic realm="fake"' } };
    }
    if (!this.bearer) return undefined;
    const m = /^\/v2\/(.+?)\/(?:blobs|manifests|tags|referrers)\//.exec(url.pathname);
    const action = req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'push';
    const granted = authorization?.startsWith('Bearer ') ? this.tokens.get(authorization.slice(7)) : undefined;
    if (granted && (!m || granted.has(`${m[1]}:${action}`))) return undefined;
    const scope = m ? `,scope="repository:${m[1]}:${action}"` : '';
    return { status: 401, headers: { 'www-authenticate': `Bearer realm="http://${this.host}/token",service="fake-registry"${scope}` } };
  }

  private handle(req: http.IncomingMessage, url: URL, body: Buffer): Reply {
    const method = req.method!;
    if (url.pathname === '/token' && this.bearer) return this.token(url, req.headers.authorization);
    const denied = this.authorize(req, url);
    if (denied) return denied;
    if (url.pathname === '/v2/') return { status: 200, body: Buffer.from('{}') };
    let m = /^\/v2\/(.+)\/blobs\/uploads\/([\w-]*)$/.exec(url.pathname);
    if (m) return this.upload(method, m[1], m[2], url, body);
    m = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname);
    if (m && (method === 'GET' || method === 'HEAD')) {
      const [, name, digest] = m;
      let data = this.repoBlobs.get(name)?.has(digest) ? this.blobs.get(digest) : undefined;
      if (!data) return errorReply(404, 'BLOB_UNKNOWN');
      if (this.corrupt.has(digest)) data = damaged(data);
      const r = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
      if (r && method === 'GET' && !this.ignoreRange) {
        const from = Number(r[1]);
        const to = Math.min(r[2] ? Number(r[2]) : data.length - 1, data.length - 1);
        if (from > to) return { status: 416, headers: { 'content-range': `bytes */${data.length}` } };
        return {
          status: 206,
          headers: { 'content-range': `bytes ${from}-${to}/${data.length}`, 'content-length': to - from + 1 },
          body: data.subarray(from, to + 1),
        };
      }
      return {
        status: 200,
        headers: { 'content-length': data.length, 'docker-content-digest': digest, 'content-type': 'application/octet-stream' },
        body: data,
      };
    }
    m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const [, name, ref] = m;
      if (method === 'PUT') {
        const digest = sha(body);
        if (ref.startsWith('sha256:') && ref !== digest) return errorReply(400, 'DIGEST_INVALID');
        this.manifests.set(digest, { type: String(req.headers['content-type']), body });
        if (!ref.startsWith('sha256:')) this.tags.set(`${name}:${ref}`, digest);
        return { status: 201, headers: { location: `/v2/${name}/manifests/${digest}`, 'docker-content-digest': digest, 'content-length': 0 } };
      }
      const digest = ref.startsWith('sha256:') ? ref : this.tags.get(`${name}:${ref}`);
      const mf = digest && this.manifests.get(digest);
      if (!mf) return errorReply(404, 'MANIFEST_UNKNOWN');
      const bytes = this.corrupt.has(digest) ? damaged(mf.body) : mf.body;
      return { status: 200, headers: { 'content-type': mf.type, 'content-length': bytes.length, 'docker-content-digest': digest }, body: bytes };
    }
    m = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    if (m) {
      const name = m[1];
      const all = [...this.tags.keys()]
        .filter((k) => k.startsWith(`${name}:`))
        .map((k) => k.slice(name.length + 1))
        .sort();
      const last = url.searchParams.get('last');
      const n = Number(url.searchParams.get('n') ?? all.length);
      const after = last === null ? all : all.filter((t) => t > last);
      const page = after.slice(0, n);
      const headers: Record<string, string> = {};
      if (after.length > page.length) headers.link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(page[page.length - 1])}>; rel="next"`;
      return json(200, { name, tags: page }, headers);
    }
    return errorReply(404, 'NAME_UNKNOWN');
  }

  private upload(method: string, name: string, id: string, url: URL, body: Buffer): Reply {
    const at = (uuid: string, have: number) => ({ location: `/v2/${name}/blobs/uploads/${uuid}`, range: `0-${Math.max(0, have - 1)}`, 'content-length': 0 });
    if (method === 'POST') {
      const mount = url.searchParams.get('mount');
      const from = url.searchParams.get('from');
      if (mount && from && this.repoBlobs.get(from)?.has(mount)) {
        this.store(name, mount, this.blobs.get(mount)!);
        return { status: 201, headers: { location: `/v2/${name}/blobs/${mount}`, 'docker-content-digest': mount, 'content-length': 0 } };
      }
      const uuid = randomUUID();
      this.uploads.set(uuid, []);
      return { status: 202, headers: at(uuid, 0) };
    }
    const up = this.uploads.get(id);
    if (!up) return errorReply(404, 'BLOB_UPLOAD_UNKNOWN');
    const have = () => up.reduce((a, b) => a + b.length, 0);
    if (method === 'PATCH') {
      up.push(body);
      return { status: 202, headers: at(id, have()) };
    }
    if (method === 'GET') return { status: 204, headers: at(id, have()) };
    if (method === 'DELETE') {
      this.uploads.delete(id);
      return { status: 204 };
    }
    if (method === 'PUT') {
      up.push(body);
      const data = Buffer.concat(up);
      const digest = url.searchParams.get('digest');
      if (digest !== sha(data)) return errorReply(400, 'DIGEST_INVALID');
      this.uploads.delete(id);
      this.store(name, digest, data);
      return { status: 201, headers: { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest, 'content-length': 0 } };
    }
    return errorReply(405, 'UNSUPPORTED');
  }

  private store(name: string, digest: string, data: Buffer): void {
    this.blobs.set(digest, data);
    let s = this.repoBlobs.get(name);
    if (!s) this.repoBlobs.set(name, (s = new Set()));
    s.add(digest);
  }
}

function json(status: number, value: unknown, headers: Record<string, string> = {}): Reply {
  const body = Buffer.from(JSON.stringify(value));
  return { status, headers: { 'content-type': 'application/json', 'content-length': body.length, ...headers }, body };
}

function errorReply(status: number, code: string, retryAfter?: string): Reply {
  const r = json(status, { errors: [{ code, message: code.toLowerCase() }] });
  if (retryAfter !== undefined) r.headers!['retry-after'] = retryAfter;
  return r;
}

/** The same bytes with one bit of the middle one flipped. */
function damaged(data: Buffer): Buffer {
  const out = Buffer.from(data);
  out[out.length >> 1] ^= 1;
  return out;
}
