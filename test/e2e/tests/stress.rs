//! Load: many containers created, started, waited and deleted through the
//! real containerd, several at a time, mixing normal exits, traps and kills;
//! then every task's exit status is checked and nothing may be left behind
//! (shim process, mount, fifo, state directory, cgroup).
//!
//! `STRESS_TASKS` (default 60) and `STRESS_PARALLEL` (default 6) size the run;
//! `make stress` runs the reference 1000 tasks, 16 at a time. The rate is
//! printed next to two runs of the same size in the same containerd: the
//! plain exit of a Wasm guest, and runc running a static `true`
//! (`STRESS_COMPARE=0` skips those two).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmcell_e2e::wait::settle;
use wasmcell_e2e::{parse_event, Containerd, Ran, FIXTURES_IMAGE, RUNTIME};

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// What one task does, and so which exit status it must report.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `exit-code-p1.wasm N`: proc_exit(N). WASI's statuses are 0..126
    /// (Wasmtime traps on proc_exit of a larger one).
    Exit(i32),
    /// `trap.wasm`: `unreachable`, reported as 134 (SIGABRT's status).
    Trap,
    /// `spin.wasm` started with `ctr run -d`, then `ctr task kill -s SIG`.
    Kill(&'static str),
}

impl Kind {
    /// The mix: 6 in 10 exits with assorted codes, 2 traps, 1 SIGKILL, 1 SIGTERM.
    fn of(i: usize) -> Kind {
        const CODES: [i32; 8] = [0, 1, 2, 3, 42, 99, 100, 125];
        match i % 10 {
            0 | 2 | 4 | 5 | 7 | 8 => Kind::Exit(CODES[(i / 10 + i) % CODES.len()]),
            1 | 6 => Kind::Trap,
            3 => Kind::Kill("SIGKILL"),
            _ => Kind::Kill("SIGTERM"),
        }
    }

    fn expected(self) -> i64 {
        match self {
            Kind::Exit(c) => c as i64,
            Kind::Trap => 134,
            Kind::Kill("SIGKILL") => 137,
            Kind::Kill(_) => 143,
        }
    }
}

/// Events seen so far, by container id: `(topic, event)` in order; and a
/// condition variable notified at each.
type Seen = Arc<(Mutex<HashMap<String, Vec<(String, serde_json::Value)>>>, Condvar)>;

/// Events of a namespace, by container id, as `ctr events` prints them,
/// with a way to wait for one.
struct Events {
    child: Child,
    seen: Seen,
}

