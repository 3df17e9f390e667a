#!/usr/bin/env bash
# Builds ripgrep from crates.io as a WebAssembly component (wasm32-wasip2),
# once, and prints the path of its rg.wasm:
#
#   rust-large.sh    prints e.g. /var/cache/wasmcell/bench/ripgrep/15.2.0/bin/rg.wasm
#
# Who runs it: test/bench/first_start.sh (make bench), for the first-start and
# warm-start rows of a large Rust component (issue 18). The component is about
# 25 MB: 2.4 MB of code, the rest ripgrep's release debug info.
#
# How: `cargo install ripgrep@15.2.0 --locked --target wasm32-wasip2` with
# Debian sid's rustc (test/scripts/sid-rust.sh fetches it; this machine's
# Rust has no wasm32 targets). wasm32-wasip2 links with wasm-component-ld,
# which runs wasm-ld: wasm-component-ld 0.5.27 (the one the fixtures use; see
# test/fixtures/guests/build.sh) from the same fixture-tools cache, installed
# there with the system's cargo when missing, and sid's wasm-ld from beside
# the rustc wrapper. The build takes one to three minutes on two cores; its
# log is kept in the cache (build.log). Once built, a run prints the path
# without building or any network access.
#
# Environment:
#   WASMCELL_BENCH_CACHE      bench cache (default /var/cache/wasmcell/bench);
#                             the build goes to its ripgrep/VERSION
#   WASMCELL_FIXTURE_TOOLS    wasm-component-ld's cache (default
#                             ~/.cache/wasmcell/fixture-tools)
#   WASMCELL_SID_RUST_CACHE   passed on to sid-rust.sh
set -euo pipefail

VERSION=15.2.0
WCL_VERSION=0.5.27
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${WASMCELL_BENCH_CACHE:-/var/cache/wasmcell/bench}/ripgrep"
DEST="$CACHE/$VERSION"
OUT="$DEST/bin/rg.wasm"

log() { echo "rust-large: $*" >&2; }
die() { log "$*"; exit 1; }

cached() {
  [ -f "$DEST/.complete" ] && [ -s "$OUT" ] || return 1
  echo "$OUT"
}

cached && exit 0
mkdir -p "$CACHE" || die "cannot create $CACHE (set WASMCELL_BENCH_CACHE)"
# One build at a time; another may have finished meanwhile.
exec 9>"$CACHE/.lock"
flock 9
cached && exit 0

command -v cargo >/dev/null || die "no cargo on PATH (the system's Rust toolchain builds wasm-component-ld and drives the build)"
RUSTC_SID="$("$HERE/../scripts/sid-rust.sh")" || die "cannot get Debian sid's rustc (test/scripts/sid-rust.sh failed, see above)"

wcl="${WASMCELL_FIXTURE_TOOLS:-$HOME/.cache/wasmcell/fixture-tools}"
if [ ! -x "$wcl/bin/wasm-component-ld" ]; then
  log "installing wasm-component-ld $WCL_VERSION into $wcl"
  cargo install "wasm-component-ld@$WCL_VERSION" --locked --root "$wcl" >&2 ||
    die "cannot install wasm-component-ld $WCL_VERSION from crates.io"
fi
v="$("$wcl/bin/wasm-component-ld" --version 2>/dev/null || true)"
case "$v" in
  *" $WCL_VERSION") ;;
  *) log "warning: $wcl/bin/wasm-component-ld is \"$v\", not $WCL_VERSION" ;;
esac

tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "building ripgrep $VERSION for wasm32-wasip2 (a few minutes; log: $CACHE/build.log)"
start=$SECONDS
# wasm-component-ld first on PATH, then sid's wasm-ld (beside the rustc
# wrapper) for it to run. CARGO_TARGET_DIR under $tmp: nothing is shared with
# other builds, and all of it goes when done.
if ! PATH="$wcl/bin:$(dirname "$RUSTC_SID"):$PATH" RUSTC="$RUSTC_SID" CARGO_TARGET_DIR="$tmp/target" \
    cargo install "ripgrep@$VERSION" --locked --target wasm32-wasip2 --root "$tmp/root" \
    >"$CACHE/build.log" 2>&1; then
  tail -n 40 "$CACHE/build.log" >&2
  die "building ripgrep $VERSION failed (whole log: $CACHE/build.log)"
fi
[ -s "$tmp/root/bin/rg.wasm" ] || die "cargo install left no bin/rg.wasm (log: $CACHE/build.log)"
# A component, not a core module: its header's layer field is 1.
[ "$(od -An -tx1 -j6 -N2 "$tmp/root/bin/rg.wasm" | tr -d ' ')" = 0100 ] ||
  die "the built rg.wasm is not a WebAssembly component"
echo "ripgrep $VERSION, wasm32-wasip2, $("$RUSTC_SID" -V)" > "$tmp/root/.complete"
rm -rf "$DEST"
mv "$tmp/root" "$DEST"
log "built $OUT ($(stat -c %s "$OUT") bytes) in $((SECONDS - start)) s"
echo "$OUT"
