//! Faults, end to end against a private containerd: a shim killed with
//! SIGKILL, containerd stopped (or killed) and started again under a running
//! container, guests that never yield or flood their output, and a compile
//! cache directory that is read-only or full.
//!
//! No assertion is on wall time: every ctr call is bounded by the harness's
//! timeout, and a test asserts that calls complete with the right results.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wasmcell_e2e::wait::until;
use wasmcell_e2e::{pids_mentioning, Containerd, Ran};

/// Waits (bounded by count) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    if !until(600, f, |held| *held) {
        panic!("{what}: never happened");
    }
}

/// Fifos below /run/containerd/fifo (shared by every containerd on the host)
/// named after container `id` (`<id>-stdout`, ...).
fn fifos(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir("/run/containerd/fifo").into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(id).is_some_and(|rest| rest.starts_with('-')) {
                out.push(f.path());
            }
        }
    }
    out
}

/// Removes, when dropped (also when a test fails), the fifos of this test's
/// containers (ids starting with `<namespace>-`) that a failure left in the
/// host-wide fifo directory.
struct SweepFifos(String);

impl SweepFifos {
    fn new(c: &Containerd) -> Self {
        SweepFifos(c.namespace.clone())
    }
}

impl Drop for SweepFifos {
    fn drop(&mut self) {
        for f in fifos(&self.0) {
            let _ = std::fs::remove_file(&f);
            let _ = std::fs::remove_dir(f.parent().unwrap());
        }
    }
}

/// The v2 runtime's directories of container `id` (the bundle in the state
/// dir, and its twin in the root dir).
fn task_dirs(c: &Containerd, id: &str) -> Vec<PathBuf> {
    ["state", "root"]
        .iter()
        .map(|d| c.dir.path().join(d).join("io.containerd.runtime.v2.task").join(&c.namespace).join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Cgroups `<hierarchy>/<ns>/<id>` of container `id`, in every hierarchy.
fn cgroups(c: &Containerd, id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&c.namespace).join(id)];
    dirs.extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|h| h.path().join(&c.namespace).join(id)));
    dirs.into_iter().filter(|p| p.is_dir()).collect()
}

/// Asserts container `id` left nothing: task, container, state directory,
/// fifo, cgroup.
fn assert_gone(c: &Containerd, id: &str) {
    let is_listed = |r: Ran| r.stdout.lines().any(|l| l.split_whitespace().next() == Some(id));
    assert!(!is_listed(c.ctr(&["task", "ls"])), "task {id} still listed");
    assert!(!is_listed(c.ctr(&["containers", "ls"])), "container {id} still listed");
    eventually(&format!("state directories of {id} removed"), || task_dirs(c, id).is_empty());
    eventually(&format!("fifos of {id} removed: {:?}", fifos(id)), || fifos(id).is_empty());
    eventually(&format!("cgroups of {id} removed: {:?}", cgroups(c, id)), || cgroups(c, id).is_empty());
}

fn exit_status(c: &Containerd, id: &str) -> i64 {
    c.exit_event(id)["exit_status"].as_i64().unwrap_or(0)
}

/// Kills, waits, deletes and removes `id`; returns the status ctr reported.
fn kill_and_delete(c: &Containerd, id: &str, signal: &str) -> Option<i64> {
    let del = c.kill_and_delete(id, signal);
    del.ok();
    del.reported_exit()
}

