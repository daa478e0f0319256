#!/usr/bin/env bash
# Restore speed and memory, against umoci's unpack of the original on the same machine, in one run:
#   - `umoci unpack` of the original image (the reference tree)
#   - `ocichunk restore` of its chunked form (merged in memory, written once into an empty dir)
#   - a valid image holding one 5 GiB file (zeros: one unique chunk), restored with flat memory
# Wall seconds and peak RSS (/usr/bin/time) for each; the restored tree is compared with umoci's.
# Usage: benchmarks/restore.sh [IMAGE_LAYOUT_DIR[:TAG]]   (default: the cached `big` test image)
#        ROUNDS=N alternating rounds (default 3, best of each); HUGE=0 skips the 5 GiB case,
#        REGISTRY=0 the restore from a local docker-registry. Results: a table on stdout, JSON in $OUT/results.json.
# Every round writes into new directories, kept until the end (FRESH=0: removed before the next
# round, as before), and each timed command starts after a sync. On ext4 without a journal,
# creating an inode skips, one inode-table lookup each, every free inode of the group deleted in the
# last minutes (fs/ext4/ialloc.c recently_deleted): right after removing the previous round's
# trees, that scan took more than half of a restore's CPU time (py), for umoci too; other processes'
# deletions do the same, so as root the trees go to a new ext4 filesystem of their own (a loop
# device; TARGET_FS=host writes them under $OUT instead).
source "$(dirname "$0")/common.sh"
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
command -v umoci >/dev/null || { echo "needs umoci (apt-get install umoci)" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/ocichunk-bench-XXXXXX)}
mkdir -p "$OUT"
ocichunk() { node "$repo/bin/ocichunk.js" "$@"; }
# seconds and peak KiB of a command: "S KIB"
measure() { sync; /usr/bin/time -f '%e %M' -o "$OUT/m.txt" "$@" > /dev/null; cat "$OUT/m.txt"; }
fresh=${FRESH:-1}
# Where the trees are written: as root, by default a new ext4 filesystem of its own (a sparse file
# mounted on a loop device), so that no other process's deletions slow inode allocation for either
# tool (TARGET_FS=host: under $OUT, as before)
T=$OUT
regpid=""
cleanup() {
  if [ -n "$regpid" ]; then kill "$regpid" 2>/dev/null || true; fi
  if [ "$T" != "$OUT" ]; then umount "$T" || umount -l "$T" || true; rm -f "$OUT/fs.img"; fi
}
trap cleanup EXIT
if [ "${TARGET_FS:-loop}" = loop ] && [ "$(id -u)" = 0 ]; then
  truncate -s 32G "$OUT/fs.img"
  mkfs.ext4 -q -F "$OUT/fs.img"
  mkdir -p "$OUT/fs"
  mount -o loop "$OUT/fs.img" "$OUT/fs"
  T=$OUT/fs
fi
# the directory of round $2 for $1 (the same one every round with FRESH=0, emptied first)
rdir() { if [ "$fresh" = 0 ]; then rm -rf "${T:?}/$1"; echo "$T/$1"; else echo "$T/$1-$2"; fi; }

