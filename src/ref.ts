/**
 * skopeo-style image references -> transports. Each transport's module is loaded when a reference
 * names it (a mount of a registry image starts without the archive and layout code).
 */
import { OcichunkError } from './errors.js';
import { formatDockerRef, parseDockerRef } from './transports/docker-ref.js';
import type { RegistryTransportOptions } from './transports/registry.js';
import type { ImageSink, ImageSource } from './transports/types.js';

/** Options for transports that need them (registries); local transports ignore them. */
export type TransportOptions = RegistryTransportOptions;

export type Transport = 'oci' | 'oci-archive' | 'docker-archive' | 'docker';

export interface ImageRef {
  transport: Transport;
  /** Directory or file for local transports; HOST/REPO for docker. */
  path: string;
  ref?: string;
}

export function parseRef(s: string): ImageRef {
  const m = /^([a-z-]+):(.*)$/.exec(s);
  if (!m) {
    throw new OcichunkError(
      'EUSAGE',
      `invalid image reference ${JSON.stringify(s)}: expected oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO:TAG`,
    );
  }
  const [, transport, rest] = m;
  switch (transport) {
    case 'oci':
    case 'oci-archive':
    case 'docker-archive': {
      if (!rest) throw new OcichunkError('EUSAGE', `invalid image reference ${JSON.stringify(s)}: missing path`);
      // Like skopeo: the path ends at the first ':'; what follows is the reference.
      const i = rest.indexOf(':');
      const p = i === -1 ? rest : rest.slice(0, i);
      const ref = i === -1 ? undefined : rest.slice(i + 1);
      if (ref !== undefined && ref === '') throw new OcichunkError('EUSAGE', `invalid image reference ${JSON.stringify(s)}: empty reference`);
      return { transport, path: p, ref };
    }
    case 'docker':
      if (!rest.startsWith('//') || rest.length === 2)
        throw new OcichunkError('EUSAGE', `invalid image reference ${JSON.stringify(s)}: expected docker://HOST/REPO:TAG`);
      parseDockerRef(rest.slice(2)); // validate now
      return { transport: 'docker', path: rest.slice(2) };
    default:
      throw new OcichunkError('EUNSUPPORTED', `unknown transport ${JSON.stringify(transport)} in ${JSON.stringify(s)}`);
  }
}

export function formatRef(r: ImageRef): string {
  return r.transport === 'docker' ? formatDockerRef(parseDockerRef(r.path)) : `${r.transport}:${r.path}${r.ref !== undefined ? ':' + r.ref : ''}`;
}

export async function openSource(s: string | ImageRef, opts: TransportOptions = {}): Promise<ImageSource> {
  const r = typeof s === 'string' ? parseRef(s) : s;
  switch (r.transport) {
    case 'oci':
      return new (await import('./transports/oci-layout.js')).OciLayoutSource(r.path, r.ref);
    case 'oci-archive':
      return (await import('./transports/archive.js')).OciArchiveSource.open(r.path, r.ref);
    case 'docker-archive':
      return (await import('./transports/archive.js')).DockerArchiveSource.open(r.path, r.ref);
    case 'docker':
      return new (await import('./transports/registry.js')).RegistrySource(parseDockerRef(r.path), opts);
  }
}

export async function openSink(s: string | ImageRef, opts: TransportOptions = {}): Promise<ImageSink> {
  const r = typeof s === 'string' ? parseRef(s) : s;
  switch (r.transport) {
    case 'oci': {
      const sink = new (await import('./transports/oci-layout.js')).OciLayoutSink(r.path, r.ref ?? 'latest');
      await sink.init();
      return sink;
    }
    case 'oci-archive':
      return (await import('./transports/oci-archive-sink.js')).OciArchiveSink.create(r.path, r.ref ?? 'latest');
    case 'docker-archive':
      throw new OcichunkError('EUNSUPPORTED', `${formatRef(r)}: docker-archive cannot hold an image index; write to oci: or oci-archive:`);
    case 'docker':
      return new (await import('./transports/registry.js')).RegistrySink(parseDockerRef(r.path), opts);
  }
}
