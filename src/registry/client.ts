/**
 * A small client for the OCI distribution API on node:http/https: ping and auth challenges
 * (anonymous, basic, bearer tokens with pull/push/mount scopes), manifests with Accept
 * negotiation and digest checks, blobs streamed and verified (resumed with Range after a cut),
 * single-range reads (with a signal when the registry answers with the whole blob), monolithic
 * and chunked uploads (resumed from the registry's offset, or restarted), cross-repository mounts,
 * tags and referrers. Retries with backoff on resets, timeouts, 408/429/5xx (honouring Retry-After).
 */
import fs from 'node:fs';
import http, { type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { OcichunkError } from '../errors.js';
import { MT, assertDigest, type Descriptor, type ImageIndex } from '../oci/types.js';
import { READ_SIZE, VerifyingStream, sha256Digest } from '../store/blobstore.js';
import { lookupCredentials, type CredentialOptions, type Credentials } from './credentials.js';

export interface RegistryOptions extends CredentialOptions {
  /** Use http:// (automatic for localhost, 127.0.0.1 and ::1). */
  plainHttp?: boolean;
  /** Do not verify TLS certificates. */
  insecure?: boolean;
  /** Attempts after the first one for a failing request (default 5). */
  retries?: number;
  /** Base of the exponential backoff in ms (default 250). */
  backoffMs?: number;
  /** Idle timeout of a connection in ms (default 60 s). */
  timeoutMs?: number;
  /** Blobs larger than this are uploaded in chunks of this size (default 32 MiB). */
  uploadChunkSize?: number;
  /** Called on every retry, for progress/verbose output. */
  onRetry?: (info: { what: string; attempt: number; reason: string; delayMs: number }) => void;
}

export const MANIFEST_ACCEPT = [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].join(', ');
const MAX_MANIFEST = 4 << 20;

export interface TransferStats {
  requests: number;
  retries: number;
  bytesDownloaded: number;
  bytesUploaded: number;
}

interface Req {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** A path under the registry ('/v2/...') or an absolute URL (upload locations). */
  url: string | URL;
  headers?: OutgoingHttpHeaders;
  /** A buffer, or a factory of fresh streams (so the request can be sent again). */
  body?: Buffer | (() => Readable);
  scopes: string[];
  what: string;
  /** Retry on failures (default: true). Uploads handle their own recovery and pass false. */
  retry?: boolean;
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const RETRY_ERRNO = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNABORTED',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);

/** A network error; `transient` ones (resets, timeouts, 408/429/5xx) may succeed when tried again. */
function netError(message: string, transient: boolean, cause?: unknown): OcichunkError {
  return Object.assign(new OcichunkError('ENETWORK', message, { cause }), { transient });
}

function isRetriableError(e: unknown): boolean {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof OcichunkError) return (e as { transient?: boolean }).transient === true;
  return RETRY_ERRNO.has(err?.code ?? '') || /socket hang up|aborted|premature/i.test(err?.message ?? '');
}

/** Hosts spoken to in plain HTTP without being asked (as crane and oras do). */
export function isLocalHost(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '127.0.0.1' || h === '::1';
}

/** What to try when TLS goes wrong. */
function tlsHint(e: NodeJS.ErrnoException): string {
  const code = e?.code ?? '';
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT/.test(code)) return ' (to skip certificate verification, use --insecure)';
  if (code === 'EPROTO' || /wrong version number|packet length too long/.test(e?.message ?? ''))
    return ' (the registry may speak plain HTTP: use --plain-http)';
  return '';
}

function parseChallenge(h: string | undefined): { scheme: string; params: Record<string, string> } | undefined {
  if (!h) return undefined;
  const m = /^\s*(\w+)\s*(.*)$/.exec(h);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2].matchAll(/(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))/g)) params[p[1].toLowerCase()] = p[2] ?? p[3];
  return { scheme: m[1].toLowerCase(), params };
}

function retryAfterMs(res: IncomingMessage): number | undefined {
  const h = res.headers['retry-after'];
  if (!h) return undefined;
  const n = Number(h);
  if (Number.isFinite(n)) return Math.max(0, n * 1000);
  const t = Date.parse(h);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : undefined;
}

