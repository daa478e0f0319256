#!/usr/bin/env bash
# Makes sure the Rust toolchain rust-toolchain.toml pins is there before cargo runs (npm's
# build:native and .ci/run call this). rustup does not install a pinned toolchain by itself; where
# it cannot download one, the machine's stable toolchain stands in for the pinned version when it
# is that very version (a link under rustup's toolchains, named as rustup would name it).
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
command -v rustup > /dev/null || exit 0 # a Rust without rustup: cargo ignores the file; the version check is cargo's
if rustup run "$want" rustc --version > /dev/null 2>&1; then
  exit 0
fi
host=$(rustc +stable -vV 2> /dev/null | sed -n 's/^host: //p')
have=$(rustc +stable --version 2> /dev/null | awk '{print $2}')
if [ "$have" = "$want" ] && [ -n "$host" ]; then
  home=${RUSTUP_HOME:-$HOME/.rustup}
  ln -sfn "$home/toolchains/stable-$host" "$home/toolchains/$want-$host"
  echo "[toolchain] Rust $want: the stable toolchain ($have) stands in" >&2
  exit 0
fi
echo "[toolchain] installing Rust $want (rust-toolchain.toml)" >&2
rustup toolchain install "$want" --profile minimal --component rustfmt --component clippy
