#!/usr/bin/env bash
# Pull + convert + push against local registries (Debian's docker-registry on 127.0.0.1), measured in
# one run next to `skopeo copy --dest-compress-format zstd:chunked` of the same image to the same
# registry, and `zstd -3 -T0` over the same uncompressed layer bytes as a CPU reference.
#   source registry: big:1 (the image as built: gzip layers) and rebuild:1 (the same files re-tarred
#                    by GNU tar --sort=name: every layer digest differs)
#   target registry: fresh; both tools pull from the source and push there
#   1. skopeo copy --dest-compress --dest-compress-format zstd:chunked  source/big:1 -> target/skopeo:1
#   2. ocichunk convert  source/big:1 -> target/ocichunk:1   (original + chunked: both uploaded)
#   3. ocichunk convert  source/big:1 -> source/big:1        (in place: the original layers are there)
#   4. ocichunk convert  source/rebuild:1 -> source/big:rebuild (a rebuild next to big's chunks)
# Bytes: what each registry's storage grew by, and (for ocichunk) its own transfer report.
# (skopeo pushes to a registry of its own making: into the source registry it would reuse the
# gzip blobs instead of recompressing them.)
# Usage: benchmarks/registry.sh [IMAGE_LAYOUT_DIR[:TAG]]   (default: the cached `big` test image,
#        built by test/images/build-images.sh --big). Results: a table on stdout, JSON in $OUT/results.json.
source "$(dirname "$0")/common.sh"
for c in docker-registry skopeo zstd bc python3 curl; do command -v "$c" > /dev/null || { echo "needs $c (npm test's pretest installs it)" >&2; exit 1; }; done
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-registry-bench-XXXXXX)}
mkdir -p "$OUT"

start_registry() { # NAME: storage under $OUT/NAME; sets REG to host:port
  local name=$1 port
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$OUT/$name" "$port" > "$OUT/$name.yml"
  mkdir -p "$OUT/$name"
  docker-registry serve "$OUT/$name.yml" > "$OUT/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" > /dev/null && break; sleep 0.1; done
  REG=127.0.0.1:$port
}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start_registry source; src_reg=$REG
start_registry target; dst_reg=$REG

stored() { du -sb "$OUT/$1" | cut -f1; }
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
sk() { skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false "$@"; }

# the source image as a registry serves it (its layers as they are in the layout: gzip for `big`)
sk "oci:$dir:$tag" "docker://$src_reg/big:1"
# a rebuild: the same files re-tarred by another tool, so that every layer digest differs
python3 "$here/retar.py" "$dir" "$tag" "$OUT/rebuild" latest
sk --dest-compress "oci:$OUT/rebuild:latest" "docker://$src_reg/rebuild:1"
rm -rf "$OUT/rebuild"

# the CPU reference: zstd -3 -T0 over the uncompressed layer bytes
raw="$OUT/layers.tar"; : > "$raw"
manifest=$(skopeo inspect --raw --tls-verify=false "docker://$src_reg/big:1")
for l in $(echo "$manifest" | python3 -c 'import json,sys;print(" ".join(l["digest"].split(":")[1] for l in json.load(sys.stdin)["layers"]))'); do
  append_uncompressed "$(find "$OUT/source" -path "*/blobs/sha256/*/$l/data")" "$raw"
done
rawsize=$(stat -c %s "$raw")
zstd_t=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")
rm -f "$OUT/layers.tar.zst"

s0=$(stored target)
skopeo_t=$(t sk --dest-compress --dest-compress-format zstd:chunked "docker://$src_reg/big:1" "docker://$dst_reg/skopeo:1")
skopeo_bytes=$(( $(stored target) - s0 ))

s0=$(stored target)
oc_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$src_reg/big:1 docker://$dst_reg/ocichunk:1 --json --quiet --tmpdir '$OUT' > '$OUT/ocichunk.json'")
oc_bytes=$(( $(stored target) - s0 ))

s0=$(stored source)
inplace_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$src_reg/big:1 docker://$src_reg/big:1 --json --quiet --tmpdir '$OUT' > '$OUT/inplace.json'")
inplace_bytes=$(( $(stored source) - s0 ))

s0=$(stored source)
second_t=$(t sh -c "node '$repo/bin/ocichunk.js' convert docker://$src_reg/rebuild:1 docker://$src_reg/big:rebuild --json --quiet --tmpdir '$OUT' > '$OUT/second.json'")
second_bytes=$(( $(stored source) - s0 ))
zstd_t2=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")
rm -f "$OUT/layers.tar.zst" "$raw"

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
print(f"image: {mb(raw)} uncompressed, {mb(oc['bytesIn'])} as served (original layers), {oc['files']} files; registries under {out}")
print(f"zstd -3 -T0 (reference)            {z:7.2f} s")
print(f"skopeo copy zstd:chunked -> target {skt:7.2f} s  = {skt / z:5.2f}x zstd   registry +{mb(skb)}")
def row(name, t, b, j):
    tr = j['transfer']
    print(f"{name:34s} {t:7.2f} s  = {t / z:5.2f}x zstd   registry +{mb(b)}  (uploaded {tr['blobsUploaded']} blobs {mb(tr['bytesUploaded'])}, mounted {tr['blobsMounted']}, downloaded {mb(tr['bytesDownloaded'])})")
row('ocichunk convert -> target', oct_, ocb, oc)
row('ocichunk convert in place (source)', ipt, ipb, ip)
row('ocichunk rebuild -> source/big', sct, scb, sc)
print(f"ocichunk / skopeo zstd:chunked, both into the fresh target: time {oct_ / skt:.2f}x, registry growth {ocb / max(skb, 1):.2f}x (ocichunk keeps the original layers too)")
print(f"rebuild: {sc['newChunks']} new of {sc['uniqueChunks']} chunks")
print(f"results: {os.path.join(out, 'results.json')}")
PY
