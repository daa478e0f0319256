#!/usr/bin/env bash
# Lazy pull: `ocichunk lazy-bench` for python3 in the `py` test image (Debian bookworm + python3),
# served by a local docker-registry (started here) behind a simulated WAN link: a full pull +
# unpack of the original vs ocichunk mounts with a cold, prefetched and warm chunk cache; with
# SCENARIOS=containerd (or all) the same in containerd: `ctr images pull` + `ctr run` (overlayfs)
# vs the ocichunk snapshotter (`ctr-remote image rpull`) with a cold, prefetched and warm cache.
# Needs root (chroot, FUSE; containerd, ctr, ctr-remote for those).
# Usage: benchmarks/lazy.sh [LINK] [COMMAND] [SCENARIOS]
#   LINK default 50ms,100mbit; COMMAND default: python3 -c 'import json; print(json.dumps([1]))';
#   SCENARIOS default mount (lazy-bench --scenarios)
#   LAZY_JSON=1: lazy-bench's JSON (bytes and requests of each scenario) instead of its table
#   OCICHUNK_REPO: the build to measure (default this checkout; an A/B runs it once per build, e.g.
#   with the worktree benchmarks/ab.sh made for a revision)
#   CONVERT_OPTS: options of the conversion (e.g. "--run-frame-size 0"; default: convert's defaults)
#   OWN_LIST=1: the image carries the command's read trace as its prefetch list (recorded through a
#   mount, untimed, then `convert --prefetch-list`): run with SCENARIOS mount-prefetch,mount-warm
#   (no mount-cold, whose trace would be used instead), mount-prefetch is a cold cache using it
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
link=${1:-50ms,100mbit}
cmd=${2:-"/usr/bin/python3 -c 'import json; print(json.dumps([1]))'"}
scenarios=${3:-mount}
[ -d "$cache/layouts/py" ] || bash "$repo/test/images/build-images.sh" >&2
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-lazy-XXXXXX)}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$OUT/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $OUT/data
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$OUT/config.yml" > "$OUT/registry.log" 2>&1 &
reg=$!
trap 'kill $reg 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" > /dev/null && break; sleep 0.1; done
ref=docker://127.0.0.1:$port/bench/py:1
skopeo copy --quiet --dest-tls-verify=false "oci:$cache/layouts/py:latest" "$ref"
bin=${OCICHUNK_REPO:-$repo}/bin/ocichunk.js
# shellcheck disable=SC2086 # CONVERT_OPTS: words, split on purpose
node "$bin" convert "$ref" "$ref" --quiet ${CONVERT_OPTS:-} > /dev/null
if [ -n "${OWN_LIST:-}" ]; then
  # the image carries its prefetch list: a trace of the command recorded through a mount (not
  # timed), stored by converting again with --prefetch-list; mount-prefetch then uses that list
  mnt=$OUT/mnt-trace
  mkdir -p "$mnt"
  node "$bin" mount "$ref" "$mnt" --no-cache --record-trace "$OUT/trace.txt" --ready-file "$OUT/ready" --quiet > /dev/null &
  m=$!
  for _ in $(seq 300); do [ -f "$OUT/ready" ] && break; sleep 0.1; done
  chroot "$mnt" /bin/sh -c "$cmd" > /dev/null
  kill -TERM $m
  wait $m
  # shellcheck disable=SC2086
  node "$bin" convert "$ref" "$ref" --quiet --prefetch-list "$OUT/trace.txt" ${CONVERT_OPTS:-} > /dev/null
fi
node "$bin" lazy-bench "$ref" --run "$cmd" --link "$link" --scenarios "$scenarios" --quiet ${LAZY_JSON:+--json}
