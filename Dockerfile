# wasmcell node-installer image.
#
# Holds the two binaries in /opt/wasmcell/bin and runs
# deploy/node-installer/install.sh, which copies the shim onto a node mounted
# at /host and registers the "wasmtime" runtime in containerd's config. On a
# cluster, deploy/node-installer/daemonset.yaml runs it on every node.
#
#   docker build -t REGISTRY/wasmcell-installer:0.1.0 .
#   docker run --rm --privileged --pid=host -v /:/host REGISTRY/wasmcell-installer:0.1.0            # install
#   docker run --rm --privileged --pid=host -v /:/host REGISTRY/wasmcell-installer:0.1.0 uninstall
#
# The binaries link against Debian 12's glibc: nodes need glibc 2.34 or newer.
# See docs/install.md for the environment variables install.sh reads.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the workspace needs to build (test/e2e and test/bench/http-baseline
# are workspace members, so their manifests and sources must be present even
# though they are not built here). `make lint` checks that this list loads.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY cmd cmd
COPY test/e2e test/e2e
COPY test/bench/http-baseline test/bench/http-baseline
RUN cargo build --release --locked -p containerd-shim-wasmtime-v1 -p wasmcell

FROM debian:bookworm-slim
# install.sh needs sh, sed, cksum (coreutils), cmp (diffutils) and nsenter
# (util-linux), all part of the base image; it edits containerd's config with
# the wasmcell binary beside the shim (`wasmcell containerd-config add|remove`).
COPY --from=build /src/target/release/containerd-shim-wasmtime-v1 /src/target/release/wasmcell /opt/wasmcell/bin/
COPY deploy/node-installer/install.sh /opt/wasmcell/install.sh
RUN chmod 0755 /opt/wasmcell/install.sh /opt/wasmcell/bin/containerd-shim-wasmtime-v1 /opt/wasmcell/bin/wasmcell
ENTRYPOINT ["/opt/wasmcell/install.sh"]
