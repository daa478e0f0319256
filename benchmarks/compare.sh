#!/usr/bin/env bash
# What each approach stores for a corpus of images, measured in one run:
#   registry today   gzip -6 (and zstd -3) of the unique layers
#   ocichunk         convert of every image into one layout (packs + TOCs), zstd -3 and -19;
#                    analyze's prediction for the same strategy next to it
#   casync           `casync make` of every image's root filesystem into one shared chunk store
#   zstd:chunked     `skopeo copy --dest-compress-format zstd:chunked` of every image into one layout
#   floor            the distinct file contents as one zstd stream (-3, and -19 --long)
# Usage: benchmarks/compare.sh [LAYOUT ...]   (default: the corpus of benchmarks/corpus.sh, built on
#        demand). Results: a table on stdout, JSON in $OUT/results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
for c in casync skopeo zstd gzip python3 bc; do command -v "$c" > /dev/null || { echo "needs $c (apt-get install $c)" >&2; exit 1; }; done
if [ $# -gt 0 ]; then layouts=("$@"); else mapfile -t layouts < <(bash "$here/corpus.sh"); fi
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-compare-XXXXXX)}
mkdir -p "$OUT"
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
refs=(); for l in "${layouts[@]}"; do refs+=("oci:$l:latest"); done
log() { echo "[compare] $*" >&2; }

# 1. the registry: unique layers, compressed as registries store them
log "gzip -6 / zstd -3 of the unique layers"
python3 - "$OUT/layers.txt" "${layouts[@]}" <<'PY'
import json, os, sys
out, layouts = sys.argv[1], sys.argv[2:]
seen = {}
for l in layouts:
    b = lambda d: os.path.join(l, 'blobs', 'sha256', d.split(':')[1])
    m = json.load(open(b(json.load(open(os.path.join(l, 'index.json')))['manifests'][0]['digest'])))
    for x in m['layers']: seen.setdefault(x['digest'], b(x['digest']))
open(out, 'w').write('\n'.join(seen.values()) + '\n')
PY
gz=0; zs=0; raw=0; served=0
tarof() { case "$(head -c2 "$1" | od -An -tx1 | tr -d ' ')" in 1f8b) gzip -dc "$1" ;; 28b5) zstd -dcq "$1" ;; *) cat "$1" ;; esac; }
while read -r f; do
  served=$((served + $(stat -c %s "$f")))
  tarof "$f" > "$OUT/layer.tar"
  raw=$((raw + $(stat -c %s "$OUT/layer.tar")))
  gz=$((gz + $(gzip -6 -c "$OUT/layer.tar" | wc -c)))
  zs=$((zs + $(zstd -q -3 -c "$OUT/layer.tar" | wc -c)))
done < "$OUT/layers.txt"
rm -f "$OUT/layer.tar"

# 2. ocichunk with its defaults (zstd -3, chunks grouped into 512 KiB frames), at the highest level,
#    with small frames (64 KiB; chunks >= 32 KiB alone: the finest lazy reads) and with 1 MiB frames
for cfg in 3:default 19:default 3:64k:32k 3:1m:256k 19:1m:256k; do
  IFS=: read -r lvl frame below <<< "$cfg"
  flags=(--zstd-level "$lvl"); [ "$frame" = default ] || flags+=(--frame-size "$frame" --group-below "$below")
  log "ocichunk convert, zstd $lvl, frames $frame"
  rm -rf "$OUT/ocichunk-$lvl-$frame"; : > "$OUT/ocichunk-$lvl-$frame.jsonl"
  s=$(date +%s.%N)
  i=0
  for r in "${refs[@]}"; do
    ocichunk convert "$r" "oci:$OUT/ocichunk-$lvl-$frame:img$i" "${flags[@]}" --json --quiet --tmpdir "$OUT" \
      | python3 -c 'import json,sys;print(json.dumps(json.load(sys.stdin)))' >> "$OUT/ocichunk-$lvl-$frame.jsonl"
    i=$((i + 1))
  done
  e=$(date +%s.%N); echo "$e - $s" | bc > "$OUT/ocichunk-$lvl-$frame.seconds"
done
log "ocichunk analyze (prediction)"
ocichunk analyze "${refs[@]}" --chunker layer,file,cdc:16k/64k/256k --json --quiet --tmpdir "$OUT" > "$OUT/analyze.json"

# 3. casync: each root filesystem (restored from the converted layout) into one chunk store
log "casync make"
rm -rf "$OUT/casync" "$OUT/rootfs"; mkdir -p "$OUT/casync"
s=$(date +%s.%N)
i=0
for r in "${refs[@]}"; do
  ocichunk restore "oci:$OUT/ocichunk-3-default:img$i" "$OUT/rootfs" --quiet > /dev/null
  casync make --compression=zstd --store="$OUT/casync/store.castr" "$OUT/casync/img$i.caidx" "$OUT/rootfs" > /dev/null
  rm -rf "$OUT/rootfs"
  i=$((i + 1))
done
e=$(date +%s.%N); casync_t=$(echo "$e - $s" | bc)

# 4. zstd:chunked, every image into one layout (identical blobs stored once)
log "skopeo copy --dest-compress-format zstd:chunked"
rm -rf "$OUT/zstd-chunked"
s=$(date +%s.%N)
i=0
for r in "${refs[@]}"; do
  skopeo copy --quiet --dest-compress --dest-compress-format zstd:chunked "$r" "oci:$OUT/zstd-chunked:img$i"
  i=$((i + 1))
