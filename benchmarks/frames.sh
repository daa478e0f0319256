#!/usr/bin/env bash
# Frame size: what it saves in storage and what it costs lazy readers, measured in one run.
#   storage   ocichunk analyze's stored bytes (packs + TOCs; equal to what convert stores) for the
#             corpus of benchmarks/corpus.sh, against gzip -6 of its unique layers (a registry)
#   lazy      on the `py` test image converted with each setting: bytes fetched to serve the reads
#             of `python3 -c 'import json'` (a trace recorded once from a mount) and to read one
#             small file (1-64 KiB) alone, replayed through the library (benchmarks/frames.mjs)
# Needs root (the trace is recorded from a FUSE mount with chroot). Usage: benchmarks/frames.sh
# [FRAME:GROUP_BELOW ...]  (default: 64k:32k 128k:64k 256k:128k 512k:256k 1m:256k)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(64k:32k 128k:64k 256k:128k 512k:256k 1m:256k)
mapfile -t layouts < <(bash "$here/corpus.sh")
[ -d "$cache/layouts/py" ] || bash "$repo/test/images/build-images.sh" >&2
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-frames-XXXXXX)}
mkdir -p "$OUT"
trap 'mountpoint -q "$OUT/mnt" && umount -l "$OUT/mnt"; rm -rf "$OUT"/py-* "$OUT/layer.tar"' EXIT
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }
log() { echo "[frames] $*" >&2; }
refs=(); for l in "${layouts[@]}"; do refs+=("oci:$l:latest"); done

log "gzip -6 of the corpus's unique layers"
registry=0
while read -r f; do
  case "$(head -c2 "$f" | od -An -tx1 | tr -d ' ')" in 1f8b) gzip -dc "$f" ;; 28b5) zstd -dcq "$f" ;; *) cat "$f" ;; esac > "$OUT/layer.tar"
  registry=$((registry + $(gzip -6 -c "$OUT/layer.tar" | wc -c)))
done < <(python3 - "${layouts[@]}" <<'PY'
import json, os, sys
seen = {}
for l in sys.argv[1:]:
    b = lambda d: os.path.join(l, 'blobs', 'sha256', d.split(':')[1])
    m = json.load(open(b(json.load(open(os.path.join(l, 'index.json')))['manifests'][0]['digest'])))
    for x in m['layers']: seen.setdefault(x['digest'], b(x['digest']))
print('\n'.join(seen.values()))
PY
)

log "a trace of python3 -c 'import json' from a mount"
ocichunk convert "oci:$cache/layouts/py:latest" "oci:$OUT/py-trace:py" --quiet > /dev/null
mkdir -p "$OUT/mnt"
node "$repo/bin/ocichunk.js" mount "oci:$OUT/py-trace:py" "$OUT/mnt" --no-cache --record-trace "$OUT/trace.txt" --quiet &
mounter=$!
for _ in $(seq 300); do [ -x "$OUT/mnt/usr/bin/python3" ] && break; sleep 0.1; done
chroot "$OUT/mnt" /usr/bin/python3 -c 'import json; print(json.dumps([1]))' > /dev/null
kill -TERM "$mounter"; wait "$mounter"
[ -s "$OUT/trace.txt" ] || { echo "no trace recorded" >&2; exit 1; }

for cfg in "${configs[@]}"; do
  frame=${cfg%%:*}; below=${cfg#*:}
  log "frames $frame, grouping chunks below $below"
  ocichunk analyze "${refs[@]}" --chunker cdc:16k/64k/256k --frame-size "$frame" --group-below "$below" --json --quiet > "$OUT/analyze-$frame.json"
  rm -rf "$OUT/py-$frame"
  ocichunk convert "oci:$cache/layouts/py:latest" "oci:$OUT/py-$frame:py" --frame-size "$frame" --group-below "$below" --quiet > /dev/null
  node "$here/frames.mjs" "oci:$OUT/py-$frame:py" "$OUT/trace.txt" > "$OUT/lazy-$frame.json"
  rm -rf "$OUT/py-$frame"
done

python3 - "$OUT" "$registry" "${configs[@]}" <<'PY'
import json, sys
out, registry, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
M = 2**20
images = len(json.load(open(out + '/analyze-' + configs[0].split(':')[0] + '.json'))['images'])
print(f"corpus: {images} images, registry (gzip -6 of unique layers) {registry / M:.1f} MiB")
print(f"{'frames':>8} {'group <':>8} {'corpus stored':>14} {'vs registry':>11} {'TOCs':>9} | {'py trace: read':>14} {'fetched':>9} {'ratio':>6} | {'small file':>10} {'median fetch':>12}")
rows = []
for c in configs:
    frame, below = c.split(':')
    s = json.load(open(f'{out}/analyze-{frame}.json'))['strategies'][0]
    l = json.load(open(f'{out}/lazy-{frame}.json'))
    t = l['trace']
    fetched = t['fetched'] + t['tocBytes']
    rows.append(dict(frame=frame, groupBelow=below, stored=s['storedBytes'], vsRegistry=s['storedBytes'] / registry, toc=s['tocBytes'],
                     traceRead=t['readBytes'], traceFetched=fetched, smallMean=l['smallFiles']['meanFileBytes'], smallMedianFetched=l['smallFiles']['medianFetched']))
    r = rows[-1]
    print(f"{frame:>8} {below:>8} {r['stored'] / M:>10.1f} MiB {r['vsRegistry']:>10.3f}x {r['toc'] / 1024:>5.0f} KiB | {r['traceRead'] / M:>10.2f} MiB {fetched / M:>5.2f} MiB {fetched / t['readBytes']:>5.2f}x | {r['smallMean'] / 1024:>6.1f} KiB {r['smallMedianFetched'] / 1024:>8.1f} KiB")
json.dump(dict(registry=registry, rows=rows), open(f'{out}/results.json', 'w'), indent=1)
print(f"results: {out}/results.json")
PY
