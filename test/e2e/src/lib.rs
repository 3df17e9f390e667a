//! Test harness: a private containerd per test, in a temp dir, with the shim
//! on its PATH, driven through the real `ctr`.
//!
//! Which containerd: [`Containerd::start`] and [`cri::Cri::start`] use the
//! default one (`WASMCELL_CONTAINERD`, `WASMCELL_CONTAINERD_VERSION`, or the
//! one on PATH: Debian 12's 1.6.20); [`Containerd::start_version`] and
//! [`cri::Cri::start_version`] name a release series ([`Version`]: 1.6, 1.7,
//! 2.1), fetched by `test/scripts/containerd-versions.sh` when not cached. Each
//! daemon gets a config in its own schema (`version = 2` for 1.x, `version = 3`
//! for 2.x) and is driven by its own release's `ctr`.
//!
//! Everything it starts is stopped by PID in `Drop`, also when a test fails:
//! the containerd daemon, every shim that served it, and any mount left below
//! its directories. Requirements are checked up front and fail with a message
//! that says what is missing: root, `containerd`, `ctr`, and the release
//! binaries of this workspace (`make test` builds them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod cri;
pub mod hostile;
pub mod redis;
pub mod registry;
pub mod wait;

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

/// An HTTP server on 127.0.0.1 that answers one request with `response`
/// (raw bytes, head and body): its address, and its thread to join.
pub fn one_shot_http_server(response: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let thread = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response);
        }
    });
    (addr, thread)
}

/// Runs `f` on a thread inside the network namespace of process `pid` (a
/// shim's: the container's network) and returns what it returns.
pub fn in_netns_of<T: Send + 'static>(pid: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = format!("/proc/{pid}/ns/net");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One HTTP/1.1 GET (with an `X-Test: probe-value` header the fixture
/// echoes), bounded: `(status, body)`, the body de-chunked; `None` if
/// nothing answers. The one HTTP client of the suites.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nX-Test: probe-value\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // Chunked bodies: keep only the payload lines.
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.split("\r\n").enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, l)| l).collect::<Vec<_>>().join("")
    } else {
        body
    };
    Some((status, body))
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

    /// The exit status in ctr's words ("... exit code N"), if any.
    pub fn reported_exit(&self) -> Option<i64> {
        let text = format!("{}{}", self.stdout, self.stderr);
        let (_, tail) = text.rsplit_once("exit code ")?;
        tail.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()
    }
}

/// A containerd release series the suites run against.
///
/// 1.6 is the system's containerd (Debian 12's 1.6.20, `/usr/bin`); 1.7 and
/// 2.1 are Debian trixie's and sid's packages, fetched and cached by
/// `test/scripts/containerd-versions.sh` (`make containerd-versions`). Each
/// release is driven by its own `ctr`, which sits next to its `containerd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    V1_6,
    V1_7,
    V2_1,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::V1_6, Version::V1_7, Version::V2_1];

    /// `"1.6"`, `"1.7"`, `"2.1"`: the argument of containerd-versions.sh.
    pub fn series(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.series() == s.trim())
    }

    fn major(self) -> u32 {
        match self {
            Version::V1_6 | Version::V1_7 => 1,
            Version::V2_1 => 2,
        }
    }
}

/// containerd's config file schema: `version = 2` is what 1.6 and 1.7 read
/// (2.x migrates it), `version = 3` is 2.x's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    V2,
    V3,
}

/// One containerd release: its daemon and its own `ctr` (a 2.x ctr cannot
/// import into 1.6 without `--local`, so every daemon gets its own).
#[derive(Clone, Debug)]
pub struct Release {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// What `containerd --version` says, without distribution suffixes:
    /// `1.6.20`, `1.7.24`, `2.1.9`.
    pub version: String,
}

