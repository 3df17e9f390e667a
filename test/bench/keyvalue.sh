#!/usr/bin/env bash
# make bench (part): the cost of capabilities. One wasi:keyvalue set+get
# round trip of the caps fixture (`kv bench`), measured inside the guest,
# next to its anchors from the same run:
#   - in memory: wasmcell's store vs `wasmtime run -Skeyvalue` (Wasmtime
#     48's own in-memory store; from the bench cache, see peer.sh);
#   - Redis: wasmcell's store vs redis-benchmark's SET + GET (one client,
#     no pipelining: one round trip per command, as the guest does) against
#     the same redis-server, which this script starts on 127.0.0.1.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
N="${BENCH_KV_N:-20000}"
CACHE="${WASMCELL_BENCH_CACHE:-/var/cache/wasmcell/bench}"
REDIS_DIR="$(mktemp -d /tmp/wcbkv.XXXXXX)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --dir "$REDIS_DIR" --daemonize no >/dev/null &
REDIS_PID=$!
stop() { kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; rm -rf "$REDIS_DIR"; cd_stop; }
trap stop EXIT
cd_start
for _ in $(seq 1 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN/wasmcell" image build -t bench/caps:latest -o "$CD_DIR/caps.tar" "$ROOT/test/fixtures/wasm/caps.wasm" \
  --entrypoint /caps.wasm >/dev/null
CTR images import --all-platforms "$CD_DIR/caps.tar" >/dev/null
run() { CTR run --rm --platform wasi/wasm --runtime io.containerd.wasmtime.v1 "$@"; }
ns() { sed -n 's/.*ns_per_roundtrip=\([0-9]*\).*/\1/p'; }
# One warm-up run compiles the component into the cache.
run --annotation wasmcell.dev/keyvalue=memory bench/caps:latest kv-warm /caps.wasm kv bench b 10 >/dev/null
MEM=$(run --annotation wasmcell.dev/keyvalue=memory bench/caps:latest kv-mem /caps.wasm kv bench b "$N" | ns)
RED=$(run --net-host --annotation "wasmcell.dev/keyvalue=redis://127.0.0.1:$PORT" bench/caps:latest kv-redis \
  /caps.wasm kv bench b "$N" | ns)
WT=""
if [ -x "$CACHE/wasmtime-48.0.8/bin/wasmtime" ]; then
  WT=$("$CACHE/wasmtime-48.0.8/bin/wasmtime" run -Sconfig -Skeyvalue -Skeyvalue-in-memory-data=bench=x \
    "$ROOT/test/fixtures/wasm/caps.wasm" kv bench "" "$N" | ns)
fi
RB=$(redis-benchmark -h 127.0.0.1 -p "$PORT" -c 1 -n "$N" -t set,get --csv 2>/dev/null)
python3 - "$N" "$MEM" "$RED" "${WT:-0}" "$RB" <<'PY'
import csv, io, sys
n, mem, red, wt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rps = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(sys.argv[5])) if len(row) > 1 and row[0] in ("SET", "GET")}
base = 1e9 / rps["SET"] + 1e9 / rps["GET"]
print()
print(f"wasi:keyvalue, one set + get round trip ({n} of them, timed in the guest):")
if wt:
    print(f"  wasmtime run -Skeyvalue (in memory)   {wt/1000:8.2f} us")
    print(f"  wasmcell, memory store                {mem/1000:8.2f} us  {mem/wt:6.2f}x wasmtime's")
else:
    print(f"  wasmcell, memory store                {mem/1000:8.2f} us  (no wasmtime 48 in the bench cache: make bench-http installs it)")
print(f"  redis-benchmark SET + GET, 1 client   {base/1000:8.2f} us")
print(f"  wasmcell, Redis store                 {red/1000:8.2f} us  {red/base:6.2f}x redis-benchmark's")
PY
