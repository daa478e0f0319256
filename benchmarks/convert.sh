#!/usr/bin/env bash
# Conversion speed, memory and stored size, measured in one run against references on the same bytes:
#   - ocichunk convert (fresh layout) vs `zstd -3 -T0` over the same uncompressed layer bytes
#   - ocichunk convert into a layout that already holds the image's chunks (re-convert)
#   - peak RSS of each conversion (/usr/bin/time -v)
#   - stored size vs zstd -3 and gzip -6 of the same layers
# Usage: benchmarks/convert.sh [IMAGE_LAYOUT_DIR[:TAG]]   (default: the cached `big` test image, built
#        by test/images/build-images.sh --big). Results: a table on stdout, JSON in $OUT/results.json.
#        ROUNDS (3): each conversion and floor runs this many times, in turn; each one's best counts.
source "$(dirname "$0")/common.sh"
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-bench-XXXXXX)}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }

# the uncompressed layer bytes, once, as zstd sees them
manifest=$(python3 - "$dir" "$tag" <<'PY'
import json,sys,os
d,tag=sys.argv[1],sys.argv[2]
idx=json.load(open(os.path.join(d,'index.json')))
m=[x for x in idx['manifests'] if x.get('annotations',{}).get('org.opencontainers.image.ref.name')==tag][0]
print(m['digest'].split(':')[1])
PY
)
layers=$(python3 -c "import json,sys;print(' '.join(l['digest'].split(':')[1] for l in json.load(open(sys.argv[1]))['layers']))" "$dir/blobs/sha256/$manifest")
raw="$OUT/layers.tar"; : > "$raw"
for l in $layers; do
  append_uncompressed "$dir/blobs/sha256/$l" "$raw"
