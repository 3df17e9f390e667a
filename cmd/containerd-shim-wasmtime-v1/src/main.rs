//! `containerd-shim-wasmtime-v1`: the binary containerd runs for the runtime
//! `io.containerd.wasmtime.v1`. All logic is in `crates/shim`.
fn main() {
    wasmcell_shim::main();
}
