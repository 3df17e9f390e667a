//! Compiling a guest in a child process.
//!
//! Compiling is the one heavy thing a shim does, once per component and
//! node (the compile cache keeps the result). Done in the shim itself, it
//! would leave the compiler's code pages and heap arenas with a process that
//! then idles for the container's whole life (about 11 MiB for the hello
//! component), and a crash of the compiler on hostile Wasm would take every
//! container of the shim with it. So the shim runs its own binary again as a
//! short-lived compiler: Wasm in on stdin, Wasmtime's compiled form out on
//! stdout. The child inherits the shim's confinement and cgroup.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use wasmcell_engine::{Engine, EngineError};
use wasmcell_oci::WasmKind;

/// The first argument that makes the binary a compiler rather than a shim
/// (containerd always passes flags first, never this).
pub const ACTION: &str = "compile-wasm";

fn kind_name(kind: WasmKind) -> &'static str {
    match kind {
        WasmKind::Component => "component",
        WasmKind::Module => "module",
    }
}

/// The compiler the shim's engine uses: this binary, as a child.
pub fn out_of_process(bytes: &[u8], kind: WasmKind) -> Result<Vec<u8>, EngineError> {
    let failed = EngineError::Compiler;
    let mut child = Command::new("/proc/self/exe")
        .arg(ACTION)
        .arg(kind_name(kind))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    // Fed from another thread while this one drains stdout and stderr: a
    // child blocked on a full pipe would otherwise never finish reading.
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            // A child that dies early closes its end: the error is its exit.
            let _ = stdin.write_all(bytes);
        });
        child.wait_with_output()
    })
    .map_err(|e| failed(format!("{e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.code() == Some(1) && !msg.is_empty() {
        // The compiler's own refusal of the Wasm.
        return Err(EngineError::compile_message(msg));
    }
    Err(failed(format!("{} {msg}", out.status).trim_end().to_string()))
}

/// The child's side: compiles stdin to stdout. Exit 0, or 1 with Wasmtime's
/// reason on stderr, or 2 for a usage or set-up error.
pub fn run_child(kind: Option<&str>) -> i32 {
    let kind = match kind {
        Some("component") => WasmKind::Component,
        Some("module") => WasmKind::Module,
        other => {
            eprintln!("usage: {ACTION} component|module < WASM > ARTIFACT (got {other:?})");
            return 2;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().take(wasmcell_oci::entrypoint::MAX_WASM_BYTES + 1).read_to_end(&mut bytes) {
        eprintln!("reading the Wasm from stdin: {e}");
        return 2;
    }
    let engine = match Engine::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    match engine.precompile(&bytes, kind) {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("writing the artifact: {e}");
                2
            }
        },
        Err(EngineError::Compile(m) | EngineError::TooBig(m)) => {
            eprintln!("{m}");
            1
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
