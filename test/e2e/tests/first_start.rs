//! First starts (issue 18): with nothing in the compile cache, a container
//! starts on baseline (Winch) code while the optimizing compile fills the
//! cache in the background; later starts load the optimized artifact. The
//! outputs and exit codes are the same either way; a running HTTP service
//! moves to the optimized code; a container deleted during its background
//! compile leaves no compiler process and no cache file behind.
//!
//! `WASMCELL_BASELINE_MIN_KB=0` makes the small fixtures take the baseline
//! path (by default only Wasm of 1 MiB or more does).

use std::time::Duration;

use wasmcell_e2e::wait::{free_port, poll, until};
use wasmcell_e2e::{http_get as get, Containerd};

const BASELINE_ALWAYS: (&str, &str) = ("WASMCELL_BASELINE_MIN_KB", "0");

fn cache_files(c: &Containerd) -> Vec<String> {
    std::fs::read_dir(c.dir.path().join("cache"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// `compile-wasm` children (the shim's compilers) alive now.
fn compilers() -> Vec<String> {
    let out = std::process::Command::new("pgrep").args(["-af", "compile-wasm"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.contains("pgrep")).map(String::from).collect()
}

#[test]
fn first_and_later_starts_give_the_same_output_and_exit_code() {
    let c = Containerd::start_with_env(&[BASELINE_ALWAYS]);
    // Alive long enough (2.5 s) for the optimizing compile to finish; a
    // failing last action makes the exit code 1.
    let args = ["/probe.wasm", "print", "same", "sleep", "2500", "read", "/nonexistent"];
    let first = c.run("first", &[], &args);
    let log = c.log();
    assert!(log.contains("first start on baseline code"), "the first start ran baseline code");
    assert!(log.contains("optimized code ready"), "and the optimized compile finished while it ran");
    let later = c.run("later", &[], &args);
    assert!(c.log().contains("compile cache Hit"), "the later start loaded the optimized artifact");
    assert_eq!(c.log().matches("first start on baseline code").count(), 1, "only the first start was one");
    assert_eq!((first.code, later.code), (Some(1), Some(1)), "{first:?} {later:?}");
    assert_eq!(first.stdout, later.stdout);
    assert!(first.stdout.contains("print same: ok same"), "{first:?}");
    // WASI 0.3 and preview 1 too, each its own first start.
    for args in [["/p3-command.wasm", "args", "exit", "3"].as_slice(), ["/exit-code-p1.wasm", "42"].as_slice()] {
        let a = c.run("a", &[], args);
        let b = c.run("b", &[], args);
        assert_eq!((a.code, &a.stdout), (b.code, &b.stdout), "{args:?}");
    }
    c.stop_and_check_clean();
}

#[test]
fn an_http_service_moves_to_the_optimized_code() {
    let c = Containerd::start_with_env(&[BASELINE_ALWAYS]);
    let addr = format!("127.0.0.1:{}", free_port());
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    c.run_detached("web", &["--net-host", "--env", &env], &["/http.wasm"]).ok();
    c.wait_status("web", "RUNNING");
    let first = poll(200, || get(&addr, "/tier")).expect("the first start serves");
    assert_eq!(first.0, 200, "{first:?}");
    let moved = until(200, || c.log(), |l| l.contains("new requests run the optimized code"));
    assert!(moved.contains("first start on baseline code"), "it started on baseline code");
    assert!(moved.contains("new requests run the optimized code"), "it moved over");
    let after = get(&addr, "/tier").expect("serves after the move");
    assert_eq!(after, first, "the same response from either code");
    c.ctr(&["task", "kill", "-s", "SIGKILL", "web"]);
    c.wait_status("web", "STOPPED");
    c.ctr(&["task", "delete", "web"]).ok();
    c.ctr(&["containers", "rm", "web"]).ok();
    c.stop_and_check_clean();
}

/// A module that spins forever, with enough code that its optimizing
/// compile takes seconds, the more so under a CPU quota of 0.2 core (the
/// compiler runs in the container's cgroup, under its limits).
fn slow_to_compile() -> Vec<u8> {
    let funcs: String = (0..20_000)
        .map(|i| {
            let body: String = (0..12)
                .map(|k| format!("local.get 0 i32.const {k} i32.mul local.get 1 i32.add local.set 1 "))
                .collect();
            format!(
                "(func $f{i} (param i32) (result i32) (local i32) {body} local.get 1 call $f{})\n",
                (i + 1) % 20_000
            )
        })
        .collect();
    wat::parse_str(format!("(module {funcs} (func (export \"_start\") (loop $l (br $l))))")).unwrap()
}

/// Imports the slow-to-compile image, starts container `id` from it under a
/// CPU quota of 0.2 core (with `extra` ctr flags), waits until its
/// optimizing compile runs, then kills it and deletes its task (not yet
/// the container).
fn delete_during_the_compile(c: &Containerd, id: &str, extra: &[&str]) {
    let path = c.dir.path().join("slow.wasm");
    if !path.exists() {
        std::fs::write(&path, slow_to_compile()).unwrap();
        c.import_image("wasmcell.test/slow:1", &[path.display().to_string()], &[]);
    }
    let mut a = vec!["run", "-d", "--platform", "wasi/wasm", "--runtime", wasmcell_e2e::RUNTIME];
    a.extend(extra);
    a.extend(["--cpu-quota", "20000", "--cpu-period", "100000", "wasmcell.test/slow:1", id, "/slow.wasm"]);
    c.ctr(&a).ok();
    c.wait_status(id, "RUNNING");
    let busy =
        until(400, compilers, |p| p.iter().any(|l| l.contains("compile-wasm module") && !l.contains("--baseline")));
    assert!(!busy.is_empty(), "the optimizing compile runs: {busy:?}\n{}", c.log());
    c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    c.wait_status(id, "STOPPED");
    c.ctr(&["task", "delete", id]).ok();
}

#[test]
fn deleting_a_container_during_its_background_compile_leaves_nothing() {
    let c = Containerd::start_with_env(&[BASELINE_ALWAYS]);
    // Another container of the same shim (one pod) keeps the shim alive:
    // what stops the compiler is the deletion, not the shim's exit.
    let pod = "--annotation=io.kubernetes.cri.sandbox-id=first-start-pod";
    c.run_detached("keeper", &[pod], &["/probe.wasm", "sleep", "600000"]).ok();
    c.wait_status("keeper", "RUNNING");
    let shims = c.shim_pids();
    delete_during_the_compile(&c, "slow", &[pod]);
    c.ctr(&["containers", "rm", "slow"]).ok();
    let left = until(100, compilers, |p| p.is_empty());
    assert!(left.is_empty(), "compiler processes left: {left:?}");
    assert_eq!(c.shim_pids(), shims, "one shim, still serving the pod's other container");
    assert!(c.log().contains("optimizing compile cancelled"), "the deletion cancelled it");
    c.ctr(&["task", "kill", "-s", "SIGKILL", "keeper"]);
    c.wait_status("keeper", "STOPPED");
    c.ctr(&["task", "delete", "keeper"]).ok();
    c.ctr(&["containers", "rm", "keeper"]).ok();
    let files = cache_files(&c);
    assert!(files.iter().all(|f| !f.contains(".tmp") && !f.contains("sumtmp")), "temp files left: {files:?}");
    assert!(files.iter().all(|f| !f.ends_with("-m.cwasm")), "no artifact of the cancelled compile: {files:?}");
    assert!(c.wait_shims_gone().is_empty(), "no shim left");
    std::thread::sleep(Duration::from_millis(200));
    c.stop_and_check_clean();
}

/// A container of its own shim, deleted while its optimizing compile runs:
/// the deletion stops the compiler first, so that the container's cgroup
/// (where the compiler runs) is removed by the deletion itself, not left
/// busy for the shim's later cleanup.
#[test]
fn a_deletion_stops_the_background_compile_before_removing_the_cgroup() {
    let c = Containerd::start_with_env(&[BASELINE_ALWAYS]);
    delete_during_the_compile(&c, "own", &[]);
    let log = c.log();
    assert!(log.contains("optimizing compile cancelled"), "the deletion cancelled it:\n{log}");
    assert!(!log.contains("remove cgroup"), "the deletion removed the container's cgroup:\n{log}");
    c.ctr(&["containers", "rm", "own"]).ok();
    let left = until(100, compilers, |p| p.is_empty());
    assert!(left.is_empty(), "compiler processes left: {left:?}");
    assert!(c.wait_shims_gone().is_empty(), "no shim left");
    c.stop_and_check_clean();
}

/// The baseline compiler child's allocator (mimalloc, for speed) is its
/// own: its artifact is byte for byte the one the shim's allocator makes,
/// and a shim (which must count its guests' host memory) started with the
/// variable that selects it refuses to serve, saying why.
#[test]
fn the_baseline_compilers_allocator_changes_nothing_but_its_speed() {
    let shim = wasmcell_e2e::target_dir().join("containerd-shim-wasmtime-v1");
    let wasm = std::fs::read(wasmcell_e2e::fixtures_dir().join("hello.wasm")).unwrap();
    let compile = |heap: bool| {
        use std::io::Write;
        let mut cmd = std::process::Command::new(&shim);
        cmd.args(["compile-wasm", "component", "--baseline", "--no-concurrency"]).env_clear();
        if heap {
            cmd.env("WASMCELL_COMPILER_HEAP", "mimalloc");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&wasm).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let (with, without) = (compile(true), compile(false));
    assert!(with.len() > 10_000, "an artifact: {} bytes", with.len());
    assert!(with == without, "the same artifact with either allocator ({} and {} bytes)", with.len(), without.len());
    // As the shim passes it: a sealed in-memory file, which the child maps
    // instead of reading.
    let sealed = {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::from(memfd_create("wasm", MFdFlags::MFD_ALLOW_SEALING).unwrap());
        f.write_all_at(&wasm, 0).unwrap();
        fcntl(&f, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW))
            .unwrap();
        let out = std::process::Command::new(&shim)
            .args(["compile-wasm", "component", "--baseline", "--no-concurrency"])
            .env_clear()
            .env("WASMCELL_COMPILER_HEAP", "mimalloc")
            .stdin(f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    assert!(sealed == with, "the same artifact from a mapped Wasm ({} and {} bytes)", sealed.len(), with.len());

    let c = Containerd::start_with_env(&[("WASMCELL_COMPILER_HEAP", "mimalloc")]);
    let r = c.run("refused", &[], &["/hello.wasm"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("WASMCELL_COMPILER_HEAP"), "the error names the variable: {r:?}");
    c.stop_and_check_clean();
}
