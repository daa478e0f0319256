/** A private containerd daemon (own root, state, socket) for a test, stopped afterwards. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Ran, sh, stopProcess } from './run.js';

export class Containerd {
  readonly sock: string;
  private proc?: ChildProcess;
  private log: string;
  /** `extraConfig`: more lines for config.toml (e.g. a `[proxy_plugins.NAME]` section). */
  constructor(
    readonly dir: string,
    readonly extraConfig: string[] = [],
  ) {
    this.sock = path.join(dir, 'containerd.sock');
    this.log = path.join(dir, 'containerd.log');
  }

  async start(): Promise<void> {
    const cfg = path.join(this.dir, 'config.toml');
    fs.writeFileSync(
      cfg,
      [
        'version = 2',
        `root = "${path.join(this.dir, 'root')}"`,
        `state = "${path.join(this.dir, 'state')}"`,
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = "${this.sock}"`,
        '[ttrpc]',
        `  address = "${this.sock}.ttrpc"`,
        '[debug]',
        `  address = "${this.sock}.debug"`,
        ...this.extraConfig,
      ].join('\n'),
    );
    const out = fs.openSync(this.log, 'a');
    this.proc = spawn('containerd', ['--config', cfg], { stdio: ['ignore', out, out] });
    for (let i = 0; i < 100; i++) {
      if (fs.existsSync(this.sock) && (await this.ctr(['version'])).code === 0) return;
      if (this.proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`containerd did not start:\n${fs.readFileSync(this.log, 'utf8').slice(-3000)}`);
  }

  ctr(args: string[]): Promise<Ran> {
    return sh('ctr', ['--address', this.sock, '--namespace', 'ocichunk-test', ...args]);
  }

  /** ctr-remote (stargz-snapshotter's client: `image rpull` passes the layers' image and digest as labels). */
  ctrRemote(args: string[]): Promise<Ran> {
    return sh('ctr-remote', ['--address', this.sock, '--namespace', 'ocichunk-test', ...args]);
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc);
    // leave no mounts behind
    await sh('sh', ['-c', `grep -o '${this.dir}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l`]);
  }
}
