#!/usr/bin/env bash
# Peak RSS of `ocichunk convert` for single layers of growing size (default 50 MB and 400 MB of
# files), cut from the files of the big benchmark image. Memory should stay flat as layers grow.
# Usage: benchmarks/rss.sh [SIZE_MB ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
[ -d "$cache/layouts/big" ] || bash "$repo/test/images/build-images.sh" --big >&2
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(50 400)
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-rss-XXXXXX)}
umoci unpack --image "$cache/layouts/big:latest" "$OUT/bundle" > /dev/null
for mb in "${sizes[@]}"; do
  # the first files (in sorted order) adding up to ~mb MB
  (cd "$OUT/bundle/rootfs" && find . -type f -printf '%s %p\n' | sort -k2 | awk -v lim=$((mb * 1048576)) 's < lim { s += $1; print $2 }') > "$OUT/list-$mb"
  tar --sort=name -C "$OUT/bundle/rootfs" -cf "$OUT/layer-$mb.tar" --no-recursion -T "$OUT/list-$mb"
  python3 - "$OUT/layer-$mb.tar" "$OUT/in-$mb" <<'PY'
import hashlib, json, os, sys
tar, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, 'blobs', 'sha256'))
def put(path=None, data=None):
    h = hashlib.sha256()
    if data is None:
        with open(path, 'rb') as f:
            for b in iter(lambda: f.read(1 << 20), b''): h.update(b)
        size = os.path.getsize(path)
        os.link(path, os.path.join(out, 'blobs', 'sha256', h.hexdigest()))
    else:
        h.update(data); size = len(data)
        open(os.path.join(out, 'blobs', 'sha256', h.hexdigest()), 'wb').write(data)
    return {'digest': 'sha256:' + h.hexdigest(), 'size': size}
layer = put(tar)
cfg = json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': [layer['digest']]}}).encode()
m = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                'config': dict(mediaType='application/vnd.oci.image.config.v1+json', **put(data=cfg)),
                'layers': [dict(mediaType='application/vnd.oci.image.layer.v1.tar', **layer)]}).encode()
json.dump({'schemaVersion': 2, 'manifests': [dict(mediaType='application/vnd.oci.image.manifest.v1+json', **put(data=m),
           annotations={'org.opencontainers.image.ref.name': 'x'})]}, open(os.path.join(out, 'index.json'), 'w'))
open(os.path.join(out, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
PY
  size=$(stat -c %s "$OUT/layer-$mb.tar")
  /usr/bin/time -f '%M' -o "$OUT/rss-$mb" node "$repo/bin/ocichunk.js" convert "oci:$OUT/in-$mb:x" "oci:$OUT/out-$mb:x" --json --tmpdir "$OUT" > "$OUT/convert-$mb.json"
  echo "layer of $((size / 1048576)) MiB uncompressed: peak RSS $(( $(cat "$OUT/rss-$mb") / 1024 )) MiB"
done
