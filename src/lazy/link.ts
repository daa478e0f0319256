/**
 * A simulated WAN link in front of a registry: an HTTP reverse proxy that adds a round-trip time to
 * every request and shares one bandwidth among all response bodies. Counts requests and bytes.
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { OcichunkError } from '../errors.js';

export interface LinkSpec {
  rttMs: number;
  /** bytes per second (Infinity: unlimited) */
  bandwidth: number;
}

/** "50ms,100mbit" -> { rttMs: 50, bandwidth: 12.5e6 } */
export function parseLink(s: string): LinkSpec {
  const m = /^\s*(\d+(?:\.\d+)?)\s*ms\s*,\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|b|bps|byte|bytes)?\s*$/i.exec(s);
  if (!m) throw new OcichunkError('EUSAGE', `--link ${JSON.stringify(s)}: expected RTT,BANDWIDTH such as 50ms,100mbit`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[3].toLowerCase() as '' | 'k' | 'm' | 'g'];
  const unit = (m[4] ?? 'bit').toLowerCase();
  const perSecond = Number(m[2]) * mult * (unit === 'b' || unit.startsWith('byte') ? 1 : 1 / 8);
  if (!(perSecond > 0)) throw new OcichunkError('EUSAGE', `--link ${JSON.stringify(s)}: bandwidth must be positive`);
  return { rttMs: Number(m[1]), bandwidth: perSecond };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class LinkProxy {
  host = '';
  requests = 0;
  bytes = 0;
  private server?: http.Server;
  private readonly sockets = new Set<net.Socket>();
  /** when the link is free again (ms, performance.now()) */
  private busyUntil = 0;

  constructor(
    readonly target: string,
    readonly link: LinkSpec,
    /** speak HTTPS to the target (the proxy itself listens on plain HTTP, on 127.0.0.1) */
    readonly tls = false,
    readonly insecure = false,
  ) {}

  reset(): void {
    this.requests = 0;
    this.bytes = 0;
  }

  /** Delay that sending n bytes over the shared link adds. */
  private async transmit(n: number): Promise<void> {
    if (!Number.isFinite(this.link.bandwidth)) return;
    const now = performance.now();
    const start = Math.max(now, this.busyUntil);
    this.busyUntil = start + (n / this.link.bandwidth) * 1000;
    const wait = this.busyUntil - now;
    if (wait > 1) await sleep(wait);
  }

  async start(): Promise<this> {
    const i = this.target.lastIndexOf(':');
    const [thost, tport] =
      i > 0 && !this.target.endsWith(']') ? [this.target.slice(0, i), Number(this.target.slice(i + 1))] : [this.target, this.tls ? 443 : 80];
    this.server = http.createServer(async (req, res) => {
      this.requests++;
      // half a round trip for the request, half for the answer's first byte
      await sleep(this.link.rttMs / 2);
      const headers = { ...req.headers, host: this.target };
      const request = this.tls ? https.request : http.request;
      const up = request({ host: thost, port: tport, method: req.method, path: req.url, headers, rejectUnauthorized: !this.insecure }, async (ur) => {
        await sleep(this.link.rttMs / 2);
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pause();
        const pump = async () => {
          for await (const c of ur as AsyncIterable<Buffer>) {
            await this.transmit(c.length);
            this.bytes += c.length;
            if (!res.write(c)) await new Promise((r) => res.once('drain', r));
          }
          res.end();
        };
        pump().catch(() => res.destroy());
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    const a = this.server.address() as net.AddressInfo;
    this.host = `127.0.0.1:${a.port}`;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
