#!/usr/bin/env bash
# The speed target against the storage target (issue 16): ocichunk's convert at each zstd level
# against SOCI's zTOC build (the fastest peer of benchmarks/peers.sh), alternating so the machine's
# noise hits both alike, and what each level stores of the corpus.
#   speed    app, py, big (gzip'd OCI layouts) and the corpus of benchmarks/corpus.sh (ocichunk:
#            `convert --batch` into one layout; SOCI: a zTOC of each unique layer); per round SOCI
#            first, then ocichunk at each level; wall and CPU seconds (/usr/bin/time), min-max
#   storage  the corpus converted at each level: packs + TOCs + digest tables (as peers.sh counts
#            them) against the registry's reference, gzip -6 of its unique layers
# Env: LEVELS (default "6 5 4 3"), ROUNDS (3), IMAGES ("app py big corpus"), OUT (results dir).
# Needs SOCI built by benchmarks/peers.sh (in ${OCICHUNK_PEERS_CACHE:-~/.cache/ocichunk/peers}).
# Usage: bash benchmarks/levels.sh   Results: a Markdown table on stdout, raw times in $OUT/time.
set -euo pipefail
source "$(dirname "$0")/common.sh"
PEERS=${OCICHUNK_PEERS_CACHE:-$HOME/.cache/ocichunk/peers}
SOCI=$PEERS/bin/soci
SOCI_SPAN=$((4 << 20))
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-levels-XXXXXX)}
read -r -a LEVELS <<< "${LEVELS:-6 5 4 3}"
read -r -a IMAGES <<< "${IMAGES:-app py big corpus}"
ROUNDS=${ROUNDS:-3}
log() { echo "[levels] $*" >&2; }
[ -x "$SOCI" ] || { echo "levels.sh needs SOCI: run bash benchmarks/peers.sh once" >&2; exit 1; }
[ -d "$cache/layouts/py" ] && [ -d "$cache/layouts/app" ] || bash "$repo/test/images/build-images.sh" >&2
corpus=()
[[ " ${IMAGES[*]} " = *" corpus "* ]] && mapfile -t corpus < <(bash "$here/corpus.sh")
mkdir -p "$OUT/time"
trap 'rm -rf "$OUT"/out' EXIT

declare -A LAYERS
for img in "${IMAGES[@]}"; do
  if [ "$img" = corpus ]; then LAYERS[$img]=$(layers "${corpus[@]}"); else LAYERS[$img]=$(layers "$cache/layouts/$img"); fi
done
i=0; for l in "${corpus[@]}"; do i=$((i + 1)); echo "oci:$l:latest oci:$OUT/out/corpus:img$i"; done > "$OUT/corpus.batch"

timed() { # NAME CMD...: appends wall and CPU (user + sys) seconds to $OUT/time/NAME
  /usr/bin/time -f '%e %U %S' -o "$OUT/time/.t" "${@:2}"
  awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$OUT/time/.t" >> "$OUT/time/$1"
}
convert() { # IMG LEVEL: ocichunk's JSON results (one per image) into $OUT/IMG-LEVEL.json
  rm -rf "$OUT/out"; mkdir -p "$OUT/out"
  if [ "$1" = corpus ]; then
    timed "ocichunk-$1-$2" node "$repo/bin/ocichunk.js" convert --zstd-level "$2" --batch "$OUT/corpus.batch" --json --quiet > "$OUT/$1-$2.json"
  else
    timed "ocichunk-$1-$2" node "$repo/bin/ocichunk.js" convert --zstd-level "$2" "oci:$cache/layouts/$1:latest" "oci:$OUT/out/$1:x" --json --quiet > "$OUT/$1-$2.json"
  fi
}

for r in $(seq "$ROUNDS"); do
  for img in "${IMAGES[@]}"; do
    log "round $r/$ROUNDS: $img"
    mapfile -t ls_ <<< "${LAYERS[$img]}"
    rm -rf "$OUT/out"; mkdir -p "$OUT/out"
    timed "soci-$img" "$SOCI" build "$SOCI_SPAN" "$OUT/out/soci" "${ls_[@]}"
    for lv in "${LEVELS[@]}"; do convert "$img" "$lv"; done
  done
done

ref=0
if [[ " ${IMAGES[*]} " = *" corpus "* ]]; then
  log "gzip -6 of the corpus's unique layers (the registry's reference, as benchmarks/peers.sh)"
  while read -r f; do ref=$((ref + $(gzip -dc "$f" | gzip -6 -c | wc -c))); done <<< "${LAYERS[corpus]}"
fi

python3 - "$OUT" "$ref" "$ROUNDS" "${LEVELS[*]}" "${IMAGES[*]}" <<'PY'
import json, os, sys
out, ref, rounds, levels, images = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
def runs(name):
    return [tuple(map(float, l.split())) for l in open(os.path.join(out, 'time', name))]
def span(v):
    return f'{min(v):.2f}' if min(v) == max(v) else f'{min(v):.2f}-{max(v):.2f}'
def cell(name):
    rs = runs(name)
    return f'{span([w for w, _ in rs])} s ({span([c for _, c in rs])})'
print(f'Wall seconds (CPU seconds), min-max of {rounds} rounds, SOCI and each level in turn:\n')
print('| image | SOCI zTOCs | ' + ' | '.join(f'ocichunk level {l}' for l in levels) + ' |')
print('|---' * (len(levels) + 2) + '|')
for img in images:
    best_soci = min(w for w, _ in runs(f'soci-{img}'))
    cells = []
    for l in levels:
        best = min(w for w, _ in runs(f'ocichunk-{img}-{l}'))
        cells.append(f'{cell(f"ocichunk-{img}-{l}")}, best {best / best_soci:.2f}x SOCI')
    print(f'| {img} | {cell(f"soci-{img}")} | ' + ' | '.join(cells) + ' |')
if ref:
    print(f'\nThe corpus stored (packs + TOCs + digest tables) against gzip -6 of its unique layers ({ref:,} B):\n')
    print('| level | stored | vs gzip -6 |')
    print('|---|---|---|')
    for l in levels:
        rs = json.load(open(os.path.join(out, f'corpus-{l}.json')))
        rs = rs if isinstance(rs, list) else [rs]
        n = sum(r['bytesStored'] + r['tocBytes'] + r.get('digestTableBytes', 0) for r in rs)
        print(f'| {l} | {n:,} B | {n / ref:.4f}x |')
PY