impl Events {
    fn watch(c: &Containerd) -> Events {
        let mut child = Command::new(&c.release.ctr)
            .arg("-a")
            .arg(&c.socket)
            .arg("-n")
            .arg(&c.namespace)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let out = child.stdout.take().unwrap();
        let seen: Seen = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let Some((id, topic, v)) = parse_event(&line) else { continue };
                s.0.lock().unwrap().entry(id).or_default().push((topic, v));
                s.1.notify_all();
            }
        });
        Events { child, seen }
    }

    /// The event `topic` of container `id`, waiting for it (bounded).
    fn wait(&self, id: &str, topic: &str, limit: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut map = self.seen.0.lock().unwrap();
        loop {
            if let Some(v) = map.get(id).and_then(|evs| evs.iter().find(|(t, _)| t == topic)) {
                return Some(v.1.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            map = self.seen.1.wait_timeout(map, deadline - now).unwrap().0;
        }
    }

    fn topics(&self, id: &str) -> Vec<String> {
        self.seen.0.lock().unwrap().get(id).map(|e| e.iter().map(|(t, _)| t.clone()).collect()).unwrap_or_default()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f(i)` for i in 0..n on `parallel` threads; returns the wall time.
fn run_pool(n: usize, parallel: usize, f: impl Fn(usize) + Sync) -> Duration {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
    start.elapsed()
}

fn wasm_args<'a>(mode: &'a str, id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", mode, "--platform", "wasi/wasm", "--runtime", RUNTIME, FIXTURES_IMAGE, id];
    a.extend_from_slice(args);
    a
}

/// One task of the mix; returns an error text if anything was not as expected.
fn one_task(c: &Containerd, ev: &Events, id: &str, kind: Kind) -> Result<(), String> {
    let want = kind.expected();
    let code = |r: &Ran| r.code.map(i64::from);
    match kind {
        Kind::Exit(n) => {
            let n = n.to_string();
            let r = c.ctr(&wasm_args("--rm", id, &["/exit-code-p1.wasm", &n]));
            if code(&r) != Some(want) {
                return Err(format!("{id} {kind:?}: ctr run exited {:?}, want {want}: {}", r.code, r.stderr.trim()));
            }
        }
        Kind::Trap => {
            let r = c.ctr(&wasm_args("--rm", id, &["/trap.wasm"]));
            if code(&r) != Some(want) {
                return Err(format!("{id} {kind:?}: ctr run exited {:?}, want {want}: {}", r.code, r.stderr.trim()));
            }
            if !r.stderr.contains("unreachable") {
                return Err(format!("{id}: the trap's message is missing: {:?}", r.stderr));
            }
        }
        Kind::Kill(sig) => {
            let r = c.ctr(&wasm_args("-d", id, &["/spin.wasm"]));
            if r.code != Some(0) {
                return Err(format!("{id}: ctr run -d failed: {r:?}"));
            }
            // ctr run -d returns once the task started: kill it right away.
            let k = c.ctr(&["task", "kill", "-s", sig, id]);
            if k.code != Some(0) {
                return Err(format!("{id}: ctr task kill -s {sig} failed: {k:?}"));
            }
            if ev.wait(id, "/tasks/exit", Duration::from_secs(120)).is_none() {
                return Err(format!("{id}: no exit event after kill -s {sig}; events: {:?}", ev.topics(id)));
            }
            let d = c.ctr(&["task", "delete", id]);
            if d.code != Some(0) {
                return Err(format!("{id}: ctr task delete failed: {d:?}"));
            }
            // ctr reports a non-zero status as "... exit code N".
            let reported = d.reported_exit();
            if reported != Some(want) {
                return Err(format!("{id} {kind:?}: ctr task delete reported {reported:?}, want {want}: {d:?}"));
            }
            let rm = c.ctr(&["containers", "rm", id]);
            if rm.code != Some(0) {
                return Err(format!("{id}: ctr containers rm failed: {rm:?}"));
            }
        }
    }
    Ok(())
}

/// Fifos below /run/containerd/fifo (shared by every containerd on the
/// host) whose names start with `prefix`.
fn fifos(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir("/run/containerd/fifo").into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with(prefix) {
                out.push(f.path());
            }
        }
    }
    out
}

/// Removes, when dropped (also when the test fails), fifos of this test's
/// containers left in the host-wide fifo directory.
struct SweepFifos(String);

impl Drop for SweepFifos {
    fn drop(&mut self) {
        for f in fifos(&self.0) {
            let _ = std::fs::remove_file(&f);
            let _ = std::fs::remove_dir(f.parent().unwrap());
        }
    }
}

/// Entries of the v2 runtime's per-namespace directories (bundles in the
/// state dir; the root dir's twin) left for this namespace.
fn task_dirs(c: &Containerd) -> Vec<PathBuf> {
    ["state", "root"]
        .iter()
        .map(|d| c.dir.path().join(d).join("io.containerd.runtime.v2.task").join(&c.namespace))
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
        .collect()
}

/// Cgroups of this namespace's containers, in every mounted hierarchy
/// (`/sys/fs/cgroup/<controller>/<ns>/<id>`, or `/sys/fs/cgroup/<ns>/<id>`
/// on a unified hierarchy).
fn cgroups(c: &Containerd) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&c.namespace)];
    dirs.extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|h| h.path().join(&c.namespace)));
    let mut out: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn assert_nothing_left(c: &Containerd, prefix: &str) {
    let tasks = c.ctr(&["task", "ls", "-q"]);
    assert!(tasks.stdout.trim().is_empty(), "tasks left: {tasks:?}");
    let containers = c.ctr(&["containers", "ls", "-q"]);
    assert!(containers.stdout.trim().is_empty(), "containers left: {containers:?}");
    // Bounded waits: shims exit after their last delete, a little after ctr
    // returns, and clean up behind them.
    let shims = settle(400, || c.shim_pids());
    assert!(shims.is_empty(), "shim processes left: {shims:?}");
    let mounts = settle(400, || c.mounts());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let f = settle(400, || fifos(prefix));
    assert!(f.is_empty(), "fifos left: {f:?}");
    let dirs = settle(400, || task_dirs(c));
    assert!(dirs.is_empty(), "task state directories left: {dirs:?}");
    let cg = settle(400, || cgroups(c));
    assert!(cg.is_empty(), "cgroups left: {cg:?}");
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Builds the runc reference image: a static `true` (test/bench/true.c).
fn import_native_true(c: &Containerd) -> &'static str {
    const IMAGE: &str = "wasmcell.test/native-true:latest";
    let dir = c.dir.path().join("native");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/true.c");
    let bin = dir.join("true");
    let gcc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc (apt-get install gcc libc6-dev)");
    assert!(gcc.status.success(), "gcc -static failed: {}", String::from_utf8_lossy(&gcc.stderr));
    let tar = dir.join("true.tar");
    let out = Command::new(wasmcell_e2e::target_dir().join("wasmcell"))
        .args(["image", "build", "-t", IMAGE, "--platform", "linux/amd64", "--entrypoint", "/true", "-o"])
        .arg(&tar)
        .arg(format!("{}:/true", bin.display()))
        .output()
        .expect("run wasmcell");
    assert!(out.status.success(), "wasmcell image build: {}", String::from_utf8_lossy(&out.stderr));
    c.ctr(&["images", "import", tar.to_str().unwrap()]).ok();
    IMAGE
}

#[test]
fn many_tasks_mixed_exits_traps_kills_leave_nothing_behind() {
    let n = env_usize("STRESS_TASKS", 60);
    let parallel = env_usize("STRESS_PARALLEL", 6);
    let compare = std::env::var("STRESS_COMPARE").map_or(true, |v| v != "0");
    let c = Containerd::start();
    let ev = Events::watch(&c);
    // Warm up (compile cache, snapshots), and make sure the event stream is live.
    let prefix = format!("{}-", c.namespace);
    let _sweep = SweepFifos(prefix.clone());
    let warm = format!("{prefix}warm");
    c.ctr(&wasm_args("--rm", &warm, &["/exit-code-p1.wasm", "0"])).ok();
    c.ctr(&wasm_args("--rm", &format!("{warm}2"), &["/trap.wasm"]));
    assert!(ev.wait(&warm, "/tasks/exit", Duration::from_secs(30)).is_some(), "ctr events sees nothing");

    let failures = Mutex::new(Vec::<String>::new());
    let wall = run_pool(n, parallel, |i| {
        let id = format!("{prefix}{i}");
        if let Err(e) = one_task(&c, &ev, &id, Kind::of(i)) {
            failures.lock().unwrap().push(e);
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {n} tasks went wrong, e.g.:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );

    // The events agree with what ctr said: one exit of the right status per
    // task, and its delete.
    let mut wrong = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let want = Kind::of(i).expected();
        match ev.wait(&id, "/tasks/exit", Duration::from_secs(10)) {
            Some(e) if e["exit_status"].as_i64().unwrap_or(0) == want => {}
            other => wrong.push(format!("{id}: exit event {other:?}, want status {want}")),
        }
        if ev.wait(&id, "/tasks/delete", Duration::from_secs(10)).is_none() {
            wrong.push(format!("{id}: no delete event: {:?}", ev.topics(&id)));
        }
        let exits = ev.topics(&id).iter().filter(|t| *t == "/tasks/exit").count();
        if exits != 1 {
            wrong.push(format!("{id}: {exits} exit events"));
        }
    }
    assert!(wrong.is_empty(), "events disagree:\n{}", wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    assert_nothing_left(&c, &prefix);

    let mix = rate(n, wall);
    println!(
        "stress: wasmcell mix (exits, traps, kills): {n} tasks, {parallel} at a time: {:.1} s, {mix:.1} tasks/s",
        wall.as_secs_f64()
    );

    if compare {
        // The same count, all `ctr run --rm` of a guest that exits 0 ...
        let bad = AtomicUsize::new(0);
        let plain = run_pool(n, parallel, |i| {
            let r = c.ctr(&wasm_args("--rm", &format!("{prefix}p{i}"), &["/exit-code-p1.wasm", "0"]));
            if r.code != Some(0) {
                eprintln!("wasm p{i}: {r:?}");
                bad.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(bad.load(Ordering::Relaxed), 0, "plain Wasm runs failed");
        assert_nothing_left(&c, &prefix);
        // ... and of runc running a static `true`.
        let image = import_native_true(&c);
        c.ctr(&["run", "--rm", image, &format!("{prefix}rwarm")]).ok();
        let runc = run_pool(n, parallel, |i| {
            let r = c.ctr(&["run", "--rm", image, &format!("{prefix}r{i}")]);
            if r.code != Some(0) {
                eprintln!("runc r{i}: {r:?}");
                bad.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(bad.load(Ordering::Relaxed), 0, "runc runs failed");
        assert_nothing_left(&c, &prefix);
        let (p, r) = (rate(n, plain), rate(n, runc));
        println!(
            "stress: wasmcell exit 0 (ctr run --rm): {n} tasks, {parallel} at a time: {:.1} s, {p:.1} tasks/s",
            plain.as_secs_f64()
        );
        println!(
            "stress: runc static true (ctr run --rm): {n} tasks, {parallel} at a time: {:.1} s, {r:.1} tasks/s",
            runc.as_secs_f64()
        );
        println!("stress: wasmcell / runc = {:.2}x (exit 0), {:.2}x (mix)", p / r, mix / r);
    }
    drop(ev);
    c.stop_and_check_clean();
}
