//! Deny by default, through ctr: each grant and each denial of the OCI spec,
//! proven by the probe fixture trying and reporting.

use std::io::Write;

use wasmcell_e2e::{Containerd, Ran};

fn line<'a>(r: &'a Ran, prefix: &str) -> &'a str {
    r.stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in {r:?}"))
}

fn ok(r: &Ran, prefix: &str) {
    let l = line(r, prefix);
    assert!(l.contains(": ok"), "{prefix} should be granted: {l}");
}

fn denied(r: &Ran, prefix: &str) {
    let l = line(r, prefix);
    assert!(l.contains(": denied"), "{prefix} should be denied: {l}");
}

#[test]
fn filesystem_grants_follow_the_spec() {
    let c = Containerd::start();
    let ro = c.dir.path().join("ro-src");
    let rw = c.dir.path().join("rw-src");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("in.txt"), "from the host").unwrap();
    std::fs::write(c.dir.path().join("secret.txt"), "host secret").unwrap();
    let m_ro = format!("type=bind,src={},dst=/data,options=rbind:ro", ro.display());
    let m_rw = format!("type=bind,src={},dst=/out,options=rbind:rw", rw.display());
    let secret = c.dir.path().join("secret.txt").display().to_string();
    let r = c.run(
        "fs",
        &["--mount", &m_ro, "--mount", &m_rw],
        &[
            "/probe.wasm",
            "read",
            "/data/in.txt",
            "write",
            "/data/new.txt",
            "write",
            "/out/new.txt",
            "write",
            "/rootfs-file.txt",
            "write",
            "/run/tmpfs-file.txt",
            "read",
            &secret,
            "read",
            "/../../../../etc/passwd",
            "ls",
            "/proc",
            "ls",
            "/sys",
            "ls",
            "/dev",
        ],
    );
    ok(&r, "read /data/in.txt");
    denied(&r, "write /data/new.txt");
    ok(&r, "write /out/new.txt");
    ok(&r, "write /rootfs-file.txt");
    ok(&r, "write /run/tmpfs-file.txt");
    denied(&r, &format!("read {secret}"));
    denied(&r, "read /../../../../etc/passwd");
    denied(&r, "ls /proc");
    denied(&r, "ls /sys");
    denied(&r, "ls /dev");
    assert!(!ro.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(rw.join("new.txt")).unwrap(), "written by probe\n");
    c.stop_and_check_clean();
}

#[test]
fn readonly_rootfs_is_readonly() {
    let c = Containerd::start();
    let r = c.run("ro", &["--read-only"], &["/probe.wasm", "ls", "/", "write", "/x.txt"]);
    ok(&r, "ls /");
    denied(&r, "write /x.txt");
    assert_eq!(r.code, Some(1));
    c.stop_and_check_clean();
}

fn host_listener() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(false).unwrap();
    let h = std::thread::spawn(move || {
        // Serve a bounded number of connections, then stop.
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(b"hello from the host\n");
        }
    });
    (addr, h)
}

#[test]
fn network_only_where_the_spec_grants_it() {
    let c = Containerd::start();
    let (addr, server) = host_listener();
    // Plain ctr run: a network namespace of its own, loopback only.
    let r = c.run("nonet", &[], &["/probe.wasm", "connect", &addr]);
    denied(&r, &format!("connect {addr}"));
    // --net-host: the host's network.
    let r = c.run("hostnet", &["--net-host"], &["/probe.wasm", "connect", &addr]);
    let l = line(&r, &format!("connect {addr}"));
    assert!(l.contains("ok hello from the host"), "{l}");
    server.join().unwrap();
    c.stop_and_check_clean();
}

#[test]
fn memory_bomb_is_oom_killed_and_others_keep_running() {
    let mut c = Containerd::start();
    c.watch_events();
    c.run_detached("bystander", &[], &["/spin.wasm"]).ok();
    c.wait_status("bystander", "RUNNING");
    let r = c.run("bomb", &["--memory-limit", "33554432"], &["/probe.wasm", "alloc", "512"]);
    assert_eq!(r.code, Some(137), "{r:?}");
    assert!(r.stderr.contains("memory limit"), "{r:?}");
    let topics: Vec<String> = c.events_until("bomb", "/tasks/delete").into_iter().map(|(t, _)| t).collect();
    assert!(topics.contains(&"/tasks/oom".to_string()), "{topics:?}");
    let ls = c.ctr(&["task", "ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with("bystander") && l.contains("RUNNING")), "{ls:?}");
    c.kill_and_delete("bystander", "SIGKILL").ok();
    c.stop_and_check_clean();
}

/// The shim joins the container's cgroup with the spec's limits (plus the
/// shim's headroom), and removes it on delete.
#[test]
fn shim_joins_and_removes_the_container_cgroup() {
    let c = Containerd::start();
    c.run_detached(
        "cg",
        &["--memory-limit", "33554432", "--cpu-quota", "50000", "--cpu-period", "100000"],
        &["/spin.wasm"],
    )
    .ok();
    c.wait_status("cg", "RUNNING");
    let pid = c.shim_pids()[0];
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{}/cg", c.namespace);
    assert!(cgroup.lines().any(|l| l.ends_with(&want)), "shim not in {want}: {cgroup}");
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").join(&c.namespace).join("cg/memory.limit_in_bytes");
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(&c.namespace).join("cg/memory.max");
    let limit = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2)).expect("a memory limit file");
    assert_eq!(limit.trim(), (33554432u64 + (64 << 20)).to_string());
    c.kill_and_delete("cg", "SIGKILL").ok();
    c.stop_and_check_clean();
}
