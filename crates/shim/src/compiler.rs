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
use std::time::{Duration, Instant};

use wasmcell_engine::{Cancel, Concurrency, Engine, EngineError, Tier};
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
) -> Result<Vec<u8>, EngineError> {
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
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    crate::sys::process::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| failed(format!("cannot start: {e}")))?;
    let (mut stdin, mut stdout, stderr) =
        (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let started = Instant::now();
    // Fed and drained from other threads (a child blocked on a full pipe
    // would never finish); this one waits for the artifact until the limit.
    let (out, timed_out, err) = std::thread::scope(|s| {
        s.spawn(move || {
            // A child that dies early closes its end: the error is its exit.
            let _ = stdin.write_all(bytes);
        });
        let err = s.spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.take(64 << 10).read_to_end(&mut v);
            v
        });
        // The artifact, or `None` the moment the compile is cancelled.
        let (tx, rx) = std::sync::mpsc::channel();
        let woken = tx.clone();
        cancel.on_cancel(move || {
            let _ = woken.send(None);
        });
        s.spawn(move || {
            let mut v = Vec::new();
            let _ = tx.send(Some(stdout.read_to_end(&mut v).map(|_| v)));
        });
        // Until the artifact comes, the compile is cancelled, or the limit.
        let out = rx.recv_timeout(limit.saturating_sub(started.elapsed())).ok().flatten();
        let timed_out = out.is_none();
        if timed_out {
            // Its pipes close with it, which ends the reader threads.
            let _ = child.kill();
        }
        let out = match out {
            Some(r) => r.map_err(|e| failed(e.to_string())),
            None => Err(failed("timed out".into())),
        };
        (out, timed_out, err.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let msg = String::from_utf8_lossy(&err).trim().to_string();
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
    let out = out?;
    if status.success() {
        return Ok(out);
    }
    if status.code() == Some(1) && !msg.is_empty() {
        // The compiler's own refusal of the Wasm.
        return Err(EngineError::compile_message(msg));
    }
    if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL) {
        return Err(EngineError::TooCostly(format!(
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
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().take(wasmcell_oci::entrypoint::MAX_WASM_BYTES + 1).read_to_end(&mut bytes) {
        eprintln!("reading the Wasm from stdin: {e}");
        return 2;
    }
    let engine = match Engine::with_policy(None, None, policy) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    match engine.with_concurrency(concurrency).precompile_tier(&bytes, kind, tier) {
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
