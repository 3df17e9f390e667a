# Shared by demo.sh and bench: a private containerd in a temp dir, with the
# shim on its PATH. Never touches a system containerd. `cd_stop` (set as an
# EXIT trap) stops containerd and every shim it started, by PID.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/release"

cd_start() {
  CD_DIR="$(mktemp -d /tmp/wcd.XXXXXX)"   # short: socket paths < 108 bytes
  mkdir -p "$CD_DIR/bin"
  ln -s "$BIN/containerd-shim-wasmtime-v1" "$CD_DIR/bin/"
  cat > "$CD_DIR/config.toml" <<TOML
version = 2
root = "$CD_DIR/root"
state = "$CD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CD_DIR/c.sock"
TOML
  # The shim inherits containerd's environment: a private compile cache.
  WASMCELL_CACHE_DIR="${WASMCELL_CACHE_DIR:-$CD_DIR/cache}" PATH="$CD_DIR/bin:$PATH" containerd --config "$CD_DIR/config.toml" >"$CD_DIR/containerd.log" 2>&1 &
  CD_PID=$!
  for _ in $(seq 1 300); do
    ctr -a "$CD_DIR/c.sock" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "containerd did not start; log:" >&2; cat "$CD_DIR/containerd.log" >&2; return 1
}

CTR() { ctr -a "$CD_DIR/c.sock" "$@"; }

cd_stop() {
  [ -n "${CD_PID:-}" ] || return 0
  # Tasks first, through containerd: a runc container's process outlives its
  # shim, so killing shims alone would leave it running.
  local tasks; tasks=$(CTR task ls -q 2>/dev/null || true)
  for t in $tasks; do CTR task kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  [ -z "$tasks" ] || sleep 0.5
  for t in $tasks; do CTR task delete -f "$t" >/dev/null 2>&1 || true; done
  kill "$CD_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$CD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$CD_PID" 2>/dev/null || true
  # Shims outlive containerd by design; ours must not outlive this script.
  for p in $(pgrep -f -- "-address $CD_DIR/c.sock" || true); do kill -9 "$p" 2>/dev/null || true; done
  grep -o " $CD_DIR[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$CD_DIR"
  CD_PID=
}