fn task_pid(c: &Containerd, id: &str) -> Option<i32> {
    let ls = c.ctr(&["task", "ls"]);
    ls.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

// ---------------------------------------------------------------------------
// A shim killed with SIGKILL

/// Extends ctr.rs's killed-shim test (spin guest, exit event, unmount, id
/// reused) to a guest sleeping in a host call, and to everything else a task
/// owns: the exit and delete events say 137, containerd drops the task, its
/// state directory and cgroup are gone; the same id then runs detached too.
#[test]
fn killed_shim_leaves_nothing_and_the_id_runs_again() {
    let mut c = Containerd::start();
    let _sweep = SweepFifos::new(&c);
    c.watch_events();
    let id = format!("{}-victim", c.namespace);
    c.run_detached(&id, &[], &["/probe.wasm", "sleep", "600000"]).ok();
    c.wait_status(&id, "RUNNING");
    assert!(!task_dirs(&c, &id).is_empty() && !c.mounts().is_empty(), "bundle and rootfs exist while it runs");
    assert!(!cgroups(&c, &id).is_empty(), "the shim joined the container's cgroup");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    kill(Pid::from_raw(shims[0]), Signal::SIGKILL).unwrap();

    // containerd notices: it runs `shim delete`, reports exit 137 and
    // deletes the task itself.
    let events = c.events_until(&id, "/tasks/delete");
    let status = |topic: &str| events.iter().find(|(t, _)| t == topic).map(|(_, v)| v["exit_status"].clone());
    assert_eq!(status("/tasks/exit"), Some(137.into()), "{events:?}");
    assert_eq!(status("/tasks/delete"), Some(137.into()), "{events:?}");
    assert!(c.log().contains("cleaning up dead shim"), "containerd ran the shim's cleanup");
    eventually("the rootfs unmounted by shim delete", || c.mounts().is_empty());
    eventually("the task dropped from task ls", || {
        !c.ctr(&["task", "ls"]).stdout.lines().any(|l| l.split_whitespace().next() == Some(id.as_str()))
    });
    let del = c.ctr(&["task", "delete", &id]);
    assert!(del.code != Some(0) && del.stderr.contains("not found"), "containerd deleted it already: {del:?}");
    c.ctr(&["containers", "rm", &id]).ok();
    // The fifos are ctr's, made by `ctr run -d` and removed by the ctr that
    // deletes the task; containerd deleted it here, so no ctr will (the same
    // with runc). Remove them, then check everything else is gone.
    for f in fifos(&id) {
        let _ = std::fs::remove_file(&f);
        let _ = std::fs::remove_dir(f.parent().unwrap());
    }
    assert_gone(&c, &id);
    assert!(c.shim_pids().is_empty());

    // The same id again: a run to completion, then a detached run.
    let r = c.run(&id, &[], &["/hello.wasm"]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");
    c.run_detached(&id, &[], &["/spin.wasm"]).ok();
    c.wait_status(&id, "RUNNING");
    assert_eq!(kill_and_delete(&c, &id, "SIGTERM"), Some(143));
    assert_gone(&c, &id);
    c.stop_and_check_clean();
}

// ---------------------------------------------------------------------------
// containerd restarted under a running container

/// A containerd this test started itself, on the harness's config (same
/// root, state, socket): stopped in `Drop`, also when the test fails.
struct Restarted {
    child: Child,
}

impl Restarted {
    /// Stops the harness's containerd with `signal` and starts another on
    /// the same configuration.
    fn replace(c: &Containerd, signal: Signal) -> Restarted {
        let config = c.dir.path().join("config.toml");
        let needle = format!("--config {}", config.display());
        let old = pids_mentioning(&needle);
        assert_eq!(old.len(), 1, "the harness's containerd: {old:?}");
        kill(Pid::from_raw(old[0]), signal).unwrap();
        // Its parent (the harness) reaps it later; a zombie counts as gone.
        eventually("containerd stopped", || pids_mentioning(&needle).is_empty());
        let log = std::fs::OpenOptions::new().append(true).open(c.dir.path().join("containerd.log")).unwrap();
        // The environment the harness gives it: the shim first on PATH, then
        // the release's own binaries; the compile cache in the test's dir.
        let path = format!(
            "{}:{}:{}",
            c.dir.path().join("bin").display(),
            c.release.containerd.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(&c.release.containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("WASMCELL_CACHE_DIR", c.dir.path().join("cache"))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd again");
        let me = Restarted { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.ctr(&["version"]).code != Some(0) {
            assert!(Instant::now() < deadline, "containerd did not come back; its log:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn survives_containerd_restart(signal: Signal, guest: &[&str]) {
    let mut c = Containerd::start();
    let _sweep = SweepFifos::new(&c);
    let id = format!("{}-survivor", c.namespace);
    c.run_detached(&id, &[], guest).ok();
    c.wait_status(&id, "RUNNING");
    let pid = task_pid(&c, &id).expect("a pid");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1);

    let daemon = Restarted::replace(&c, signal);
    // The shim and its guest lived on, and the new containerd found them.
    assert_eq!(c.shim_pids(), shims, "the shim outlives containerd");
    c.wait_status(&id, "RUNNING");
    assert_eq!(task_pid(&c, &id), Some(pid));
    c.ctr(&["task", "metrics", &id]).ok();
    c.watch_events();
    // The restarted containerd runs new containers, too (and their events
    // reach the watcher).
    let after = format!("{}-after", c.namespace);
    c.run(&after, &[], &["/hello.wasm"]).ok();
    assert_eq!(exit_status(&c, &after), 0);

    c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).ok();
    c.wait_status(&id, "STOPPED");
    let events = c.events_until(&id, "/tasks/exit");
    let del = c.ctr(&["task", "delete", &id]);
    del.ok();
    assert_eq!(del.reported_exit(), Some(137), "{del:?}");
    c.ctr(&["containers", "rm", &id]).ok();
    eventually("the shim exited after delete", || c.shim_pids().is_empty());
    assert_gone(&c, &id);
    // The exit reaches the restarted containerd as an event, as with runc
    // (CRI learns of exits from these events).
    let exit = events.iter().find(|(t, _)| t == "/tasks/exit").map(|(_, v)| v["exit_status"].clone());
    assert_eq!(
        exit,
        Some(137.into()),
        "the shim's /tasks/exit never reached the restarted containerd: events {events:?}; shim log: {:?}",
        c.log().lines().filter(|l| l.contains("events: ")).collect::<Vec<_>>()
    );
    drop(daemon);
    c.stop_and_check_clean();
}

#[test]
fn task_survives_containerd_stop_and_start() {
    survives_containerd_restart(Signal::SIGTERM, &["/probe.wasm", "sleep", "600000"]);
}

#[test]
fn task_survives_containerd_crash() {
    survives_containerd_restart(Signal::SIGKILL, &["/spin.wasm"]);
}

// ---------------------------------------------------------------------------
// Hostile guests

/// A guest that never yields, one blocked on a stdout fifo nobody reads and
/// one pouring gigabytes into stderr: meanwhile every shim answers (task ls
/// asks each for its state), metrics come back, another container is killed
/// and its exit seen; then the blocked and spinning guests are killed too.
#[test]
fn hostile_guests_leave_the_shims_responsive() {
    let mut c = Containerd::start();
    let _sweep = SweepFifos::new(&c);
    c.watch_events();
    let ns = c.namespace.clone();
    let (spin, blocked, flood, victim) =
        (format!("{ns}-spin"), format!("{ns}-blocked"), format!("{ns}-flood"), format!("{ns}-victim"));
    c.run_detached(&victim, &[], &["/probe.wasm", "sleep", "600000"]).ok();
    c.run_detached(&spin, &[], &["/spin.wasm"]).ok();
    // ctr run -d reads the stdout fifo only until it returns; then nobody
    // does, and 64 MiB cannot fit in the fifo and the pipe behind it.
    c.run_detached(&blocked, &[], &["/probe.wasm", "stdout", "64"]).ok();
    // Gigabytes through the shim into a sink.
    let t0 = Instant::now();
    c.run_detached(&flood, &["--log-uri", "file:///dev/null"], &["/probe.wasm", "stderr", "2048"]).ok();
    for id in [&victim, &spin, &blocked] {
        c.wait_status(id, "RUNNING");
    }

    for round in 0..3 {
        let ls = c.ctr(&["task", "ls"]);
        ls.ok();
        for id in [&victim, &spin, &blocked] {
            assert!(
                ls.stdout.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
                "round {round}: {ls:?}"
            );
            c.ctr(&["task", "metrics", id]).ok();
            c.ctr(&["task", "ps", id]).ok();
        }
        let m = c.ctr(&["task", "metrics", &flood]);
        // It may have finished already: then its task reports STOPPED.
        assert!(m.code == Some(0) || ls.stdout.contains("STOPPED"), "{m:?}");
    }
    let flooding =
        c.ctr(&["task", "ls"]).stdout.lines().any(|l| l.starts_with(flood.as_str()) && l.contains("RUNNING"));
    println!("stderr flood still running during the checks: {flooding}");

    // Another container is killed and its exit seen, while all that goes on.
    assert_eq!(kill_and_delete(&c, &victim, "SIGKILL"), Some(137));
    assert_eq!(exit_status(&c, &victim), 137);
    assert_gone(&c, &victim);

    // The blocked writer is still blocked (64 MiB could not have gone
    // anywhere), and a kill ends it.
    c.wait_status(&blocked, "RUNNING");
    assert_eq!(kill_and_delete(&c, &blocked, "SIGKILL"), Some(137));
    assert_eq!(exit_status(&c, &blocked), 137);
    // The guest that never yields ends at SIGTERM.
    assert_eq!(kill_and_delete(&c, &spin, "SIGTERM"), Some(143));
    assert_eq!(exit_status(&c, &spin), 143);
    // The flood ran to its end: every write succeeded.
    c.wait_status(&flood, "STOPPED");
    assert_eq!(exit_status(&c, &flood), 0);
    println!("2 GiB of stderr went through the shim in {:.1} s", t0.elapsed().as_secs_f64());
    let del = c.ctr(&["task", "delete", &flood]);
    del.ok();
    assert_eq!(del.reported_exit(), None, "{del:?}");
    c.ctr(&["containers", "rm", &flood]).ok();
    for id in [&blocked, &spin, &flood] {
        assert_gone(&c, id);
    }
    c.stop_and_check_clean();
}

// ---------------------------------------------------------------------------
// The compile cache directory read-only or full

/// A mount over the cache directory, undone in `Drop` (also on failure).
struct MountGuard(PathBuf);

impl MountGuard {
    fn sh(cmd: &[&str]) {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect("mount(8)");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// An empty directory bound read-only over `at`.
    fn read_only(at: &Path, empty: &Path) -> MountGuard {
        std::fs::DirBuilder::new().recursive(true).create(empty).unwrap();
        Self::sh(&["mount", "--bind", empty.to_str().unwrap(), at.to_str().unwrap()]);
        let g = MountGuard(at.to_path_buf());
        Self::sh(&["mount", "-o", "remount,bind,ro", at.to_str().unwrap()]);
        g
    }

    /// A 4 KiB tmpfs over `at`: no artifact fits.
    fn full(at: &Path) -> MountGuard {
        Self::sh(&["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "wasmcell-full", at.to_str().unwrap()]);
        MountGuard(at.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn cache_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn read_only_cache_directory_is_skipped_with_a_warning() {
    let c = Containerd::start();
    let cache = c.dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let guard = MountGuard::read_only(&cache, &c.dir.path().join("empty"));
    for id in ["ro1", "ro2"] {
        let r = c.run(id, &[], &["/hello.wasm"]);
        r.ok();
        assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");
    }
    // A core module takes the same path.
    assert_eq!(c.run("ro3", &[], &["/exit-code-p1.wasm", "5"]).code, Some(5));
    let log = c.log();
    assert!(
        log.contains("compile cache") && log.contains("Read-only file system"),
        "the shim says why it does not cache"
    );
    assert!(cache_files(&cache).is_empty(), "nothing written: {:?}", cache_files(&cache));
    drop(guard);
    c.stop_and_check_clean();
}

#[test]
fn full_cache_directory_is_skipped_with_a_warning() {
    let c = Containerd::start();
    let cache = c.dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let guard = MountGuard::full(&cache);
    for id in ["full1", "full2"] {
        let r = c.run(id, &[], &["/hello.wasm"]);
        r.ok();
        assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");
    }
    assert_eq!(c.run("full3", &[], &["/exit-code-p1.wasm", "5"]).code, Some(5));
    let log = c.log();
    assert!(
        log.contains("continuing without caching") && log.contains("No space left on device"),
        "the shim says why it does not cache"
    );
    // No half-written artifact or temp file stays behind to fill it further.
    // (A file identity's 32-byte record may fit where no artifact does.)
    let left: Vec<String> = cache_files(&cache).into_iter().filter(|f| !f.ends_with(".lock") && f != "ids").collect();
    assert!(left.is_empty(), "{left:?}");
    for f in std::fs::read_dir(cache.join("ids")).into_iter().flatten().flatten() {
        let len = f.metadata().unwrap().len();
        assert!(len == 32 && !f.file_name().to_string_lossy().contains("tmp"), "{f:?}: {len} bytes");
    }
    drop(guard);
    c.stop_and_check_clean();
}
