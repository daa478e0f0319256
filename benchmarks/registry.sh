#!/usr/bin/env bash
# Pull + convert + push against a local registry (Debian's docker-registry on 127.0.0.1), measured in
# one run next to `skopeo copy --dest-compress-format zstd:chunked` of the same image to the same
# registry, and `zstd -3 -T0` over the same uncompressed layer bytes as a CPU reference.
#   - skopeo zstd:chunked : docker://R/big:1 -> docker://R/skopeo-zstd-chunked:1
#   - ocichunk            : docker://R/big:1 -> docker://R/ocichunk:1 (original layers mounted)
#   - ocichunk in place   : docker://R/big:1 -> docker://R/big:1
#   - ocichunk, 2nd image : a rebuild of the same content under other layer digests -> docker://R/ocichunk:2
# Bytes: what the registry's storage grew by, and (for ocichunk) its own upload report.
# Usage: benchmarks/registry.sh [IMAGE_LAYOUT_DIR[:TAG]]   (default: the cached `big` test image,
#        built by test/images/build-images.sh --big). Results: a table on stdout, JSON in $OUT/results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
src=${1:-$cache/layouts/big:latest}
dir=${src%%:*}
tag=${src#*:}; [ "$tag" = "$src" ] && tag=latest
if [ ! -d "$dir" ]; then
  echo "building the benchmark image (test/images/build-images.sh --big)" >&2
  bash "$repo/test/images/build-images.sh" --big >&2
fi
for c in docker-registry skopeo zstd bc python3; do command -v "$c" > /dev/null || { echo "needs $c (npm test's pretest installs it)" >&2; exit 1; }; done
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-registry-bench-XXXXXX)}
mkdir -p "$OUT"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > "$OUT/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $OUT/registry
http:
  addr: $host
EOF
docker-registry serve "$OUT/registry.yml" > "$OUT/registry.log" 2>&1 &
regpid=$!
trap 'kill $regpid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://$host/v2/" > /dev/null && break; sleep 0.1; done

stored() { du -sb "$OUT/registry" | cut -f1; }
t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }
sk() { skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false "$@"; }

# the source image as a registry serves it (its layers as they are in the layout: gzip for `big`)
sk "oci:$dir:$tag" "docker://$host/big:1"
# a second image with the same files under other layer digests (re-compressed with zstd): a rebuild
sk --dest-compress-format zstd "oci:$dir:$tag" "docker://$host/rebuild:1"
base=$(stored)

# the CPU reference: zstd -3 -T0 over the uncompressed layer bytes
raw="$OUT/layers.tar"; : > "$raw"
manifest=$(skopeo inspect --raw --tls-verify=false "docker://$host/big:1")
for l in $(echo "$manifest" | python3 -c 'import json,sys;print(" ".join(l["digest"].split(":")[1] for l in json.load(sys.stdin)["layers"]))'); do
  f=$(find "$OUT/registry" -path "*/blobs/sha256/*/$l/data")
  case "$(head -c2 "$f" | od -An -tx1 | tr -d ' ')" in
    1f8b) gzip -dc "$f" >> "$raw" ;;
    28b5) zstd -dc "$f" >> "$raw" ;;
    *) cat "$f" >> "$raw" ;;
  esac
done
rawsize=$(stat -c %s "$raw")
zstd_t=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")
rm -f "$OUT/layers.tar.zst"

s0=$(stored)
skopeo_t=$(t sk --dest-compress-format zstd:chunked "docker://$host/big:1" "docker://$host/skopeo-zstd-chunked:1")
skopeo_bytes=$(( $(stored) - s0 ))

s0=$(stored)
oc_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$host/big:1 docker://$host/ocichunk:1 --json --quiet --tmpdir '$OUT' > '$OUT/ocichunk.json'")
oc_bytes=$(( $(stored) - s0 ))

s0=$(stored)
inplace_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$host/big:1 docker://$host/big:1 --json --quiet --tmpdir '$OUT' > '$OUT/inplace.json'")
inplace_bytes=$(( $(stored) - s0 ))

s0=$(stored)
second_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$host/rebuild:1 docker://$host/ocichunk:2 --json --quiet --tmpdir '$OUT' > '$OUT/second.json'")
second_bytes=$(( $(stored) - s0 ))
zstd_t2=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")

python3 - "$OUT" "$rawsize" "$zstd_t" "$zstd_t2" "$skopeo_t" "$skopeo_bytes" "$oc_t" "$oc_bytes" "$inplace_t" "$inplace_bytes" "$second_t" "$second_bytes" <<'PY'
import json, os, sys
out, raw, z1, z2, skt, skb, oct_, ocb, ipt, ipb, sct, scb = sys.argv[1:]
raw = int(raw); z = min(float(z1), float(z2))
skt, oct_, ipt, sct = map(float, (skt, oct_, ipt, sct)); skb, ocb, ipb, scb = map(int, (skb, ocb, ipb, scb))
oc = json.load(open(os.path.join(out, 'ocichunk.json'))); ip = json.load(open(os.path.join(out, 'inplace.json'))); sc = json.load(open(os.path.join(out, 'second.json')))
mb = lambda b: f"{b / 1048576:.1f} MiB"
res = {
    'uncompressedLayerBytes': raw, 'originalLayerBytes': oc['bytesIn'], 'files': oc['files'], 'zstd3T0Seconds': z,
    'skopeoZstdChunked': {'seconds': skt, 'registryGrowthBytes': skb, 'vsZstd': skt / z},
    'ocichunk': {'seconds': oct_, 'registryGrowthBytes': ocb, 'vsZstd': oct_ / z, 'transfer': oc['transfer'], 'bytesStored': oc['bytesStored'], 'tocBytes': oc['tocBytes']},
    'ocichunkInPlace': {'seconds': ipt, 'registryGrowthBytes': ipb, 'vsZstd': ipt / z, 'transfer': ip['transfer']},
    'ocichunkSecondImage': {'seconds': sct, 'registryGrowthBytes': scb, 'vsZstd': sct / z, 'transfer': sc['transfer'], 'newChunks': sc['newChunks'], 'uniqueChunks': sc['uniqueChunks']},
}
json.dump(res, open(os.path.join(out, 'results.json'), 'w'), indent=2)
print(f"image: {mb(raw)} uncompressed, {mb(oc['bytesIn'])} as served (original layers), {oc['files']} files; local registry {out}/registry")
print(f"zstd -3 -T0 (reference)            {z:7.2f} s")
print(f"skopeo copy zstd:chunked           {skt:7.2f} s  = {skt / z:5.2f}x zstd   registry +{mb(skb)}")
def row(name, t, b, j):
    tr = j['transfer']
    print(f"{name:34s} {t:7.2f} s  = {t / z:5.2f}x zstd   registry +{mb(b)}  (uploaded {tr['blobsUploaded']} blobs {mb(tr['bytesUploaded'])}, mounted {tr['blobsMounted']}, downloaded {mb(tr['bytesDownloaded'])})")
row('ocichunk convert -> other repo', oct_, ocb, oc)
row('ocichunk convert in place', ipt, ipb, ip)
row('ocichunk 2nd image (rebuild)', sct, scb, sc)
print(f"ocichunk / skopeo zstd:chunked: time {oct_ / skt:.2f}x, registry growth {ocb / max(skb, 1):.2f}x; 2nd image: {sc['newChunks']} new of {sc['uniqueChunks']} chunks")
print(f"results: {os.path.join(out, 'results.json')}")
PY
