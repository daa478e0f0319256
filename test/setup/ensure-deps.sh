#!/usr/bin/env bash
# npm test's pretest: installs what the tests need when it is missing (Debian packages, the native
# build, the TypeScript build), then builds the cached real test images. Fast when all is there.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { echo "[ensure-deps] $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# command -> Debian package
declare -A NEED=(
  [skopeo]=skopeo [umoci]=umoci [buildah]=buildah [debootstrap]=debootstrap [containerd]=containerd
  [ctr]=containerd [runc]=runc [zstd]=zstd [setfattr]=attr [fakeroot]=fakeroot [python3]=python3
  [docker-registry]=docker-registry [htpasswd]=apache2-utils [openssl]=openssl [curl]=curl [chromium]=chromium [/usr/bin/time]=time [bc]=bc [fusermount3]=fuse3 [ctr-remote]=stargz-snapshotter
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" > /dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  log "installing Debian packages: $pkgs"
  $SUDO apt-get update -q > /dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $pkgs > /dev/null
fi

# the native core and the TypeScript build (incremental: quick when nothing changed)
if [ ! -f native/ocichunk.node ] || [ -n "$(find crates Cargo.toml Cargo.lock -newer native/ocichunk.node -print -quit 2>/dev/null)" ]; then
  log "building the native core (cargo, release)"
  npm run --silent build:native > /dev/null
fi
log "building TypeScript"
npm run --silent build:ts

bash test/images/build-images.sh
