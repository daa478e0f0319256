#!/usr/bin/env bash
# Peers side by side: ocichunk against eStargz, zstd:chunked, SOCI and Nydus, in one run.
#   convert   each tool converts the test images py, app and big (OCI layouts, gzip layers) and the
#             unique layers of the corpus (benchmarks/corpus.sh): wall and CPU seconds, peak RSS
#             (/usr/bin/time), bytes stored (one image; the corpus together, identical layers once,
#             and ocichunk converting all of it into one layout in one process, `convert --batch`, where it
#             dedups chunks), TOC/index
#             bytes; the registry's reference is gzip -6 of the corpus's unique layers (as in
#             benchmarks/compare.sh) and the gzip layers as built
#   lazy      cold start of recorded workload traces (py: python3 -c 'import json', app:
#             apt-get --version, big: gcc -fsyntax-only and perl -MPOSIX), recorded with
#             `ocichunk mount --record-trace` under chroot: bytes fetched (TOC + data) and range
#             requests, computed from each format's own index (benchmarks/peers/simulate.py)
#   validate  ocichunk's simulation against its reader replaying the trace (benchmarks/frames.mjs)
#             and against the mount that recorded it (its packBytesFetched); for each peer, files
#             of each trace decompressed from only the byte ranges the simulation counts, against
#             the file as ocichunk cat gives it
# Peers are built here, pinned, into ${OCICHUNK_PEERS_CACHE:-~/.cache/ocichunk/peers} (not the repo):
# benchmarks/peers/{estargz,soci} with go.mod (stargz-snapshotter/estargz v0.19.1, soci-snapshotter
# v0.16.1; SOCI's cgo links Debian's zlib1g-dev libz.a) and nydus-image from the crate nydus-rs 2.2.0
# (cargo install --locked; ~10 min on 1 job). Needs root (FUSE mount, chroot), go, cargo, zstd.
# Usage: bash benchmarks/peers.sh   Results: Markdown tables on stdout, JSON in $OUT/results.json;
# traces in $OCICHUNK_PEERS_CACHE/traces. PEERS_SMOKE=1: py, two corpus images and one trace only.
set -euo pipefail
source "$(dirname "$0")/common.sh" # $here, $repo, $cache; builds the big test image if missing
PEERS=${OCICHUNK_PEERS_CACHE:-$HOME/.cache/ocichunk/peers}
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-peers-XXXXXX)}
NYDUS_VERSION=2.2.0
SOCI_SPAN=$((4 << 20)) # soci's default span size
IMAGES=(py app big)
# PEERS_SMOKE=1: a quick check of the script itself (py, two corpus images, the python trace)
[ -n "${PEERS_SMOKE:-}" ] && IMAGES=(py)
log() { echo "[peers] $*" >&2; }
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }
mkdir -p "$OUT" "$PEERS/bin" "$PEERS/traces"
trap 'mountpoint -q "$OUT/mnt/dev" && umount "$OUT/mnt/dev"; mountpoint -q "$OUT/mnt" && umount -l "$OUT/mnt"; rm -rf "$OUT"/tar "$OUT"/*/corpus "$OUT"/nydus/*/blobs' EXIT

# ---- 1. the peers, built from the package registries (before any measurement) ----
export PATH=$PATH:/usr/local/go/bin
command -v go > /dev/null || { echo "peers.sh needs go" >&2; exit 1; }
[ -f /usr/lib/x86_64-linux-gnu/libz.a ] || apt-get install -y -q zlib1g-dev >&2
log "building the Go helpers (estargz, soci) into $PEERS/bin"
(cd "$here/peers" && GOFLAGS="-mod=readonly -p=1" nice -n 19 go build -o "$PEERS/bin/" ./estargz ./soci)
NYDUS=$PEERS/nydus/bin/nydus-image
if [ ! -x "$NYDUS" ] || [ "$(cat "$PEERS/nydus/version" 2>/dev/null)" != "$NYDUS_VERSION" ]; then
  log "cargo install nydus-rs $NYDUS_VERSION (nydus-image; one job, niced)"
  CARGO_BUILD_JOBS=1 CARGO_TARGET_DIR=$PEERS/nydus-target nice -n 19 \
    cargo install nydus-rs --version "$NYDUS_VERSION" --locked --root "$PEERS/nydus" -j1 >&2
  echo "$NYDUS_VERSION" > "$PEERS/nydus/version"
