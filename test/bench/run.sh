#!/usr/bin/env bash
# make bench: start-up cost of `ctr run --rm` through wasmcell vs runc, in the
# same run on the same private containerd, printed as ratios.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
trap cd_stop EXIT
RUNS="${BENCH_RUNS:-20}"
cd_start
work="$CD_DIR/bench"; mkdir -p "$work"
gcc -static -O2 -o "$work/true" "$ROOT/test/bench/true.c"
"$BIN/wasmcell" image build -t bench/true:latest --platform linux/amd64 --entrypoint /true -o "$work/true.tar" "$work/true:/true" >/dev/null
"$BIN/wasmcell" image build -t bench/hello:latest -o "$work/hello.tar" "$ROOT/test/fixtures/wasm/hello.wasm" >/dev/null
CTR images import "$work/true.tar" >/dev/null
CTR images import --all-platforms "$work/hello.tar" >/dev/null
# Warm both paths once (snapshot unpack, page cache).
CTR run --rm bench/true:latest warm-runc /true
CTR run --rm --platform wasi/wasm --runtime io.containerd.wasmtime.v1 bench/hello:latest warm-wasm >/dev/null
export CD_DIR
hyperfine --style basic -N --warmup 2 --runs "$RUNS" --export-json "$work/start.json" \
  -n runc-true "ctr -a $CD_DIR/c.sock run --rm bench/true:latest b-runc /true" \
  -n wasmcell-hello "ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime io.containerd.wasmtime.v1 bench/hello:latest b-wasm"
python3 - "$work/start.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
base, wasm = r["runc-true"], r["wasmcell-hello"]
print()
print(f"ctr run --rm, mean of {len(wasm['times'])} runs each:")
print(f"  runc, static true       {base['mean']*1000:8.1f} ms  (median {base['median']*1000:.1f})")
print(f"  wasmcell, hello.wasm    {wasm['mean']*1000:8.1f} ms  (median {wasm['median']*1000:.1f})")
print(f"  ratio wasmcell/runc     {wasm['mean']/base['mean']:8.2f}x")
PY

# CPU quota: a guest that never yields, under --cpu-quota/--cpu-period,
# measured from the shim process's CPU time (utime+stime) over wall time.
QUOTA=25000 PERIOD=100000 SECS="${BENCH_QUOTA_SECS:-4}"
"$BIN/wasmcell" image build -t bench/spin:latest -o "$work/spin.tar" "$ROOT/test/fixtures/wasm/spin.wasm" >/dev/null
CTR images import --all-platforms "$work/spin.tar" >/dev/null
CTR run -d --cpu-quota $QUOTA --cpu-period $PERIOD --platform wasi/wasm \
  --runtime io.containerd.wasmtime.v1 bench/spin:latest quota >/dev/null
pid=$(CTR task ls | awk '$1=="quota"{print $2}')
tick=$(getconf CLK_TCK)
cpu0=$(awk '{print $14+$15}' /proc/$pid/stat); t0=$(date +%s.%N)
sleep "$SECS"
cpu1=$(awk '{print $14+$15}' /proc/$pid/stat); t1=$(date +%s.%N)
CTR task kill -s SIGKILL quota >/dev/null; sleep 0.3
CTR task delete quota >/dev/null 2>&1 || true; CTR containers rm quota >/dev/null
python3 - "$cpu0" "$cpu1" "$t0" "$t1" "$tick" "$QUOTA" "$PERIOD" <<'PY'
import sys
c0, c1, t0, t1, tick, q, p = map(float, sys.argv[1:])
used = (c1 - c0) / tick / (t1 - t0)
print()
print(f"CPU quota, busy-loop guest, {q/p:.2f} of a core granted:")
print(f"  used {used:.3f} of a core over {t1-t0:.1f} s (shim process CPU time)")
print(f"  ratio used/quota        {used/(q/p):8.2f}x")
PY
