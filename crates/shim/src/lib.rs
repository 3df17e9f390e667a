//! The containerd task service (shim v2) of wasmcell.
//!
//! One shim process serves one container for `ctr run` (or one pod, for CRI):
//! containers are Wasmtime stores inside it, not child processes. The task
//! API lives in [`service`], the per-container state machine in
//! [`container`], stdio wiring in [`stdio`], rootfs mounts in [`rootfs`], and
//! every raw Linux call in [`sys`].

mod container;
mod error;
mod events;
mod metrics;
mod rootfs;
mod service;
mod shim;
mod stdio;
pub mod sys;

pub use error::ShimError;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

/// Entry point of `containerd-shim-wasmtime-v1`.
///
/// Linux namespaces belong to threads and are inherited by the threads a
/// thread creates, so the network namespace of the container is entered here,
/// on the main thread, before the tokio runtime starts any worker.
pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("containerd-shim-wasmtime-v1 (wasmcell)");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Runtime:  {RUNTIME_ID}");
        println!("  Wasmtime: 48");
        return;
    }
    if let Ok(flags) = containerd_shim::parse(&args[1..]) {
        if flags.action.is_empty() && !flags.socket.is_empty() && !flags.info {
            // The serving daemon: its working directory is the bundle.
            sys::netns::enter_for_bundle(std::path::Path::new("."));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shim-rpc")
        .enable_all()
        .build()
        .expect("build tokio runtime");
    runtime.block_on(containerd_shim::asynchronous::run::<shim::WasmShim>(
        RUNTIME_ID,
        Some(containerd_shim::Config {
            // Guests are not child processes: there is nothing to reap.
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    ));
}
