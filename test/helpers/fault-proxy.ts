/**
 * A reverse proxy in front of a registry that injects faults chosen per request: connection
 * resets, 5xx/429 answers, slow answers, hangs, bodies cut short, corrupted bytes.
 */
import http, { type IncomingMessage } from 'node:http';
import type net from 'node:net';

export type Fault = 'pass' | 'reset' | '500' | '503' | '429' | 'slow' | 'hang' | 'truncate' | 'corrupt' | 'norange';

export class FaultProxy {
  host = '';
  requests = 0;
  /** the URLs of the requests answered so far, in the order their answers ended */
  readonly answered: string[] = [];
  readonly faults: Partial<Record<Fault, number>> = {};
  private server?: http.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    readonly target: string,
    public plan: (req: IncomingMessage, n: number) => Fault,
  ) {}

  async start(): Promise<this> {
    const [thost, tport] = this.target.split(':');
    this.server = http.createServer((req, res) => {
      const n = ++this.requests;
      res.on('finish', () => this.answered.push(req.url ?? ''));
      let fault = this.plan(req, n);
      const bodyish = req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '');
      if ((fault === 'truncate' || fault === 'corrupt') && !bodyish) fault = 'pass';
      if (fault === 'norange' && !req.headers.range) fault = 'pass';
      // a registry that ignores Range: the header never reaches it, it answers with the whole blob
      if (fault === 'norange') delete req.headers.range;
      if (fault !== 'pass') this.faults[fault] = (this.faults[fault] ?? 0) + 1;
      if (fault === 'reset') {
        req.socket.destroy();
        return;
      }
      if (fault === 'hang') return; // never answer; the client's timeout must fire
      if (fault === '500' || fault === '503' || fault === '429') {
        req.resume();
        req.on('end', () => {
          res.writeHead(Number(fault), { 'content-type': 'application/json', ...(fault !== '500' ? { 'retry-after': '0' } : {}) });
          res.end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `injected ${fault}` }] }));
        });
        return;
      }
      const up = http.request({ host: thost, port: Number(tport), method: req.method, path: req.url, headers: req.headers }, (ur) => {
        const send = () => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          const len = Number(ur.headers['content-length'] ?? 0);
          if (fault === 'truncate' && len > 16) {
            let sent = 0;
            const cut = Math.floor(len / 2);
            ur.on('data', (c: Buffer) => {
              if (sent >= cut) return;
              const part = c.subarray(0, cut - sent);
              sent += part.length;
              res.write(part);
              if (sent >= cut) {
                ur.destroy();
                res.socket?.destroy();
              }
            });
            return;
          }
          if (fault === 'corrupt' && len > 0) {
            let first = true;
            ur.on('data', (c: Buffer) => {
              if (first) {
                const b = Buffer.from(c);
                b[Math.floor(b.length / 2)] ^= 0xff;
                res.write(b);
                first = false;
              } else res.write(c);
            });
            ur.on('end', () => res.end());
            return;
          }
          ur.pipe(res);
        };
        if (fault === 'slow') setTimeout(send, 300);
        else send();
      });
      up.on('error', () => res.socket?.destroy());
      req.pipe(up);
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.host = `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server?.close(r));
  }
}
