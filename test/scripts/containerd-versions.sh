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

# Debian mirror: the first non-security Debian URI the system's sources name.
mirror() {
  if [ -n "${WASMCELL_DEBIAN_MIRROR:-}" ]; then echo "$WASMCELL_DEBIAN_MIRROR"; return; fi
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^][ ]+/debian/?' | grep -v security | head -n1 || true)"
  if [ -z "$m" ]; then
    log "no Debian mirror found in /etc/apt/sources.list*: set WASMCELL_DEBIAN_MIRROR"
    return 1
  fi
  echo "$m" | sed 's:/*$::'
}

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

# apt-get / apt-cache with everything private to $APTDIR.
apt_private() {
  local tool="$1"; shift
  APT_CONFIG="$APTDIR/apt.conf" "$tool" \
    -o Dir::Etc::SourceList="$APTDIR/sources.list" \
    -o Dir::Etc::SourceParts="$APTDIR/empty" \
    -o Dir::Etc::Preferences="$APTDIR/empty/none" \
    -o Dir::Etc::PreferencesParts="$APTDIR/empty" \
    -o Dir::State="$APTDIR/state" \
    -o Dir::State::Lists="$APTDIR/lists" \
    -o Dir::State::status="$APTDIR/status" \
    -o Dir::Cache="$APTDIR/cache" \
    "$@"
}

# Private apt setup, and one `apt-get update` for every suite this run needs.
APT_READY=
apt_setup() {
  [ -z "$APT_READY" ] || return 0
  APTDIR="$CACHE/.apt"
  mkdir -p "$APTDIR/empty" "$APTDIR/state" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/dl"
  : > "$APTDIR/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || { log "missing $keyring (package debian-archive-keyring)"; exit 1; }
  # Read before anything else by apt: pointing Dir::Etc::Parts at an empty dir
  # and Dir::Etc::Main at /dev/null keeps /etc/apt/apt.conf{,.d} out.
  cat > "$APTDIR/apt.conf" <<EOF
Dir::Etc::Parts "$APTDIR/empty";
Dir::Etc::Main "/dev/null";
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
// The mirror this machine reaches serves a frozen snapshot whose Release files
// have expired (the system's own apt.conf.d says the same). Signatures are
// still checked.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
EOF
  local m s
  m="$(mirror)"
  : > "$APTDIR/sources.list"
  for s in "$@"; do
    echo "deb [signed-by=$keyring] $m $s main" >> "$APTDIR/sources.list"
  done
  # Private lists need no apt lock, but don't compete with a system apt-get
  # (e.g. deps.sh) for the mirror: wait for it, up to 10 minutes.
  local i
  for i in $(seq 1 300); do
    pgrep -x apt-get >/dev/null || break
    [ "$i" = 1 ] && log "waiting for a running apt-get to finish"
    sleep 2
  done
  log "apt-get update (private lists; $m: $*)"
  apt_private apt-get -q update >"$APTDIR/update.log" 2>&1 || {
    cat "$APTDIR/update.log" >&2; log "apt-get update failed"; exit 1; }
  APT_READY=1
}

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
