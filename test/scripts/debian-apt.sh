# Sourced by containerd-versions.sh and sid-rust.sh: apt-get and apt-cache
# on Debian suites of the caller's choice, with a configuration, sources
# list, lists, cache and preferences all private to "$CACHE/.apt". The
# system's apt configuration is never touched or read; nothing is installed.
# The caller defines CACHE and log().

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

# Private apt setup, and one `apt-get update` for the suites named (main
# only). Done once per run; APT_READY says it was.
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
