//! Every containerd a node may run: a smoke subset of the ctr and CRI suites
//! against each release series (1.6, 1.7 and 2.1), each daemon configured in
//! its own config schema and driven by its own `ctr`. The full suites run on
//! the default containerd (Debian 12's 1.6.20).
//!
//! One test per release, its steps in order; CRI steps hold the CRI lock
//! (the bridge is shared). 1.7 and 2.1 come from
//! `test/scripts/containerd-versions.sh` (`make containerd-versions`); a
//! release that cannot be had fails its test, it is never skipped.

use std::time::{Duration, Instant};

use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::wait::{free_port, wait_http};
use wasmcell_e2e::{Containerd, Release, Version, RUNTIME};

/// What containerd's log must never say at warning level or worse: anything
/// about our runtime, its shim binary, or runtime introspection (`-info`).
const SHIM_NEEDLES: &[&str] = &["wasmtime", "runtime info", "runtimeinfo", "runtime features", "introspect"];

/// Steps and their wall time, printed at the end (`--nocapture` shows it).
struct Clock {
    version: String,
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Clock {
    fn new(version: &str) -> Self {
        let now = Instant::now();
        Clock { version: version.into(), start: now, last: now, steps: Vec::new() }
    }
    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }
    fn report(&self) {
        let steps: Vec<String> = self.steps.iter().map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64())).collect();
        eprintln!(
            "containerd {}: {:.1}s total ({})",
            self.version,
            self.start.elapsed().as_secs_f64(),
            steps.join(", ")
        );
    }
}

/// containerd's log lines about container `id` (for failure messages).
fn log_of(c: &Containerd, id: &str) -> String {
    let log = c.log();
    let lines: Vec<&str> =
        log.lines().filter(|l| l.contains(&format!("id={id}")) || l.contains(&format!("\"{id}\""))).collect();
    lines.join("\n")
}

fn assert_no_shim_problems(c: &Containerd, phase: &str) {
    let problems = c.log_problems(SHIM_NEEDLES);
    assert!(
        problems.is_empty(),
        "containerd {} ({phase}) logged problems with the shim:\n{}",
        c.release.version,
        problems.join("\n")
    );
}

/// The ctr half: hello, an exit code, SIGKILL/SIGTERM of a running guest,
/// an HTTP component; on 2.x also runtime introspection (`shim -info`).
fn ctr_smoke(v: Version, clock: &mut Clock) {
    let mut c = Containerd::start_version(v);
    clock.step("ctr: start+import");
    // Its own config schema: 3 for 2.x, 2 for 1.x.
    let config = std::fs::read_to_string(c.dir.path().join("config.toml")).unwrap();
    let schema = if v == Version::V2_1 { "version = 3\n" } else { "version = 2\n" };
    assert!(config.starts_with(schema), "{config}");
    c.watch_events();

    // ctr run --rm of a component: its output, exit 0.
    let r = c.run("hello", &[], &["/hello.wasm", "a", "b"]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell"), "{r:?}\ncontainerd's log:\n{}", log_of(&c, "hello"));
    assert!(r.stdout.contains("args: /hello.wasm a b"), "{r:?}");
    assert!(r.stdout.contains("env: GREETING=hi"), "{r:?}");
    // A preview 1 module's exit code reaches ctr.
    let r = c.run("exit42", &[], &["/exit-code-p1.wasm", "42"]);
    assert_eq!(r.code, Some(42), "{r:?}");
    clock.step("ctr: hello+exit");

    // Two running guests: SIGKILL is 137, SIGTERM 143.
    c.run_detached("spin-kill", &[], &["/spin.wasm"]).ok();
    c.run_detached("spin-term", &[], &["/spin.wasm"]).ok();
    c.wait_status("spin-kill", "RUNNING");
    c.wait_status("spin-term", "RUNNING");
    c.ctr(&["task", "kill", "-s", "SIGKILL", "spin-kill"]).ok();
    c.ctr(&["task", "kill", "-s", "SIGTERM", "spin-term"]).ok();
    for (id, want) in [("spin-kill", 137), ("spin-term", 143)] {
        c.wait_status(id, "STOPPED");
        let exit = c.exit_event(id);
        assert_eq!(exit["exit_status"], want, "{id}: {exit}");
        c.ctr(&["task", "delete", id]);
        c.ctr(&["containers", "rm", id]).ok();
    }
    clock.step("ctr: kill");

    // An HTTP component on the host network.
    let addr = format!("127.0.0.1:{}", free_port());
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    c.run_detached("web", &["--net-host", "--env", &env], &["/http.wasm"]).ok();
    c.wait_status("web", "RUNNING");
    let (status, body) = wait_http(&addr, "/smoke");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from wasmcell http") && body.contains("path: /smoke"), "{body}");
    c.kill_and_delete("web", "SIGKILL");
    clock.step("ctr: http");

    if v == Version::V2_1 {
        // containerd 2.x introspects runtimes by running `SHIM -info`
        // (RuntimeInfo on stdout); ctr shows what it understood.
        let r = c.ctr(&["plugins", "inspect-runtime", "--runtime", RUNTIME]);
        r.ok();
        let info: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("inspect-runtime output: {e}: {r:?}"));
        assert_eq!(info["Name"], RUNTIME, "{info}");
        clock.step("ctr: -info");
    }

    // The shim exits with its last container.
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shims left after delete: {left:?}");
    assert_no_shim_problems(&c, "ctr");
    c.stop_and_check_clean();
    clock.step("ctr: stop");
}