fi
ESTARGZ=$PEERS/bin/estargz
SOCI=$PEERS/bin/soci

# ---- 2. inputs ----
[ -d "$cache/layouts/py" ] && [ -d "$cache/layouts/app" ] || bash "$repo/test/images/build-images.sh" >&2
mapfile -t corpus < <(bash "$here/corpus.sh")
[ -n "${PEERS_SMOKE:-}" ] && corpus=("${corpus[@]:0:2}")
declare -A LAYERS
for img in "${IMAGES[@]}"; do LAYERS[$img]=$(layers "$cache/layouts/$img"); done
LAYERS[corpus]=$(layers "${corpus[@]}")
timed() { # NAME CMD...: /usr/bin/time's wall, user, sys seconds and peak RSS (KiB) into $OUT/time/NAME
  mkdir -p "$OUT/time"
  /usr/bin/time -f '%e %U %S %M' -o "$OUT/time/$1" "${@:2}"
}

# ---- 3. conversions, one tool at a time ----
cut -d' ' -f1-3 /proc/loadavg > "$OUT/loadavg-start" # other work on the machine, for the record
for img in "${IMAGES[@]}" corpus; do
  mapfile -t ls_ <<< "${LAYERS[$img]}"
  log "$img: ocichunk convert"
  rm -rf "$OUT/ocichunk/$img"; mkdir -p "$OUT/ocichunk"
  if [ "$img" = corpus ]; then
    # the whole corpus in one process (convert --batch), as the peers below take all its layers at once
    i=0; for l in "${corpus[@]}"; do i=$((i + 1)); echo "oci:$l:latest oci:$OUT/ocichunk/corpus:img$i"; done > "$OUT/ocichunk/corpus.batch"
    timed ocichunk-$img node "$repo/bin/ocichunk.js" convert --batch "$OUT/ocichunk/corpus.batch" --json --quiet \
      | python3 -c "import json,sys;[print(json.dumps(r)) for r in json.load(sys.stdin)]" > "$OUT/ocichunk/$img.jsonl"
  else
    timed ocichunk-$img node "$repo/bin/ocichunk.js" convert "oci:$cache/layouts/$img:latest" "oci:$OUT/ocichunk/$img:$img" --json --quiet \
      | python3 -c "import json,sys;print(json.dumps(json.load(sys.stdin)))" > "$OUT/ocichunk/$img.jsonl"
  fi
  for fmt in estargz zstdchunked; do
    log "$img: $fmt (estargz.Build)"
    rm -rf "$OUT/$fmt/$img"
    timed $fmt-$img "$ESTARGZ" convert $fmt "$OUT/$fmt/$img" "${ls_[@]}"
  done
  log "$img: SOCI zTOCs (span $SOCI_SPAN)"
  rm -rf "$OUT/soci/$img"
  timed soci-$img "$SOCI" build $SOCI_SPAN "$OUT/soci/$img" "${ls_[@]}"
  log "$img: nydus-image create --type tar-rafs (RAFS v6) of each layer, merge"
  rm -rf "$OUT/nydus/$img"; mkdir -p "$OUT/nydus/$img/blobs" "$OUT/tar"
  # gzip -d of the layer into a file (nydus-image reads a tar file), then create; counted in its time
  timed nydus-$img bash -c 'n=$1 out=$2 tar=$3; shift 3; i=0
    for l in "$@"; do
      gzip -dc "$l" > "$tar"
      "$n" create -t tar-rafs -l warn -B "$out/$i.boot" -D "$out/blobs" -J "$out/$i.create.json" "$tar" > /dev/null
      id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[\"blobs\"][0])" "$out/$i.create.json")
      mv "$out/blobs/$id" "$out/blobs/$i"; i=$((i + 1))
    done; rm -f "$tar"' _ "$NYDUS" "$OUT/nydus/$img" "$OUT/tar/layer.tar" "${ls_[@]}"
  if [ "$img" != corpus ]; then
    boots=(); for i in "${!ls_[@]}"; do boots+=("$OUT/nydus/$img/$i.boot"); done
    (cd "$OUT/nydus/$img" && "$NYDUS" merge -l warn -B merged.boot "${boots[@]##*/}" > /dev/null)
  else
    # one merged bootstrap per corpus image (what its bootstrap layer holds), over its layers' bootstraps
    for l in "${corpus[@]}"; do
      mapfile -t mine < <(layers "$l")
      boots=(); for x in "${mine[@]}"; do for i in "${!ls_[@]}"; do [ "${ls_[$i]}" = "$x" ] && boots+=("$i.boot"); done; done
      (cd "$OUT/nydus/$img" && "$NYDUS" merge -l warn -B "merged-$(basename "$l").boot" "${boots[@]}" > /dev/null)
    done
  fi
