#!/usr/bin/env bash
# Fetches and caches Debian sid's Rust compiler with its wasm32 standard
# library and lld, and prints the path of a wrapper that runs that rustc:
#
#   sid-rust.sh      prints e.g. /var/cache/wasmcell/sid-rust/1.97.1+dfsg1-1/bin/rustc
#
# Who runs it: test/bench/rust-large.sh, which builds ripgrep for
# wasm32-wasip2 with it for `make bench` (test/bench/first_start.sh). This
# machine's Rust has no wasm32 targets and no rustup to add them; sid's
# packages carry the targets' std (libstd-rust-dev-wasm32).
#
# Where things come from: Debian sid's `rustc`, `libstd-rust-dev`,
# `libstd-rust-dev-wasm32` and `lld-N` (N: the LLVM rustc is built with, the
# `lld-N` libstd-rust-dev-wasm32 recommends), with every package they depend
# on, recursively, down to sid's libc6, except rustc's dependencies on the
# host toolchain (gcc, binutils, libc-dev): build scripts and proc macros are
# linked by the system's cc as usual. Sid's binaries need sid's libc, so the
# wrapper runs them through sid's own dynamic loader with the unpacked
# libraries first:
#
#   .../root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
#     --library-path .../root/usr/lib/x86_64-linux-gnu .../root/usr/bin/rustc \
#     --sysroot .../root/usr ARGS
#
# Next to the printed `rustc` is `wasm-ld` (lld's, run the same way): put that
# directory on PATH, after wasm-component-ld's, so that wasm32-wasip2's linker
# (wasm-component-ld) finds it. Children of rustc (cc, the linkers) run
# normally, with the system's libraries.
#
# The system's apt configuration is never touched or read: as in
# containerd-versions.sh, apt-get runs with a private apt.conf (APT_CONFIG), a
# private sources list, lists, cache and preferences, all under "$CACHE/.apt".
# Packages are unpacked with `dpkg -x`; nothing is installed. Once the cache is
# filled a run prints the wrapper without any network access, so a second run
# is instant. Delete the cache directory to fetch the current sid anew.
#
# Environment:
#   WASMCELL_SID_RUST_CACHE    cache root (default /var/cache/wasmcell/sid-rust)
#   WASMCELL_DEBIAN_MIRROR     Debian mirror URL (default: the one the system's
#                              apt sources use)
#
# Nothing is pinned: the version is whatever sid serves when the cache is first
# filled (rustc 1.97.1+dfsg1-1 with LLVM 22 when this was written); it is
# printed on stderr.
set -euo pipefail

CACHE="${WASMCELL_SID_RUST_CACHE:-/var/cache/wasmcell/sid-rust}"
# rustc's dependencies that are the host's C toolchain: the system's are used.
SKIP=" gcc cc c-compiler binutils libc-dev libc6-dev "

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { echo "sid-rust: $*" >&2; }
die() { log "$*"; exit 1; }

case "${1:-}" in
  "") ;;
  *) usage ;;
esac

# The cached toolchain, if complete: print its wrapper.
# "$CACHE/.current" names the directory that was filled last.
cached() {
  local v
  v="$(cat "$CACHE/.current" 2>/dev/null)" || return 1
  [ -n "$v" ] && [ -f "$CACHE/$v/.complete" ] && [ -x "$CACHE/$v/bin/rustc" ] || return 1
  log "$(cat "$CACHE/$v/.complete") (cached in $CACHE/$v)"
  echo "$CACHE/$v/bin/rustc"
}

source "$(dirname "$0")/debian-apt.sh"

# One field of sid's candidate of a package ("" when absent).
field() {  # package field
  { apt_private apt-cache show --no-all-versions "$1" 2>/dev/null || true; } |
    sed -n "s/^$2: //p" | head -n1
}

# A real package for a dependency name: itself, or the first package that
# provides it when it is virtual. Fails when there is none.
real_pkg() {
  if [ -n "$(field "$1" Package)" ]; then echo "$1"; return; fi
  local p
  p="$({ apt_private apt-cache showpkg "$1" 2>/dev/null || true; } |
        sed -n '/^Reverse Provides:/,$p' | sed -n '2p' | awk '{print $1}')"
  [ -n "$p" ] && [ -n "$(field "$p" Package)" ] || return 1
  echo "$p"
}