export async function readBody(res: IncomingMessage, max: number, what: string, stats?: TransferStats): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    n += (c as Buffer).length;
    if (stats) stats.bytesDownloaded += (c as Buffer).length;
    if (n > max) {
      res.destroy();
      throw new OcichunkError('EUNSAFE', `${what}: response larger than ${max} bytes`);
    }
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

function drain(res: IncomingMessage): Promise<void> {
  return new Promise((resolve) => {
    res.on('error', () => resolve());
    res.on('end', resolve);
    res.on('close', resolve);
    res.resume();
  });
}

/** The registry's own error text ({"errors":[{"code","message"}]}), if any. */
async function errorText(res: IncomingMessage): Promise<string> {
  try {
    const b = await readBody(res, 64 << 10, 'error');
    const j = JSON.parse(b.toString()) as { errors?: Array<{ code?: string; message?: string }> };
    if (j.errors?.length) return j.errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
    return b.toString().slice(0, 200).trim();
  } catch {
    return '';
  }
}

/** A file (or a part of it) as a fresh stream each time, for request bodies that may be re-sent. */
export function fileBody(file: string, start = 0, end?: number): () => Readable {
  return () => fs.createReadStream(file, { start, end, highWaterMark: READ_SIZE });
}

export class RegistryClient {
  readonly host: string;
  readonly base: string;
  readonly stats: TransferStats = { requests: 0, retries: 0, bytesDownloaded: 0, bytesUploaded: 0 };
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private creds: Promise<Credentials | undefined> | undefined;
  private challenge: { scheme: string; params: Record<string, string> } | undefined;
  private readonly tokens = new Map<string, { header: string; expires: number }>();
  private readonly retries: number;
  private readonly backoff: number;
  private readonly timeout: number;
  readonly uploadChunkSize: number;

