#!/usr/bin/env bash
# Builds the real test images from Debian's packages with third-party tools (debootstrap, buildah,
# skopeo), cached outside git. Idempotent: each artifact is built only if missing, under a temp name
# renamed into place when complete.
#
#   base            debootstrap --variant=minbase made slim as Debian's own slim images are (test/images/
#                   lib.sh slim: no apt lists, docs, man pages, translations), committed and pushed by
#                   buildah (1 layer, OCI, gzip)
#   app             base + apt-get install (python3-minimal, procps, iputils-ping, libcap2-bin) and
#                   deletions, committed as a second layer (whiteouts)
#   app2            an independent rebuild of the same stack (second debootstrap, same installs)
#   app-tar         app with its layers decompressed (uncompressed tar layers)
#   app-zstd        skopeo copy of app with zstd layers
#   app.docker.tar  skopeo copy of app to docker-archive (classic `docker save` layout)
#   app.docker25.tar  app as Docker >= 25 `docker save` writes it (OCI layout + manifest.json)
#   app-docker-v2s2 an OCI layout whose index points at a Docker v2 schema 2 manifest (made by skopeo)
#   py              the whole minbase (not slim: as the benchmarks have measured it since issue 16) +
#                   apt-get install python3 (the whole standard library), for lazy-pull tests
#   big             (--big only) the whole minbase + compilers and python: >= 400 MB, for benchmarks
#
# Cache: ${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}. The Debian mirror and suite come from
# this machine's apt sources.
set -euo pipefail
CACHE=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
L=$CACHE/layouts
BIG=0
[ "${1:-}" = "--big" ] && BIG=1
log() { echo "[build-images] $*" >&2; }
mkdir -p "$L" "$CACHE/debs" "$CACHE/tmp"
# images cached by another version of this script are rebuilt (py and big have not changed)
VERSION=slim-1
stamp=$CACHE/test-images.version
if [ "$(cat "$stamp" 2> /dev/null)" != "$VERSION" ]; then
  [ -e "$L/base" ] && log "images of another version of this script: rebuilding base, app and the images made from them"
  rm -rf "$L"/base "$L"/app "$L"/app2 "$L"/app-tar "$L"/app-zstd "$L"/app-docker-v2s2 "$CACHE"/app.docker.tar "$CACHE"/app.docker25.tar
fi

have() { [ -e "$1" ]; }
if have "$L/base" && have "$L/app" && have "$L/app2" && have "$L/app-tar" && have "$L/app-zstd" \
  && have "$CACHE/app.docker.tar" && have "$CACHE/app.docker25.tar" && have "$L/app-docker-v2s2" && have "$L/py" \
  && { [ $BIG = 0 ] || have "$L/big"; }; then
  log "all images present in $CACHE"
  echo "$VERSION" > "$stamp"
  exit 0
fi

source "$(dirname "$0")/lib.sh"
PKGS="python3-minimal procps iputils-ping libcap2-bin"