# The packages in the Depends and Pre-Depends closure of the arguments (minus
# $SKIP), one a line. For "a | b" the first alternative that exists is taken.
closure() {
  local -A seen=()
  local queue=("$@") p deps group alt name chosen
  while [ ${#queue[@]} -gt 0 ]; do
    p="${queue[0]}"; queue=("${queue[@]:1}")
    [ -z "${seen[$p]:-}" ] || continue
    seen[$p]=1
    echo "$p"
    deps="$(field "$p" Pre-Depends), $(field "$p" Depends)"
    while IFS= read -r group; do
      [ -n "${group// /}" ] || continue
      chosen=
      IFS='|' read -ra alts <<< "$group"
      for alt in "${alts[@]}"; do
        # Drop version constraints and architecture qualifiers.
        name="$(echo "$alt" | sed -E 's/\(.*\)//; s/\[.*\]//; s/:[a-z0-9]+//; s/[[:space:]]//g')"
        [ -n "$name" ] || continue
        case "$SKIP" in *" $name "*) chosen=skip; break ;; esac
        if chosen="$(real_pkg "$name")"; then break; fi
        chosen=
      done
      [ -n "$chosen" ] || die "sid has no package for \"$group\" (a dependency of $p)"
      [ "$chosen" = skip ] || [ -n "${seen[$chosen]:-}" ] || queue+=("$chosen")
    done < <(echo "$deps" | tr ',' '\n')
  done
}

fetch() {
  local ver llvm lld pkgs dl tmp dest ldso libdir lp n deb
  ver="$(field rustc Version)"
  if [ -z "$ver" ]; then
    log "no rustc package in sid from $(mirror); apt-get update said:"
    cat "$APTDIR/update.log" >&2
    exit 1
  fi
  local wver
  wver="$(field libstd-rust-dev-wasm32 Version)"
  [ -n "$wver" ] || die "sid serves rustc $ver but no libstd-rust-dev-wasm32"
  [ "$wver" = "$ver" ] || die "sid serves rustc $ver but libstd-rust-dev-wasm32 $wver (a transition in progress?); try again later"
  # lld-N for the LLVM rustc uses: libstd-rust-dev-wasm32 recommends it.
  lld="$(field libstd-rust-dev-wasm32 Recommends | grep -oE 'lld-[0-9]+' | head -n1 || true)"
  if [ -z "$lld" ]; then
    llvm="$(closure rustc | grep -E '^libllvm[0-9]+$' | head -n1 || true)"
    [ -n "$llvm" ] || die "cannot tell which LLVM sid's rustc $ver uses (no lld-N recommended, no libllvmN dependency)"
    lld="lld-${llvm#libllvm}"
  fi
  [ -n "$(field "$lld" Package)" ] || die "sid has no $lld package (the lld for rustc $ver)"
  log "sid serves rustc $ver, $lld $(field "$lld" Version)"
  closure rustc libstd-rust-dev libstd-rust-dev-wasm32 "$lld" > "$APTDIR/packages"
  mapfile -t pkgs < "$APTDIR/packages"
  dest="$CACHE/$ver"
  dl="$APTDIR/dl"
  rm -f "$dl"/*.deb
  log "downloading ${#pkgs[@]} packages: ${pkgs[*]}"
  (cd "$dl" && apt_private apt-get -q download "${pkgs[@]}" >"$APTDIR/download.log" 2>&1) || {
    cat "$APTDIR/download.log" >&2; die "apt-get download failed"; }
  tmp="$(mktemp -d "$CACHE/.x.XXXXXX")"
  TMPX="$tmp"
  chmod 755 "$tmp"
  trap 'rm -rf "$TMPX"' EXIT
  mkdir -p "$tmp/root" "$tmp/bin"
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  (cd "$dl" && ls ./*.deb | sed 's:^\./::') > "$tmp/packages"

  # sid's dynamic loader and library directory (multiarch, e.g. x86_64-linux-gnu).
  ldso="$(cd "$tmp/root" && ls usr/lib/*/ld-linux*.so.[0-9] 2>/dev/null | head -n1 || true)"
  [ -n "$ldso" ] || die "no dynamic loader (usr/lib/*/ld-linux*.so.N) in sid's libc6"
  libdir="$(dirname "$ldso")"
  n="${lld#lld-}"
  lp="\$r/$libdir"
  [ -d "$tmp/root/usr/lib/llvm-$n/lib" ] && lp="$lp:\$r/usr/lib/llvm-$n/lib"
  [ -x "$tmp/root/usr/bin/rustc" ] || die "sid's rustc package has no usr/bin/rustc"
  [ -e "$tmp/root/usr/lib/llvm-$n/bin/wasm-ld" ] || die "sid's $lld has no usr/lib/llvm-$n/bin/wasm-ld"
  [ -d "$tmp/root/usr/lib/rustlib/wasm32-wasip2/lib" ] ||
    die "sid's libstd-rust-dev-wasm32 $ver has no wasm32-wasip2 std (usr/lib/rustlib/wasm32-wasip2/lib)"

  # The wrappers find the unpacked tree next to themselves, so the cache can move.
  cat > "$tmp/bin/rustc" <<EOF
#!/bin/sh
# Debian sid's rustc $ver, run through sid's own dynamic loader and libraries
# (unpacked by test/scripts/sid-rust.sh).
r="\$(dirname "\$(readlink -f "\$0")")/../root"
exec "\$r/$ldso" --library-path "$lp" "\$r/usr/bin/rustc" --sysroot "\$r/usr" "\$@"
EOF
  cat > "$tmp/bin/wasm-ld" <<EOF
#!/bin/sh
# Debian sid's wasm-ld ($lld), run through sid's own dynamic loader and
# libraries (unpacked by test/scripts/sid-rust.sh).
r="\$(dirname "\$(readlink -f "\$0")")/../root"
exec "\$r/$ldso" --library-path "$lp" "\$r/usr/lib/llvm-$n/bin/wasm-ld" "\$@"
EOF
  chmod +x "$tmp/bin/rustc" "$tmp/bin/wasm-ld"

  # Checks: every library of rustc and wasm-ld resolves inside the tree (a
  # library taken from the host would be a dependency the closure missed),
  # both run, and rustc has a wasm32-wasip2 std it accepts.
  local r="$tmp/root" exe out bad
  for exe in usr/bin/rustc "usr/lib/llvm-$n/bin/wasm-ld"; do
    out="$("$r/$ldso" --library-path "${lp//\$r/$r}" --list "$r/$exe" 2>&1)" ||
      { echo "$out" >&2; die "sid's $exe does not load here"; }
    bad="$(echo "$out" | grep '=>' | grep -v "=> $r/" || true)"
    [ -z "$bad" ] || { echo "$bad" >&2; die "libraries of sid's $exe resolve outside $r (missing from the packages fetched)"; }
  done
  out="$("$tmp/bin/rustc" -vV 2>&1)" || { echo "$out" >&2; die "sid's rustc $ver does not run here"; }
  "$tmp/bin/wasm-ld" --version >/dev/null 2>&1 || die "sid's wasm-ld ($lld) does not run here"
  mkdir "$tmp/check"
  echo 'pub fn f() -> String { std::env::args().collect() }' > "$tmp/check/lib.rs"
  "$tmp/bin/rustc" --edition 2021 --target wasm32-wasip2 --crate-type lib --emit metadata \
      --out-dir "$tmp/check" "$tmp/check/lib.rs" >&2 ||
    die "sid's rustc $ver cannot compile for wasm32-wasip2 with its std"
  rm -rf "$tmp/check"

  echo "$(echo "$out" | head -n1) (Debian $ver), $("$tmp/bin/wasm-ld" --version | head -n1)" > "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  rm -f "$dl"/*.deb
  echo "$ver" > "$CACHE/.current"
  log "$(cat "$dest/.complete") in $dest"
  echo "$dest/bin/rustc"
}

cached && exit 0
mkdir -p "$CACHE" || die "cannot create $CACHE (set WASMCELL_SID_RUST_CACHE)"
# One fetcher at a time per cache; another may have filled it meanwhile.
exec 9>"$CACHE/.lock"
flock 9
cached && exit 0
apt_setup sid
fetch
# The package lists (about 100 MB) are of no use once the toolchain is cached.
rm -rf "$APTDIR/lists" "$APTDIR/cache" "$APTDIR/state"
