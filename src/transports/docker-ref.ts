/** `docker://` references: parsed and printed as docker and skopeo do (no network code here). */
import { OcichunkError } from '../errors.js';

export interface DockerRef {
  /** host[:port] as written (docker.io for Docker Hub). */
  host: string;
  /** The host the API lives on (registry-1.docker.io for Docker Hub). */
  apiHost: string;
  repo: string;
  tag?: string;
  digest?: string;
}

const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;

/** Parse the part after `docker://`, normalising Docker Hub names as docker does. */
export function parseDockerRef(s: string): DockerRef {
  const bad = (why: string) => new OcichunkError('EUSAGE', `invalid image reference docker://${s}: ${why}`);
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) throw bad('the digest must be sha256:<64 hex digits>');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(`invalid tag ${JSON.stringify(tag)}`);
  }
  const slash = rest.indexOf('/');
  let host: string;
  let repo: string;
  const first = slash === -1 ? '' : rest.slice(0, slash);
  if (slash !== -1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    host = first;
    repo = rest.slice(slash + 1);
  } else {
    host = 'docker.io';
    repo = slash === -1 ? `library/${rest}` : rest;
  }
  if (!repo || !REPO_RE.test(repo)) throw bad(`invalid repository name ${JSON.stringify(repo)}`);
  if (!tag && !digest) tag = 'latest';
  const apiHost = host === 'docker.io' || host === 'index.docker.io' ? 'registry-1.docker.io' : host;
  return { host, apiHost, repo, tag, digest };
}

export function formatDockerRef(r: DockerRef): string {
  return `docker://${r.host}/${r.repo}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}`;
}
