//! `containerd-shim-wasmtime-v1`: the binary containerd runs for the runtime
//! `io.containerd.wasmtime.v1`. All logic is in `crates/shim`.

/// In a shim, every block of host heap carries the guest it was made for, so
/// the host memory a guest makes counts against its memory limit
/// (`wasmcell_engine::hostmem`); a baseline compiler child uses mimalloc
/// (`wasmcell_shim::heap`).
#[global_allocator]
static ALLOC: wasmcell_shim::heap::Heap = wasmcell_shim::heap::Heap;

fn main() {
    wasmcell_shim::main();
}
