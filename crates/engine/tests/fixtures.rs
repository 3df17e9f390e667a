//! The engine on the real fixture guests (test/fixtures/wasm), no containerd.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use wasmcell_engine::{Engine, EngineError, Exit, GuestConfig, GuestIo, GuestStats, Preopen, SocketScope};
use wasmcell_grants::Limits;
use wasmcell_oci::{classify, WasmKind};

// As in the shim: host memory a guest makes is charged to it.
#[global_allocator]
static ALLOC: wasmcell_engine::hostmem::Accounting = wasmcell_engine::hostmem::Accounting;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/wasm").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn config(root: &Path, argv: &[&str]) -> GuestConfig {
    GuestConfig {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("ONLY".into(), "this".into())],
        cwd: "/".into(),
        preopens: vec![Preopen { host: root.to_path_buf(), guest: "/".into(), readonly: false }],
        sockets: SocketScope::Denied,
        limits: Limits::default(),
        tmpfs: Vec::new(),
        config: Default::default(),
        keyvalue: None,
        http_reuse: 1,
    }
}

struct Captured {
    exit: Result<Exit, EngineError>,
    stdout: String,
    stderr: String,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn drain(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    })
}

fn run(engine: &Engine, wasm: &[u8], cfg: GuestConfig, stats: Arc<GuestStats>) -> Captured {
    let kind = classify(wasm).unwrap();
    let granted = wasmcell_engine::Granted { keyvalue: cfg.keyvalue.is_some() };
    let program = engine.prepare(wasm, kind, granted).expect("prepare");
    run_program(engine, &program, cfg, stats)
}

fn run_program(
    engine: &Engine,
    program: &wasmcell_engine::Program,
    cfg: GuestConfig,
    stats: Arc<GuestStats>,
) -> Captured {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let out = drain(out_r);
    let err = drain(err_r);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let exit = rt.block_on(async {
        let io = GuestIo { stdin: None, stdout: Some(out_w), stderr: Some(err_w) };
        engine.run(program, &cfg, io, stats).await
    });
    drop(rt);
    Captured { exit, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Runs `program` for at most `ms` milliseconds, then drops its future (a
/// kill); whether it was still running then.
fn run_cut_off(
    e: &Engine,
    program: &wasmcell_engine::Program,
    cfg: &GuestConfig,
    stats: &Arc<GuestStats>,
    ms: u64,
) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let run = e.run(program, cfg, GuestIo::default(), stats.clone());
        tokio::time::timeout(std::time::Duration::from_millis(ms), run).await.is_err()
    })
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn component_gets_exactly_its_args_and_env() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let c = run(&e, &fixture("hello.wasm"), config(d.path(), &["/hello.wasm", "x"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0));
    assert_eq!(c.stdout, "hello from wasmcell\nargs: /hello.wasm x\nenv: ONLY=this\ncwd: /\n");
}

#[test]
fn wasip1_exit_code_and_component_trap() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let c = run(&e, &fixture("exit-code-p1.wasm"), config(d.path(), &["e", "42"]), Default::default());
    assert_eq!(c.exit.unwrap().status(), 42);
    let c = run(&e, &fixture("trap.wasm"), config(d.path(), &["t"]), Default::default());
    let exit = c.exit.unwrap();
    assert!(matches!(exit, Exit::Trap(_)), "{exit:?}");
    assert_eq!(exit.status(), 134);
    assert!(c.stderr.contains("unreachable"), "{}", c.stderr);
}

#[test]
fn filesystem_is_only_the_preopens_and_readonly_holds() {
    let e = Engine::new().unwrap();
    let root = tmp();
    std::fs::write(root.path().join("inside.txt"), "in").unwrap();
    let ro = tmp();
    std::fs::write(ro.path().join("data.txt"), "ro-data").unwrap();
    let mut cfg = config(
        root.path(),
        &[
            "probe",
            "read",
            "/inside.txt",
            "read",
            "/data/data.txt",
            "write",
            "/data/new.txt",
            "write",
            "/new.txt",
            "read",
            "/etc/hostname",
            "read",
            "/../../etc/hostname",
        ],
    );
    cfg.preopens.push(Preopen { host: ro.path().to_path_buf(), guest: "/data".into(), readonly: true });
    let c = run(&e, &fixture("probe.wasm"), cfg, Default::default());
    let lines: Vec<&str> = c.stdout.lines().collect();
    assert!(lines[0].starts_with("read /inside.txt: ok"), "{lines:?}");
    assert!(lines[1].starts_with("read /data/data.txt: ok"), "{lines:?}");
    assert!(lines[2].starts_with("write /data/new.txt: denied"), "{lines:?}");
    assert!(lines[3].starts_with("write /new.txt: ok"), "{lines:?}");
    assert!(lines[4].starts_with("read /etc/hostname: denied"), "{lines:?}");
    assert!(lines[5].starts_with("read /../../etc/hostname: denied"), "{lines:?}");
    assert!(!ro.path().join("new.txt").exists());
    assert!(root.path().join("new.txt").exists());
}

