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
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmcell_engine::{Cancel, Compiled, Concurrency, Engine, EngineError, Tier};
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

/// The compiler the shim's engine uses: this binary, as a child, which dies
/// with the shim, and is killed when it takes longer than `limit` (a compile
/// bomb: compile time grows faster than linearly with a function's locals).
/// It runs in the shim's cgroup, the container's (a pod's), under its CPU
/// and memory bounds.
/// `deny_features` are the Wasm features the runtime handler's policy turns
/// off: the child's engine must match the shim's, or the shim could not
/// load what it compiled.
/// `tier` picks the compiler (Cranelift, or Winch for a first start), and
/// `cancel` kills the child (a container deleted while its background
/// compile runs): nothing is returned, so nothing is stored.
pub fn out_of_process(
    bytes: &[u8],
    kind: WasmKind,
    tier: Tier,
    concurrency: Concurrency,
    cancel: &Cancel,
    limit: Duration,
    deny_features: &[String],
) -> Result<Compiled, EngineError> {
    let failed = EngineError::Compiler;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(ACTION).arg(kind_name(kind));
    if !deny_features.is_empty() {
        cmd.arg(DENY_FEATURES).arg(deny_features.join(","));
    }
    if tier == Tier::Baseline {
        cmd.arg(BASELINE);
    }
    if concurrency == Concurrency::Off {
        cmd.arg(NO_CONCURRENCY);
    }
    // The Wasm in, and the artifact out, through in-memory files rather
    // than pipes: for the 18 MB componentize-py component (a 46 MB baseline
    // artifact) the pipes cost about 0.25 s of a 2.5 s compile, and the
    // artifact out of a file is mapped where bytes would be copied again.
    let memory_file = |name: &str| {
        crate::sys::process::memory_file(name).map_err(|e| failed(format!("cannot make an in-memory file: {e}")))
    };
    let (wasm, artifact) = (memory_file("wasmcell-wasm")?, memory_file("wasmcell-compiled")?);
    wasm.write_all_at(bytes, 0).map_err(|e| failed(format!("cannot pass the Wasm: {e}")))?;
    // Sealed, the child can map it rather than read it.
    crate::sys::process::seal(&wasm).map_err(|e| failed(format!("cannot seal the Wasm: {e}")))?;
    let out = artifact.try_clone().map_err(|e| failed(e.to_string()))?;
    cmd.env_clear().stdin(Stdio::from(wasm)).stdout(Stdio::from(out)).stderr(Stdio::piped());
    if tier == Tier::Baseline {
        // The first start waits for this one: the faster allocator (see
        // `heap`), committing its arenas as they are used rather than up
        // front (the same speed, 60 MB less peak memory on an 18 MB
        // component).
        cmd.env(crate::heap::COMPILER_HEAP, "mimalloc").env("MIMALLOC_ARENA_EAGER_COMMIT", "0");
    }
    crate::sys::process::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| failed(format!("cannot start: {e}")))?;
    // The Wasm's copy and the child's stdout: only the child holds them now.
    drop(cmd);
    let stderr = child.stderr.take().expect("piped");
    let started = Instant::now();
    // The child's stderr ends when it exits: read on another thread (a child
    // blocked on a full pipe would never finish); this one waits for that
    // until the limit, or a cancel.
    let (tx, rx) = std::sync::mpsc::channel();
    let woken = tx.clone();
    cancel.on_cancel(move || {
        let _ = woken.send(None);
    });
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut stderr = stderr;
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut v);
        // What it writes beyond that is drained, not kept.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        let _ = tx.send(Some(v));
    });
    let err = rx.recv_timeout(limit.saturating_sub(started.elapsed())).ok().flatten();
    let timed_out = err.is_none();
    if timed_out {
        // Its stderr closes with it, which ends the reader thread.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let msg = String::from_utf8_lossy(err.as_deref().unwrap_or_default()).trim().to_string();
    if cancel.is_cancelled() {
        return Err(failed("cancelled".into()));
    }
    if timed_out {
        return Err(EngineError::TooCostly(format!(
            "compiling took longer than {} s (WASMCELL_COMPILE_TIMEOUT_SECS); stopped after {:.1} s",
            limit.as_secs(),
            started.elapsed().as_secs_f64()
        )));
    }
    if status.success() {
        // The child is gone; nothing may change what is loaded from now on.
        crate::sys::process::seal(&artifact).map_err(|e| failed(format!("cannot seal the artifact: {e}")))?;
        let len = artifact.metadata().map_err(|e| failed(e.to_string()))?.len();
        if len == 0 {
            return Err(failed("it wrote no artifact".into()));
        }
        return Ok(Compiled::Sealed(artifact));
    }
    if status.code() == Some(1) && !msg.is_empty() {
        // The compiler's own refusal of the Wasm.
        return Err(EngineError::compile_message(msg));
    }
    if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL) {
        return Err(EngineError::CompilerKilled(format!(
            "the compiler was killed after {:.1} s (SIGKILL): most likely it ran out of the memory the container's limit leaves it",
            started.elapsed().as_secs_f64()
        )));
    }
    Err(failed(format!("{status} {msg}").trim_end().to_string()))
}

