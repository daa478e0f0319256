/** `ocichunk snapshotter` as a user runs it (bin/ocichunk.js over dist/), started, stopped and killed by a test. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { REPO } from './env.js';

export class SnapshotterProc {
  proc?: ChildProcess;
  readonly log: string;
  constructor(
    readonly root: string,
    readonly sock: string,
    logDir: string,
  ) {
    this.log = path.join(logDir, 'snapshotter.log');
  }

  /** The proxy plugin section of containerd's config for this snapshotter. */
  containerdConfig(name = 'ocichunk'): string[] {
    return ['[proxy_plugins]', `  [proxy_plugins.${name}]`, '    type = "snapshot"', `    address = "${this.sock}"`];
  }

  private connects(): Promise<boolean> {
    return new Promise((resolve) => {
      const c = net.connect(this.sock, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
  }

  /** Start it and wait until it accepts connections on its socket. */
  async start(extraArgs: string[] = []): Promise<void> {
    const out = fs.openSync(this.log, 'a');
    const p = spawn(
      process.execPath,
      [path.join(REPO, 'bin', 'ocichunk.js'), 'snapshotter', '--root', this.root, '--address', this.sock, '--log-level', 'debug', ...extraArgs],
      {
        stdio: ['ignore', out, out],
      },
    );
    fs.closeSync(out);
    this.proc = p;
    for (let i = 0; i < 200; i++) {
      if (p.exitCode !== null) break;
      if (fs.existsSync(this.sock) && (await this.connects())) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the snapshotter did not start:\n${this.logText().slice(-3000)}`);
  }

  logText(): string {
    return fs.existsSync(this.log) ? fs.readFileSync(this.log, 'utf8') : '';
  }

  /** Send a signal and wait for the exit; returns the exit code (or the signal's name). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | string> {
    const p = this.proc;
    if (!p) return -1;
    this.proc = undefined;
    if (p.exitCode !== null || p.signalCode !== null) return p.exitCode ?? p.signalCode!;
    const exited = new Promise<number | string>((resolve) => p.once('exit', (code, sig) => resolve(code ?? sig ?? -1)));
    p.kill(signal);
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
    const r = await exited;
    clearTimeout(t);
    return r;
  }
}
