/**
 * A token server for the distribution registry's `auth: token` mode, in a process of its own (the
 * tests run tools synchronously): see token-server-main.mjs. `asked()` lists every token request.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { selfSignedCert, stopProcess } from './run.js';

export class TokenServer {
  realm = '';
  readonly service = 'ocichunk-test-registry';
  readonly issuer = 'ocichunk-test-issuer';
  readonly cert: string;
  private readonly log: string;
  private proc?: ChildProcess;

  /** `users`: user -> password; `refreshTokens`: identity token -> user. */
  constructor(
    readonly dir: string,
    readonly users: Record<string, string>,
    readonly refreshTokens: Record<string, string> = {},
  ) {
    this.cert = path.join(dir, 'token-cert.pem');
    this.log = path.join(dir, 'asked.jsonl');
  }

  async start(): Promise<this> {
    fs.mkdirSync(this.dir, { recursive: true });
    const keyFile = path.join(this.dir, 'token-key.pem');
    await selfSignedCert(keyFile, this.cert, '/CN=ocichunk-test-token');
    const usersFile = path.join(this.dir, 'users.json');
    fs.writeFileSync(usersFile, JSON.stringify({ ...this.users, __refresh: this.refreshTokens }));
    fs.writeFileSync(this.log, '');
    const main = path.join(path.dirname(fileURLToPath(import.meta.url)), 'token-server-main.mjs');
    this.proc = spawn(process.execPath, [main, keyFile, this.cert, usersFile, this.log], { stdio: ['ignore', 'pipe', 'inherit'] });
    const port = await new Promise<string>((resolve, reject) => {
      this.proc!.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim()));
      this.proc!.once('exit', (c) => reject(new Error(`token server exited ${c}`)));
    });
    this.realm = `http://127.0.0.1:${port}/token`;
    return this;
  }

  /** Every token request so far: who asked and for which scopes. */
  asked(): Array<{ user?: string; scopes: string[]; ok: boolean; grant?: string }> {
    return fs
      .readFileSync(this.log, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }

  reset(): void {
    fs.writeFileSync(this.log, '');
  }

  /** The registry configuration block for this server. */
  registryAuth(): string[] {
    return ['auth:', '  token:', `    realm: ${this.realm}`, `    service: ${this.service}`, `    issuer: ${this.issuer}`, `    rootcertbundle: ${this.cert}`];
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc);
  }
}
