# wasmcell: containerd shim for WebAssembly components (io.containerd.wasmtime.v1)
#
#   make demo    build, start a private containerd, run the hello component through it
#   make test    unit tests + end-to-end suites against a private containerd (root)
#   make lint    rustfmt, clippy (-D warnings, SAFETY notes), Dockerfile context (no root)
#   make bench   ctr run --rm of a component vs a runc container, same run, as ratios
#   make stress  1000 containers, 16 at a time, through containerd; nothing may leak
#
# Each target installs what it needs on Debian when missing (as root).

SHELL     := /bin/bash
CARGO     ?= cargo
PREFIX    ?= /usr/local
RELEASE   := target/release
SHIM      := $(RELEASE)/containerd-shim-wasmtime-v1
CLI       := $(RELEASE)/wasmcell
TEST_THREADS ?= 2

.PHONY: all build deps containerd-versions test unit e2e demo bench bench-http bench-peer fixtures install uninstall clean lint

all: build

## Debian packages the demo, tests and benchmarks use (installed only when missing).
deps:
	@bash test/scripts/deps.sh

## containerd 1.7 and 2.1 for the version suite (Debian trixie's and sid's
## packages, unpacked into a cache; instant once cached), next to the system 1.6.
containerd-versions:
	@bash test/scripts/containerd-versions.sh all

# The cached containerd 2.x binary (after containerd-versions): the installer
# suite checks its version 3 sample with it (WASMCELL_CONTAINERD_2).
CONTAINERD_2 = $$(bash test/scripts/containerd-versions.sh 2.1 | awk '{print $$2}')

build:
	$(CARGO) build --release --workspace --locked

## Formatting, lints and the Dockerfile's build context. Needs no root and no
## containerd; .ci/run runs it before `make test`.
lint:
	@command -v protoc >/dev/null 2>&1 || bash test/scripts/deps.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets --locked -- -D warnings
	bash test/scripts/dockerfile-context.sh

## One build profile (release) for binaries and tests alike, so CI builds once.
test: deps containerd-versions build
	WASMCELL_CONTAINERD_2="$(CONTAINERD_2)" $(CARGO) test --release --workspace --locked -- --test-threads=$(TEST_THREADS)

unit: build
	$(CARGO) test --release --workspace --locked --exclude wasmcell-e2e

e2e: deps containerd-versions build
	WASMCELL_CONTAINERD_2="$(CONTAINERD_2)" $(CARGO) test --release --locked -p wasmcell-e2e -- --test-threads=$(TEST_THREADS)

demo: deps build
	@bash test/scripts/demo.sh

bench: deps build bench-http
	@bash test/bench/run.sh
	@bash test/bench/keyvalue.sh
	@bash test/bench/first_start.sh

## HTTP serving against its anchors in one run (see test/e2e/src/bin/bench-http.rs):
## a native hyper server, `wasmtime serve` 48 (installed once into the bench
## cache), runwasi (`make bench-peer RUNWASI_SRC=...` first; its row says why
## when it is missing), wasmcell via ctr (p2 and p3 handlers) and in a CRI pod.
bench-http: deps build
	@bash test/bench/peer.sh wasmtime
	@$(CARGO) run --release --locked -q -p wasmcell-e2e --bin bench-http

bench-peer:
	@bash test/bench/peer.sh runwasi

## STRESS_TASKS containers created, started, waited and deleted through
## containerd, STRESS_PARALLEL at a time (exits, traps, kills), checked for
## leftovers, with the rate next to runc's. `make test` runs a small one.
STRESS_TASKS    ?= 1000
STRESS_PARALLEL ?= 16
.PHONY: stress
stress: deps build
	STRESS_TASKS=$(STRESS_TASKS) STRESS_PARALLEL=$(STRESS_PARALLEL) \
	  $(CARGO) test --release --locked -p wasmcell-e2e --test stress -- --nocapture

## Fuzz each target for FUZZ_SECONDS (not part of `make test`). Needs a nightly
## toolchain and cargo-fuzz, installed here when missing; new inputs go to
## fuzz/corpus/, crashes to fuzz/artifacts/ (see docs/fuzzing.md).
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= spec_grants spec_grants_structured wasm_prepare wasm_smith_prepare entrypoint_path image_layers
.PHONY: fuzz
fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t; seeds=../test/fuzz-corpus/$$t; [ -d $$seeds ] || seeds=; \
	  $(CARGO) +nightly fuzz run -s none -a $$t corpus/$$t $$seeds -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -jobs=1 -workers=1 || { tail -n 40 fuzz-0.log; exit 1; }; \
	  tail -n 2 fuzz-0.log; \
	done

## Rebuild the committed fixture .wasm files (needs rustup's wasm32-wasip1/p2 targets).
fixtures:
	test/fixtures/guests/build.sh

install: build
	install -D -m 0755 $(SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-wasmtime-v1
	install -D -m 0755 $(CLI) $(DESTDIR)$(PREFIX)/bin/wasmcell

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-wasmtime-v1 $(DESTDIR)$(PREFIX)/bin/wasmcell

clean:
	$(CARGO) clean
