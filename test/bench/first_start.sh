#!/usr/bin/env bash
# make bench (part): first starts (issue 18). With an empty compile cache,
# `ctr run --rm` of the 18 MB componentize-py component and of ripgrep 15.2.0
# (a 25 MB Rust component built from crates.io by rust-large.sh), and the
# HTTP fixture's first answered request, under the default (baseline code
# first, optimized in the background) and under WASMCELL_FIRST_START=optimized
# (wait for the optimizing compile, as before); warm starts; all next to a
# runc container's start in the same run.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
RUNS="${BENCH_FIRST_RUNS:-3}"
VENV="${WASMCELL_BENCH_CACHE:-/var/cache/wasmcell/bench}/venv"
work="$(mktemp -d /tmp/wcbfs.XXXXXX)"
trap 'cd_stop; rm -rf "$work"' EXIT
RUNTIME=io.containerd.wasmtime.v1

gcc -static -O2 -o "$work/true" "$ROOT/test/bench/true.c"
if [ ! -x "$VENV/bin/componentize-py" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q componentize-py ||
    { echo "bench: cannot install componentize-py from PyPI" >&2; exit 1; }
fi
WIT="$(ls -d "$HOME"/.cargo/registry/src/*/wasmtime-wasi-48.*/src/p2/wit 2>/dev/null | head -1 || true)"
WORLD="$(sed -n 's/^package \(wasi:cli@[0-9.]*\);/\1/p' "$WIT/deps/cli.wit" | sed 's#@#/command@#')"
(cd "$work" && cp "$ROOT/test/bench/large.py" app.py &&
  "$VENV/bin/componentize-py" -d "$WIT" -w "$WORLD" componentize app -o large.wasm >/dev/null)
# ripgrep, built once into the bench cache (a few minutes the first time).
RG="$(bash "$ROOT/test/bench/rust-large.sh")" ||
  { echo "bench: cannot build ripgrep for wasm32-wasip2 (test/bench/rust-large.sh, above)" >&2; exit 1; }
# Its work in the container: a case-insensitive regex count over the
# repository's README (about 20 KB, in the image; the rootfs is the guest's
# /). Real work (arguments, config, regex and Unicode case folding, a file
# read), a one-line output, exit 0.
RG_ARGS="-c --no-config -i -e webassembly|component /README.md"

images() {
  "$BIN/wasmcell" image build -t bench/native:latest --platform linux/amd64 --entrypoint /true \
    -o "$work/native.tar" "$work/true:/true" >/dev/null
  "$BIN/wasmcell" image build -t bench/first:latest -o "$work/first.tar" \
    "$work/large.wasm:/large.wasm" "$ROOT/test/fixtures/wasm/http.wasm" \
    "$RG:/rg.wasm" "$ROOT/README.md:/README.md" >/dev/null
  CTR images import "$work/native.tar" >/dev/null
  CTR images import --all-platforms "$work/first.tar" >/dev/null
}

# Seconds from `ctr run -d` of the HTTP fixture to its first 200.
http_first() {  # cold|warm
  python3 - "$CD_DIR" "$RUNTIME" "$1" <<'PY'
import os, shutil, socket, subprocess, sys, time, urllib.request
cd, runtime, mode = sys.argv[1:4]
ctr = ["ctr", "-a", f"{cd}/c.sock"]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
if mode == "cold":
    shutil.rmtree(f"{cd}/cache", ignore_errors=True)
t0 = time.monotonic()
subprocess.run(ctr + ["run", "-d", "--net-host", "--platform", "wasi/wasm", "--runtime", runtime,
                      "--env", f"WASMCELL_HTTP_ADDR=127.0.0.1:{port}", "bench/first:latest", "web", "/http.wasm"],
               check=True, stdout=subprocess.DEVNULL)
while True:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200:
            break
    except Exception:
        time.sleep(0.01)
print(f"{time.monotonic() - t0:.4f}")
subprocess.run(ctr + ["task", "kill", "-s", "SIGKILL", "web"], stdout=subprocess.DEVNULL)
for _ in range(100):
    if subprocess.run(ctr + ["task", "delete", "web"], capture_output=True).returncode == 0:
        break
    time.sleep(0.05)
subprocess.run(ctr + ["containers", "rm", "web"], stdout=subprocess.DEVNULL)
PY
}
mean_of() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{sum(v)/len(v):.4f}")' "$@"; }
hf_mean() {  # name, hyperfine args...: mean seconds
  local name=$1; shift
  hyperfine --style none -N "$@" --export-json "$work/$name.json" >/dev/null
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["results"][0]["mean"]; print(f"{m:.4f}")' "$work/$name.json"
}

# ctr run --rm of ripgrep; checked once per containerd: exit 0 and a count.
rg_cmd() { echo "ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime $RUNTIME bench/first:latest b-rg /rg.wasm $RG_ARGS"; }
rg_check() {
  local cmd out
  cmd="$(rg_cmd)"
  out="$($cmd)" || { echo "bench: ripgrep in a container failed: $cmd" >&2; exit 1; }
  [[ "$out" =~ ^[1-9][0-9]*$ ]] ||
    { echo "bench: ripgrep printed \"$out\", not a match count: $cmd" >&2; exit 1; }
  echo "bench: $cmd -> $out" >&2
}

measure() {  # prefix: sets ${prefix}_runc, _cold, _rg_cold (seconds) and _http_cold
  local p=$1 h=()
  local runc="ctr -a $CD_DIR/c.sock run --rm bench/native:latest b-runc /true"
  local large="ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime $RUNTIME bench/first:latest b-large /large.wasm"
  $runc >/dev/null; $large >/dev/null; rg_check
  eval "${p}_runc=$(hf_mean "$p-runc" --warmup 2 --runs 10 "$runc")"
  eval "${p}_cold=$(hf_mean "$p-cold" --runs "$RUNS" --prepare "rm -rf $CD_DIR/cache" "$large")"
  eval "${p}_rg_cold=$(hf_mean "$p-rg-cold" --runs "$RUNS" --prepare "rm -rf $CD_DIR/cache" "$(rg_cmd)")"
  for _ in $(seq 1 "$RUNS"); do h+=("$(http_first cold)"); done
  eval "${p}_http_cold=$(mean_of "${h[@]}")"
}

# 1. The default: baseline code first.
cd_start; images
measure base
# Warm: the optimized artifacts in the shim's cache, as `wasmcell compile`
# puts them there ahead of time (or a first start's background compile).
"$BIN/wasmcell" compile --cache-dir "$CD_DIR/cache" "$work/large.wasm" "$ROOT/test/fixtures/wasm/http.wasm" "$RG" >/dev/null
base_warm=$(hf_mean base-warm --warmup 1 --runs 10 \
  "ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime $RUNTIME bench/first:latest b-large /large.wasm")
base_rg_warm=$(hf_mean base-rg-warm --warmup 1 --runs 10 "$(rg_cmd)")
w=(); for _ in $(seq 1 "$RUNS"); do w+=("$(http_first warm)"); done
base_http_warm=$(mean_of "${w[@]}")
cd_stop; unset CD_PID

# 2. Waiting for optimized code, as before.
export WASMCELL_FIRST_START=optimized
cd_start; images
measure opt
cd_stop; unset CD_PID; unset WASMCELL_FIRST_START

python3 - "$base_runc" "$base_cold" "$base_warm" "$base_http_cold" "$base_http_warm" \
  "$opt_runc" "$opt_cold" "$opt_http_cold" "$(stat -c %s "$work/large.wasm")" \
  "$base_rg_cold" "$opt_rg_cold" "$base_rg_warm" "$(stat -c %s "$RG")" <<'PY'
import sys
br, bc, bw, bhc, bhw, orr, oc, ohc, size, brc, orc, brw, rsize = map(float, sys.argv[1:14])
print()
print(f"first start, empty compile cache (ctr run --rm; mean; ratio to runc's start in the same containerd):")
print(f"  runc, static true                      {br*1000:8.1f} ms")
print(f"  {size/1e6:.0f} MB component, baseline first (default) {bc*1000:8.1f} ms  {bc/br:6.2f}x runc")
print(f"  {size/1e6:.0f} MB component, optimized first          {oc*1000:8.1f} ms  {oc/orr:6.2f}x runc")
print(f"  {size/1e6:.0f} MB component, warm cache               {bw*1000:8.1f} ms  {bw/br:6.2f}x runc")
print(f"ripgrep 15.2.0 ({rsize/1e6:.0f} MB Rust component), rg -c -i over a 20 KB file:")
print(f"  empty cache, baseline first (default)  {brc*1000:8.1f} ms  {brc/br:6.2f}x runc")
print(f"  empty cache, optimized first           {orc*1000:8.1f} ms  {orc/orr:6.2f}x runc")
print(f"  warm cache                             {brw*1000:8.1f} ms  {brw/br:6.2f}x runc")
print(f"HTTP fixture, ctr run -d to the first 200:")
print(f"  empty cache, baseline first (default)  {bhc*1000:8.1f} ms")
print(f"  empty cache, optimized first           {ohc*1000:8.1f} ms")
print(f"  warm cache                             {bhw*1000:8.1f} ms")
PY
