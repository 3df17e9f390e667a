//! `containerd-shim-wasmtime-v1`: the binary containerd runs for the runtime
//! `io.containerd.wasmtime.v1`. All logic is in `crates/shim`.

/// Every block of host heap carries the guest it was made for, so the host
/// memory a guest makes counts against its memory limit
/// (`wasmcell_engine::hostmem`).
#[global_allocator]
static ALLOC: wasmcell_engine::hostmem::Accounting = wasmcell_engine::hostmem::Accounting;

fn main() {
    wasmcell_shim::main();
}
