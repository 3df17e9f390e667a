#!/usr/bin/env bash
# make demo: start a private containerd, package the hello component as an
# OCI image, and run it through the shim with the real ctr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cd_stop EXIT
cd_start
echo "== private containerd at $CD_DIR (pid $CD_PID)"
"$BIN/wasmcell" image build -t wasmcell.demo/hello:latest -o "$CD_DIR/hello.tar" \
  --env GREETING=hello-from-the-image "$ROOT/test/fixtures/wasm/hello.wasm"
CTR images import --all-platforms "$CD_DIR/hello.tar"
echo "== ctr run --rm --runtime=io.containerd.wasmtime.v1 wasmcell.demo/hello:latest demo"
# The guest's exit status, reported as it is (set -e would stop at a
# non-zero one before it could be printed).
status=0
CTR run --rm --platform wasi/wasm --runtime=io.containerd.wasmtime.v1 \
  wasmcell.demo/hello:latest demo /hello.wasm from the demo || status=$?
echo "== exit status: $status"
exit "$status"
