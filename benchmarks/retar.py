#!/usr/bin/env python3
"""Re-tar every layer of an OCI image with GNU tar --sort=name (uncompressed, pax): the same files
under other layer digests, as another build tool would write them. Used by the benchmarks.

usage: retar.py SRC_LAYOUT SRC_TAG DST_LAYOUT DST_TAG   (SRC_TAG '-' takes the layout's first image)
"""
import hashlib, json, os, shutil, subprocess, sys, tempfile

src, tag, dst, dtag = sys.argv[1:]
b = lambda root, d: os.path.join(root, 'blobs', 'sha256', d.split(':')[1])
os.makedirs(os.path.join(dst, 'blobs', 'sha256'), exist_ok=True)
idx = json.load(open(os.path.join(src, 'index.json')))
desc = idx['manifests'][0] if tag == '-' else [m for m in idx['manifests'] if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == tag][0]
man = json.load(open(b(src, desc['digest'])))
cfg = json.load(open(b(src, man['config']['digest'])))


def put(data):
    h = hashlib.sha256(data).hexdigest()
    open(os.path.join(dst, 'blobs', 'sha256', h), 'wb').write(data)
    return 'sha256:' + h


diffs = []
for l in man['layers']:
    d = tempfile.mkdtemp(dir=dst)
    subprocess.run(['tar', '-xpf', b(src, l['digest']), '-C', d, '--xattrs', '--xattrs-include=*', '--numeric-owner'], check=True)
    tmp = os.path.join(dst, 'layer.tar')
    subprocess.run(['tar', '--sort=name', '--xattrs', '--numeric-owner', '--format=pax', '-C', d, '-cf', tmp, '.'], check=True)
    shutil.rmtree(d)
    h = hashlib.sha256(open(tmp, 'rb').read()).hexdigest()
    os.rename(tmp, os.path.join(dst, 'blobs', 'sha256', h))
    l.update(mediaType='application/vnd.oci.image.layer.v1.tar', digest='sha256:' + h, size=os.path.getsize(os.path.join(dst, 'blobs', 'sha256', h)))
    l.pop('annotations', None)
    diffs.append('sha256:' + h)
if 'rootfs' in cfg:
    cfg['rootfs']['diff_ids'] = diffs
cb = json.dumps(cfg).encode()
man['config'].update(digest=put(cb), size=len(cb))
mb = json.dumps(man).encode()
index = {'schemaVersion': 2, 'manifests': [{'mediaType': man.get('mediaType', 'application/vnd.oci.image.manifest.v1+json'), 'digest': put(mb), 'size': len(mb),
                                            'annotations': {'org.opencontainers.image.ref.name': dtag}}]}
json.dump(index, open(os.path.join(dst, 'index.json'), 'w'))
open(os.path.join(dst, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
