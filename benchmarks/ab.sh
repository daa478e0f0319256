#!/usr/bin/env bash
# A/B of two builds of ocichunk on the same images in one run: the index digest each writes (a
# refactor must not change a byte of output) and the time of convert, restore, `ls /usr/bin` (the
# lazy reader: TOC opened, merged tree built) and verify (every chunk read), alternating A and B so the machine's noise hits both alike.
#
# Usage: benchmarks/ab.sh BASE_REF [LAYOUT_DIR[:TAG] ...]
#   BASE_REF   a git revision (A); B is the working tree this script lives in (built as it is)
#   LAYOUT...  OCI layouts to convert (default: every layout of the test image cache and of the
#              benchmark corpus, each tag that is not already chunked)
# Env: ROUNDS (default 3: the best of each is reported), OUT (results dir; results.json there).
# A is built once per revision into /tmp/ocichunk-ab/<commit> (a git worktree, npm ci).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
base=${1:?usage: benchmarks/ab.sh BASE_REF [LAYOUT_DIR[:TAG] ...]}
shift
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-ab-run-XXXXXX)}
mkdir -p "$OUT"
commit=$(git -C "$repo" rev-parse --verify "$base^{commit}")
A=/tmp/ocichunk-ab/$commit
if [ ! -f "$A/native/ocichunk.node" ] || [ ! -f "$A/.ab-built" ]; then
  echo "[ab] building A ($base = ${commit:0:12}) in $A" >&2
  rm -rf "$A"
  git -C "$repo" worktree prune
  git -C "$repo" worktree add --detach "$A" "$commit" >&2
  (cd "$A" && npm ci --no-audit --no-fund >&2) && touch "$A/.ab-built"
fi
B=$repo
(cd "$B" && npm run build >&2) # as it is now (cargo and tsc rebuild what changed)

# the images
images=("$@")
if [ ${#images[@]} -eq 0 ]; then
  for d in "${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}"/layouts/* "${OCICHUNK_CORPUS:-$HOME/.cache/ocichunk/corpus}"/layouts/*; do
    [ -f "$d/index.json" ] || continue
    for t in $(python3 - "$d" <<'PY'
import json, sys
idx = json.load(open(sys.argv[1] + '/index.json'))
for m in idx['manifests']:
    t = m.get('annotations', {}).get('org.opencontainers.image.ref.name')
    # a chunked image's index (written by ocichunk) is not an input
    if t and m.get('mediaType') != 'application/vnd.oci.image.index.v1+json':
        print(t)
PY
    ); do images+=("$d:$t"); done
  done
fi
[ ${#images[@]} -gt 0 ] || { echo "[ab] no images (build them: test/images/build-images.sh)" >&2; exit 1; }

# run SIDE ARGS...: ocichunk of one side with its own cache and trust dir; prints seconds, stdout to $OUT/last.out
run() {
  local side=$1 root; shift
  root=$([ "$side" = A ] && echo "$A" || echo "$B")
  local s e
  s=$(date +%s.%N)
  if ! XDG_CACHE_HOME=$OUT/cache-$side node "$root/bin/ocichunk.js" "$@" > "$OUT/last.out"; then
    echo "[ab] $side: ocichunk $* failed" >&2
    exit 1
  fi
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
best() { printf '%s\n' "$@" | sort -g | head -1; }

echo "[ab] A = $base (${commit:0:12}), B = $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo '+changes'); ${#images[@]} images, best of $ROUNDS" >&2
printf '%-40s %-8s %10s %10s %8s  %s\n' image step A_s B_s B/A digest
results=()
differ=0
for img in "${images[@]}"; do
  name=$(basename "${img%%:*}"):${img##*:}
  declare -A tc=() tr=() tl=() tv=() dig=()
  for side in A B; do tc[$side]=""; tr[$side]=""; tl[$side]=""; tv[$side]=""; done
  for ((r = 0; r < ROUNDS; r++)); do
    for side in A B; do
      rm -rf "$OUT/l-$side" "$OUT/r-$side" "$OUT/cache-$side"
      tc[$side]+=" $(run $side convert "oci:$img" "oci:$OUT/l-$side:x" --json)"
      d=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["index"]["digest"])' "$OUT/last.out")
      if [ -n "${dig[$side]:-}" ] && [ "${dig[$side]}" != "$d" ]; then echo "[ab] $name: $side is not deterministic" >&2; differ=1; fi
      dig[$side]=$d
      tr[$side]+=" $(run $side restore "oci:$OUT/l-$side:x" "$OUT/r-$side")"
      tl[$side]+=" $(run $side ls "oci:$OUT/l-$side:x" /usr/bin --json)"
      # the listing (the image's name and the run's figures differ by side)
      python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["entries"], sort_keys=True))' "$OUT/last.out" | sha256sum > "$OUT/ls-$side.sha"
      tv[$side]+=" $(run $side verify "oci:$OUT/l-$side:x" --json)"
    done
    cmp -s "$OUT/ls-A.sha" "$OUT/ls-B.sha" || { echo "[ab] $name: ls --json differs" >&2; differ=1; }
  done
  same=$([ "${dig[A]}" = "${dig[B]}" ] && echo same || echo DIFFERENT)
  [ "$same" = same ] || differ=1
  for step in convert restore ls verify; do
    case $step in
      convert) a=$(best ${tc[A]}) b=$(best ${tc[B]}) ;;
      restore) a=$(best ${tr[A]}) b=$(best ${tr[B]}) ;;
      ls) a=$(best ${tl[A]}) b=$(best ${tl[B]}) ;;
      verify) a=$(best ${tv[A]}) b=$(best ${tv[B]}) ;;
    esac
    ratio=$(echo "scale=3; $b / $a" | bc)
    printf '%-40s %-8s %10.2f %10.2f %8s  %s\n' "$name" "$step" "$a" "$b" "$ratio" "$([ $step = convert ] && echo "$same ${dig[B]:7:12}")"
    results+=("{\"image\":\"$name\",\"step\":\"$step\",\"a\":$a,\"b\":$b,\"digestA\":\"${dig[A]}\",\"digestB\":\"${dig[B]}\"}")
  done
  unset tc tr tl tv dig
done
(IFS=,; echo "{\"base\":\"$commit\",\"rounds\":$ROUNDS,\"results\":[${results[*]}]}") > "$OUT/results.json"
echo "[ab] results: $OUT/results.json" >&2
rm -rf "$OUT"/l-* "$OUT"/r-* "$OUT"/cache-*
exit $differ
