# Sourced by the benchmark scripts: resolves the image argument (default: the cached `big` test
# image, built on demand) into $repo, $dir (layout directory) and $tag, and sets `t` (seconds a
# command takes, its stdout dropped).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(dirname "$here")
cache=${OCICHUNK_IMAGE_CACHE:-$HOME/.cache/ocichunk/images}
src=${1:-$cache/layouts/big:latest}
dir=${src%%:*}
tag=${src#*:}; [ "$tag" = "$src" ] && tag=latest
if [ ! -d "$dir" ]; then
  echo "building the benchmark image (test/images/build-images.sh --big)" >&2
  bash "$repo/test/images/build-images.sh" --big >&2
fi

# append_uncompressed BLOB OUT: the layer's tar bytes (gunzipped or unzstd'ed as needed) appended to OUT
append_uncompressed() {
  case "$(head -c2 "$1" | od -An -tx1 | tr -d ' ')" in
    1f8b) gzip -dc "$1" >> "$2" ;;
    28b5) zstd -dc "$1" >> "$2" ;;
    *) cat "$1" >> "$2" ;;
  esac
}

# layers LAYOUT...: the layer blobs of the layouts' images, each distinct digest once, in order
layers() {
  python3 - "$@" <<'PY'
import json, os, sys
seen = {}
for l in sys.argv[1:]:
    b = lambda d: os.path.join(l, 'blobs', 'sha256', d.split(':')[1])
    top = json.load(open(b(json.load(open(os.path.join(l, 'index.json')))['manifests'][0]['digest'])))
    m = json.load(open(b(top['manifests'][0]['digest']))) if 'manifests' in top else top
    for x in m['layers']:
        seen.setdefault(x['digest'], b(x['digest']))
print('\n'.join(seen.values()))
PY
}
