//! A real Redis for `wasi:keyvalue`'s Redis store: Debian's `redis-server`
//! on 127.0.0.1, on a free port, without persistence, its files in a temp
//! dir. Stopped by PID in `Drop`, also when a test fails, or earlier with
//! [`Redis::stop`] (to see what a guest gets when its store goes away).

use std::process::{Child, Command, Stdio};

use crate::wait;

pub struct Redis {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

fn require(binary: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {binary}")).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{binary}` is not on PATH: the key-value tests need Debian's redis-server and redis-tools \
         (apt-get install redis-server; test/scripts/deps.sh installs it)"
    );
}

impl Redis {
    /// Starts redis-server and waits until it answers PING.
    pub fn start() -> Self {
        require("redis-server");
        require("redis-cli");
        let dir = tempfile::Builder::new().prefix("wcredis").tempdir_in("/tmp").unwrap();
        let port = wait::free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { port, _dir: dir, child: Some(child) };
        let pong = wait::until(200, || r.cli(&["PING"]), |o| o == "PONG");
        assert_eq!(pong, "PONG", "redis-server on port {port} never answered");
        r
    }

    /// `redis://127.0.0.1:PORT`, the annotation's value.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli ARGS` against this server: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    }

    /// Kills the server now (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