done

log "gzip -6 of the corpus's unique layers (the registry's reference, as benchmarks/compare.sh)"
: > "$OUT/registry-gzip6"
while read -r f; do gzip -dc "$f" | gzip -6 -c | wc -c >> "$OUT/registry-gzip6"; done <<< "${LAYERS[corpus]}"

# ---- 4. indexes: what a lazy reader fetches first, and where each file's bytes are ----
for img in "${IMAGES[@]}"; do
  mapfile -t ls_ <<< "${LAYERS[$img]}"
  for fmt in estargz zstdchunked; do
    for i in "${!ls_[@]}"; do "$ESTARGZ" index $fmt "$OUT/$fmt/$img/$i.blob" > "$OUT/$fmt/$img/$i.json"; done
    python3 -c 'import json,sys; json.dump({"tocBytes": sum(json.load(open(f))["tocBytes"] for f in sys.argv[1:]), "tocRequests": len(sys.argv) - 1}, sys.stdout)' \
      "$OUT/$fmt/$img"/*.json > "$OUT/$fmt/$img/toc.json.tmp"
    mv "$OUT/$fmt/$img/toc.json.tmp" "$OUT/$fmt/$img/toc.json"
  done
  for i in "${!ls_[@]}"; do "$SOCI" index "$OUT/soci/$img/$i.ztoc" > "$OUT/soci/$img/$i.json"; done
  # Nydus: the merged bootstrap, fetched whole (gzip'd, as the image's bootstrap layer holds it)
  mkdir -p "$OUT/nydus/$img/idx"
  python3 "$here/peers/nydus.py" index "$NYDUS" "$OUT/nydus/$img/merged.boot" > "$OUT/nydus/$img/idx/0.json"
  echo "{\"tocBytes\": $(gzip -6 -c "$OUT/nydus/$img/merged.boot" | wc -c), \"tocRequests\": 1}" > "$OUT/nydus/$img/idx/toc.json"
done

# the corpus: TOC bytes of the eStargz and zstd:chunked blobs
mapfile -t ls_ <<< "${LAYERS[corpus]}"
for fmt in estargz zstdchunked; do
  for i in "${!ls_[@]}"; do "$ESTARGZ" index $fmt "$OUT/$fmt/corpus/$i.blob" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tocBytes"])'; done \
    | python3 -c 'import json,sys; n=[int(x) for x in sys.stdin]; print(json.dumps({"tocBytes": sum(n), "tocRequests": len(n)}))' > "$OUT/$fmt/corpus/toc.json"
done

# ---- 5. traces, recorded from ocichunk mounts of the images converted above ----
# trace NAME IMAGE CMD...: runs CMD in a chroot of the mounted image (the host's /dev bound in)
trace() {
  local name=$1 img=$2 m; shift 2
  log "trace $name: $* (on $img)"
  mkdir -p "$OUT/mnt"
  node "$repo/bin/ocichunk.js" mount "oci:$OUT/ocichunk/$img:$img" "$OUT/mnt" --no-cache --record-trace "$PEERS/traces/$name.txt" --json --quiet > "$OUT/mount-$name.json" &
  m=$!
  for _ in $(seq 300); do [ -d "$OUT/mnt/usr/bin" ] && break; sleep 0.1; done
  mount --bind /dev "$OUT/mnt/dev"
  chroot "$OUT/mnt" "$@" > "$OUT/trace-$name.out" 2>&1 || { echo "trace $name: $* failed:" >&2; cat "$OUT/trace-$name.out" >&2; }
  umount "$OUT/mnt/dev"
  kill -TERM "$m"; wait "$m"
  [ -s "$PEERS/traces/$name.txt" ] || { echo "no trace recorded for $name" >&2; exit 1; }
  printf '%s\t%s\t%s\n' "$name" "$img" "$(python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$@")" >> "$OUT/traces.tsv"
}
: > "$OUT/traces.tsv"
trace python py /usr/bin/python3 -c 'import json; print(json.dumps([1]))'
if [ -z "${PEERS_SMOKE:-}" ]; then
trace apt app apt-get --version
trace gcc big /bin/sh -c 'echo "int main(void) { return 0; }" | gcc -x c -fsyntax-only -'
trace perl big /usr/bin/perl -MPOSIX -e 'print 1'
fi

# ---- 6. cold start simulated from each index; validation ----
sim() { python3 "$here/peers/simulate.py" "$@"; }
while IFS=$'\t' read -r name img _; do
  t=$PEERS/traces/$name.txt
  mkdir -p "$OUT/sim/$name"
  sim ocichunk "$OUT/ocichunk/$img" "$t" > "$OUT/sim/$name/ocichunk.json"
  sim chunks "$OUT/estargz/$img" "$t" > "$OUT/sim/$name/estargz.json"
  sim chunks "$OUT/zstdchunked/$img" "$t" > "$OUT/sim/$name/zstdchunked.json"
  sim soci "$OUT/soci/$img" "$t" > "$OUT/sim/$name/soci.json"
  sim chunks "$OUT/nydus/$img/idx" "$t" > "$OUT/sim/$name/nydus.json"
  log "validate $name: ocichunk's reader replaying the trace"
  node "$here/frames.mjs" "oci:$OUT/ocichunk/$img:$img" "$t" 1 > "$OUT/sim/$name/ocichunk-replay.json"
  # peers: the trace's first 3 files and its 2 largest, decompressed from the simulated ranges only
  log "validate $name: files from the peers' blobs, read from the simulated ranges alone"
  python3 - "$t" > "$OUT/sim/$name/check-files" <<'PY'
import sys
seen = {}
for line in open(sys.argv[1]):
    if line.startswith('#') or not line.strip(): continue
    p, off, n = line.rstrip('\n').split('\t')
    seen[p] = seen.get(p, 0) + int(n)
names = list(seen)
pick = names[:3] + sorted(names, key=lambda p: -seen[p])[:2]
print('\n'.join(dict.fromkeys(pick)))
PY
  : > "$OUT/sim/$name/checks.tsv"
  while read -r p; do
    want=$(ocichunk cat "oci:$OUT/ocichunk/$img:$img" "$p" | sha256sum | cut -c1-64)
    for fmt in estargz zstdchunked soci nydus; do
      case $fmt in
        estargz | zstdchunked)
          li=$(python3 -c 'import json,sys,os
d,p=sys.argv[1],sys.argv[2].strip("/"); n=0; hit=-1
while os.path.exists(f"{d}/{n}.json"):
    if any(f["path"].strip("/")==p for f in json.load(open(f"{d}/{n}.json"))["files"]): hit=n
    n+=1
print(hit)' "$OUT/$fmt/$img" "$p")
          got=$("$ESTARGZ" extract $fmt "$OUT/$fmt/$img/$li.blob" "$p" | sha256sum | cut -c1-64) ;;
        soci)
          read -r li raw < <(python3 -c 'import json,sys,os
d,p=sys.argv[1],sys.argv[2].strip("/"); n=0; hit=(-1,"")
while os.path.exists(f"{d}/{n}.json"):
    for f in json.load(open(f"{d}/{n}.json"))["files"]:
        if "/".join(c for c in f["path"].split("/") if c not in ("",".")) == p and f["type"] in ("reg","hardlink"): hit=(n,f["path"])
    n+=1
print(*hit)' "$OUT/soci/$img" "$p")
          mapfile -t ls_ <<< "${LAYERS[$img]}"
          got=$("$SOCI" extract "$OUT/soci/$img/$li.ztoc" "${ls_[$li]}" "$raw" | sha256sum | cut -c1-64) ;;
        nydus)
          got=$(python3 "$here/peers/nydus.py" extract "$OUT/nydus/$img/idx/0.json" "$OUT/nydus/$img/blobs" "$p" | sha256sum | cut -c1-64) ;;
      esac
      printf '%s\t%s\t%s\n' "$fmt" "$p" "$([ "$got" = "$want" ] && echo ok || echo MISMATCH)" >> "$OUT/sim/$name/checks.tsv"
    done
  done < "$OUT/sim/$name/check-files"
done < "$OUT/traces.tsv"

# ---- 7. results ----
python3 "$here/peers/report.py" "$OUT" "$PEERS" "${IMAGES[@]}" -- "${LAYERS[corpus]}" "$NYDUS_VERSION" "${#corpus[@]}"