ocichunk convert "oci:$dir:$tag" "oci:$OUT/chunked:img" --quiet > /dev/null
cat "$dir"/blobs/sha256/* "$OUT"/chunked/blobs/sha256/* > /dev/null   # warm the page cache for both

# ROUNDS alternating runs of each (default 3); the best of each is reported, every round on stderr
us=""; uk=""; os=""; ok=""; rounds=""
for r in $(seq "${ROUNDS:-3}"); do
  ud=$(rdir umoci "$r"); od=$(rdir restored "$r")
  read -r s k < <(measure umoci unpack --image "$dir:$tag" "$ud")
  if [ -z "$us" ] || [ "$(echo "$s < $us" | bc)" = 1 ]; then us=$s; uk=$k; fi
  u=$s
  read -r s k < <(measure node "$repo/bin/ocichunk.js" restore "oci:$OUT/chunked:img" "$od" --quiet)
  if [ -z "$os" ] || [ "$(echo "$s < $os" | bc)" = 1 ]; then os=$s; ok=$k; fi
  echo "round $r: umoci unpack $u s, ocichunk restore $s s ($(echo "scale=2; $s / $u" | bc)x)" >&2
  rounds="$rounds${rounds:+, }[$u, $s]"
done
# the same tree: names, types, modes, owners, devices, link targets, contents, mtimes
same=$(python3 - "$ud/rootfs" "$od" <<'PY'
import hashlib, os, stat, sys
def tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n); st = os.lstat(p)
            k = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_rdev,
                 os.readlink(p) if stat.S_ISLNK(st.st_mode) else None,
                 hashlib.sha256(open(p, 'rb').read()).hexdigest() if stat.S_ISREG(st.st_mode) else None,
                 int(st.st_mtime))
            out[os.path.relpath(p, root)] = k
    return out
print('yes' if tree(sys.argv[1]) == tree(sys.argv[2]) else 'no')
PY
)

# from a registry (a local docker-registry on 127.0.0.1): restore straight from it, against
# pulling the original into a layout (skopeo) and unpacking it (umoci)
rs=""; ps=""
if [ "${REGISTRY:-1}" != 0 ] && command -v docker-registry > /dev/null && command -v skopeo > /dev/null; then
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  mkdir -p "$OUT/registry"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$OUT/registry" "$port" > "$OUT/registry.yml"
  docker-registry serve "$OUT/registry.yml" > "$OUT/registry.log" 2>&1 &
  regpid=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" > /dev/null && break; sleep 0.1; done
  ocichunk convert "oci:$dir:$tag" "docker://127.0.0.1:$port/img:1" --quiet > /dev/null
  for r in $(seq "${ROUNDS:-3}"); do
    pd=$(rdir pulled "$r"); ud=$(rdir reg-umoci "$r"); od=$(rdir reg-restored "$r")
    sync
    s0=$(date +%s.%N)
    skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$port/img:1" "oci:$pd:img" > /dev/null
    umoci unpack --image "$pd:img" "$ud" > /dev/null
    s=$(printf %.2f "$(echo "$(date +%s.%N) - $s0" | bc)")
    if [ -z "$ps" ] || [ "$(echo "$s < $ps" | bc)" = 1 ]; then ps=$s; fi
    p=$s
    read -r s _ < <(measure node "$repo/bin/ocichunk.js" restore "docker://127.0.0.1:$port/img:1" "$od" --quiet)
    if [ -z "$rs" ] || [ "$(echo "$s < $rs" | bc)" = 1 ]; then rs=$s; fi
    echo "registry round $r: skopeo copy + umoci unpack $p s, ocichunk restore $s s ($(echo "scale=2; $s / $p" | bc)x)" >&2
  done
  rm -rf "$OUT/registry"
  kill $regpid 2>/dev/null || true
fi

rm -rf "$T"/umoci* "$T"/restored* "$T"/pulled* "$T"/reg-umoci* "$T"/reg-restored*

hs=""; hk=""
if [ "${HUGE:-1}" != 0 ]; then
  python3 - "$OUT/huge" <<'PY'
import hashlib, io, json, os, sys, tarfile
d = sys.argv[1]
os.makedirs(os.path.join(d, 'blobs', 'sha256'))
class Zeros(io.RawIOBase):
    def __init__(self, n): self.n = n
    def readable(self): return True
    def readinto(self, b):
        k = min(len(b), self.n); b[:k] = bytes(k); self.n -= k; return k
tmp = os.path.join(d, 'layer.tar')
with tarfile.open(tmp, 'w', format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo('big'); ti.size = 5 << 30; ti.mode = 0o644
    t.addfile(ti, io.BufferedReader(Zeros(5 << 30), 1 << 20))
h = hashlib.sha256()
with open(tmp, 'rb') as f:
    for b in iter(lambda: f.read(1 << 20), b''): h.update(b)
ld, size = h.hexdigest(), os.path.getsize(tmp)
os.rename(tmp, os.path.join(d, 'blobs', 'sha256', ld))
def put(obj):
    b = json.dumps(obj).encode(); x = hashlib.sha256(b).hexdigest()
    open(os.path.join(d, 'blobs', 'sha256', x), 'wb').write(b); return x, len(b)
c, cs = put({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + ld]}})
m, ms = put({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
             'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': 'sha256:' + c, 'size': cs},
             'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': 'sha256:' + ld, 'size': size}]})
json.dump({'schemaVersion': 2, 'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': 'sha256:' + m,
           'size': ms, 'annotations': {'org.opencontainers.image.ref.name': 'huge'}}]}, open(os.path.join(d, 'index.json'), 'w'))
open(os.path.join(d, 'oci-layout'), 'w').write('{"imageLayoutVersion":"1.0.0"}')
PY
  ocichunk convert "oci:$OUT/huge:huge" "oci:$OUT/huge-chunked:huge" --quiet > /dev/null
  rm -rf "$OUT/huge"
  read -r hs hk < <(measure node "$repo/bin/ocichunk.js" restore "oci:$OUT/huge-chunked:huge" "$OUT/huge-restored" --quiet)
  rm -rf "$OUT/huge-restored" "$OUT/huge-chunked"
fi

ratio=$(echo "scale=2; $os / $us" | bc)
printf '%-44s %8s %10s\n' "" "seconds" "peak RSS"
printf '%-44s %8s %7s MiB\n' "umoci unpack of the original" "$us" "$((uk / 1024))"
printf '%-44s %8s %7s MiB   (%sx umoci; same tree: %s)\n' "ocichunk restore of the chunked image" "$os" "$((ok / 1024))" "$ratio" "$same"
[ -n "$rs" ] && printf '%-44s %8s\n' "registry: skopeo copy + umoci unpack" "$ps"
[ -n "$rs" ] && printf '%-44s %8s %11s(%sx)\n' "registry: ocichunk restore" "$rs" "" "$(echo "scale=2; $rs / $ps" | bc)"
[ -n "$hs" ] && printf '%-44s %8s %7s MiB\n' "ocichunk restore, one 5 GiB file" "$hs" "$((hk / 1024))"
cat > "$OUT/results.json" <<EOF
{"image": "$dir:$tag", "umoci": {"seconds": $us, "rssKiB": $uk}, "restore": {"seconds": $os, "rssKiB": $ok, "sameTree": "$same"},
 "rounds": [$rounds],
 "registry": {"pullUnpackSeconds": "${ps}", "restoreSeconds": "${rs}"},
 "huge": {"seconds": "${hs}", "rssKiB": "${hk}"}}
EOF
echo "results: $OUT/results.json" >&2
