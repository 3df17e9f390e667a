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
