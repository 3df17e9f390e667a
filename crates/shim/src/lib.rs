//! The containerd task service (shim v2) of wasmcell.
//!
//! One shim process serves one container for `ctr run` (or one pod, for CRI):
//! containers are Wasmtime stores inside it, not child processes. The task
//! verbs live in [`task`]; Create's pipeline (spec -> grants -> rootfs ->
//! stdio -> Wasm) in [`create`]; Start and the guest's supervisor (signals,
//! drain, exit) in [`supervisor`]; the per-container state machine in
//! [`lifecycle`], what a container holds in [`container`]; settings in
//! [`config`]; stdio wiring in [`stdio`]; rootfs mounts and the views of
//! granted directories in [`rootfs`]; the compiler child in [`compiler`]
//! and the binary's allocator in [`heap`]; and every raw Linux call in
//! [`sys`], behind the `Kernel` trait the tests fake.

mod accept;
mod bootstrap;
mod compiler;
mod config;
mod container;
mod content;
mod create;
mod error;
mod events;
mod exec;
pub mod heap;
mod lifecycle;
mod logging;
mod metrics;
mod rootfs;
mod stdio;
mod supervisor;
pub mod sys;
mod task;

pub use error::ShimError;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

/// Entry point of `containerd-shim-wasmtime-v1`.
///
/// Linux namespaces belong to threads and are inherited by the threads a
/// thread creates, so the network namespace of the container is entered here,
/// on the main thread, before the tokio runtime starts any worker.
/// Errors made while serving guests do not capture backtraces, even when
/// containerd's environment has `RUST_BACKTRACE=1` (which then only governs
/// panics): Wasmtime makes an error each time it drops an HTTP request's
/// store, and capturing its backtrace was 13% of the shim's CPU under load
/// (issue 15). An operator's explicit `RUST_LIB_BACKTRACE` is kept.
fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

pub fn main() {
    quiet_error_backtraces();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("containerd-shim-wasmtime-v1 (wasmcell)");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Runtime:  {RUNTIME_ID}");
        println!("  Wasmtime: 48");
        return;
    }
    let is_compiler = args.get(1).map(String::as_str) == Some(compiler::ACTION);
    if let Err(e) = heap::check(is_compiler) {
        eprintln!("containerd-shim-wasmtime-v1: {e}");
        std::process::exit(2);
    }
    if is_compiler {
        std::process::exit(compiler::run_child(&args[2..]));
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-wasmtime-v1: {e}");
            std::process::exit(2);
        }
    };
    if flags.info {
        // containerd asks before any shim instance exists; the runtime name
        // alone tells it to accept every spec (our checks run at Create).
        use containerd_shim_protos::protobuf::Message;
        let info =
            containerd_shim_protos::types::introspection::RuntimeInfo { name: RUNTIME_ID.into(), ..Default::default() };
        let bytes = info.write_to_bytes().expect("encode runtime info");
        use std::io::Write;
        let _ = std::io::stdout().write_all(&bytes);
        return;
    }
    let serving = flags.action.is_empty();
    if serving {
        sys::process::limit_malloc_arenas();
        // Descriptors: the shim's all, and a bound per guest within them.
        wasmcell_engine::set_max_handles(config::max_handles(sys::process::raise_nofile()));
        if flags.socket.is_empty() {
            eprintln!(
                "containerd-shim-wasmtime-v1: -socket is required to serve; containerd starts this binary with `start`"
            );
            std::process::exit(2);
        }
        // The serving daemon: its working directory is the bundle. Into the
        // container's (for a pod, the sandbox's) cgroup first, so that what
        // the shim allocates from here on is charged to it.
        sys::cgroup::join_early(std::path::Path::new("."));
        sys::netns::enter_for_bundle(std::path::Path::new("."));
        // Still the only thread: what it gives up, every later thread lacks.
        sys::confine::apply();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shim-rpc")
        // Blocking threads (file reads and compiles at Create) are rare:
        // an idle shim should not keep them, with their stacks and malloc
        // arenas, for tokio's default 10 s.
        .thread_keep_alive(std::time::Duration::from_millis(500))
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let result = runtime.block_on(async move {
        match flags.action.as_str() {
            "start" => bootstrap::start(flags).await,
            "delete" => bootstrap::delete(flags).await,
            "" => bootstrap::serve(flags).await,
            other => Err(format!("unknown action {other:?} (expected start or delete)").into()),
        }
    });
    if let Err(e) = result {
        eprintln!("{RUNTIME_ID}: {e}");
        std::process::exit(1);
    }
    // Exit now: dropping the runtime would wait for blocking tasks (a stdin
    // fifo open that never got a writer) that no longer matter.
    std::process::exit(0);
}
