//! `ctr run --runtime=io.containerd.wasmtime.v1` against a real containerd.

use wasmcell_e2e::wait::{settle, until};
use wasmcell_e2e::{Containerd, RUNTIME};

#[test]
fn hello_component_prints_args_env_and_exits_zero() {
    let c = Containerd::start();
    let r = c.run("hello", &["--env", "EXTRA=1"], &["/hello.wasm", "a", "b c"]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");
    assert!(r.stdout.contains("args: /hello.wasm a b c"), "{r:?}");
    // Exactly the spec's environment: the image's, ctr's PATH, --env; nothing of the host's.
    let env: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("env: ")).collect();
    assert!(env.contains(&"env: GREETING=hi"), "{env:?}");
    assert!(env.contains(&"env: EXTRA=1"), "{env:?}");
    assert!(!r.stdout.contains("HOME=") && !r.stdout.contains("TTRPC_ADDRESS"), "host env leaked: {env:?}");
    c.stop_and_check_clean();
}

#[test]
fn core_wasip1_module_runs_start() {
    let c = Containerd::start();
    let r = c.run("p1", &[], &["/hello-p1.wasm", "x"]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell") && r.stdout.contains("args: /hello-p1.wasm x"), "{r:?}");
    c.stop_and_check_clean();
}

#[test]
fn exit_codes_reach_ctr() {
    let c = Containerd::start();
    // A WASIp1 module's proc_exit(n) is n.
    assert_eq!(c.run("e42", &[], &["/exit-code-p1.wasm", "42"]).code, Some(42));
    assert_eq!(c.run("e0", &[], &["/exit-code-p1.wasm", "0"]).code, Some(0));
    // WASI 0.2 `exit(err)` (what Rust's exit(n != 0) becomes in a component) is 1.
    let r = c.run("e7", &[], &["/exit-code.wasm", "7"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("exiting with 7"));
    c.stop_and_check_clean();
}

#[test]
fn trap_is_nonzero_with_message_on_stderr() {
    let c = Containerd::start();
    let r = c.run("trap", &[], &["/trap.wasm"]);
    assert_eq!(r.code, Some(134), "{r:?}");
    assert!(r.stdout.contains("about to trap"), "{r:?}");
    assert!(r.stderr.contains("guest trapped") && r.stderr.contains("unreachable"), "{r:?}");
    c.stop_and_check_clean();
}

#[test]
fn stdin_reaches_the_guest_and_eof_ends_it() {
    let c = Containerd::start();
    let args = [
        "run",
        "--rm",
        "--platform",
        "wasi/wasm",
        "--runtime",
        RUNTIME,
        wasmcell_e2e::FIXTURES_IMAGE,
        "echo",
        "/stdin-echo.wasm",
    ];
    let r = c.ctr_input(&args, b"first\nsecond\n");
    r.ok();
    assert_eq!(r.stdout, "echo: first\necho: second\nstdin closed\n");
    c.stop_and_check_clean();
}

#[test]
fn terminal_is_refused_with_a_clear_error() {
    let c = Containerd::start();
    // ctr -t needs a console: give it one with script(1). The harness's own
    // ctr (the release under test), not the one on PATH.
    let cmd = format!(
        "{} -a {} -n {} run --rm -t --platform wasi/wasm --runtime {RUNTIME} {} tty /hello.wasm",
        c.release.ctr.display(),
        c.socket.display(),
        c.namespace,
        wasmcell_e2e::FIXTURES_IMAGE
    );
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "60", "script", "-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let r = wasmcell_e2e::Ran {
        code: out.status.code(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    };
    assert_ne!(r.code, Some(0));
    // The shim's own words, not just the id ("tty") echoed back.
    assert!(r.stderr.contains("a terminal (tty) is not supported for Wasm containers"), "{r:?}");
    c.ctr(&["containers", "rm", "tty"]);
    c.stop_and_check_clean();
}

/// run -d, task ls, ps, metrics, kill (SIGTERM), delete: the detached lifecycle.
#[test]
fn detached_lifecycle_sigterm() {
    let mut c = Containerd::start();
    c.watch_events();
    c.run_detached("spin", &[], &["/spin.wasm"]).ok();
    c.wait_status("spin", "RUNNING");
    let ps = c.ctr(&["task", "ps", "spin"]);
    ps.ok();
    let pid: i32 =
        ps.stdout.lines().nth(1).and_then(|l| l.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // The guest spins: its CPU time shows in metrics.
    let cpu = until(100, || c.cpu_usage_usec("spin"), |cpu| *cpu > 0);
    assert!(cpu > 0, "metrics report CPU time of a spinning guest");
    // SIGTERM stops even a guest that never yields.
    c.kill_and_delete("spin", "SIGTERM").ok();
    let events = c.events_until("spin", "/tasks/delete");
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "{events:?}");
    let exit = &events[2].1;
    assert_eq!(exit["exit_status"], 143, "{exit}");
    assert_eq!(exit["pid"].as_i64(), Some(pid as i64));
    assert!(exit["exited_at"].is_string() || exit["exited_at"].is_object(), "{exit}");
    assert_eq!(events[3].1["exit_status"], 143);
    c.stop_and_check_clean();
}

#[test]
fn sigkill_is_137() {
    let c = Containerd::start();
    c.run_detached("k", &[], &["/spin.wasm"]).ok();
    c.wait_status("k", "RUNNING");
    let del = c.kill_and_delete("k", "SIGKILL");
    assert!(del.stderr.contains("137") || del.stdout.contains("137"), "{del:?}");
    c.stop_and_check_clean();
}

#[test]
fn one_shim_per_container_and_it_exits_after_delete() {
    let c = Containerd::start();
    c.run_detached("a", &[], &["/spin.wasm"]).ok();
    c.run_detached("b", &[], &["/spin.wasm"]).ok();
    c.wait_status("a", "RUNNING");
    c.wait_status("b", "RUNNING");
    assert_eq!(c.shim_pids().len(), 2, "one shim process per ctr container");
    for id in ["a", "b"] {
        c.kill_and_delete(id, "SIGKILL").ok();
    }
    // Shutdown after the last delete ends the shim (bounded wait, no timing assertion).
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shims still running after delete: {left:?}");
    c.stop_and_check_clean();
}

/// A shim killed with SIGKILL: containerd runs `shim delete`, which unmounts
/// and reports 137; the id can be used again.
#[test]
fn killed_shim_is_cleaned_up_by_shim_delete() {
    let mut c = Containerd::start();
    c.watch_events();
    c.run_detached("victim", &[], &["/spin.wasm"]).ok();
    c.wait_status("victim", "RUNNING");
    assert!(!c.mounts().is_empty(), "the rootfs is mounted while running");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let exit = c.exit_event("victim");
    assert_eq!(exit["exit_status"], 137, "{exit}");
    let mounts = settle(200, || c.mounts());
    assert!(mounts.is_empty(), "rootfs still mounted after shim delete: {mounts:?}");
    c.ctr(&["task", "delete", "victim"]);
    c.ctr(&["containers", "rm", "victim"]).ok();
    c.run("victim", &[], &["/hello.wasm"]).ok();
    c.stop_and_check_clean();
}

/// `ctr task exec`: a Wasm program of the image runs in the running
/// container with its grants and env, its output and exit code reach ctr, a
/// Linux command is a failed command, and killing the container ends a
/// running exec with it.
#[test]
fn exec_runs_another_program_of_the_image() {
    let c = Containerd::start();
    c.run_detached("execd", &["--env", "FROM_CONTAINER=yes"], &["/probe.wasm", "sleep", "600000"]).ok();
    c.wait_status("execd", "RUNNING");
    let r = c.ctr(&["task", "exec", "--exec-id", "e1", "execd", "/hello.wasm", "from", "exec"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("args: /hello.wasm from exec"), "{r:?}");
    assert!(r.stdout.contains("env: FROM_CONTAINER=yes"), "the container's env: {r:?}");
    let r = c.ctr(&["task", "exec", "--exec-id", "e2", "execd", "/exit-code-p1.wasm", "7"]);
    assert_eq!(r.reported_exit().or(r.code.map(i64::from)), Some(7), "{r:?}");
    let r = c.ctr(&["task", "exec", "--exec-id", "e3", "execd", "/bin/sh", "-c", "true"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("only WebAssembly programs") || r.stdout.contains("only WebAssembly programs"), "{r:?}");
    // A long exec, killed with its container.
    let mut long = std::process::Command::new(&c.release.ctr)
        .args(["-a", c.socket.to_str().unwrap(), "-n", &c.namespace])
        .args(["task", "exec", "--exec-id", "long", "execd", "/probe.wasm", "sleep", "600000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ps = wasmcell_e2e::wait::until(100, || c.ctr(&["task", "ps", "execd"]).stdout.lines().count(), |n| *n >= 3);
    assert!(ps >= 3, "ctr task ps lists the container and its exec");
    c.kill_and_delete("execd", "SIGKILL");
    let done = wasmcell_e2e::wait::poll(200, || long.try_wait().ok().flatten());
    assert!(done.is_some(), "the exec did not end with its container");
    c.stop_and_check_clean();
}