done
rawsize=$(stat -c %s "$raw")
# warm the page cache for everyone
cat "$raw" "$dir"/blobs/sha256/* > /dev/null

t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
rss() { /usr/bin/time -f '%M' -o "$OUT/rss.txt" "$@" > "$OUT/last.json"; cat "$OUT/rss.txt"; }

# the same image with uncompressed layers (conversion then skips gunzip, as zstd does)
python3 - "$dir" "$tag" "$OUT/plain" <<'PY'
import gzip, hashlib, json, os, shutil, subprocess, sys
src, tag, dst = sys.argv[1:]
os.makedirs(os.path.join(dst, 'blobs', 'sha256'))
b = lambda root, d: os.path.join(root, 'blobs', 'sha256', d.split(':')[1])
def put(data):
    d = hashlib.sha256(data).hexdigest(); open(os.path.join(dst, 'blobs', 'sha256', d), 'wb').write(data); return 'sha256:' + d
idx = json.load(open(os.path.join(src, 'index.json')))
desc = [m for m in idx['manifests'] if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == tag][0]
man = json.load(open(b(src, desc['digest'])))
shutil.copy(b(src, man['config']['digest']), b(dst, man['config']['digest']))
for l in man['layers']:
    head = open(b(src, l['digest']), 'rb').read(4)
    data = gzip.open(b(src, l['digest'])).read() if head[:2] == b'\x1f\x8b' else subprocess.run(['zstd', '-dcq', b(src, l['digest'])], capture_output=True).stdout if head == b'\x28\xb5\x2f\xfd' else open(b(src, l['digest']), 'rb').read()
    l.update(mediaType='application/vnd.oci.image.layer.v1.tar', digest=put(data), size=len(data))
mb = json.dumps(man).encode()
json.dump({'schemaVersion': 2, 'manifests': [{'mediaType': man['mediaType'], 'digest': put(mb), 'size': len(mb), 'annotations': {'org.opencontainers.image.ref.name': 'img'}}]}, open(os.path.join(dst, 'index.json'), 'w'))
open(os.path.join(dst, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
PY
cat "$OUT"/plain/blobs/sha256/* > /dev/null
# ... and with every layer re-tarred by `tar --sort=name` (the entry order of BuildKit/Docker and of
# GNU tar --sort=name, which is ocichunk's canonical order: such layers are packed in one pass)
python3 "$here/retar.py" "$OUT/plain" img "$OUT/sorted" img
cat "$OUT"/sorted/blobs/sha256/* > /dev/null

zstd_t=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")
# the work itself, each part alone on the same bytes (verify, parse, chunk, hash; compress; hash
# packs); the scan reads each uncompressed layer (a tar scan stops at its layer's end-of-archive)
plain_layers=$(python3 -c "import json,sys;d=sys.argv[1];i=json.load(open(d+'/index.json'));m=json.load(open(d+'/blobs/sha256/'+i['manifests'][0]['digest'][7:]));print(' '.join(d+'/blobs/sha256/'+l['digest'][7:] for l in m['layers']))" "$OUT/plain")
gzip_t=$(t sh -c "gzip -6 -c '$raw' > '$OUT/layers.tar.gz'")
# Rounds: the floor and each conversion, in turn, ROUNDS times; the ratios take each one's best
# run (this machine is shared: one run of the same command varies by 5-10%).
conv_t=(); conv_rss=(); plain_t=(); plain_rss=(); sorted_t=(); sorted_rss=()
for r in $(seq "$ROUNDS"); do
  node "$here/floor.mjs" "$raw" $plain_layers > "$OUT/floor.$r.json"
  # ... and with the layers as stored (the scan then inflates them too)
  node "$here/floor.mjs" "$raw" $(for l in $layers; do echo "$dir/blobs/sha256/$l"; done) > "$OUT/floor-stored.$r.json"
  rm -rf "$OUT/layout"
  s=$(date +%s.%N); conv_rss+=("$(rss node "$repo/bin/ocichunk.js" convert "oci:$dir:$tag" "oci:$OUT/layout:img" --json --tmpdir "$OUT")"); e=$(date +%s.%N)
  conv_t+=("$(echo "$e - $s" | bc)"); cp "$OUT/last.json" "$OUT/convert.json"
  if [ "$r" = 1 ]; then
    s=$(date +%s.%N); reconv_rss=$(rss node "$repo/bin/ocichunk.js" convert "oci:$dir:$tag" "oci:$OUT/layout:img" --json --tmpdir "$OUT"); e=$(date +%s.%N)
    reconv_t=$(echo "$e - $s" | bc); cp "$OUT/last.json" "$OUT/reconvert.json"
  fi
  rm -rf "$OUT/layout-plain"
  s=$(date +%s.%N); plain_rss+=("$(rss node "$repo/bin/ocichunk.js" convert "oci:$OUT/plain:img" "oci:$OUT/layout-plain:img" --json --tmpdir "$OUT")"); e=$(date +%s.%N)
  plain_t+=("$(echo "$e - $s" | bc)")
  rm -rf "$OUT/layout-sorted"
  s=$(date +%s.%N); sorted_rss+=("$(rss node "$repo/bin/ocichunk.js" convert "oci:$OUT/sorted:img" "oci:$OUT/layout-sorted:img" --json --tmpdir "$OUT")"); e=$(date +%s.%N)
  sorted_t+=("$(echo "$e - $s" | bc)"); cp "$OUT/last.json" "$OUT/sorted.json"
  if [ "$r" = 1 ]; then
    # chunk-level reuse: the same content under other layer digests, into the layout that holds its chunks
    s=$(date +%s.%N); rss node "$repo/bin/ocichunk.js" convert "oci:$OUT/plain:img" "oci:$OUT/layout:plain" --json --tmpdir "$OUT" > /dev/null; e=$(date +%s.%N)
    plain_re_t=$(echo "$e - $s" | bc)
  fi
done
zstd_t2=$(t zstd -q -3 -T0 -f "$raw" -o "$OUT/layers.tar.zst")

j() { local IFS=,; echo "$*"; }
python3 - "$OUT" "$rawsize" "$zstd_t" "$zstd_t2" "$gzip_t" "$(j "${conv_t[@]}")" "$reconv_t" "$(j "${conv_rss[@]}")" "$reconv_rss" "$(j "${plain_t[@]}")" "$plain_re_t" "$(j "${plain_rss[@]}")" "$(j "${sorted_t[@]}")" "$(j "${sorted_rss[@]}")" "$ROUNDS" <<'PY'
import json,os,sys
out,raw,z1,z2,g,c,rc,crss,rcrss,pt,prt,prss,st,srss,rounds=sys.argv[1:]
# each conversion: its best run (time), and the peak RSS of all its runs
runs=lambda v: [float(x) for x in v.split(',')]
spread=lambda v: f"{min(runs(v)):.2f}-{max(runs(v)):.2f} s" if ',' in v else f"{float(v):.2f} s"
cs,ps,ss=spread(c),spread(pt),spread(st)
c,pt,st=min(runs(c)),min(runs(pt)),min(runs(st))
crss,prss,srss=max(runs(crss)),max(runs(prss)),max(runs(srss))
raw=int(raw); z=min(float(z1),float(z2)); g=float(g); rc=float(rc); prt=float(prt)
cj=json.load(open(os.path.join(out,'convert.json')))
zs=os.path.getsize(os.path.join(out,'layers.tar.zst')); gs=os.path.getsize(os.path.join(out,'layers.tar.gz'))
stored=cj['imageFrameBytes']+cj['tocBytes']
res={'uncompressedLayerBytes':raw,'zstd3T0Seconds':z,'gzip6Seconds':g,'convertSeconds':c,'reconvertSeconds':rc,
     'convertVsZstd':c/z,'reconvertVsConvert':rc/c,'convertPeakRssKiB':int(crss),'reconvertPeakRssKiB':int(rcrss),
     'zstd3Bytes':zs,'gzip6Bytes':gs,'chunkedBytes':stored,'tocBytes':cj['tocBytes'],'files':cj['files'],
     'chunkedVsZstd3':stored/zs,'chunkedVsGzip6':stored/gs,'tocBytesPer10kFiles':cj['tocBytes']*10000/max(cj['files'],1),
     'dedupRatio':cj['dedupRatio'],'uncompressedInputConvertSeconds':pt,'uncompressedInputConvertVsZstd':pt/z,
     'sortedInputConvertSeconds':st,'sortedInputConvertVsZstd':st/z,'sortedInputPeakRssKiB':int(srss),
     'sortedInputOnePassLayers':json.load(open(os.path.join(out,'sorted.json')))['onePassLayers'],
     'uncompressedInputReconvertSeconds':prt,'uncompressedInputReconvertVsConvert':prt/pt,'uncompressedInputPeakRssKiB':int(prss)}
# the floors: the best of the rounds too
best=lambda name: min((json.load(open(os.path.join(out,f'{name}.{r}.json'))) for r in range(1,int(rounds)+1)), key=lambda f: f['idealSeconds'])
fl=best('floor'); fs_=best('floor-stored')
json.dump(fl,open(os.path.join(out,'floor.json'),'w')); json.dump(fs_,open(os.path.join(out,'floor-stored.json'),'w'))
res['rounds']=int(rounds); res['convertRuns']=cs; res['uncompressedInputConvertRuns']=ps; res['sortedInputConvertRuns']=ss
res['floor']=fl; res['floorVsZstd']=fl['idealSeconds']/z; res['sortedInputConvertVsFloor']=st/fl['idealSeconds']
res['uncompressedInputConvertVsFloor']=pt/fl['idealSeconds']
res['floorStored']=fs_; res['floorStoredVsZstd']=fs_['idealSeconds']/z; res['convertVsFloorStored']=c/fs_['idealSeconds']
json.dump(res,open(os.path.join(out,'results.json'),'w'),indent=2)
mb=lambda b:f"{b/1048576:.1f} MiB"
print(f"image: {raw/1048576:.0f} MiB uncompressed, {cj['files']} files, {cj['layers']} layer(s); conversions and floors: best of {rounds} round(s)")
print(f"zstd -3 -T0            {z:7.2f} s   {mb(zs)}")
print(f"gzip -6                {g:7.2f} s   {mb(gs)}")
print(f"image as stored ({'gzip' if open(os.path.join(out,'convert.json')).read() else ''} layers) as input:")
print(f"ocichunk convert       {c:7.2f} s   {mb(stored)} (frames+TOC; runs {cs})   = {c/z:.2f}x zstd time, peak RSS {int(crss)/1024:.0f} MiB")
print(f"ocichunk re-convert    {rc:7.2f} s   = {rc/c:.2f}x first conversion, peak RSS {int(rcrss)/1024:.0f} MiB (same layer blobs: their earlier conversion is reused)")
print(f"same image, uncompressed layers as input:")
print(f"ocichunk convert       {pt:7.2f} s   (runs {ps}) = {pt/z:.2f}x zstd time, peak RSS {int(prss)/1024:.0f} MiB")
sj=json.load(open(os.path.join(out,'sorted.json')))
print(f"same files, layers re-tarred with tar --sort=name ({sj['onePassLayers']}/{sj['layers']} layers in one pass):")
print(f"ocichunk convert       {st:7.2f} s   (runs {ss}) = {st/z:.2f}x zstd time, peak RSS {int(srss)/1024:.0f} MiB")
print(f"same content, other layer digests, into the layout holding its chunks: {prt:7.2f} s = {prt/pt:.2f}x (every byte read and hashed, nothing compressed)")
print(f"the work alone (benchmarks/floor.mjs on the same bytes): scan = read + SHA-256 + tar + FastCDC + chunk SHA-256 {fl['scan']['wall']:.2f} s / {fl['scan']['cpu']:.2f} CPU-s;")
print(f"  64 KiB zstd -6 frames {fl['compress']['wall']:.2f} s / {fl['compress']['cpu']:.2f} CPU-s; pack SHA-256 {fl['packHash']['cpu']:.2f} CPU-s")
print(f"  = {fl['cpuSeconds']:.2f} CPU-s, at best {fl['idealSeconds']:.2f} s on {fl['cores']} cores = {fl['idealSeconds']/z:.2f}x zstd time (sorted-input convert = {st/fl['idealSeconds']:.2f}x this floor, unsorted uncompressed input = {pt/fl['idealSeconds']:.2f}x)")
print(f"  with the layers as stored (the scan inflates them: {fs_['scan']['cpu']:.2f} CPU-s): at best {fs_['idealSeconds']:.2f} s = {fs_['idealSeconds']/z:.2f}x zstd time (convert of the stored image = {c/fs_['idealSeconds']:.2f}x this floor)")
print(f"stored size: {stored/zs:.3f}x zstd -3, {stored/gs:.3f}x gzip -6; TOC {cj['tocBytes']} B = {res['tocBytesPer10kFiles']/1024:.0f} KiB per 10k files")
print(f"results: {os.path.join(out,'results.json')}")
PY
