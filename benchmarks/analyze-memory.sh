#!/usr/bin/env bash
# Memory of `ocichunk analyze` as the corpus grows: peak RSS for the first 1, 3 and 9 images of the
# corpus (benchmarks/corpus.sh) with fine chunks (cdc:512/2k/8k: ~10x the chunks of the default), with
# DuckDB's default memory and with --memory-limit. Chunk digests live in an off-heap table (~70 B
# per distinct chunk); chunk occurrences go to an on-disk DuckDB table that spills beyond its limit.
# Usage: benchmarks/analyze-memory.sh [STRATEGY]     Results: a table on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
corpus=${OCICHUNK_CORPUS:-$HOME/.cache/ocichunk/corpus}
strategy=${1:-cdc:512/2k/8k}
[ -d "$corpus/layouts" ] || bash "$here/corpus.sh" >&2
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-anmem-XXXXXX)}
trap 'rm -rf "$OUT"' EXIT
refs=()
for d in "$corpus"/layouts/*/; do refs+=("oci:${d%/}:latest"); done
printf '%-7s %-14s %10s %12s %13s %9s\n' images memory-limit rows 'distinct' 'peak RSS' time
for n in 1 3 ${#refs[@]}; do
  for lim in default 128MB; do
    extra=(); [ "$lim" = default ] || extra=(--memory-limit "$lim")
    /usr/bin/time -f '%M %e' -o "$OUT/time" node "$repo/bin/ocichunk.js" analyze "${refs[@]:0:$n}" --chunker "$strategy" \
      --json --tmpdir "$OUT" "${extra[@]}" > "$OUT/r.json"
    read -r rss secs < "$OUT/time"
    python3 - "$OUT/r.json" "$n" "$lim" "$rss" "$secs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n, lim, rss, secs = sys.argv[2:]
s = [x for x in r['strategies'] if x['strategy'] != 'layer'][0]
print(f"{n:<7} {lim:<14} {r['rows']:>10} {s['units']:>12} {int(rss) / 1024:>9.0f} MiB {float(secs):>8.1f}s")
PY
  done
done
