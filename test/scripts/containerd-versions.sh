#!/usr/bin/env bash
# Fetches and caches other containerd releases for the end-to-end tests, and
# prints where each one's `containerd` binary is.
#
#   containerd-versions.sh [1.6|1.7|2.1|all]      (default: all)
#
# prints one `VERSION PATH` line per release, e.g.
#
#   1.6.20 /usr/bin/containerd
#   1.7.24 /var/cache/wasmcell/containerd/1.7.24/usr/bin/containerd
#   2.1.9 /var/cache/wasmcell/containerd/2.1.9/usr/bin/containerd
#
# Who runs it: `make containerd-versions` (a prerequisite of `make test` and
# `make e2e`, so a fresh machine fetches 1.7 and 2.1 before the suites run),
# and the end-to-end harness (test/e2e/src/lib.rs, `Release::of`), which runs
# `containerd-versions.sh 1.7|2.1` and uses the printed path; ctr is taken from
# beside it. 1.6 is used from /usr/bin directly by the harness.
#
# Where they come from:
#   1.6  the system's containerd (Debian bookworm; install with deps.sh)
#   1.7  Debian trixie's `containerd` package
#   2.1  Debian sid's `containerd` package
# The packages' binaries (containerd, ctr, containerd-shim-runc-v2) need only
# libc, so they run on bookworm as they are. `ctr` and the runc shim sit next
# to `containerd`, in the same usr/bin.
#
# The system's apt configuration is never touched or read: apt-get runs with a
# private apt.conf (APT_CONFIG, which also keeps /etc/apt/apt.conf.d and its
# hooks out), a private sources list, lists, cache and preferences, all under
# "$CACHE/.apt". Downloaded packages are unpacked with `dpkg -x`; nothing is
# installed. A release that is already cached is printed without any network
# access, so a second run is instant. Delete its directory to fetch it anew.
#
# Environment:
#   WASMCELL_CONTAINERD_CACHE  cache root (default /var/cache/wasmcell/containerd)
#   WASMCELL_DEBIAN_MIRROR     Debian mirror URL (default: the one the system's
#                              apt sources use)
#
# The exact version is whatever trixie / sid serve when the cache is first
# filled (1.7.24 and 2.1.9 when this was written); a warning is printed when
# the served version is not of the requested series.
set -euo pipefail

CACHE="${WASMCELL_CONTAINERD_CACHE:-/var/cache/wasmcell/containerd}"

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { echo "containerd-versions: $*" >&2; }

# Suite that serves each series.
suite_of() {
  case "$1" in
    1.7) echo trixie ;;
    2.1) echo sid ;;
    *) return 1 ;;
  esac
}

# Print the cached release of a series, if any ("VERSION PATH").
# "$CACHE/.series-X.Y" names the release that was fetched for series X.Y.
cached() {
  local v
  v="$(cat "$CACHE/.series-$1" 2>/dev/null)" || return 1
  [ -n "$v" ] && [ -f "$CACHE/$v/.complete" ] || return 1
  echo "$v $CACHE/$v/usr/bin/containerd"
}

source "$(dirname "$0")/debian-apt.sh"

# Fetch, unpack and check one series; print "VERSION PATH".
fetch() {
  local series="$1" suite ver upstream dl deb tmp dest
  suite="$(suite_of "$series")"
  # (apt-cache fails when the suite's lists could not be fetched: say so
  # below, with what apt-get update said, instead of exiting silently.)
  ver="$( { apt_private apt-cache show "containerd/$suite" 2>/dev/null || true; } | sed -n 's/^Version: //p' | head -n1)"
  if [ -z "$ver" ]; then
    log "no containerd package in $suite from $(mirror); apt-get update said:"
    cat "$CACHE/.apt/update.log" >&2
    exit 1
  fi
  # Debian version -> upstream: drop epoch, ~ds1 and the Debian revision.
  upstream="$(echo "$ver" | sed -E 's/^[0-9]+://; s/[~+].*$//; s/-[^-]*$//')"
  case "$upstream" in
    "$series".*) ;;
    *) log "warning: $suite serves containerd $ver, not a $series release; caching it as $upstream" ;;
  esac
  dest="$CACHE/$upstream"
  if [ -f "$dest/.complete" ]; then
    echo "$upstream" > "$CACHE/.series-$series"
    echo "$upstream $dest/usr/bin/containerd"; return
  fi
  dl="$CACHE/.apt/dl"
  rm -f "$dl"/*.deb
  log "downloading containerd $ver from $suite"
  (cd "$dl" && apt_private apt-get -q download "containerd/$suite" >"$CACHE/.apt/download.log" 2>&1) || {
    cat "$CACHE/.apt/download.log" >&2; log "apt-get download failed"; exit 1; }
  deb="$(ls "$dl"/containerd_*.deb | head -n1)"
  tmp="$(mktemp -d "$CACHE/.x.XXXXXX")"
  dpkg -x "$deb" "$tmp"
  if ! "$tmp/usr/bin/containerd" --version >&2; then
    rm -rf "$tmp"; log "the unpacked containerd $ver does not run here"; exit 1
  fi
  "$tmp/usr/bin/ctr" --version >/dev/null
  echo "$upstream" > "$tmp/.complete"
  echo "$ver" > "$tmp/.debian-version"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  rm -f "$deb"
  echo "$upstream" > "$CACHE/.series-$series"
  echo "$upstream $dest/usr/bin/containerd"
}

system16() {
  local bin v
  bin="$(command -v containerd || true)"
  [ -n "$bin" ] || { log "no system containerd: run test/scripts/deps.sh"; exit 1; }
  v="$("$bin" --version | awk '{print $3}' | sed -E 's/[~+-].*$//')"
  case "$v" in
    1.6.*) ;;
    *) log "warning: the system containerd is $v, not 1.6" ;;
  esac
  echo "$v $bin"
}

want="${1:-all}"
case "$want" in
  1.6) series=(1.6) ;;
  1.7) series=(1.7) ;;
  2.1) series=(2.1) ;;
  all) series=(1.6 1.7 2.1) ;;
  -h|--help) usage ;;
  *) usage ;;
esac

# Which releases need fetching (and so which suites apt has to know).
suites=()
for s in "${series[@]}"; do
  [ "$s" = 1.6 ] && continue
  cached "$s" >/dev/null || suites+=("$(suite_of "$s")")
done

if [ ${#suites[@]} -gt 0 ]; then
  mkdir -p "$CACHE"
  # One fetcher at a time per cache.
  exec 9>"$CACHE/.lock"
  flock 9
  apt_setup "${suites[@]}"
fi

for s in "${series[@]}"; do
  if [ "$s" = 1.6 ]; then system16; continue; fi
  cached "$s" || fetch "$s"
done

# The package lists (about 250 MB) are of no use once the releases are cached.
if [ -n "$APT_READY" ]; then rm -rf "$APTDIR/lists" "$APTDIR/cache" "$APTDIR/state"; fi