#[test]
fn sockets_denied_when_not_granted() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let c = run(&e, &fixture("probe.wasm"), config(d.path(), &["probe", "connect", &addr]), Default::default());
    assert!(c.stdout.contains(": denied"), "{}", c.stdout);
}

#[test]
fn memory_cap_turns_a_bomb_into_out_of_memory() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let mut cfg = config(d.path(), &["probe", "alloc", "256"]);
    cfg.limits.memory_bytes = Some(32 << 20);
    let stats = Arc::new(GuestStats::for_limits(&cfg.limits));
    let c = run(&e, &fixture("probe.wasm"), cfg, stats.clone());
    let exit = c.exit.unwrap();
    assert!(matches!(exit, Exit::OutOfMemory(_)), "{exit:?} {}", c.stderr);
    assert_eq!(exit.status(), 137);
    assert!(stats.memory_max_bytes.load(std::sync::atomic::Ordering::Relaxed) <= 32 << 20);
    assert!(c.stderr.contains("memory limit"), "{}", c.stderr);
}

/// Issue 20, item 2: host memory a guest makes (here wasi:http fields of
/// 64 KiB each, in the shim's heap) counts against its memory limit: 2,000
/// of them (125 MiB) under 64 MiB end as out of memory at the limit, not
/// in the shim's heap; without a limit they are made and counted, and given
/// back when the guest ends.
#[test]
fn host_memory_a_guest_makes_counts_against_its_limit() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let mut cfg = config(d.path(), &["probe", "fields", "2000"]);
    cfg.limits.memory_bytes = Some(64 << 20);
    let stats = Arc::new(GuestStats::for_limits(&cfg.limits));
    let c = run(&e, &fixture("probe.wasm"), cfg, stats.clone());
    let exit = c.exit.unwrap();
    assert!(matches!(exit, Exit::OutOfMemory(_)), "{exit:?} {} {}", c.stdout, c.stderr);
    assert_eq!(exit.status(), 137);
    assert!(c.stderr.contains("host memory the guest made"), "{}", c.stderr);
    assert!(stats.oom.load(std::sync::atomic::Ordering::Relaxed));
    assert!(stats.host.bytes() < 1 << 20, "given back: {}", stats.host.bytes());

    let stats = Arc::new(GuestStats::default());
    let c =
        run(&e, &fixture("probe.wasm"), config(d.path(), &["probe", "fields", "600", "print", "done"]), stats.clone());
    assert_eq!(c.exit.unwrap(), Exit::Code(0), "{} {}", c.stdout, c.stderr);
    assert!(c.stdout.contains("made 600 fields"), "{}", c.stdout);
    assert!(stats.host.bytes() < 1 << 20, "given back: {}", stats.host.bytes());
}

