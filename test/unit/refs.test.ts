/**
 * Unit tier: skopeo-style references, --platform parsing and matching, and the platform choice in a
 * multi-platform index (an OCI layout written here, no test images).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveImage } from '../../src/chunked/image.js';
import { parsePlatform, platformMatches, type Platform } from '../../src/oci/types.js';
import { openSource, parseRef } from '../../src/ref.js';
import { tmpdir } from '../helpers/env.js';
import { plainLayer, putRaw, writeLayout } from '../helpers/layout.js';
import { tarOf } from './tar.js';

describe('references', () => {
  it.each([
    ['oci:/a/b', { transport: 'oci', path: '/a/b', ref: undefined }],
    ['oci:/a/b:latest', { transport: 'oci', path: '/a/b', ref: 'latest' }],
    ['oci:rel:tag:with:colons', { transport: 'oci', path: 'rel', ref: 'tag:with:colons' }],
    ['oci-archive:/x.tar:v1', { transport: 'oci-archive', path: '/x.tar', ref: 'v1' }],
    ['docker-archive:/x.tar', { transport: 'docker-archive', path: '/x.tar', ref: undefined }],
    ['docker://127.0.0.1:5000/a/b:1', { transport: 'docker', path: '127.0.0.1:5000/a/b:1' }],
  ])('%s', (s, want) => {
    expect(parseRef(s)).toEqual(want);
  });

  it.each([
    ['no-transport', 'EUSAGE'],
    ['oci:', 'EUSAGE'],
    ['oci:/a:', 'EUSAGE'],
    ['docker:/a', 'EUSAGE'],
    ['docker://', 'EUSAGE'],
    ['docker://Host/UPPER', 'EUSAGE'],
    ['ftp:/x', 'EUNSUPPORTED'],
  ])('refuses %s (%s)', (s, code) => {
    expect(() => parseRef(s)).toThrow(expect.objectContaining({ code }));
  });
});

describe('platforms', () => {
  it('parses os/arch[/variant] and refuses anything else', () => {
    expect(parsePlatform('linux/arm64/v8')).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(parsePlatform('linux/amd64')).toEqual({ os: 'linux', architecture: 'amd64' });
    for (const bad of ['linux', 'linux//v7', 'a/b/c/d', '']) expect(() => parsePlatform(bad)).toThrow(expect.objectContaining({ code: 'EUSAGE' }));
  });

  it('matches a missing variant to the default one', () => {
    const p = (s: string) => parsePlatform(s);
    expect(platformMatches({ os: 'linux', architecture: 'arm64' }, p('linux/arm64/v8'))).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, p('linux/arm64'))).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'arm', variant: 'v6' }, p('linux/arm/v7'))).toBe(false);
    expect(platformMatches({ os: 'windows', architecture: 'amd64' }, p('linux/amd64'))).toBe(false);
    expect(platformMatches(undefined, p('linux/amd64'))).toBe(false);
  });

  it('picks the wanted platform of an index, skips attestations, and names what there is when it is missing', async () => {
    const dir = path.join(tmpdir('unit-platforms'), 'layout');
    const platforms: Platform[] = [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
      { os: 'linux', architecture: 'arm', variant: 'v7' },
      { os: 'unknown', architecture: 'unknown' },
    ];
    const manifests = platforms.map((platform, i) => {
      const digest = writeLayout(dir, `p${i}`, [plainLayer(tarOf({ [`which-${i}`]: String(i) }))]);
      return {
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest,
        size: fs.statSync(path.join(dir, 'blobs', 'sha256', digest.slice(7))).size,
        platform,
      };
    });
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
    const d = putRaw(dir, index);
    const idx = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
    idx.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', ...d, annotations: { 'org.opencontainers.image.ref.name': 'multi' } });
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(idx));

    const pick = async (want: string) => {
      const src = await openSource(`oci:${dir}:multi`);
      try {
        return (await resolveImage(src, parsePlatform(want))).original?.desc.digest;
      } finally {
        await src.close();
      }
    };
    expect(await pick('linux/arm64/v8')).toBe(manifests[1].digest);
    expect(await pick('linux/arm/v7')).toBe(manifests[2].digest);
    expect(await pick('linux/amd64')).toBe(manifests[0].digest);
    await expect(pick('linux/s390x')).rejects.toMatchObject({
      code: 'ENOTFOUND',
      message: expect.stringMatching(/linux\/amd64, linux\/arm64, linux\/arm\/v7\)/),
    });
    await expect(pick('unknown/unknown')).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });
});
