#!/usr/bin/env bash
# Installs the Debian packages wasmcell's demo, tests and benchmarks use,
# only those missing. Needs root (apt-get).
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have containerd || need+=(containerd)
have ctr || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
have hyperfine || need+=(hyperfine)
have ip || need+=(iproute2)
have script || need+=(util-linux)
have gcc || need+=(gcc libc6-dev)
# The registry suite: a local registry (distribution 2.8) and the client
# that pushes image-layout tarballs into it (each test starts its own
# registry; the package's service on port 5000 is not used).
have docker-registry || need+=(docker-registry)
have skopeo || need+=(skopeo)
# wasi:keyvalue's Redis store: each test starts its own redis-server on
# 127.0.0.1 (redis-cli and redis-benchmark come with it, in redis-tools).
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
# protoc: the CRI client of the Kubernetes end-to-end suite is generated from
# the CRI protobufs at build time.
have protoc || need+=(protobuf-compiler)
# make bench: wrk for HTTP throughput; python3-venv for componentize-py.
have wrk || need+=(wrk)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
have cargo || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
