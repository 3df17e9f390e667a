//! Test harness: a private containerd per test, in a temp dir, with the shim
//! on its PATH, driven through the real `ctr`.
//!
//! Everything it starts is stopped by PID in `Drop`, also when a test fails:
//! the containerd daemon, every shim that served it, and any mount left below
//! its directories. Requirements are checked up front and fail with a message
//! that says what is missing: root, `containerd`, `ctr`, and the release
//! binaries of this workspace (`make test` builds them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod cri;

pub const RUNTIME: &str = "io.containerd.wasmtime.v1";
pub const FIXTURES_IMAGE: &str = "wasmcell.test/fixtures:latest";

/// The workspace's release build directory.
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("WASMCELL_TARGET_DIR") {
        return d.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/wasm")
}

fn require_binary(name: &str) -> PathBuf {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => panic!(
            "`{name}` is not on PATH: the end-to-end tests need containerd's binaries \
             (apt-get install containerd runc; `make test` installs them)"
        ),
    }
}

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the end-to-end tests must run as root: they start containerd and mount snapshots");
    }
}

/// Output of a command, with its exit code (None when killed by a signal).
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(o: Output) -> Self {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }
}

/// Which containerd to run (`WASMCELL_CONTAINERD` = path of a containerd
/// binary, with `ctr` beside it; default: the one on PATH).
fn containerd_bins() -> (PathBuf, PathBuf) {
    if let Ok(p) = std::env::var("WASMCELL_CONTAINERD") {
        let d = PathBuf::from(&p);
        let ctr = d.parent().unwrap().join("ctr");
        return (d, ctr);
    }
    (require_binary("containerd"), require_binary("ctr"))
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    /// A containerd namespace of this test's own: cgroups (`/<ns>/<id>`) of
    /// tests running in parallel never collide.
    pub namespace: String,
    pub socket: PathBuf,
    ctr: PathBuf,
    child: Option<Child>,
    events: Vec<Child>,
}

impl Containerd {
    /// Starts a private containerd with the shim registered, and imports the
    /// fixtures image.
    pub fn start() -> Self {
        let c = Self::start_bare();
        c.import_fixtures();
        c
    }

    pub fn start_bare() -> Self {
        Self::launch(None)
    }