  constructor(
    host: string,
    readonly opts: RegistryOptions = {},
  ) {
    this.host = host;
    const plain = opts.plainHttp || isLocalHost(host);
    this.base = `${plain ? 'http' : 'https'}://${host}`;
    // one agent per scheme: redirects (to blob storage, say) may change it
    // (a mount's prefetch keeps a few MiB of range requests in flight: 32 connections at most)
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: 96 });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 96, rejectUnauthorized: !opts.insecure });
    this.retries = opts.retries ?? 5;
    this.backoff = opts.backoffMs ?? 250;
    this.timeout = opts.timeoutMs ?? 60_000;
    this.uploadChunkSize = opts.uploadChunkSize ?? 32 << 20;
  }

  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  private credentials(): Promise<Credentials | undefined> {
    this.creds ??= lookupCredentials(this.host, this.opts);
    return this.creds;
  }

  private send(method: string, url: URL, headers: OutgoingHttpHeaders, body: Buffer | Readable | undefined): Promise<IncomingMessage> {
    this.stats.requests++;
    return new Promise((resolve, reject) => {
      const tls = url.protocol === 'https:';
      const req = (tls ? https : http).request(url, { method, headers, agent: tls ? this.httpsAgent : this.httpAgent, timeout: this.timeout }, (res) =>
        resolve(res),
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error(`no data for ${this.timeout} ms`), { code: 'ETIMEDOUT' })));
      req.on('error', reject);
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) {
        this.stats.bytesUploaded += body.length;
        req.end(body);
      } else {
        body.on('error', (e) => req.destroy(e));
        body.on('end', () => (this.stats.bytesUploaded += Number(headers['content-length'] ?? 0)));
        body.pipe(req);
      }
    });
  }

  private async authHeader(scopes: string[], force: boolean): Promise<string | undefined> {
    const ch = this.challenge;
    if (!ch) return undefined;
    const creds = await this.credentials();
    if (ch.scheme === 'basic') {
      return creds && !creds.identityToken ? 'Basic ' + Buffer.from(`${creds.username}:${creds.password}`).toString('base64') : undefined;
    }
    if (ch.scheme !== 'bearer') return undefined;
    const key = [...scopes].sort().join(' ');
    const cached = this.tokens.get(key);
    if (cached && !force && cached.expires > Date.now()) return cached.header;
    const realm = ch.params.realm;
    if (!realm) throw new OcichunkError('EAUTH', `${this.host}: bearer challenge without a realm`);
    const u = new URL(realm);
    const headers: OutgoingHttpHeaders = {};
    let form: Buffer | undefined;
    if (creds?.identityToken) {
      // an identity (refresh) token: the OAuth2 form POST, as docker does
      const f = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'ocichunk', scope: scopes.join(' ') });
      if (ch.params.service) f.set('service', ch.params.service);
      form = Buffer.from(f.toString());
      headers['content-type'] = 'application/x-www-form-urlencoded';
      headers['content-length'] = form.length;
    } else {
      if (ch.params.service) u.searchParams.set('service', ch.params.service);
      for (const s of scopes) u.searchParams.append('scope', s);
      if (creds) headers.authorization = 'Basic ' + Buffer.from(`${creds.username}:${creds.password}`).toString('base64');
    }
    let res: IncomingMessage | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        res = await this.send(form ? 'POST' : 'GET', u, headers, form);
      } catch (e) {
        if (attempt < this.retries && isRetriableError(e)) {
          await this.wait(attempt, `token from ${u.host}`, (e as Error).message);
          continue;
        }
        throw new OcichunkError('ENETWORK', `${this.host}: token server ${u.host}: ${(e as Error).message}`);
      }
      if (RETRY_STATUS.has(res.statusCode!) && attempt < this.retries) {
        await drain(res);
        await this.wait(attempt, `token from ${u.host}`, `HTTP ${res.statusCode}`, retryAfterMs(res));
        continue;
      }
      break;
    }
    if (res.statusCode !== 200) {
      const t = await errorText(res);
      const who = creds?.identityToken
        ? `the identity token${creds.username ? ` of ${creds.username}` : ''}`
        : creds
          ? `user ${creds.username}`
          : 'anonymous access';
      throw new OcichunkError('EAUTH', `${this.host}: token server refused ${who} for ${scopes.join(' ')} (HTTP ${res.statusCode}${t ? ': ' + t : ''})`);
    }
    const j = JSON.parse((await readBody(res, 1 << 20, 'token')).toString()) as { token?: string; access_token?: string; expires_in?: number };
    const token = j.token ?? j.access_token;
    if (!token) throw new OcichunkError('EAUTH', `${this.host}: token server answered without a token`);
    const header = `Bearer ${token}`;
    this.tokens.set(key, { header, expires: Date.now() + Math.max(30, (j.expires_in ?? 60) - 10) * 1000 });
    return header;
  }

  private async wait(attempt: number, what: string, reason: string, hinted?: number): Promise<void> {
    const delay = Math.min(hinted ?? this.backoff * 2 ** attempt * (0.75 + Math.random() * 0.5), 30_000);
    this.stats.retries++;
    this.opts.onRetry?.({ what, attempt: attempt + 1, reason, delayMs: Math.round(delay) });
    await sleep(delay);
  }

  resolve(url: string | URL): URL {
    return typeof url === 'string' ? new URL(url, this.base) : url;
  }

  /** Send a request with auth, redirects and retries; returns the final response (any status). */
  async request(r: Req): Promise<IncomingMessage> {
    let url = this.resolve(r.url);
    let authRetried = false;
    let redirects = 0;
    const retry = r.retry ?? true;
    for (let attempt = 0; ; ) {
      const headers: OutgoingHttpHeaders = { ...(r.headers ?? {}) };
      const sameHost = url.host === new URL(this.base).host;
      if (sameHost) {
        const auth = await this.authHeader(r.scopes, false);
        if (auth) headers.authorization = auth;
      }
      const body = r.body === undefined ? undefined : Buffer.isBuffer(r.body) ? r.body : r.body();
      if (Buffer.isBuffer(body)) headers['content-length'] = body.length;
      let res: IncomingMessage;
      try {
        res = await this.send(r.method, url, headers, body);
      } catch (e) {
        if (body && !Buffer.isBuffer(body)) body.destroy();
        if (retry && attempt < this.retries && isRetriableError(e)) {
          await this.wait(attempt++, r.what, (e as Error).message);
          continue;
        }
        throw netError(`${r.what}: ${this.host}: ${(e as Error).message}${tlsHint(e as NodeJS.ErrnoException)}`, isRetriableError(e), e);
      }
      const st = res.statusCode ?? 0;
      if (st === 401 && sameHost && !authRetried) {
        const ch = parseChallenge(res.headers['www-authenticate']);
        await drain(res);
        if (!ch) throw new OcichunkError('EAUTH', `${r.what}: ${this.host} requires authentication but sent no challenge`);
        this.challenge = ch;
        authRetried = true;
        if (ch.scheme === 'bearer') await this.authHeader(r.scopes, true);
        else if (!(await this.credentials())) {
          throw new OcichunkError('EAUTH', `${r.what}: ${this.host} requires a login (no credentials found; use --creds, --authfile or docker login)`);
        }
        continue;
      }
      if (
        (st === 301 || st === 302 || st === 303 || st === 307 || st === 308) &&
        res.headers.location &&
        redirects < 5 &&
        (r.method === 'GET' || r.method === 'HEAD')
      ) {
        await drain(res);
        url = new URL(res.headers.location, url);
        redirects++;
        continue;
      }
      if (retry && RETRY_STATUS.has(st) && attempt < this.retries) {
        const hint = retryAfterMs(res);
        await drain(res);
        await this.wait(attempt++, r.what, `HTTP ${st}`, hint);
        continue;
      }
      return res;
    }
  }

  /** Turn an unexpected response into a clear error (consumes the body). */
  async fail(res: IncomingMessage, what: string, repo: string): Promise<never> {
    const st = res.statusCode ?? 0;
    const t = await errorText(res);
    const detail = t ? ` (${t})` : '';
    if (st === 401) {
      const creds = await this.credentials();
      throw new OcichunkError(
        'EAUTH',
        `${what}: ${this.host}/${repo}: authentication failed${creds ? ` for user ${creds.username}` : ' (no credentials)'}${detail}`,
      );
    }
    if (st === 403) throw new OcichunkError('EAUTH', `${what}: ${this.host}/${repo}: access denied${detail}`);
    if (st === 404) throw new OcichunkError('ENOTFOUND', `${what}: ${this.host}/${repo}: not found${detail}`);
    throw netError(`${what}: ${this.host}/${repo}: HTTP ${st}${detail}`, RETRY_STATUS.has(st));
  }

  static pull(repo: string): string[] {
    return [`repository:${repo}:pull`];
  }
  static push(repo: string): string[] {
    return [`repository:${repo}:pull,push`];
  }

  // ---- manifests ----

  async getManifest(repo: string, ref: string, what: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const res = await this.request({
      method: 'GET',
      url: `/v2/${repo}/manifests/${ref}`,
      headers: { accept: MANIFEST_ACCEPT },
      scopes: RegistryClient.pull(repo),
      what,
    });
    if (res.statusCode !== 200) await this.fail(res, what, repo);
    const bytes = await readBody(res, MAX_MANIFEST, what, this.stats);
    const digest = sha256Digest(bytes);
    if (ref.startsWith('sha256:') && ref !== digest) {
      throw new OcichunkError('EDIGEST', `${what}: ${this.host}/${repo}@${ref} returned content hashing to ${digest}`);
    }
    const claimed = res.headers['docker-content-digest'];
    if (typeof claimed === 'string' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw new OcichunkError('EDIGEST', `${what}: ${this.host}/${repo}:${ref}: Docker-Content-Digest ${claimed} but the content hashes to ${digest}`);
    }
    let mediaType = (res.headers['content-type'] ?? '').split(';')[0].trim();
    try {
      const doc = JSON.parse(bytes.toString()) as { mediaType?: string; manifests?: unknown };
      if (doc.mediaType) mediaType = doc.mediaType;
      else if (!mediaType || mediaType === 'application/json') mediaType = Array.isArray(doc.manifests) ? MT.ociIndex : MT.ociManifest;
    } catch {
      throw new OcichunkError('ECORRUPT', `${what}: ${this.host}/${repo}:${ref} is not JSON`);
    }
    return { bytes, mediaType, digest };
  }

  async headManifest(repo: string, ref: string, what: string): Promise<Descriptor | undefined> {
    const res = await this.request({
      method: 'HEAD',
      url: `/v2/${repo}/manifests/${ref}`,
      headers: { accept: MANIFEST_ACCEPT },
      scopes: RegistryClient.pull(repo),
      what,
    });
    await drain(res);
    if (res.statusCode === 404) return undefined;
    if (res.statusCode !== 200) await this.fail(res, what, repo);
    const digest = res.headers['docker-content-digest'];
    if (typeof digest !== 'string') return undefined;
    return { mediaType: (res.headers['content-type'] ?? '').split(';')[0], digest, size: Number(res.headers['content-length'] ?? 0) };
  }

  /** PUT a manifest under a tag or its digest. Returns whether the registry processed a `subject` (OCI-Subject). */
  async putManifest(repo: string, ref: string, bytes: Buffer, mediaType: string, what: string): Promise<{ digest: string; subjectAccepted: boolean }> {
    const digest = sha256Digest(bytes);
    const res = await this.request({
      method: 'PUT',
      url: `/v2/${repo}/manifests/${ref}`,
      headers: { 'content-type': mediaType },
      body: bytes,
      scopes: RegistryClient.push(repo),
      what,
    });
    if (res.statusCode !== 201 && res.statusCode !== 200) await this.fail(res, what, repo);
    await drain(res);
    const got = res.headers['docker-content-digest'];
    if (typeof got === 'string' && got !== digest) {
      throw new OcichunkError('EDIGEST', `${what}: ${this.host}/${repo} stored the manifest as ${got}, expected ${digest}`);
    }
    return { digest, subjectAccepted: !!res.headers['oci-subject'] };
  }

  async listTags(repo: string, what: string): Promise<string[]> {
    const tags: string[] = [];
    let url: string | URL = `/v2/${repo}/tags/list?n=1000`;
    for (let page = 0; page < 100; page++) {
      const res = await this.request({ method: 'GET', url, scopes: RegistryClient.pull(repo), what });
      if (res.statusCode === 404) {
        await drain(res);
        return tags;
      }
      if (res.statusCode !== 200) await this.fail(res, what, repo);
      const j = JSON.parse((await readBody(res, 16 << 20, what)).toString()) as { tags?: string[] | null };
      tags.push(...(j.tags ?? []));
      const link = res.headers.link;
      const m = typeof link === 'string' ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      if (!m) break;
      url = new URL(m[1], this.base);
    }
    return tags;
  }

  /** The referrers API's answer, or undefined when the registry does not offer the API. */
  async referrers(repo: string, digest: string, what: string): Promise<ImageIndex | undefined> {
    const res = await this.request({
      method: 'GET',
      url: `/v2/${repo}/referrers/${digest}`,
      headers: { accept: MT.ociIndex },
      scopes: RegistryClient.pull(repo),
      what,
    });
    if (res.statusCode !== 200) {
      await drain(res);
      return undefined;
    }
    const ct = (res.headers['content-type'] ?? '').split(';')[0];
    const body = await readBody(res, MAX_MANIFEST, what);
    if (ct !== MT.ociIndex) return undefined;
    try {
      return JSON.parse(body.toString()) as ImageIndex;
    } catch {
      return undefined;
    }
  }

  // ---- blobs ----

  async headBlob(repo: string, digest: string, what: string): Promise<number | undefined> {
    const res = await this.request({ method: 'HEAD', url: `/v2/${repo}/blobs/${digest}`, scopes: RegistryClient.pull(repo), what });
    await drain(res);
    if (res.statusCode === 404) return undefined;
    if (res.statusCode !== 200) await this.fail(res, what, repo);
    return Number(res.headers['content-length'] ?? NaN);
  }

  /** A small blob, whole, verified. */
  async getBlobBytes(repo: string, desc: Pick<Descriptor, 'digest' | 'size'>, what: string, max: number): Promise<Buffer> {
    if (desc.size > max) throw new OcichunkError('EUNSAFE', `${what}: blob ${desc.digest} is too large (${desc.size} bytes)`);
    const parts: Buffer[] = [];
    for await (const c of this.openBlob(repo, desc, what)) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  /**
   * A blob as a stream that fails at the end unless digest and size match. A connection cut in
   * the middle is resumed from where it stopped (Range), or re-read from the start and skipped.
   */
  openBlob(repo: string, desc: Pick<Descriptor, 'digest' | 'size'>, what: string): Readable {
    assertDigest(desc.digest, what);
    const client = this;
    async function* body(): AsyncGenerator<Buffer> {
      let off = 0;
      for (let cuts = 0; ; ) {
        const headers: OutgoingHttpHeaders = off > 0 ? { range: `bytes=${off}-` } : {};
        const res = await client.request({ method: 'GET', url: `/v2/${repo}/blobs/${desc.digest}`, headers, scopes: RegistryClient.pull(repo), what });
        let skip = 0;
        if (off > 0 && res.statusCode === 200)
          skip = off; // ranges ignored: the whole blob again
        else if (off > 0 && res.statusCode === 206) {
          const start = Number(/bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''))?.[1] ?? NaN);
          if (start !== off) {
            res.destroy();
            throw new OcichunkError('ENETWORK', `${what}: ${client.host} answered a resume at ${off} with range ${res.headers['content-range']}`);
          }
        } else if (res.statusCode !== 200) await client.fail(res, what, repo);
        try {
          for await (const c of res) {
            let b = c as Buffer;
            client.stats.bytesDownloaded += b.length;
            if (skip > 0) {
              if (b.length <= skip) {
                skip -= b.length;
                continue;
              }
              b = b.subarray(skip);
              skip = 0;
            }
            off += b.length;
            yield b;
          }
          if (!res.complete) throw Object.assign(new Error('connection closed before the end of the body'), { code: 'ECONNRESET' });
          return;
        } catch (e) {
          if (e instanceof OcichunkError || !isRetriableError(e) || cuts >= client.retries) {
            throw e instanceof OcichunkError ? e : netError(`${what}: ${client.host}/${repo}: ${(e as Error).message} after ${off} bytes`, false, e);
          }
          await client.wait(cuts++, what, `${(e as Error).message} after ${off} bytes`);
        }
      }
    }
    // errors of the source reach the reader; a reader that stops early releases the connection
    const src = Readable.from(body(), { objectMode: false });
    const verified = new VerifyingStream(desc.digest, desc.size, what);
    src.on('error', (e) => verified.destroy(e));
    verified.on('close', () => src.destroy());
    return src.pipe(verified);
  }

  /**
   * Bytes [offset, offset+length) of a blob with one Range request. When the registry ignores
   * ranges and sends the whole blob, `whole` is the open response (the caller decides what to do).
   */
  async getRange(repo: string, digest: string, offset: number, length: number, what: string): Promise<{ bytes: Buffer } | { whole: IncomingMessage }> {
    for (let cuts = 0; ; cuts++) {
      const res = await this.request({
        method: 'GET',
        url: `/v2/${repo}/blobs/${digest}`,
        headers: { range: `bytes=${offset}-${offset + length - 1}` },
        scopes: RegistryClient.pull(repo),
        what,
      });
      if (res.statusCode === 200) return { whole: res };
      if (res.statusCode !== 206) await this.fail(res, what, repo);
      const cr = /bytes (\d+)-(\d+)/.exec(String(res.headers['content-range'] ?? ''));
      if (!cr || Number(cr[1]) !== offset || Number(cr[2]) !== offset + length - 1) {
        res.destroy();
        throw new OcichunkError('ENETWORK', `${what}: ${this.host} answered range ${offset}+${length} with ${res.headers['content-range']}`);
      }
      try {
        const b = await readBody(res, length, what, this.stats);
        if (b.length !== length) throw Object.assign(new Error(`short range: ${b.length} of ${length} bytes`), { code: 'ECONNRESET' });
        return { bytes: b };
      } catch (e) {
        if (e instanceof OcichunkError || !isRetriableError(e) || cuts >= this.retries)
          throw e instanceof OcichunkError ? e : netError(`${what}: ${(e as Error).message}`, false, e);
        await this.wait(cuts, what, (e as Error).message);
      }
    }
  }

  /** Try a cross-repository mount; true when the registry mounted the blob. */
  async mountBlob(repo: string, from: string, digest: string, what: string): Promise<boolean> {
    const u = `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`;
    let res: IncomingMessage;
    try {
      res = await this.request({
        method: 'POST',
        url: u,
        headers: { 'content-length': 0 },
        scopes: [...RegistryClient.push(repo), ...RegistryClient.pull(from)],
        what,
      });
    } catch (e) {
      // a mount is an optimisation: refused scopes or a failing endpoint mean a normal upload
      if (e instanceof OcichunkError && (e.code === 'EAUTH' || e.code === 'ENETWORK')) return false;
      throw e;
    }
    await drain(res);
    if (res.statusCode === 201) return true;
    if (res.statusCode === 202) {
      // the registry opened an upload instead; cancel it
      const loc = res.headers.location;
      if (loc) {
        const del = await this.request({ method: 'DELETE', url: new URL(loc, this.base), scopes: RegistryClient.push(repo), what, retry: false }).catch(
          () => undefined,
        );
        if (del) await drain(del);
      }
      return false;
    }
    if (res.statusCode === 401 || res.statusCode === 403 || res.statusCode === 404) return false;
    return false;
  }

  private async startUpload(repo: string, what: string): Promise<URL> {
    const res = await this.request({
      method: 'POST',
      url: `/v2/${repo}/blobs/uploads/`,
      headers: { 'content-length': 0 },
      scopes: RegistryClient.push(repo),
      what,
    });
    if (res.statusCode !== 202) await this.fail(res, what, repo);
    await drain(res);
    const loc = res.headers.location;
    if (!loc) throw new OcichunkError('ENETWORK', `${what}: ${this.host}/${repo} opened an upload without a Location`);
    return new URL(loc, this.base);
  }

  private static withDigest(loc: URL, digest: string): URL {
    const u = new URL(loc);
    u.searchParams.set('digest', digest);
    return u;
  }

  /**
   * Where the registry says an upload stands: the next offset and the location to go on with, or
   * undefined if it forgot the upload. (distribution answers "0-0" for an empty upload, so "0-0"
   * counts as nothing received: our chunks are never one byte.)
   */
  private async uploadOffset(repo: string, loc: URL, what: string): Promise<{ offset: number; loc: URL } | undefined> {
    const res = await this.request({ method: 'GET', url: loc, scopes: RegistryClient.push(repo), what });
    await drain(res);
    if (res.statusCode !== 204) return undefined;
    const m = /^(?:bytes=)?(\d+)-(\d+)$/.exec(String(res.headers.range ?? ''));
    if (!m) return undefined; // no usable offset: start the upload again
    const end = Number(m[2]);
    return { offset: end === 0 ? 0 : end + 1, loc: res.headers.location ? new URL(res.headers.location, this.base) : loc };
  }

  /**
   * Upload a local file as a blob: monolithic (POST + PUT) up to the chunk size, else chunked
   * (PATCH per chunk, resumed from the registry's offset after a failure; restarted when the
   * registry lost the upload). The registry's digest answer is checked.
   */
  async uploadFile(repo: string, file: string, desc: Pick<Descriptor, 'digest' | 'size'>, what: string): Promise<void> {
    const size = desc.size;
    for (let restarts = 0; ; restarts++) {
      try {
        let loc = await this.startUpload(repo, what);
        if (size <= this.uploadChunkSize) {
          const res = await this.request({
            method: 'PUT',
            url: RegistryClient.withDigest(loc, desc.digest),
            headers: { 'content-type': 'application/octet-stream', 'content-length': size },
            body: fileBody(file),
            scopes: RegistryClient.push(repo),
            what,
            retry: false,
          });
          if (res.statusCode !== 201) await this.fail(res, what, repo);
          await drain(res);
          this.checkStored(res, desc.digest, what, repo);
          return;
        }
        let off = 0;
        let stalls = 0;
        // why the last chunk failed (a status or a network error), for the error that ends it
        let why = '';
        while (off < size) {
          const end = Math.min(size, off + this.uploadChunkSize) - 1;
          let res: IncomingMessage | undefined;
          try {
            res = await this.request({
              method: 'PATCH',
              url: loc,
              headers: { 'content-type': 'application/octet-stream', 'content-length': end - off + 1, 'content-range': `${off}-${end}` },
              body: fileBody(file, off, end),
              scopes: RegistryClient.push(repo),
              what,
              retry: false,
            });
          } catch (e) {
            if (!isRetriableError(e)) throw e;
            why = (e as Error).message;
          }
          if (res && res.statusCode === 202) {
            await drain(res);
            if (res.headers.location) loc = new URL(res.headers.location, this.base);
            off = end + 1;
            stalls = 0;
            continue;
          }
          if (res && !RETRY_STATUS.has(res.statusCode ?? 0) && res.statusCode !== 416) await this.fail(res, what, repo);
          if (res) {
            const t = await errorText(res);
            why = `HTTP ${res.statusCode}${t ? ` (${t})` : ''}`;
          }
          // ask the registry where the upload stands and go on from there
          if (stalls >= this.retries) throw netError(`${what}: ${this.host}/${repo}: upload stalled at ${off} of ${size} bytes: ${why}`, true);
          await this.wait(stalls++, what, `chunk ${off}-${end} failed: ${why}`);
          const at = await this.uploadOffset(repo, loc, what);
          if (at === undefined) throw netError(`${what}: ${this.host}/${repo} lost the upload session`, true);
          off = at.offset;
          loc = at.loc;
        }
        const res = await this.request({
          method: 'PUT',
          url: RegistryClient.withDigest(loc, desc.digest),
          headers: { 'content-length': 0 },
          scopes: RegistryClient.push(repo),
          what,
          retry: false,
        });
        if (res.statusCode !== 201) await this.fail(res, what, repo);
        await drain(res);
        this.checkStored(res, desc.digest, what, repo);
        return;
      } catch (e) {
        if (!isRetriableError(e) || restarts >= this.retries) throw e;
        // maybe the upload went through and only its answer was lost
        if ((await this.headBlob(repo, desc.digest, what).catch(() => undefined)) === size) return;
        await this.wait(restarts, what, `restarting the upload: ${(e as Error).message}`);
      }
    }
  }

  async uploadBytes(repo: string, bytes: Buffer, digest: string, what: string): Promise<void> {
    for (let restarts = 0; ; restarts++) {
      try {
        const loc = await this.startUpload(repo, what);
        const res = await this.request({
          method: 'PUT',
          url: RegistryClient.withDigest(loc, digest),
          headers: { 'content-type': 'application/octet-stream' },
          body: bytes,
          scopes: RegistryClient.push(repo),
          what,
          retry: false,
        });
        if (res.statusCode !== 201) await this.fail(res, what, repo);
        await drain(res);
        this.checkStored(res, digest, what, repo);
        return;
      } catch (e) {
        if (!isRetriableError(e) || restarts >= this.retries) throw e;
        if ((await this.headBlob(repo, digest, what).catch(() => undefined)) === bytes.length) return;
        await this.wait(restarts, what, `restarting the upload: ${(e as Error).message}`);
      }
    }
  }

  private checkStored(res: IncomingMessage, digest: string, what: string, repo: string): void {
    const got = res.headers['docker-content-digest'];
    if (typeof got === 'string' && got !== digest) {
      throw new OcichunkError('EDIGEST', `${what}: ${this.host}/${repo} stored the blob as ${got}, expected ${digest}`);
    }
  }
}

const clients = new Map<string, { client: RegistryClient; holders: number }>();

/**
 * One client per host and options, shared by the sources and sinks that hold it (connections and
 * tokens are shared by a source and a sink on one registry); its connections are closed when the
 * last holder releases it (their close()).
 */
export function acquireClient(host: string, opts: RegistryOptions = {}): { client: RegistryClient; release(): void } {
  const key = JSON.stringify([
    host,
    opts.plainHttp,
    opts.insecure,
    opts.creds,
    opts.authfile,
    opts.retries,
    opts.backoffMs,
    opts.timeoutMs,
    opts.uploadChunkSize,
  ]);
  let e = clients.get(key);
  if (!e) {
    e = { client: new RegistryClient(host, opts), holders: 0 };
    clients.set(key, e);
  }
  e.holders++;
  const held = e;
  let released = false;
  return {
    client: held.client,
    release: () => {
      if (released) return;
      released = true;
      if (--held.holders > 0) return;
      if (clients.get(key) === held) clients.delete(key);
      held.client.close();
    },
  };
}

/** Clients alive now (a leak check for tests). */
export function openClients(): number {
  return clients.size;
}