app_image() { # base-layout dest
  local c
  c=$("${B[@]}" from --quiet --pull-never "localhost/ocichunk-$(basename "$1"):latest")
  log "apt-get install $PKGS (in buildah run --isolation chroot)"
  "${B[@]}" run --isolation chroot "$c" -- sh -c "
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends $PKGS > /dev/null
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/*
    rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d
    echo 'APT::Install-Recommends \"0\";' > /etc/apt/apt.conf.d/99norecommends
    setcap cap_net_raw+ep /usr/bin/ping || true
  " >&2
  commit "$c" "$2"
}

in_storage() { "${B[@]}" inspect --type image "localhost/ocichunk-$1:latest" > /dev/null 2>&1; }
# py and big are made from the whole minbase (localhost/ocichunk-base-full), the rest from its slim copy
need_full() { { ! have "$L/py" || { [ $BIG = 1 ] && ! have "$L/big"; }; } && ! in_storage base-full; }
need_base() { ! have "$L/base" || { ! have "$L/app" && ! in_storage base; }; }
if need_base || need_full; then
  bootstrap "$CACHE/tmp/rootfs-a"
  if need_full; then
    base_image "$CACHE/tmp/rootfs-a" "$CACHE/tmp/base-full"
    rm -rf "$CACHE/tmp/base-full"
  fi
  # a base that app was made from stays: a new one would differ from app's first layer
  if need_base; then
    slim "$CACHE/tmp/rootfs-a"
    base_image "$CACHE/tmp/rootfs-a" "$L/base"
  fi
  rm -rf "$CACHE/tmp/rootfs-a"
fi
if ! have "$L/app"; then app_image "$L/base" "$L/app"; fi
if ! have "$L/app2"; then
  bootstrap "$CACHE/tmp/rootfs-b"
  slim "$CACHE/tmp/rootfs-b"
  base_image "$CACHE/tmp/rootfs-b" "$CACHE/tmp/base2"
  rm -rf "$CACHE/tmp/rootfs-b"
  app_image "$CACHE/tmp/base2" "$L/app2"
  rm -rf "$CACHE/tmp/base2"
fi

if ! have "$L/app-tar"; then
  rm -rf "$L/app-tar.tmp"
  # skopeo 1.9 keeps compressed blobs as they are, so decompress the layers ourselves
  python3 - "$L/app" "$L/app-tar.tmp" <<'PY'
import gzip, hashlib, json, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(dst, 'blobs', 'sha256'))
b = lambda root, d: os.path.join(root, 'blobs', 'sha256', d.split(':')[1])
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(dst, 'blobs', 'sha256', d), 'wb').write(data)
    return 'sha256:' + d
idx = json.load(open(os.path.join(src, 'index.json')))
desc = idx['manifests'][0]
man = json.load(open(b(src, desc['digest'])))
shutil.copy(b(src, man['config']['digest']), b(dst, man['config']['digest']))
for l in man['layers']:
    data = gzip.open(b(src, l['digest'])).read()
    l.update(mediaType='application/vnd.oci.image.layer.v1.tar', digest=put(data), size=len(data))
mb = json.dumps(man).encode()
json.dump({'schemaVersion': 2, 'manifests': [{'mediaType': man['mediaType'], 'digest': put(mb), 'size': len(mb),
           'annotations': {'org.opencontainers.image.ref.name': 'latest'}}]}, open(os.path.join(dst, 'index.json'), 'w'))
open(os.path.join(dst, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
PY
  skopeo inspect "oci:$L/app-tar.tmp:latest" > /dev/null
  mv "$L/app-tar.tmp" "$L/app-tar"
fi
if ! have "$L/app-zstd"; then
  rm -rf "$L/app-zstd.tmp"
  skopeo copy --quiet --dest-compress --dest-compress-format zstd "oci:$L/app:latest" "oci:$L/app-zstd.tmp:latest"
  mv "$L/app-zstd.tmp" "$L/app-zstd"
fi
if ! have "$CACHE/app.docker.tar"; then
  rm -f "$CACHE/app.docker.tar.tmp"
  skopeo copy --quiet "oci:$L/app:latest" "docker-archive:$CACHE/app.docker.tar.tmp:app:latest"
  mv "$CACHE/app.docker.tar.tmp" "$CACHE/app.docker.tar"
fi
if ! have "$L/app-docker-v2s2"; then
  d=$CACHE/tmp/v2s2-dir; o=$L/app-docker-v2s2.tmp
  rm -rf "$d" "$o"
  skopeo copy --quiet --format v2s2 --dest-compress "oci:$L/app:latest" "dir:$d"
  mkdir -p "$o/blobs/sha256"
  for f in "$d"/*; do
    n=$(basename "$f")
    case "$n" in manifest.json|version) ;; *) cp "$f" "$o/blobs/sha256/$n" ;; esac
  done
  md=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
  cp "$d/manifest.json" "$o/blobs/sha256/$md"
  size=$(stat -c %s "$d/manifest.json")
  # skopeo's oci: reader only follows OCI types from index.json, so the Docker manifest sits in an
  # OCI image index (as `ctr images export` writes Docker images)
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}}]}' "$md" "$size" > "$d/index"
  id=$(sha256sum "$d/index" | cut -d' ' -f1)
  cp "$d/index" "$o/blobs/sha256/$id"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$o/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$id" "$(stat -c %s "$d/index")" > "$o/index.json"
  skopeo inspect "oci:$o:latest" > /dev/null
  rm -rf "$d" "$L/app-docker-v2s2"
  mv "$o" "$L/app-docker-v2s2"
fi
if ! have "$CACHE/app.docker25.tar"; then
  # Docker >= 25 `docker save`: an OCI layout with uncompressed layers plus the classic manifest.json
  t=$CACHE/tmp/docker25; rm -rf "$t"; mkdir -p "$t/blobs/sha256"
  python3 - "$L/app" "$t" <<'PY'
import json, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(src, 'index.json')))
desc = [m for m in idx['manifests'] if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == 'latest'][0]
blob = lambda d: os.path.join(src, 'blobs', 'sha256', d.split(':')[1])
man = json.load(open(blob(desc['digest'])))
for d in [desc['digest'], man['config']['digest']] + [l['digest'] for l in man['layers']]:
    shutil.copy(blob(d), os.path.join(dst, 'blobs', 'sha256', d.split(':')[1]))
d2 = dict(desc); d2['annotations'] = {'io.containerd.image.name': 'docker.io/library/app:latest', 'org.opencontainers.image.ref.name': 'latest'}
json.dump({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json', 'manifests': [d2]}, open(os.path.join(dst, 'index.json'), 'w'))
json.dump({'imageLayoutVersion': '1.0.0'}, open(os.path.join(dst, 'oci-layout'), 'w'))
p = lambda d: 'blobs/sha256/' + d.split(':')[1]
json.dump([{'Config': p(man['config']['digest']), 'RepoTags': ['app:latest'], 'Layers': [p(l['digest']) for l in man['layers']]}],
          open(os.path.join(dst, 'manifest.json'), 'w'))
json.dump({'app': {'latest': man['config']['digest'].split(':')[1]}}, open(os.path.join(dst, 'repositories'), 'w'))
PY
  tar -C "$t" -cf "$CACHE/app.docker25.tar.tmp" .
  mv "$CACHE/app.docker25.tar.tmp" "$CACHE/app.docker25.tar"
  rm -rf "$t"
fi
if ! have "$L/py"; then
  c=$("${B[@]}" from --quiet --pull-never localhost/ocichunk-base-full:latest)
  log "apt-get install python3 for the lazy-pull test image"
  "${B[@]}" run --isolation chroot "$c" -- sh -c "
    set -e; export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends python3 > /dev/null
    rm -rf /var/lib/apt/lists/*" >&2
  commit "$c" "$L/py"
fi
if [ $BIG = 1 ] && ! have "$L/big"; then
  c=$("${B[@]}" from --quiet --pull-never localhost/ocichunk-base-full:latest)
  log "apt-get install compilers and python for the big benchmark image"
  "${B[@]}" run --isolation chroot "$c" -- sh -c "
    set -e; export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends gcc g++ python3 libpython3-dev perl make > /dev/null
    rm -rf /var/lib/apt/lists/*" >&2
  commit "$c" "$L/big"
fi
"${B[@]}" rm --all > /dev/null 2>&1 || true
echo "$VERSION" > "$stamp"
log "done:"
for i in "$L"/*; do
  log "  $(basename "$i"): $(du -sh "$i" | cut -f1)"
done