    /// Starts containerd as [`Containerd::start_bare`] does, with `cri`
    /// (a complete CRI plugin section) instead of the CRI plugin disabled.
    pub(crate) fn launch(cri: Option<&dyn Fn(&Path) -> String>) -> Self {
        require_root();
        let (containerd, ctr) = containerd_bins();
        let shim = target_dir().join("containerd-shim-wasmtime-v1");
        assert!(
            shim.exists(),
            "{} is missing: build the workspace first (`cargo build --release`; `make test` does)",
            shim.display()
        );
        // Short: unix socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("wc").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(&shim, bin.join("containerd-shim-wasmtime-v1")).unwrap();
        let socket = d.join("c.sock");
        let (top, plugins) = match cri {
            None => (r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#.to_string(), String::new()),
            Some(section) => (String::new(), section(d)),
        };
        // One complete file: in a 1.6 config an imported plugin table would
        // replace the whole plugin section.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
{top}
[grpc]
  address = "{d}/c.sock"
[debug]
  level = "debug"
{plugins}
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            // The shim inherits containerd's environment: keep its compile
            // cache inside this test's directory.
            .env("WASMCELL_CACHE_DIR", d.join("cache"))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let namespace = format!(
            "t{}",
            d.file_name().unwrap().to_string_lossy().trim_start_matches("wc").to_lowercase()
        );
        let c = Containerd {
            namespace,
            dir,
            socket,
            ctr,
            child: Some(child),
            events: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.socket.exists() && c.ctr(&["version"]).code == Some(0) {
                break;
            }
            if Instant::now() > deadline {
                panic!("containerd did not come up; its log:\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_ns(&self.namespace, args)
    }

    fn ctr_cmd_ns(&self, namespace: &str, args: &[&str]) -> Command {
        // Every ctr call is bounded, so a hung shim fails the test instead of CI.
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"])
            .arg(&self.ctr)
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(namespace)
            .args(args);
        cmd
    }

    /// Runs `ctr -n NAMESPACE ARGS` (CRI's objects live in `k8s.io`).
    pub fn ctr_ns(&self, namespace: &str, args: &[&str]) -> Ran {
        Ran::from(self.ctr_cmd_ns(namespace, args).stdin(Stdio::null()).output().expect("run ctr"))
    }

    /// Runs `ctr ARGS` with stdin closed.
    pub fn ctr(&self, args: &[&str]) -> Ran {
        Ran::from(self.ctr_cmd(args).stdin(Stdio::null()).output().expect("run ctr"))
    }

    /// Runs `ctr ARGS` feeding `input` on stdin.
    pub fn ctr_input(&self, args: &[&str], input: &[u8]) -> Ran {
        use std::io::Write;
        let mut child = self
            .ctr_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        Ran::from(child.wait_with_output().unwrap())
    }

    /// `ctr run --rm` of the fixtures image with the Wasm runtime.
    pub fn run(&self, id: &str, extra: &[&str], args: &[&str]) -> Ran {
        let mut a = vec!["run", "--rm", "--platform", "wasi/wasm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(FIXTURES_IMAGE);
        a.push(id);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run -d`: the task keeps running after ctr returns.
    pub fn run_detached(&self, id: &str, extra: &[&str], args: &[&str]) -> Ran {
        let mut a = vec!["run", "-d", "--platform", "wasi/wasm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(FIXTURES_IMAGE);
        a.push(id);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Builds an image with `wasmcell image build` from `files` and imports it.
    pub fn import_image(&self, name: &str, files: &[String], extra: &[&str]) {
        let tar = self.dir.path().join(format!("img-{}.tar", name.replace(['/', ':'], "_")));
        let mut cmd = Command::new(target_dir().join("wasmcell"));
        cmd.args(["image", "build", "-t", name, "-o"]).arg(&tar).args(extra).args(files);
        let out = Ran::from(cmd.output().expect("run wasmcell"));
        out.ok();
        self.ctr(&["images", "import", "--all-platforms", tar.to_str().unwrap()]).ok();
    }

    /// Imports the fixtures image (for tests that prepare the directory first).
    pub fn import_fixtures_pub(&self) {
        self.import_fixtures()
    }

    fn import_fixtures(&self) {
        let mut files: Vec<String> = std::fs::read_dir(fixtures_dir())
            .expect("fixtures dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .map(|p| p.display().to_string())
            .collect();
        files.sort();
        assert!(files.len() >= 6, "fixture .wasm files missing in {}", fixtures_dir().display());
        self.import_image(FIXTURES_IMAGE, &files, &["--env", "GREETING=hi"]);
    }

    /// Starts `ctr events`; read what it printed with [`Containerd::events`].
    pub fn watch_events(&mut self) {
        let out = std::fs::File::create(self.dir.path().join("events.log")).unwrap();
        let child = Command::new(&self.ctr)
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.events.push(child);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Topics of the events seen so far for container `id`, in order.
    pub fn events(&self, id: &str) -> Vec<(String, serde_json::Value)> {
        let text = std::fs::read_to_string(self.dir.path().join("events.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let json_at = l.find('{')?;
                let v: serde_json::Value = serde_json::from_str(&l[json_at..]).ok()?;
                let topic = l[..json_at].split_whitespace().last()?.to_string();
                (v.get("container_id").and_then(|c| c.as_str()) == Some(id)).then_some((topic, v))
            })
            .collect()
    }

    /// Events for `id` once `last_topic` has been seen (bounded wait: events
    /// reach `ctr events` asynchronously).
    pub fn events_until(&self, id: &str, last_topic: &str) -> Vec<(String, serde_json::Value)> {
        for _ in 0..200 {
            let ev = self.events(id);
            if ev.iter().any(|(t, _)| t == last_topic) {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.events(id)
    }

    /// Waits (bounded by count, not asserted on time) until `ctr task ls`
    /// shows `id` with `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..600 {
            let ls = self.ctr(&["task", "ls"]);
            if ls.stdout.lines().any(|l| l.split_whitespace().next() == Some(id) && l.contains(status)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("task {id} never reached {status}: {:?}", self.ctr(&["task", "ls"]));
    }

    /// Live (non-zombie) processes whose command line mentions this
    /// containerd's socket: the shims it started.
    pub fn shim_pids(&self) -> Vec<i32> {
        pids_mentioning(&format!("-address {}", self.socket.display()))
    }

    /// Mount points at or below this test's directory.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().display().to_string();
        let mut s = String::new();
        std::fs::File::open("/proc/self/mountinfo").unwrap().read_to_string(&mut s).unwrap();
        s.lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    /// Stops containerd and every shim, then asserts nothing is left behind.
    pub fn stop_and_check_clean(mut self) {
        self.stop();
        let leftover = self.shim_pids();
        assert!(leftover.is_empty(), "shim processes left running: {leftover:?}");
        let mounts = self.mounts();
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
        let cgroups = self.cgroups();
        assert!(cgroups.is_empty(), "container cgroups left behind: {cgroups:?}");
    }

    /// Container cgroups (`<hierarchy>/<namespace>/<id>`) that still exist.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in ["memory", "cpu", "pids", "unified", ""] {
            let dir = Path::new("/sys/fs/cgroup").join(h).join(&self.namespace);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                out.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        out
    }

    fn stop(&mut self) {
        for mut e in self.events.drain(..) {
            let _ = e.kill();
            let _ = e.wait();
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // Shims outlive containerd by design; ours must not outlive the test.
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // The namespace-level cgroup directories (empty by now, or left by a
        // failed test whose shims were just killed).
        if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hs.flatten() {
                let ns = h.path().join(&self.namespace);
                if let Ok(entries) = std::fs::read_dir(&ns) {
                    for e in entries.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&ns);
            }
        }
    }
}

/// Live processes whose command line contains `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(needle) || pid == std::process::id() as i32 {
            continue;
        }
        // A zombie is dead: PID 1 here may never reap it.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
        if state != Some("Z") {
            out.push(pid);
        }
    }
    out
}
