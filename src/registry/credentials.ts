/**
 * Registry credentials as users already have them: `--creds user:pass`, an auth file
 * (`--authfile`, `$REGISTRY_AUTH_FILE`, containers' `auth.json`, Docker's `config.json`) with
 * `auths`, `credHelpers` and `credsStore` (run as `docker-credential-<name> get`).
 */
import { spawn } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { OcichunkError } from '../errors.js';

export interface Credentials {
  username: string;
  password: string;
  /** An OAuth2 refresh token (`identitytoken` in auth files): traded at the token server instead of a password. */
  identityToken?: string;
}

export interface CredentialOptions {
  /** `user:pass` from the command line; wins over every file. */
  creds?: string;
  /** An auth file to use instead of the default search. */
  authfile?: string;
}

interface AuthFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

export function parseCreds(s: string): Credentials {
  const i = s.indexOf(':');
  if (i <= 0) throw new OcichunkError('EUSAGE', '--creds must be USER:PASSWORD');
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** Auth files in the order they are consulted (the first that exists wins, as in skopeo/docker). */
export function authFileCandidates(opts: CredentialOptions, env = process.env): string[] {
  if (opts.authfile) return [opts.authfile];
  if (env.REGISTRY_AUTH_FILE) return [env.REGISTRY_AUTH_FILE];
  const out: string[] = [];
  if (env.XDG_RUNTIME_DIR) out.push(path.join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  const home = env.HOME ?? os.homedir();
  out.push(path.join(env.DOCKER_CONFIG ?? path.join(home, '.docker'), 'config.json'));
  return out;
}

async function readAuthFile(file: string, explicit: boolean): Promise<AuthFile | undefined> {
  let raw: string;
  try {
    raw = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !explicit) return undefined;
    throw new OcichunkError(explicit ? 'EUSAGE' : 'EIO', `cannot read auth file ${file}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(raw) as AuthFile;
  } catch (e) {
    throw new OcichunkError('EUSAGE', `auth file ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

const HUB_KEY = 'https://index.docker.io/v1/';
function isHub(host: string): boolean {
  return host === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io';
}

/** The keys an auth file may use for `host` (Docker Hub has its historical one). */
function keysFor(host: string): string[] {
  const keys = [host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
  if (isHub(host)) keys.push(HUB_KEY, 'docker.io', 'index.docker.io', 'registry-1.docker.io');
  return keys;
}

function authUser(auth: string | undefined): string | undefined {
  if (!auth) return undefined;
  const dec = Buffer.from(auth, 'base64').toString('utf8');
  const i = dec.indexOf(':');
  return i > 0 ? dec.slice(0, i) : undefined;
}

const HELPER_TIMEOUT_MS = 30_000;

/** Run `docker-credential-<helper> get` with the server on stdin (killed after 30 s). */
export function runCredentialHelper(helper: string, server: string): Promise<Credentials | undefined> {
  const prog = `docker-credential-${helper}`;
  return new Promise((resolve, reject) => {
    const child = spawn(prog, ['get'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new OcichunkError('EAUTH', `credential helper ${prog} for ${server} did not answer within ${HELPER_TIMEOUT_MS / 1000} s`));
    }, HELPER_TIMEOUT_MS);
    child.on('close', () => clearTimeout(timer));
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(new OcichunkError('EAUTH', `credential helper ${prog} for ${server}: ${e.code === 'ENOENT' ? 'not found on PATH' : e.message}`)),
    );
    child.on('close', (code) => {
      const text = (out + err).trim();
      if (code !== 0) {
        // the helpers' own way of saying "nothing stored for this server"
        if (/credentials not found/i.test(text)) return resolve(undefined);
        return reject(new OcichunkError('EAUTH', `credential helper ${prog} for ${server} failed: ${text || `exit ${code}`}`));
      }
      try {
        const j = JSON.parse(out) as { Username?: string; Secret?: string };
        if (!j.Secret) return resolve(undefined);
        // helpers store identity tokens with the username "<token>" (docker's convention)
        if (j.Username === '<token>') return resolve({ username: '', password: '', identityToken: j.Secret });
        resolve({ username: j.Username ?? '', password: j.Secret });
      } catch {
        reject(new OcichunkError('EAUTH', `credential helper ${prog} for ${server} printed something that is not JSON`));
      }
    });
    child.stdin.end(server);
  });
}

/** Credentials for a registry host, or undefined for anonymous access. */
export async function lookupCredentials(host: string, opts: CredentialOptions = {}): Promise<Credentials | undefined> {
  if (opts.creds) return parseCreds(opts.creds);
  for (const file of authFileCandidates(opts)) {
    const cfg = await readAuthFile(file, !!opts.authfile);
    if (!cfg) continue;
    const keys = keysFor(host);
    for (const k of keys) {
      const helper = cfg.credHelpers?.[k];
      if (helper) return runCredentialHelper(helper, k);
    }
    if (cfg.credsStore) {
      // docker's key for a host: the host itself, or the historical one for Docker Hub
      const c = await runCredentialHelper(cfg.credsStore, isHub(host) ? HUB_KEY : host);
      if (c) return c;
    }
    for (const k of keys) {
      const a = cfg.auths?.[k];
      if (!a) continue;
      if (a.identitytoken) return { username: authUser(a.auth) ?? a.username ?? '', password: '', identityToken: a.identitytoken };
      if (a.username && a.password) return { username: a.username, password: a.password };
      if (a.auth) {
        const dec = Buffer.from(a.auth, 'base64').toString('utf8');
        const i = dec.indexOf(':');
        if (i > 0) return { username: dec.slice(0, i), password: dec.slice(i + 1) };
        throw new OcichunkError('EUSAGE', `auth file ${file}: the "auth" entry for ${k} is not base64 of USER:PASSWORD`);
      }
    }
    if (opts.authfile) return undefined; // an explicit file is the only one consulted
    // nothing for this registry here: the next file may have it (as containers/image does)
  }
  return undefined;
}
