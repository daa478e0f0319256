# Shared by test/images/build-images.sh and benchmarks/corpus.sh (sourced; needs $CACHE and log()):
# the Debian mirror and suite from this machine's apt sources, a private buildah storage, and the
# steps that turn a debootstrap'ed root into a committed OCI layout.
# --- the mirror and suite from apt's sources (deb822 first, then the classic list) ---
mirror=""; suite=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  read -r mirror suite < <(awk '
    /^Types:/ { deb = ($0 ~ /(^|[ \t])deb([ \t]|$)/) }
    /^URIs:/ && deb && !u { u = $2 }
    /^Suites:/ && deb && !s { s = $2 }
    /^$/ { if (u && s) { print u, s; exit } }
    END { if (u && s) print u, s }' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  read -r mirror suite < <(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i+1); exit }' /etc/apt/sources.list)
fi
[ -n "$mirror" ] && [ -n "$suite" ] || { log "cannot find a Debian mirror in the apt sources"; exit 1; }
log "mirror $mirror, suite $suite"

B=(buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)

bootstrap() { # dir [suite]
  local s=${2:-$suite}
  rm -rf "$1"
  log "debootstrap --variant=minbase $s -> $1"
  mkdir -p "$CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$s" "$1" "$mirror" > "$1.log" 2>&1 \
    || { tail -20 "$1.log" >&2; exit 1; }
}

commit() { # container dest-layout: commit into the private storage (as localhost/NAME), push to an OCI layout
  local name
  name=localhost/ocichunk-$(basename "$2"):latest
  rm -rf "$2.tmp"
  "${B[@]}" commit --quiet --format oci "$1" "$name" > /dev/null
  "${B[@]}" rm "$1" > /dev/null
  "${B[@]}" push --quiet --disable-compression "$name" "oci:$2.tmp:latest"
  rm -rf "$2"
  mv "$2.tmp" "$2"
}

base_image() { # rootfs dest
  local c mnt
  c=$("${B[@]}" from scratch)
  mnt=$("${B[@]}" mount "$c")
  tar -C "$1" -cf - . | tar -C "$mnt" -xpf - --numeric-owner
  "${B[@]}" umount "$c" > /dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh \
    --os linux --arch amd64 "$c"
  commit "$c" "$2"
}

slim() { # rootfs: what Debian's own container images drop (debuerreotype): apt's package lists and
  # caches, and as its slim variant does, documentation (but copyright files), man and info pages
  # and translations, with a dpkg config that keeps packages installed later from adding them back
  local r=$1
  log "slim $r (apt lists and caches, docs but copyright, man, info, locale)"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/usr/share/man/* "$r"/usr/share/info/* \
    "$r"/usr/share/groff/* "$r"/usr/share/lintian/* "$r"/usr/share/linda/*
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' > "$r/etc/dpkg/dpkg.cfg.d/slim"
}