impl Release {
    /// The containerd the suites use unless a test names a version:
    /// `WASMCELL_CONTAINERD` (path of a containerd binary, `ctr` beside it),
    /// else `WASMCELL_CONTAINERD_VERSION` (`1.6`, `1.7` or `2.1`, as
    /// [`Release::of`]), else `containerd` and `ctr` on PATH.
    pub fn default_release() -> Release {
        static DEFAULT: OnceLock<Release> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                if let Ok(p) = std::env::var("WASMCELL_CONTAINERD") {
                    let d = PathBuf::from(&p);
                    assert!(d.is_file(), "WASMCELL_CONTAINERD={p} is not a file");
                    let ctr = d.parent().unwrap().join("ctr");
                    return Release::of_binaries(d, ctr);
                }
                if let Ok(s) = std::env::var("WASMCELL_CONTAINERD_VERSION") {
                    let v = Version::parse(&s)
                        .unwrap_or_else(|| panic!("WASMCELL_CONTAINERD_VERSION={s}: expected one of 1.6, 1.7, 2.1"));
                    return Release::of(v);
                }
                Release::of_binaries(require_binary("containerd"), require_binary("ctr"))
            })
            .clone()
    }

    /// The release of series `v`, from `test/scripts/containerd-versions.sh`
    /// (instant when cached; fetches it otherwise). A release that cannot be
    /// had fails the test with the script's message: it is never skipped.
    pub fn of(v: Version) -> Release {
        static CACHE: Mutex<Vec<(Version, Release)>> = Mutex::new(Vec::new());
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, r)) = cache.iter().find(|(k, _)| *k == v) {
            return r.clone();
        }
        if v == Version::V1_6 {
            // The system's, from Debian 12's package, not whatever is first on PATH.
            let containerd = PathBuf::from("/usr/bin/containerd");
            assert!(
                containerd.is_file(),
                "containerd 1.6 is the system's /usr/bin/containerd, which is missing: \
                 apt-get install containerd (`make deps` does)"
            );
            let r = Release::of_binaries(containerd, PathBuf::from("/usr/bin/ctr"));
            if !r.version.starts_with("1.6.") {
                eprintln!("note: the system containerd is {}, not a 1.6 release", r.version);
            }
            assert_eq!(r.major(), 1, "the system containerd is {}, not 1.x", r.version);
            cache.push((v, r.clone()));
            return r;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/containerd-versions.sh");
        let out = Command::new("bash").arg(&script).arg(v.series()).stdin(Stdio::null()).output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run {}: {e}", script.display()),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let containerd = line.split_whitespace().nth(1).map(PathBuf::from);
        let containerd = match containerd {
            Some(p) if out.status.success() && p.is_file() => p,
            _ => panic!(
                "containerd {s} is not available: `bash test/scripts/containerd-versions.sh {s}` \
                 exited with {st}, printing {stdout:?}; its messages:\n{err}\n\
                 Fetch it with `make containerd-versions` (as root, with the Debian mirror reachable).",
                s = v.series(),
                st = out.status,
                err = String::from_utf8_lossy(&out.stderr),
            ),
        };
        let ctr = containerd.parent().unwrap().join("ctr");
        assert!(
            ctr.is_file(),
            "{} has no ctr beside it ({}): delete its cache directory and run `make containerd-versions` again",
            containerd.display(),
            ctr.display()
        );
        let r = Release::of_binaries(containerd, ctr);
        // The config schema depends on the major version: refuse a mix-up.
        assert_eq!(
            r.major(),
            v.major(),
            "containerd-versions.sh {} gave containerd {} ({})",
            v.series(),
            r.version,
            r.containerd.display()
        );
        if !r.version.starts_with(&format!("{}.", v.series())) {
            eprintln!("note: containerd series {} resolved to release {}", v.series(), r.version);
        }
        cache.push((v, r.clone()));
        r
    }

    fn of_binaries(containerd: PathBuf, ctr: PathBuf) -> Release {
        // Exactly one argument: with more, containerd starts as a daemon.
        let out = Command::new(&containerd).arg("--version").stdin(Stdio::null()).output();
        let text = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            other => panic!("`{} --version` failed: {other:?}", containerd.display()),
        };
        // "containerd github.com/containerd/containerd/v2 2.1.9+unknown ..."
        let raw = text.split_whitespace().nth(2).unwrap_or("");
        let version: String = raw.trim_start_matches('v').split(['~', '+', '-']).next().unwrap_or("").to_string();
        assert!(
            version.split('.').count() >= 2 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "cannot read the version of {}: {text:?}",
            containerd.display()
        );
        assert!(ctr.is_file(), "ctr is missing: {}", ctr.display());
        Release { containerd, ctr, version }
    }

    fn major(&self) -> u32 {
        self.version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
    }

    /// The config schema this release reads natively.
    pub fn schema(&self) -> Schema {
        if self.major() >= 2 {
            Schema::V3
        } else {
            Schema::V2
        }
    }
}

/// Writes what CRI needs in the test's directory and returns the CRI
/// tables of the config, in the given schema.
pub(crate) type CriTables = dyn Fn(&Path, Schema) -> String;