#[test]
fn dropping_the_future_stops_a_guest_that_never_yields() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let wasm = fixture("spin.wasm");
    let program = e.prepare(&wasm, WasmKind::Component, Default::default()).unwrap();
    let cfg = config(d.path(), &["spin"]);
    let stats = Arc::new(GuestStats::default());
    assert!(run_cut_off(&e, &program, &cfg, &stats, 300), "the spinning guest was cut off by the timeout");
    assert!(stats.cpu_ns.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn link_errors_name_the_missing_import() {
    let e = Engine::new().unwrap();
    let comp =
        wat::parse_str(r#"(component (import "wasi:nothere/thing@0.1.0" (instance (export "f" (func)))))"#).unwrap();
    let err = e.prepare(&comp, WasmKind::Component, Default::default()).err().expect("refused");
    assert!(err.to_string().contains("wasi:nothere/thing@0.1.0"), "{err}");
    let module = wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#).unwrap();
    let err = e.prepare(&module, WasmKind::Module, Default::default()).err().expect("refused");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = e.prepare(b"\0asm\x01\0\0\0\x01\xff", WasmKind::Module, Default::default()).err().expect("refused");
    assert!(matches!(err, EngineError::Compile(_)), "{err}");
}

#[test]
fn over_the_instance_limits_is_not_called_invalid() {
    // Valid Wasm with more tables than a pooled instance may have (8).
    let tables = "(table 1 funcref) ".repeat(9);
    let module = wat::parse_str(format!(r#"(module {tables} (func (export "_start")))"#)).unwrap();
    wasmparser::Validator::new().validate_all(&module).expect("valid Wasm");
    let err = Engine::new().unwrap().prepare(&module, WasmKind::Module, Default::default()).err().expect("refused");
    assert!(matches!(err, EngineError::TooBig(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("per-instance limits") && msg.contains("tables"), "{msg}");
    assert!(!msg.contains("invalid WebAssembly"), "{msg}");
}

/// The WASI layer alone (no nodev mount under it): a component cannot open a
/// device node, a fifo or a socket in its preopens, while a file beside them
/// opens. The host can open the same device node, so the refusal is ours.
#[test]
fn a_component_opens_only_files_directories_and_symlinks() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    assert!(nix::unistd::geteuid().is_root(), "this test makes device nodes: run it as root");
    let e = Engine::new().unwrap();
    let d = tmp();
    mknod(&d.path().join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o666)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
    std::fs::write(d.path().join("file"), "plain").unwrap();
    std::os::unix::fs::symlink("null", d.path().join("link-to-null")).unwrap();
    assert!(std::fs::File::open(d.path().join("null")).is_ok(), "the host itself may open the node here");
    let cfg = config(
        d.path(),
        &["probe", "read", "/null", "write", "/null", "read", "/sock", "read", "/link-to-null", "read", "/file"],
    );
    let c = run(&e, &fixture("probe.wasm"), cfg, Arc::new(GuestStats::default()));
    for action in ["read /null", "write /null", "read /sock", "read /link-to-null"] {
        let line = c.stdout.lines().find(|l| l.starts_with(action)).unwrap_or_else(|| panic!("{action}: {}", c.stdout));
        assert!(line.contains("denied: Permission denied"), "{line}");
    }
    assert!(c.stdout.contains("read /file: ok 5 bytes: plain"), "{}", c.stdout);
    // A fifo without a writer would block its open for ever: refused before.
    let cfg = config(d.path(), &["probe", "read", "/fifo", "write", "/fifo"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&e, &fixture("probe.wasm"), cfg, Arc::new(GuestStats::default())).stdout);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("opening a fifo blocked the guest: it must be refused before the open");
    for action in ["read /fifo", "write /fifo"] {
        let line = out.lines().find(|l| l.starts_with(action)).unwrap_or_else(|| panic!("{action}: {out}"));
        assert!(line.contains("denied: Permission denied"), "{line}");
    }
}

/// A WASI 0.2 command that calls `wasi:cli/exit.exit-with-code` (stable
/// since 0.2.12, what newer toolchains call for `exit(N)`) reports N, as a
/// WASIp1 module's `proc_exit(N)` does. Older toolchains call only
/// `exit(result)`, which can say 0 or 1 and nothing else.
#[test]
fn component_exit_with_code_reports_the_code() {
    const WAT: &str = r#"
(component
  (import "wasi:cli/exit@0.2.12" (instance $exit (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $ewc (canon lower (func $exit "exit-with-code")))
  (core module $m
    (import "host" "exit-with-code" (func $e (param i32)))
    (func (export "run") (result i32) (call $e (i32.const 3)) (i32.const 0)))
  (core instance $i (instantiate $m (with "host" (instance (export "exit-with-code" (func $ewc))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $r)))
"#;
    let wasm = wat::parse_str(WAT).unwrap();
    let e = Engine::new().unwrap();
    let d = tmp();
    let c = run(&e, &wasm, config(d.path(), &["x"]), Default::default());
    assert_eq!(c.exit.unwrap().status(), 3, "{}", c.stderr);
}

#[test]
fn p3_command_gets_its_args_env_and_preopens_and_exits_with_its_code() {
    let e = Engine::new().unwrap();
    let d = tmp();
    std::fs::write(d.path().join("note.txt"), "hello p3\n").unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let argv = ["/p3-command.wasm", "args", "env", "preopens", "ls", "/", "read", "note.txt", "stderr", "to-err"];
    let c = run(&e, &fixture("p3-command.wasm"), config(d.path(), &argv), Default::default());
    assert_eq!(c.exit.as_ref().unwrap(), &Exit::Code(0), "{}\n{}", c.stdout, c.stderr);
    assert!(c.stdout.contains("arg: read\n"), "{}", c.stdout);
    // Exactly the configured environment.
    let env: Vec<&str> = c.stdout.lines().filter(|l| l.starts_with("env ") && !l.contains(": ")).collect();
    assert_eq!(env, ["env ONLY=this"], "{}", c.stdout);
    let pre: Vec<&str> = c.stdout.lines().filter(|l| l.starts_with("preopen ")).collect();
    assert_eq!(pre, ["preopen /"], "{}", c.stdout);
    assert!(c.stdout.contains("ls /: ok note.txt,sub\n"), "{}", c.stdout);
    assert!(c.stdout.contains("read note.txt: ok 9 bytes: hello p3\n"), "{}", c.stdout);
    assert_eq!(c.stderr, "to-err\n");

    let c = run(&e, &fixture("p3-command.wasm"), config(d.path(), &["x", "exit", "7"]), Default::default());
    assert_eq!(c.exit.unwrap().status(), 7, "{}", c.stderr);
    let c = run(&e, &fixture("p3-command.wasm"), config(d.path(), &["x", "read", "missing"]), Default::default());
    assert_eq!(c.exit.unwrap().status(), 1, "{}", c.stdout);
}

#[test]
fn p3_command_readonly_preopen_and_device_guard() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let mut cfg = config(d.path(), &["x", "write", "new.txt"]);
    cfg.preopens[0].readonly = true;
    let c = run(&e, &fixture("p3-command.wasm"), cfg, Default::default());
    assert!(c.stdout.contains("write new.txt: denied"), "{}", c.stdout);
    assert!(!d.path().join("new.txt").exists());
    // A fifo and a device are neither files, directories nor symlinks: a
    // fifo's open would block, a device's would reach the device.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o666)).unwrap();
    mknod(&d.path().join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    let cfg = config(d.path(), &["x", "read", "fifo", "read", "null", "write", "null"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&e, &fixture("p3-command.wasm"), cfg, Default::default()).stdout);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("opening a fifo blocked the guest: it must be refused before the open");
    for action in ["read fifo", "read null", "write null"] {
        let line = out.lines().find(|l| l.starts_with(action)).unwrap_or_else(|| panic!("{action}: {out}"));
        assert!(line.contains("denied: ErrorCode::Access"), "{line}");
    }
}

#[test]
fn p3_command_memory_cap_and_kill() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let stats = Arc::new(GuestStats::default());
    stats.set_memory_cap(Some(32 << 20));
    let c = run(&e, &fixture("p3-command.wasm"), config(d.path(), &["x", "alloc", "64"]), stats);
    assert!(matches!(c.exit, Ok(Exit::OutOfMemory(_))), "{:?} {}", c.exit, c.stderr);
}

#[test]
fn dropping_the_future_stops_a_p3_guest_busy_or_waiting() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let program = e.prepare(&fixture("p3-command.wasm"), WasmKind::Component, Default::default()).unwrap();
    for argv in [&["x", "spin"][..], &["x", "sleep", "600000"][..]] {
        let cfg = config(d.path(), argv);
        let stats = Arc::new(GuestStats::default());
        let started = std::time::Instant::now();
        assert!(run_cut_off(&e, &program, &cfg, &stats, 300), "{argv:?}: cut off by the timeout");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{argv:?}: stopped promptly");
    }
}

#[test]
fn a_reactor_core_module_is_refused_before_compiling_with_its_imports_named() {
    let e = Engine::new().unwrap();
    // A large body (thousands of functions) that would take a while to
    // compile; the refusal must come from reading it, not compiling it.
    let funcs = "(func (result i32) (i32.const 1) (i32.const 2) i32.add) ".repeat(20000);
    let wat = format!(
        r#"(module (import "env" "js_log" (func)) (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             {funcs} (func (export "_initialize")))"#
    );
    let wasm = wat::parse_str(&wat).unwrap();
    let started = std::time::Instant::now();
    let err = e.prepare(&wasm, WasmKind::Module, Default::default()).err().expect("refused");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(msg.contains("does not export a _start function"), "{msg}");
    assert!(msg.contains("`env::js_log`") && !msg.contains("fd_write"), "{msg}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    // With `_start` but a foreign import: refused the same way, at link.
    let module = wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#).unwrap();
    let err = e.prepare(&module, WasmKind::Module, Default::default()).err().expect("refused");
    assert!(err.to_string().contains("`env::nope`"), "{err}");
}

#[test]
fn a_component_importing_unserved_interfaces_is_told_each_one() {
    let e = Engine::new().unwrap();
    let comp = wat::parse_str(
        r#"(component
             (import "wasi:blobstore/container@0.2.0-draft" (instance (export "f" (func))))
             (import "acme:db/query@1.0.0" (instance (export "g" (func))))
             (import "wasi:cli/environment@0.3.0" (instance (export "get-environment" (func)))))"#,
    )
    .unwrap();
    let msg = e.prepare(&comp, WasmKind::Component, Default::default()).err().expect("refused").to_string();
    for name in ["`wasi:blobstore/container@0.2.0-draft`", "`acme:db/query@1.0.0`", "WASI 0.3.x", "wasi:http"] {
        assert!(msg.contains(name), "{name} not in: {msg}");
    }
}

#[test]
fn describe_names_the_world_without_compiling() {
    let d = wasmcell_engine::describe;
    assert!(
        d(&fixture("p3-http.wasm")).starts_with("WASI 0.3 HTTP server (wasi:http/handler@0.3.0)"),
        "{}",
        d(&fixture("p3-http.wasm"))
    );
    assert!(d(&fixture("p3-command.wasm")).starts_with("WASI 0.3 command (wasi:cli/run@0.3.0)"));
    assert!(d(&fixture("http.wasm")).starts_with("WASI 0.2 HTTP server"));
    assert!(d(&fixture("hello.wasm")).starts_with("WASI 0.2 command"));
    assert_eq!(d(&fixture("hello-p1.wasm")), "WASI preview 1 command (_start)");
    let module = wat::parse_str(r#"(module (import "env" "f" (func)) (func (export "_initialize")))"#).unwrap();
    assert_eq!(
        d(&module),
        "nothing: a core module without _start (refused at create); refused at create for its imports: env::f"
    );
}

#[test]
fn p3_command_is_held_to_its_cpu_quota() {
    let e = Engine::new().unwrap();
    let d = tmp();
    let program = e.prepare(&fixture("p3-command.wasm"), WasmKind::Component, Default::default()).unwrap();
    let cfg = config(d.path(), &["x", "spin"]);
    let stats = Arc::new(GuestStats::default());
    stats.set_cpu_quota(Some(wasmcell_grants::CpuQuota { quota_us: 20_000, period_us: 100_000 }));
    assert!(run_cut_off(&e, &program, &cfg, &stats, 1500), "spins until cut off");
    // 0.2 of a core for 1.5 s, plus one period of burst: 0.32 s; unthrottled
    // it would be about 1.5 s.
    let used = stats.cpu_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9;
    assert!(used < 0.6, "a p3 guest under a 0.2-core quota used {used:.2} s of CPU in 1.5 s");
    assert!(used > 0.1, "it ran: {used:.2} s");
}

/// A component built against a newer 0.3 patch release (0.3.2 adds no
/// items, only version strings) links against the 0.3.0 host.
#[test]
fn a_newer_wasi_0_3_patch_version_links() {
    const WAT: &str = r#"
(component
  (import "wasi:random/random@0.3.2" (instance $r (export "get-random-u64" (func (result u64)))))
  (core func $rand (canon lower (func $r "get-random-u64")))
  (core module $m
    (import "host" "rand" (func $rand (result i64)))
    (func (export "run") (result i32) (drop (call $rand)) (i32.const 0)))
  (core instance $i (instantiate $m (with "host" (instance (export "rand" (func $rand))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $out (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $out)))
"#;
    let wasm = wat::parse_str(WAT).unwrap();
    let e = Engine::new().unwrap();
    let d = tmp();
    let c = run(&e, &wasm, config(d.path(), &["x"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0), "{}", c.stderr);
}

/// A server that is dropped (a kill) ends the instances still handling
/// requests, 0.2 (an instance task per request) and 0.3 (pooled instances)
/// alike: in a pod's shim they would otherwise keep running after their
/// container is gone. Every instance holds the container's stats, so the
/// count of their holders says when all have ended.
#[test]
fn a_dropped_server_ends_its_running_instances() {
    use std::io::Write;
    let e = Engine::new().unwrap();
    let d = tmp();
    for wasm in ["http.wasm", "p3-http.wasm"] {
        let program = e.prepare(&fixture(wasm), WasmKind::Component, Default::default()).unwrap();
        let cfg = config(d.path(), &["/x.wasm"]);
        let stats = Arc::new(GuestStats::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut client = None;
        rt.block_on(async {
            let serve = e.serve(
                &program,
                &cfg,
                GuestIo::default(),
                stats.clone(),
                listener,
                stop_rx,
                std::time::Duration::from_secs(10),
            );
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /slow?ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            client = Some(s);
            let out = tokio::time::timeout(std::time::Duration::from_millis(800), serve).await;
            assert!(out.is_err(), "{wasm}: still serving when dropped");
        });
        let mut holders = Arc::strong_count(&stats);
        for _ in 0..100 {
            if holders == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            holders = Arc::strong_count(&stats);
        }
        assert_eq!(holders, 1, "{wasm}: instances still alive after the server was dropped");
        drop(rt);
    }
}

/// Many requests at once under a memory limit: the instances' memories
/// together never go over it (the limiter's charge is atomic across
/// instances), requests that do not fit fail alone, and the server keeps
/// serving. 0.2 (an instance per request) and 0.3 (shared instances).
#[test]
fn concurrent_requests_never_exceed_the_memory_cap() {
    use std::io::{Read, Write};
    const CAP: u64 = 6 << 20;
    let e = Engine::new().unwrap();
    let d = tmp();
    for wasm in ["http.wasm", "p3-http.wasm"] {
        let program = e.prepare(&fixture(wasm), WasmKind::Component, Default::default()).unwrap();
        let mut cfg = config(d.path(), &["/x.wasm"]);
        cfg.limits.memory_bytes = Some(CAP);
        let stats = Arc::new(GuestStats::for_limits(&cfg.limits));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let statuses = rt.block_on(async {
            let serve = tokio::spawn({
                let (e, program, cfg, stats) = (e.clone(), program.clone(), cfg.clone(), stats.clone());
                async move {
                    e.serve(
                        &program,
                        &cfg,
                        GuestIo::default(),
                        stats,
                        listener,
                        stop_rx,
                        std::time::Duration::from_secs(10),
                    )
                    .await
                }
            });
            let clients: Vec<_> = (0..32)
                .map(|_| {
                    tokio::task::spawn_blocking(move || {
                        let mut s = std::net::TcpStream::connect(addr).ok()?;
                        s.set_read_timeout(Some(std::time::Duration::from_secs(20))).ok()?;
                        s.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
                        let mut out = String::new();
                        s.read_to_string(&mut out).ok()?;
                        out.split_whitespace().nth(1)?.parse::<u16>().ok()
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for c in clients {
                statuses.push(c.await.unwrap());
            }
            let _ = stop_tx.send(true);
            let _ = serve.await;
            statuses
        });
        let max = stats.memory_max_bytes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(max <= CAP, "{wasm}: the instances together reached {max} bytes, over the {CAP}-byte cap");
        assert!(statuses.contains(&Some(200)), "{wasm}: some requests fit: {statuses:?}");
        assert!(statuses.iter().all(|s| matches!(s, Some(200) | Some(500))), "{wasm}: {statuses:?}");
        if wasm == "http.wasm" {
            // 32 instances of about 1.1 MiB cannot all be live under 6 MiB:
            // the cap was what bounded them.
            assert!(statuses.contains(&Some(500)), "{wasm}: the cap never bound: {statuses:?}");
        }
    }
}

/// wasi:config entries come from the granted directory's files; ConfigMap
/// bookkeeping (`..data`) is skipped and symlinks resolve inside it only.
#[test]
fn config_store_holds_the_directory_files() {
    let e = Engine::new().unwrap();
    let root = tmp();
    let dir = tmp();
    std::fs::create_dir(dir.path().join("..2026_12_01")).unwrap();
    std::fs::write(dir.path().join("..2026_12_01/greeting"), "hello").unwrap();
    std::os::unix::fs::symlink("..2026_12_01", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/greeting", dir.path().join("greeting")).unwrap();
    std::fs::write(dir.path().join(".env"), "x=1").unwrap();
    let entries = wasmcell_engine::read_config_dir(dir.path()).unwrap();
    assert_eq!(entries, vec![(".env".to_string(), "x=1".to_string()), ("greeting".into(), "hello".into())]);
    // The fixture also imports wasi:keyvalue, which needs a grant.
    let caps = |argv: &[&str], entries: Vec<(String, String)>| {
        let mut cfg = config(root.path(), argv);
        cfg.config = wasmcell_engine::ConfigVars::new(entries);
        cfg.keyvalue = Some(wasmcell_engine::KvStore::Memory(Arc::new(wasmcell_engine::MemoryStore::new(1 << 20))));
        run(&e, &fixture("caps.wasm"), cfg, Default::default())
    };
    let c = caps(&["caps", "config", "all"], entries);
    assert_eq!(c.exit.unwrap(), Exit::Code(0), "{}", c.stderr);
    assert_eq!(c.stdout, ".env=x=1\ngreeting=hello\ncount=2\n");
    // Without a directory: the import links and every key is missing.
    assert_eq!(caps(&["caps", "config", "get", "greeting"], Vec::new()).stdout, "greeting missing\n");
    // A symlink out of the directory is refused, and so is binary content.
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("escape")).unwrap();
    let err = wasmcell_engine::read_config_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("escape"), "{err}");
    std::fs::remove_file(dir.path().join("escape")).unwrap();
    std::fs::write(dir.path().join("blob"), [0xff, 0xfe]).unwrap();
    let err = wasmcell_engine::read_config_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("blob is not UTF-8"), "{err}");
}

/// The in-memory store: buckets are separate key spaces, shared by every
/// guest given the same store; without a grant the component is refused.
#[test]
fn keyvalue_memory_store_is_shared_and_granted_only() {
    let e = Engine::new().unwrap();
    let root = tmp();
    let store = wasmcell_engine::KvStore::Memory(Arc::new(wasmcell_engine::MemoryStore::new(1 << 20)));
    let go = |argv: &[&str]| {
        let mut cfg = config(root.path(), argv);
        cfg.keyvalue = Some(store.clone());
        run(&e, &fixture("caps.wasm"), cfg, Default::default())
    };
    assert_eq!(go(&["caps", "kv", "set", "", "k", "empty-bucket"]).stdout, "ok\n");
    assert_eq!(go(&["caps", "kv", "set", "b1", "k", "one"]).stdout, "ok\n");
    assert_eq!(go(&["caps", "kv", "get", "", "k"]).stdout, "empty-bucket\n");
    assert_eq!(go(&["caps", "kv", "get", "b1", "k"]).stdout, "one\n");
    assert_eq!(go(&["caps", "kv", "get", "b2", "k"]).stdout, "(none)\n");
    assert_eq!(go(&["caps", "kv", "incr", "b1", "n", "5"]).stdout, "5\n");
    assert_eq!(go(&["caps", "kv", "mset", "b1", "x=1", "y=2"]).stdout, "ok\n");
    assert_eq!(go(&["caps", "kv", "keys", "b1"]).stdout, "k\nn\nx\ny\ncount=4\n");
    assert_eq!(go(&["caps", "kv", "mget", "b1", "x", "z"]).stdout, "x=1\nz (none)\n");
    // A value is host memory charged to the guest that wrote it, while it
    // is stored.
    let big = "v".repeat(200_000);
    let writer = Arc::new(GuestStats::default());
    let mut cfg = config(root.path(), &["caps", "kv", "set", "b1", "big", &big]);
    cfg.keyvalue = Some(store.clone());
    assert_eq!(run(&e, &fixture("caps.wasm"), cfg, writer.clone()).stdout, "ok\n");
    assert!(writer.host.bytes() >= 200_000, "{}", writer.host.bytes());
    assert_eq!(go(&["caps", "kv", "del", "b1", "big"]).stdout, "ok\n");
    assert!(writer.host.bytes() < 100_000, "{}", writer.host.bytes());
    let c = go(&["caps", "kv", "incr", "b1", "k", "1"]);
    assert_eq!(c.exit.unwrap(), Exit::Code(3));
    assert!(c.stderr.contains("not a decimal number"), "{}", c.stderr);
    let err = e.prepare(&fixture("caps.wasm"), WasmKind::Component, Default::default()).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("wasi:keyvalue/") && msg.contains("wasmcell.dev/keyvalue=memory"), "{msg}");
}

/// Wasm 3.0 features run by default; a policy that turns one off refuses
/// the module by name before compiling it, and a policy's denied import is
/// refused by name, from the cache too.
#[test]
fn policy_turns_features_off_and_denies_imports() {
    let gc = wat::parse_str(
        r#"(module (type $p (struct (field i32)))
             (func (export "_start") (drop (struct.new $p (i32.const 7)))))"#,
    )
    .unwrap();
    let default = Engine::new().unwrap();
    let d = tmp();
    let c = run(&default, &gc, config(d.path(), &["gc"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0));
    let file = d.path().join("strict.toml");
    let policy = |text: &str| {
        std::fs::write(&file, text).unwrap();
        wasmcell_grants::Policy::parse(text, &file).unwrap()
    };
    let cache = wasmcell_engine::cache::CacheConfig { dir: d.path().join("cache"), ..Default::default() };
    let strict = Engine::with_policy(
        Some(cache),
        None,
        Some(policy("deny_wasm_features = [\"gc\", \"exceptions\"]\ndeny_imports = [\"wasi:sockets/*\"]")),
    )
    .unwrap();
    let msg = strict.prepare(&gc, WasmKind::Module, Default::default()).err().expect("refused").to_string();
    assert!(msg.contains("`gc`") && msg.contains("strict.toml") && msg.contains("deny_wasm_features"), "{msg}");
    // Refused before compiling, and again (from the component's type) when
    // the second Create finds nothing to compile.
    let sockets = wat::parse_str(
        r#"(component (import "wasi:sockets/network@0.2.0" (instance (export "network" (type (sub resource))))))"#,
    )
    .unwrap();
    for _ in 0..2 {
        let msg = strict.prepare(&sockets, WasmKind::Component, Default::default()).err().expect("refused").to_string();
        assert!(msg.contains("`wasi:sockets/network@0.2.0`") && msg.contains("deny_imports"), "{msg}");
    }
    // hello runs under the strict policy, and its artifact is cached apart
    // from the default engine's.
    let c = run(&strict, &fixture("hello.wasm"), config(d.path(), &["/hello.wasm"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0), "{}", c.stderr);
}

/// A first start (nothing in the cache) runs baseline code at once, with
/// the output and exit code the optimized code gives, and moves over to the
/// optimized code when the background compile has put it in the cache; the
/// next start loads that (issue 18).
/// This thread's nice value.
fn nice() -> i32 {
    // SAFETY: no memory effects; errno is this thread's.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        assert_eq!(*libc::__errno_location(), 0, "getpriority");
        n
    }
}

#[test]
fn a_background_compile_runs_nicer_than_the_shim() {
    use wasmcell_engine::{FirstStart, Tier};
    let d = tmp();
    let cache = wasmcell_engine::cache::CacheConfig { dir: d.path().join("cache"), ..Default::default() };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, inner) = (seen.clone(), Engine::new().unwrap());
    // The shim's compiler forks its child from the calling thread, which
    // gives the child that thread's nice value: this one records it.
    let compiler: wasmcell_engine::Compiler = Arc::new(move |b, k, tier, concurrency, _| {
        log.lock().unwrap().push((tier, nice()));
        inner.with_concurrency(concurrency).precompile_tier(b, k, tier).map(wasmcell_engine::Compiled::Bytes)
    });
    let e = Engine::with_options(Some(cache), Some(compiler))
        .unwrap()
        .with_first_start(FirstStart::Baseline { min_bytes: 0 });
    let bytes = fixture("hello.wasm");
    let program = e.prepare(&bytes, classify(&bytes).unwrap(), Default::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(program.optimized()));
    let base = nice();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(Tier::Baseline, base), (Tier::Optimized, (base + wasmcell_engine::BACKGROUND_NICE).min(19))],
        "the first start's baseline compile at the shim's priority, the optimizing one in the background, nicer"
    );
}

#[test]
fn a_first_start_whose_baseline_compiler_is_killed_waits_for_optimized_code() {
    use wasmcell_engine::{Compiled, EngineError, FirstStart, Tier};
    let d = tmp();
    let cache = wasmcell_engine::cache::CacheConfig { dir: d.path().join("cache"), ..Default::default() };
    let inner = Engine::new().unwrap();
    // The baseline compiler killed (as the kernel does when it outgrows the
    // container's memory limit); the optimizing one fits.
    let compiler: wasmcell_engine::Compiler = Arc::new(move |b, k, tier, concurrency, _| match tier {
        Tier::Baseline => Err(EngineError::CompilerKilled("killed (SIGKILL)".into())),
        Tier::Optimized => inner.with_concurrency(concurrency).precompile_tier(b, k, tier).map(Compiled::Bytes),
    });
    let e = Engine::with_options(Some(cache), Some(compiler))
        .unwrap()
        .with_first_start(FirstStart::Baseline { min_bytes: 0 });
    let bytes = fixture("hello.wasm");
    let program = e.prepare(&bytes, classify(&bytes).unwrap(), Default::default()).unwrap();
    assert_eq!(program.tier(), Tier::Optimized, "started on the optimized code it waited for");
    let c = run_program(&e, &program, config(d.path(), &["/hello.wasm", "x"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0));
    assert!(c.stdout.starts_with("hello from wasmcell\nargs: /hello.wasm x\n"), "{}", c.stdout);
}

#[test]
fn first_start_runs_baseline_code_then_optimized_code() {
    use wasmcell_engine::{FirstStart, Tier};
    let d = tmp();
    let cache = wasmcell_engine::cache::CacheConfig { dir: d.path().join("cache"), ..Default::default() };
    let e = Engine::with_cache(Some(cache)).unwrap().with_first_start(FirstStart::Baseline { min_bytes: 0 });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (wasm, argv, code, out) in [
        ("hello.wasm", vec!["/hello.wasm", "x"], 0, "hello from wasmcell\nargs: /hello.wasm x\n"),
        ("trap.wasm", vec!["t"], 134, ""),
        ("exit-code-p1.wasm", vec!["e", "42"], 42, ""),
        ("p3-command.wasm", vec!["c", "args", "exit", "3"], 3, "arg: args\n"),
    ] {
        let bytes = fixture(wasm);
        let program = e.prepare(&bytes, classify(&bytes).unwrap(), Default::default()).unwrap();
        assert_eq!(program.tier(), Tier::Baseline, "{wasm}: a first start");
        let first = run_program(&e, &program, config(d.path(), &argv), Default::default());
        assert!(rt.block_on(program.optimized()), "{wasm}: the optimizing compile finished");
        assert_eq!(program.tier(), Tier::Optimized);
        let upgraded = run_program(&e, &program, config(d.path(), &argv), Default::default());
        let again = e.prepare(&bytes, classify(&bytes).unwrap(), Default::default()).unwrap();
        assert_eq!(again.tier(), Tier::Optimized, "{wasm}: the next start loads the cached artifact");
        let later = run_program(&e, &again, config(d.path(), &argv), Default::default());
        for c in [&first, &upgraded, &later] {
            let exit = c.exit.as_ref().unwrap().status();
            assert_eq!(exit, code, "{wasm}: {}", c.stderr);
            assert!(c.stdout.contains(out), "{wasm}: {:?}", c.stdout);
        }
        assert_eq!(first.stdout, later.stdout, "{wasm}");
    }
}

#[test]
fn wasi_0_2_components_run_on_the_engine_without_concurrency_and_0_3_ones_on_the_other() {
    use wasmcell_engine::{cache, Concurrency, FirstStart};
    let d = tmp();
    let cache_config = cache::CacheConfig { dir: d.path().join("cache"), ..Default::default() };
    let e = Engine::with_cache(Some(cache_config.clone())).unwrap().with_first_start(FirstStart::Optimized);
    let entry = |c: Concurrency, wasm: &[u8]| {
        cache::Cache::open(cache_config.clone(), e.with_concurrency(c).wasmtime())
            .unwrap()
            .entry(&cache::digest(wasm), WasmKind::Component)
    };
    for (name, runs_on) in [
        ("hello.wasm", Concurrency::Off),
        ("http.wasm", Concurrency::Off),
        ("p3-command.wasm", Concurrency::On),
        ("p3-http.wasm", Concurrency::On),
    ] {
        let wasm = fixture(name);
        let other = if runs_on == Concurrency::On { Concurrency::Off } else { Concurrency::On };
        // A start that compiles, then one that loads from the cache.
        for _ in 0..2 {
            e.prepare(&wasm, WasmKind::Component, Default::default()).unwrap();
            assert!(entry(runs_on, &wasm).exists(), "{name}: compiled for the engine with concurrency {runs_on:?}");
            assert!(!entry(other, &wasm).exists(), "{name}: nothing stored for the engine with concurrency {other:?}");
        }
    }
    assert_ne!(entry(Concurrency::On, b"x"), entry(Concurrency::Off, b"x"), "distinct cache entries");
    // And each runs there.
    let c = run(&e, &fixture("hello.wasm"), config(d.path(), &["hello"]), Default::default());
    assert_eq!(c.exit.unwrap(), Exit::Code(0));
    let c = run(&e, &fixture("p3-command.wasm"), config(d.path(), &["x", "exit", "7"]), Default::default());
    assert_eq!(c.exit.unwrap().status(), 7);
}