/// The child's flag naming the Wasm features its engine turns off.
const DENY_FEATURES: &str = "--deny-wasm-features";
/// The child's flag for the baseline tier.
const BASELINE: &str = "--baseline";
/// The child's flag for the engine without the component model's
/// concurrency (WASI 0.2 components).
const NO_CONCURRENCY: &str = "--no-concurrency";

/// The child's side: compiles stdin to stdout. Exit 0, or 1 with Wasmtime's
/// reason on stderr, or 2 for a usage or set-up error. `args` follow the
/// action: `component|module [--deny-wasm-features a,b] [--baseline]
/// [--no-concurrency]`.
pub fn run_child(args: &[String]) -> i32 {
    crate::sys::process::map_large_allocations();
    let (mut policy, mut tier, mut concurrency) = (None, Tier::Optimized, Concurrency::On);
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.clone().next()) {
            (DENY_FEATURES, Some(list)) => {
                policy = Some(wasmcell_engine::Policy {
                    deny_wasm_features: list.split(',').map(str::to_string).collect(),
                    ..Default::default()
                });
                rest.next();
            }
            (BASELINE, _) => tier = Tier::Baseline,
            (NO_CONCURRENCY, _) => concurrency = Concurrency::Off,
            other => {
                eprintln!("usage: {ACTION} component|module [{DENY_FEATURES} a,b] [{BASELINE}] [{NO_CONCURRENCY}] (got {other:?})");
                return 2;
            }
        }
    }
    let kind = match args.first().map(String::as_str) {
        Some("component") => WasmKind::Component,
        Some("module") => WasmKind::Module,
        other => {
            eprintln!(
                "usage: {ACTION} component|module [{DENY_FEATURES} a,b] [{BASELINE}] [{NO_CONCURRENCY}] < WASM > ARTIFACT (got {other:?})"
            );
            return 2;
        }
    };
    let max = wasmcell_oci::entrypoint::MAX_WASM_BYTES;
    // The shim's sealed in-memory file, mapped; anything else, read.
    let mapped = crate::sys::process::SealedMap::of(std::os::fd::AsFd::as_fd(&std::io::stdin()), max);
    let mut read = Vec::new();
    if mapped.is_none() {
        if let Err(e) = std::io::stdin().take(max + 1).read_to_end(&mut read) {
            eprintln!("reading the Wasm from stdin: {e}");
            return 2;
        }
    }
    let bytes: &[u8] = mapped.as_deref().unwrap_or(&read);
    match Engine::precompile_alone(bytes, kind, tier, concurrency, policy.as_ref()) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&artifact).and_then(|()| out.flush()) {
                Ok(()) => exit_now(0),
                Err(e) => {
                    eprintln!("writing the artifact: {e}");
                    2
                }
            }
        }
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

/// Ends the compiler child once its artifact is written, without freeing
/// what it built (the compiled code, the engine, the Wasm: hundreds of MB
/// for a large component) or running the exit handlers, whose heap clean-up
/// was a tenth of the compile's last, single-threaded half second. The
/// kernel takes the memory back at once.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without touching its memory; what it
    // had to say is written (stdout was flushed, stderr is unbuffered).
    unsafe { libc::_exit(code) }
}