pub struct Containerd {
    pub dir: tempfile::TempDir,
    /// A containerd namespace of this test's own: cgroups (`/<ns>/<id>`) of
    /// tests running in parallel never collide.
    pub namespace: String,
    pub socket: PathBuf,
    /// The containerd release this daemon is, with its ctr.
    pub release: Release,
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
        Self::launch(&Release::default_release(), None)
    }

    /// [`Containerd::start`] with containerd release series `v` (and its
    /// ctr), configured in that release's own config schema.
    pub fn start_version(v: Version) -> Self {
        let c = Self::start_bare_version(v);
        c.import_fixtures();
        c
    }

    /// [`Containerd::start_bare`] with containerd release series `v`.
    pub fn start_bare_version(v: Version) -> Self {
        Self::launch(&Release::of(v), None)
    }

    /// Starts `release` as [`Containerd::start_bare`] does, with `cri` (the
    /// CRI plugin tables, in the given schema) instead of CRI disabled.
    /// [`Containerd::start`] with extra variables in containerd's
    /// environment, which every shim it starts inherits (the shim's knobs,
    /// as an operator sets them on the containerd service).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let c = Self::launch_env(&Release::default_release(), None, env);
        c.import_fixtures();
        c
    }

    pub(crate) fn launch(release: &Release, cri: Option<&CriTables>) -> Self {
        Self::launch_env(release, cri, &[])
    }

    fn launch_env(release: &Release, cri: Option<&CriTables>, env: &[(&str, &str)]) -> Self {
        require_root();
        let schema = release.schema();
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
            None => (format!("disabled_plugins = {}", cri_plugins(schema)), String::new()),
            Some(section) => (String::new(), section(d, schema)),
        };
        let version = match schema {
            Schema::V2 => 2,
            Schema::V3 => 3,
        };
        // One complete file: in a 1.6 config an imported plugin table would
        // replace the whole plugin section. The opt and NRI tables have the
        // same names in both schemas (1.6 has no NRI and ignores its table).
        let config = format!(
            r#"version = {version}
root = "{d}/root"
state = "{d}/state"
{top}
[grpc]
  address = "{d}/c.sock"
[debug]
  level = "debug"
{plugins}
# Keep what containerd would put in shared host paths private: the opt
# plugin's /opt/containerd, and 2.x's NRI socket /var/run/nri/nri.sock.
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        // The shim first, then the release's own binaries (its runc shim).
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            release.containerd.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(&release.containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            // The shim inherits containerd's environment: keep its compile
            // cache inside this test's directory.
            .env("WASMCELL_CACHE_DIR", d.join("cache"))
            .envs(env.iter().copied())
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let namespace =
            format!("t{}", d.file_name().unwrap().to_string_lossy().trim_start_matches("wc").to_lowercase());
        let c = Containerd { namespace, dir, socket, release: release.clone(), child: Some(child), events: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.socket.exists() && c.ctr(&["version"]).code == Some(0) {
                break;
            }
            if Instant::now() > deadline {
                panic!("containerd {} did not come up; its log:\n{}", c.release.version, c.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Lines of containerd's log at level warning or worse that mention
    /// any of `needles` (case-insensitive).
    pub fn log_problems(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| ["level=warning", "level=error", "level=fatal", "level=panic"].iter().any(|x| l.contains(x)))
            .filter(|l| {
                let low = l.to_lowercase();
                needles.iter().any(|n| low.contains(&n.to_lowercase()))
            })
            .map(String::from)
            .collect()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_ns(&self.namespace, args)
    }

    fn ctr_cmd_ns(&self, namespace: &str, args: &[&str]) -> Command {
        // Every ctr call is bounded, so a hung shim fails the test instead of CI.
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"])
            .arg(&self.release.ctr)
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
        self.run_image(FIXTURES_IMAGE, id, extra, args)
    }

    /// `ctr run --rm` of `image` with the Wasm runtime: `extra` ctr flags,
    /// then the image, the id and the process's `args`.
    pub fn run_image(&self, image: &str, id: &str, extra: &[&str], args: &[&str]) -> Ran {
        let mut a = vec!["run", "--rm", "--platform", "wasi/wasm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(image);
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
        let tar = self.build_image(name, files, extra);
        self.ctr(&["images", "import", "--all-platforms", tar.to_str().unwrap()]).ok();
    }

    /// Builds an image tarball with `wasmcell image build` from `files`
    /// (in this test's directory) and returns its path.
    pub fn build_image(&self, name: &str, files: &[String], extra: &[&str]) -> PathBuf {
        let tar = self.dir.path().join(format!("img-{}.tar", name.replace(['/', ':'], "_")));
        let mut cmd = Command::new(target_dir().join("wasmcell"));
        cmd.args(["image", "build", "-t", name, "-o"]).arg(&tar).args(extra).args(files);
        let out = Ran::from(cmd.output().expect("run wasmcell"));
        out.ok();
        tar
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
        let child = Command::new(&self.release.ctr)
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
            .filter_map(parse_event)
            .filter(|(container, _, _)| container == id)
            .map(|(_, topic, v)| (topic, v))
            .collect()
    }

    /// Events for `id` once `last_topic` has been seen (bounded wait: events
    /// reach `ctr events` asynchronously).
    pub fn events_until(&self, id: &str, last_topic: &str) -> Vec<(String, serde_json::Value)> {
        wait::until(200, || self.events(id), |ev| ev.iter().any(|(t, _)| t == last_topic))
    }

    /// The `/tasks/exit` event of container `id` (waiting for it as
    /// [`Containerd::events_until`] does); panics, listing the events seen
    /// for `id`, when there is none. Needs [`Containerd::watch_events`].
    pub fn exit_event(&self, id: &str) -> serde_json::Value {
        let events = self.events_until(id, "/tasks/exit");
        match events.iter().find(|(t, _)| t == "/tasks/exit") {
            Some((_, e)) => e.clone(),
            None => panic!("no exit event for {id}: {events:?}"),
        }
    }

    /// Waits (bounded by count, not asserted on time) until `ctr task ls`
    /// shows `id` with `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let shows = |ls: &Ran| ls.stdout.lines().any(|l| l.split_whitespace().next() == Some(id) && l.contains(status));
        let ls = wait::until(600, || self.ctr(&["task", "ls"]), shows);
        if !shows(&ls) {
            panic!("task {id} never reached {status}: {ls:?}");
        }
    }

    /// Kills task `id` with `signal` (asserting that ctr accepted it), waits
    /// until it is STOPPED, deletes the task and removes the container
    /// (asserting that the removal succeeded). Returns what `ctr task
    /// delete` said, unchecked: ctr reports a non-zero exit status there as
    /// `exit code N`, and a caller that requires the delete to succeed
    /// calls [`Ran::ok`] on it.
    pub fn kill_and_delete(&self, id: &str, signal: &str) -> Ran {
        self.ctr(&["task", "kill", "-s", signal, id]).ok();
        self.wait_status(id, "STOPPED");
        let del = self.ctr(&["task", "delete", id]);
        let rm = self.ctr(&["containers", "rm", id]);
        assert_eq!(rm.code, Some(0), "ctr containers rm {id} failed: {rm:#?}\nafter ctr task delete {id}: {del:#?}");
        del
    }

    /// The numeric rows of `ctr task metrics` for task `id` (asserting that
    /// ctr answered), by name (`cpu.usage_usec`, `memory.usage_limit`, ...).
    pub fn metrics(&self, id: &str) -> std::collections::HashMap<String, u64> {
        let m = self.ctr(&["task", "metrics", id]);
        m.ok();
        m.stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect()
    }

    /// `cpu.usage_usec` of task `id` from `ctr task metrics`, 0 when the
    /// metrics do not show it.
    pub fn cpu_usage_usec(&self, id: &str) -> u64 {
        self.metrics(id).get("cpu.usage_usec").copied().unwrap_or(0)
    }

    /// Waits (200 tries, [`wait::STEP`] apart) until no shim of this
    /// containerd runs (shims exit shortly after their last container is
    /// deleted); returns the PIDs still running, empty on success.
    pub fn wait_shims_gone(&self) -> Vec<i32> {
        wait::settle(200, || self.shim_pids())
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
        // WASMCELL_E2E_KEEP_LOGS=DIR keeps every daemon's log (with the
        // shims' lines in it) as DIR/<release>-<namespace>.log.
        if let Some(keep) = std::env::var_os("WASMCELL_E2E_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            let name = format!("{}-{}.log", self.release.version, self.namespace);
            let _ = std::fs::copy(self.dir.path().join("containerd.log"), keep.join(name));
        }
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
        // failed test whose shims were just killed), with everything below:
        // CRI pods nest containers' cgroups in the pod's (`<ns>/pod-X/<id>`).
        if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hs.flatten() {
                remove_cgroup_tree(&h.path().join(&self.namespace));
            }
        }
    }
}

/// Removes an (empty of processes) cgroup and its descendants, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            // Only real directories: cgroup v1's `cpu` and `cpuacct` are
            // symlinks to `cpu,cpuacct`, visited as that.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `disabled_plugins` for a daemon without CRI. In 2.x, CRI is three plugins
/// (images, runtime, and the gRPC service), and the pod sandbox controller
/// and its gRPC service need the first two: without them they would fail to
/// load with warnings.
fn cri_plugins(schema: Schema) -> &'static str {
    match schema {
        Schema::V2 => r#"["io.containerd.grpc.v1.cri"]"#,
        Schema::V3 => {
            r#"["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.grpc.v1.sandbox-controllers"]"#
        }
    }
}

/// One line of `ctr events` output (`TIMESTAMP TOPIC {JSON}`) as
/// `(container_id, topic, event)`; `None` for a line that is not the event
/// of a container (no JSON, or no `container_id` in it).
pub fn parse_event(line: &str) -> Option<(String, String, serde_json::Value)> {
    let json_at = line.find('{')?;
    let v: serde_json::Value = serde_json::from_str(&line[json_at..]).ok()?;
    let topic = line[..json_at].split_whitespace().last()?.to_string();
    let id = v.get("container_id")?.as_str()?.to_string();
    Some((id, topic, v))
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

/// CPU time (user + system, in clock ticks) process `pid` has used.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let at = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(14) + at(15)
}
