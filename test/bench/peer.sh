#!/usr/bin/env bash
# Builds the peers `make bench-http` measures wasmcell against, once each,
# into the bench cache (WASMCELL_BENCH_CACHE, default /var/cache/wasmcell/bench):
#
#   peer.sh wasmtime   `wasmtime serve` 48.0.8: cargo install wasmtime-cli
#                      --locked into $CACHE/wasmtime-48.0.8 (15-20 min cold)
#   peer.sh runwasi    runwasi's containerd-shim-wasmtime-v1, built from the
#                      source checkout (or git URL/dir) RUNWASI_SRC into
#                      $CACHE/runwasi/bin (about 25 min cold)
#
# runwasi pins an older toolchain in rust-toolchain.toml and has a member
# (containerd-shim-wamr) with a git dependency; the copy built here drops
# both, in the cache's own checkout, never in RUNWASI_SRC. Nothing of either
# peer is committed to this repository.
set -euo pipefail
CACHE="${WASMCELL_BENCH_CACHE:-/var/cache/wasmcell/bench}"
mkdir -p "$CACHE"
log() { echo "bench-peer: $*" >&2; }

case "${1:-}" in
  wasmtime)
    bin="$CACHE/wasmtime-48.0.8/bin/wasmtime"
    if [ -x "$bin" ]; then log "wasmtime serve: $bin (cached)"; exit 0; fi
    log "cargo install wasmtime-cli 48.0.8 (once, 15-20 min on 2 cores)"
    cargo install wasmtime-cli --version 48.0.8 --locked --root "$CACHE/wasmtime-48.0.8"
    ;;
  runwasi)
    bin="$CACHE/runwasi/bin/containerd-shim-wasmtime-v1"
    if [ -x "$bin" ]; then log "runwasi: $bin (cached)"; exit 0; fi
    if [ -z "${RUNWASI_SRC:-}" ]; then
      log "RUNWASI_SRC is not set: give a checkout (or git URL) of https://github.com/containerd/runwasi"
      exit 1
    fi
    # runwasi's libcontainer needs libseccomp >= 2.5 found by pkg-config
    # (else it fails on `get_notify_fd`).
    for pkg in libseccomp-dev pkg-config protobuf-compiler; do
      dpkg -s "$pkg" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null
    done
    src="$CACHE/runwasi/src"
    rm -rf "$src"; mkdir -p "$CACHE/runwasi/bin"
    git clone --quiet "$RUNWASI_SRC" "$src"
    log "runwasi at $(git -C "$src" rev-parse --short HEAD)"
    rm -f "$src/rust-toolchain.toml"
    sed -i '/"crates\/containerd-shim-wamr",/d' "$src/Cargo.toml"
    (cd "$src" && cargo build --release -p containerd-shim-wasmtime)
    cp "$src/target/release/containerd-shim-wasmtime-v1" "$bin"
    log "runwasi: $bin"
    ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