done
e=$(date +%s.%N); zc_t=$(echo "$e - $s" | bc)

# 5. the floor: distinct file contents as one zstd stream
log "distinct file contents as one zstd stream"
python3 - "$OUT/distinct.bin" "${layouts[@]}" <<'PY'
import hashlib, json, os, sys, tarfile
out, layouts = sys.argv[1], sys.argv[2:]
seen = set()
with open(out, 'wb') as o:
    for l in layouts:
        b = lambda d: os.path.join(l, 'blobs', 'sha256', d.split(':')[1])
        m = json.load(open(b(json.load(open(os.path.join(l, 'index.json')))['manifests'][0]['digest'])))
        for x in m['layers']:
            with tarfile.open(b(x['digest']), 'r:*') as t:
                for e in t:
                    if not e.isreg() or e.size == 0: continue
                    data = t.extractfile(e).read()
                    h = hashlib.sha256(data).digest()
                    if h in seen: continue
                    seen.add(h); o.write(data)
PY
floor3=$(zstd -q -3 -T0 -c "$OUT/distinct.bin" | wc -c)
floor19=$(zstd -q -19 --long=27 -T0 -c "$OUT/distinct.bin" | wc -c)
distinct=$(stat -c %s "$OUT/distinct.bin")
rm -f "$OUT/distinct.bin"

python3 - "$OUT" "$raw" "$gz" "$zs" "$floor3" "$floor19" "$distinct" "$casync_t" "$zc_t" "${#refs[@]}" "$served" <<'PY'
import glob, json, os, sys
out, raw, gz, zs, f3, f19, distinct, cat, zct, n, served = sys.argv[1:]
raw, gz, zs, f3, f19, distinct, n, served = map(int, (raw, gz, zs, f3, f19, distinct, n, served)); cat, zct = float(cat), float(zct)
def du(p):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
oc = {}
for cfg in ('3-default', '19-default', '3-64k', '3-1m', '19-1m'):
    rs = [json.loads(l) for l in open(os.path.join(out, f'ocichunk-{cfg}.jsonl'))]
    oc[cfg] = {'stored': sum(r['bytesStored'] + r['tocBytes'] for r in rs), 'toc': sum(r['tocBytes'] for r in rs),
               'seconds': float(open(os.path.join(out, f'ocichunk-{cfg}.seconds')).read())}
an = json.load(open(os.path.join(out, 'analyze.json')))
pred = [s for s in an['strategies'] if s['strategy'] == 'cdc:16k/64k/256k'][0]['storedBytes']
filelvl = [s for s in an['strategies'] if s['strategy'] == 'file'][0]
casync = du(os.path.join(out, 'casync'))
castore = du(os.path.join(out, 'casync', 'store.castr'))
# zstd:chunked layout: its blobs (layers, configs, manifests), each stored once
zc = du(os.path.join(out, 'zstd-chunked', 'blobs'))
res = {'images': n, 'uniqueLayerBytes': raw, 'uniqueLayerBytesAsServed': served, 'registryGzip6': gz, 'registryZstd3': zs,
       'ocichunk': oc, 'analyzePredicted3': pred, 'analyzeVsConvert': pred / oc['3-default']['stored'],
       'casync': {'bytes': casync, 'storeBytes': castore, 'seconds': cat}, 'zstdChunked': {'bytes': zc, 'seconds': zct},
       'distinctFileBytes': distinct, 'floorZstd3': f3, 'floorZstd19Long': f19, 'fileLevelUniqueBytes': filelvl['uniqueBytes']}
json.dump(res, open(os.path.join(out, 'results.json'), 'w'), indent=2)
mb = lambda b: f"{b / 1048576:8.1f} MiB"
print(f"{n} images; unique layers {mb(raw).strip()} uncompressed ({mb(served).strip()} as served); distinct file contents {mb(distinct).strip()}")
print(f"{'':52s} {'stored':>12s}  vs registry")
def row(name, b, extra=''):
    print(f"{name:52s} {mb(b)}  {b / gz:6.3f}x  {extra}")
row('registry: gzip -6 of unique layers', gz)
row('registry: zstd -3 of unique layers', zs)
d = oc['3-default']
row('ocichunk convert, defaults: zstd -3, 512 KiB frames', d['stored'], f"{d['seconds']:.1f} s, TOCs {d['toc'] / 1048576:.1f} MiB")
row('  analyze prediction for it', pred, f"{pred / d['stored']:.4f}x of actual")
row('ocichunk convert, zstd -19', oc['19-default']['stored'], f"{oc['19-default']['seconds']:.1f} s")
row('ocichunk -3, 64 KiB frames (finest lazy reads)', oc['3-64k']['stored'], f"{oc['3-64k']['seconds']:.1f} s")
row('ocichunk -3, 1 MiB frames', oc['3-1m']['stored'], f"{oc['3-1m']['seconds']:.1f} s")
row('ocichunk -19, 1 MiB frames', oc['19-1m']['stored'], f"{oc['19-1m']['seconds']:.1f} s")
row('casync make, shared store (+ indexes)', casync, f"{cat:.1f} s; ocichunk default = {d['stored'] / casync:.3f}x, -3 1 MiB frames {oc['3-1m']['stored'] / casync:.3f}x casync")
row('skopeo zstd:chunked, one layout', zc, f"{zct:.1f} s")
row('floor: distinct files, one zstd -3 stream', f3)
row('floor: distinct files, zstd -19 --long', f19)
print(f"results: {os.path.join(out, 'results.json')}")
PY
