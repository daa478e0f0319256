#!/usr/bin/env bash
# Builds examples/debian-mini: a tiny real image (OCI layout, tag "latest", 2 gzip layers) made from
# the files of Debian's busybox-static and base-files packages. Deterministic: same .debs, same bytes.
# Layer 1: the packages' files, /bin/sh -> busybox, a hardlink; layer 2: deletes a file (whiteout)
# and adds /etc/motd. Needs apt-get, dpkg-deb, GNU tar, gzip, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/debian-mini
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download busybox-static base-files > /dev/null
mkdir -p l1 l2
for d in ./*.deb; do dpkg-deb -x "$d" l1; done
mkdir -p l1/bin l1/tmp l1/root
chmod 1777 l1/tmp; chmod 700 l1/root
[ -e l1/bin/busybox ] || ln -s ../usr/bin/busybox l1/bin/busybox
ln -sf busybox l1/bin/sh
ln l1/usr/share/common-licenses/GPL-3 l1/usr/share/common-licenses/GPL-3.hardlink
mkdir -p l2/usr/share/doc/base-files l2/etc
: > l2/usr/share/doc/base-files/.wh.README
printf 'Converted by ocichunk.\n' > l2/etc/motd
TAR=(tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix
     --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
"${TAR[@]}" -C l1 -cf layer1.tar .
"${TAR[@]}" -C l2 -cf layer2.tar .
gzip -n -9 -k layer1.tar layer2.tar
rm -rf "$out"
python3 - "$out" <<'PY'
import hashlib, json, os, sys
out = sys.argv[1]
os.makedirs(os.path.join(out, 'blobs', 'sha256'))
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(out, 'blobs', 'sha256', d), 'wb').write(b)
    return {'digest': 'sha256:' + d, 'size': len(b)}
diff_ids = ['sha256:' + hashlib.sha256(open(f, 'rb').read()).hexdigest() for f in ('layer1.tar', 'layer2.tar')]
layers = [dict(mediaType='application/vnd.oci.image.layer.v1.tar+gzip', **put(open(f, 'rb').read())) for f in ('layer1.tar.gz', 'layer2.tar.gz')]
config = {'architecture': 'amd64', 'os': 'linux', 'config': {'Env': ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], 'Cmd': ['/bin/sh']},
          'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
          'history': [{'created_by': 'examples/build-example.sh: busybox-static and base-files'}, {'created_by': 'examples/build-example.sh: whiteout and /etc/motd'}]}
cfg = put(json.dumps(config, separators=(',', ':'), sort_keys=True).encode())
manifest = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
            'config': dict(mediaType='application/vnd.oci.image.config.v1+json', **cfg), 'layers': layers}
m = put(json.dumps(manifest, separators=(',', ':')).encode())
index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
         'manifests': [dict(mediaType='application/vnd.oci.image.manifest.v1+json', **m, annotations={'org.opencontainers.image.ref.name': 'latest'})]}
open(os.path.join(out, 'index.json'), 'w').write(json.dumps(index, separators=(',', ':')))
open(os.path.join(out, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
PY
du -sh "$out"