/// The CRI half: one pod with the `wasmtime` handler, one command container.
fn cri_smoke(v: Version, clock: &mut Clock) {
    let c = Cri::start_version(v);
    clock.step("cri: start+import");
    let pod_cfg = c.pod_config("smoke");
    let (pod, _ip) = c.run_ready_pod(&pod_cfg);
    assert_eq!(c.shim_pids().len(), 1, "one shim for the pod: {:?}", c.shim_pids());

    let hello = c
        .create(&pod, &pod_cfg, c.container_config("hello", &["/hello.wasm", "from-cri"], &[]))
        .expect("CreateContainer");
    c.start_container(&hello).expect("StartContainer");
    let st = c.wait_exited(&hello);
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"), "{st:?}");
    let lines = c.wait_log_lines(&pod_cfg, "hello", "args:");
    if !lines.iter().any(|(_, l)| l.contains("args:")) {
        let path = std::path::Path::new(&pod_cfg.log_directory).join("hello.log");
        let meta = std::fs::metadata(&path);
        let log = c.cd.log();
        let relevant: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&hello[..12]) || l.contains("level=error") || l.contains("level=warn"))
            .collect();
        panic!(
            "containerd {}: no log lines for {hello} in {} ({meta:?}); status {st:?}; containerd log:\n{}",
            c.cd.release.version,
            path.display(),
            relevant.join("\n")
        );
    }
    assert!(lines.contains(&("stdout".into(), "hello from wasmcell".into())), "{lines:?}");
    assert!(lines.contains(&("stdout".into(), "args: /hello.wasm from-cri".into())), "{lines:?}");

    // A WASI 0.3 HTTP handler in the pod, at the pod IP; a trap is a 500
    // and the next request is served; StopContainer drains it to exit 0.
    let web = c
        .create(
            &pod,
            &pod_cfg,
            c.container_config("p3web", &["/p3-http.wasm"], &[("WASMCELL_HTTP_ADDR", "0.0.0.0:8080")]),
        )
        .expect("CreateContainer p3web");
    c.start_container(&web).expect("StartContainer p3web");
    let addr = format!("{_ip}:8080");
    let (status, body) = wait_http(&addr, "/in-pod");
    assert_eq!((status, body.as_str()), (200, "hello from p3 GET /in-pod\n"));
    assert_eq!(wasmcell_e2e::http_get(&addr, "/trap").map(|r| r.0), Some(500));
    assert_eq!(wasmcell_e2e::http_get(&addr, "/after").map(|r| r.0), Some(200));
    c.stop_container(&web, 10).expect("StopContainer p3web");
    assert_eq!(c.container_status(&web).unwrap().exit_code, 0);
    c.remove_container(&web).expect("RemoveContainer p3web");

    c.remove_container(&hello).expect("RemoveContainer");
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shim left after the pod was removed: {left:?}");
    assert_no_shim_problems(&c.cd, "cri");
    clock.step("cri: pod");
    c.stop_and_check_clean();
    clock.step("cri: stop");
}

fn smoke(v: Version) {
    let release = Release::of(v);
    let mut clock = Clock::new(&release.version);
    ctr_smoke(v, &mut clock);
    cri_smoke(v, &mut clock);
    clock.report();
}

#[test]
fn containerd_1_6() {
    smoke(Version::V1_6);
}

#[test]
fn containerd_1_7() {
    smoke(Version::V1_7);
}

#[test]
fn containerd_2_1() {
    smoke(Version::V2_1);
}
