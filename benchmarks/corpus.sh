#!/usr/bin/env bash
# Builds a corpus of real images from Debian's packages for dedup benchmarks: several releases,
# several package sets, and independent rebuilds of the same stack (where layer-level dedup fails).
# Each image is debootstrap --variant=minbase committed by buildah (layer 1), plus, for the
# non-base ones, `apt-get install` in `buildah run --isolation chroot` (layer 2). Idempotent: an
# image is built only if missing; cached outside git in ${OCICHUNK_CORPUS:-~/.cache/ocichunk/corpus}.
#
#   bookworm-base-1, bookworm-python-1, bookworm-web-1   first build of bookworm
#   bookworm-base-2, bookworm-python-2                   an independent rebuild (second debootstrap)
#   trixie-base-1, trixie-python-1                        another release
#   bullseye-base-1, bullseye-python-1                    and an older one
# Usage: benchmarks/corpus.sh   (as root: debootstrap and buildah need it). Prints the layout paths.
set -euo pipefail
CACHE=${OCICHUNK_CORPUS:-$HOME/.cache/ocichunk/corpus}
L=$CACHE/layouts
log() { echo "[corpus] $*" >&2; }
mkdir -p "$L" "$CACHE/debs" "$CACHE/tmp"
source "$(dirname "$0")/../test/images/lib.sh"

PY="python3 python3-venv ca-certificates"
WEB="nginx-light curl ca-certificates"

add_packages() { # base-layout dest suite packages
  local c
  c=$("${B[@]}" from --quiet --pull-never "localhost/ocichunk-$(basename "$1"):latest")
  log "$(basename "$2"): apt-get install $4"
  "${B[@]}" run --isolation chroot "$c" -- sh -c "
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends $4 > /dev/null
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
  " >&2
  commit "$c" "$2"
}

base() { # suite build
  local name=$1-base-$2
  if [ -e "$L/$name" ] && "${B[@]}" inspect --type image "localhost/ocichunk-$name:latest" > /dev/null 2>&1; then return; fi
  bootstrap "$CACHE/tmp/rootfs-$name" "$1"
  # the release's own security/updates are not needed: one suite, one mirror
  base_image "$CACHE/tmp/rootfs-$name" "$L/$name"
  rm -rf "$CACHE/tmp/rootfs-$name" "$CACHE/tmp/rootfs-$name.log"
}

derived() { # suite build kind packages
  local name=$1-$3-$2
  [ -e "$L/$name" ] && return
  base "$1" "$2"
  add_packages "$L/$1-base-$2" "$L/$name" "$1" "$4"
}

derived bookworm 1 python "$PY"
derived bookworm 1 web "$WEB"
derived bookworm 2 python "$PY"
derived trixie 1 python "$PY"
derived bullseye 1 python "$PY"
for n in bookworm-base-1 bookworm-python-1 bookworm-web-1 bookworm-base-2 bookworm-python-2 trixie-base-1 trixie-python-1 bullseye-base-1 bullseye-python-1; do
  [ -e "$L/$n" ] || { log "missing $n"; exit 1; }
  echo "$L/$n"
done
