//! `make bench-http`: HTTP serving throughput of wasmcell against the best
//! real anchors, in one run, with one handler and one load setting.
//!
//! Rows (all serve `test/fixtures/wasm/http.wasm`, the p2 hello handler,
//! unless named otherwise; load is wrk on 127.0.0.1 or the pod IP):
//!   (a) native   a hyper server answering the same bytes, no Wasm
//!                (`wasmcell-http-baseline`): the HTTP stack's ceiling
//!   (b) wasmtime `wasmtime serve` 48 (`$WASMTIME`, or the copy
//!                `make bench-http` installs under the bench cache)
//!   (c) runwasi  runwasi's `containerd-shim-wasmtime-v1`, built by
//!                `make bench-peer` from `$RUNWASI_SRC` (`$RUNWASI_SHIM`)
//!   (b2)         the same with `--max-instance-reuse-count 1000`: an
//!                instance serves up to 1000 requests in turn
//!   (d) wasmcell through `ctr run -d --net-host`
//!   (d2)         the same with the annotation
//!                `wasmcell.dev/http-instance-reuse=1000` (as (b2))
//!   (d3)         the same with the WASI 0.3 handler (`p3-http.wasm`)
//!   (e) wasmcell in a CRI pod, at the pod IP
//!   (a2)         the native server of (a) in that pod's network namespace
//!                (`nsenter --net`), at the pod IP: the ceiling for (e)
//! For each: req/s at c=32 and c=1, p50 and p99 latency at c=32, and the
//! server's CPU seconds per 1000 requests (from /proc/PID/stat). A row that
//! cannot be had says why.
//!
//! All servers are started first and stay up; the c=32 points are then
//! taken in rounds, each round loading every server in turn. This VM's
//! speed drifts by tens of percent over minutes (other tenants of the
//! host), so a row measured minutes after another could show a ratio that
//! is only the drift. A row's c=32 figures are those of its median round,
//! the spread column is its lowest and highest round, and each ratio is the
//! median over the rounds of the ratio within a round.
//!
//! Environment: BENCH_HTTP_SECS (seconds per point, default 5),
//! BENCH_HTTP_ROUNDS (default 3), BENCH_HTTP_ROWS (letters of the rows to
//! measure, e.g. `c,d`; default all).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::wait::free_port;
use wasmcell_e2e::{fixtures_dir, target_dir, Containerd};

#[derive(Default, Clone)]
struct Row {
    name: String,
    rps32: f64,
    rps1: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_k: f64,
    /// req/s at c=32 in each round.
    rounds: Vec<f64>,
    missing: Option<String>,
}

/// One c=32 point: req/s, p50 and p99 ms, CPU seconds per 1000 requests.
#[derive(Clone, Copy)]
struct Point {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_k: f64,
}

/// A server that answers at `addr`, its work done by process `pid`; it is
/// stopped (and what started it checked clean) by `stop`.
struct Up {
    name: String,
    addr: String,
    pid: i32,
    stop: Option<Box<dyn FnOnce()>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// A row's server, or why it cannot be had.
type Started = Result<Up, Row>;

/// utime + stime of a process (all its threads), in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; `after` starts at field 3.
    (ticks(11) + ticks(12))
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// Runs wrk; returns (req/s, p50 ms, p99 ms, requests).
fn wrk(addr: &str, conns: u32, secs: u64) -> (f64, f64, f64, f64) {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", &format!("http://{addr}/bench")])
        .output()
        .expect("wrk (Debian package wrk) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let (num, unit): (String, String) = v.chars().partition(|c| c.is_ascii_digit() || *c == '.');
        let n: f64 = num.parse().unwrap_or(0.0);
        match unit.as_str() {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let mut rps = 0.0;
    let (mut p50, mut p99, mut n) = (0.0, 0.0, 0.0);
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().unwrap_or(0.0),
            ["50%", v] => p50 = ms(v),
            ["99%", v] => p99 = ms(v),
            [count, "requests", "in", ..] => n = count.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    (rps, p50, p99, n)
}

/// Whether the server answers (up to 60 s), then a one-second warm-up:
/// compiled code paged in, pools filled.
fn ready(up: &Up) -> Result<(), String> {
    if wasmcell_e2e::wait::poll(600, || wasmcell_e2e::http_get(&up.addr, "/bench")).is_none() {
        return Err(format!("nothing answered at {}", up.addr));
    }
    wrk(&up.addr, 32, 1);
    Ok(())
}

/// One c=32 point of the server.
fn point(up: &Up, secs: u64) -> Point {
    let cpu0 = cpu_secs(up.pid);
    let (rps, p50_ms, p99_ms, n) = wrk(&up.addr, 32, secs);
    let cpu1 = cpu_secs(up.pid);
    let cpu_per_k = if n > 0.0 { (cpu1 - cpu0) / (n / 1000.0) } else { 0.0 };
    Point { rps, p50_ms, p99_ms, cpu_per_k }
}

/// A row from its rounds' points (its median round's figures) and its c=1
/// req/s.
fn row(name: &str, points: &[Point], rps1: f64) -> Row {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let m = sorted[sorted.len() / 2];
    eprintln!("bench-http: {name}: {:.0} req/s at c=32 (median of {}), {rps1:.0} at c=1", m.rps, points.len());
    Row {
        name: name.into(),
        rps32: m.rps,
        rps1,
        p50_ms: m.p50_ms,
        p99_ms: m.p99_ms,
        cpu_per_k: m.cpu_per_k,
        rounds: points.iter().map(|p| p.rps).collect(),
        missing: None,
    }
}

/// The median of the round-by-round ratios of `r` to `base`.
fn median_ratio(r: &Row, base: &Row) -> Option<f64> {
    let mut v: Vec<f64> = r.rounds.iter().zip(&base.rounds).filter(|(_, b)| **b > 0.0).map(|(a, b)| a / b).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn missing(name: &str, why: String) -> Row {
    eprintln!("bench-http: {name}: NOT MEASURED: {why}");
    Row { name: name.into(), missing: Some(why), ..Default::default() }
}

/// Kills a child and reaps it when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("WASMCELL_BENCH_CACHE").unwrap_or_else(|_| "/var/cache/wasmcell/bench".into()))
}

/// An `Up` for a child process, killed and reaped when stopped.
fn up_child(name: &str, addr: String, child: Child) -> Up {
    let child = Reaped(child);
    let pid = child.0.id() as i32;
    Up { name: name.into(), addr, pid, stop: Some(Box::new(move || drop(child))) }
}

fn native() -> Started {
    let name = "(a) native hyper, no Wasm";
    let addr = format!("127.0.0.1:{}", free_port());
    let bin = target_dir().join("wasmcell-http-baseline");
    match Command::new(&bin).arg(&addr).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => Ok(up_child(name, addr, c)),
        Err(e) => Err(missing(name, format!("{}: {e}", bin.display()))),
    }
}

fn wasmtime_serve(name: &str, extra: &[&str]) -> Started {
    let bin = std::env::var("WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("wasmtime-48.0.8/bin/wasmtime"));
    if !bin.exists() {
        return Err(missing(
            name,
            format!("{} not found (make bench-http installs it with cargo install)", bin.display()),
        ));
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let wasm = fixtures_dir().join("http.wasm");
    match Command::new(&bin)
        // -Scli: the fixture, like most Rust handlers, also imports wasi:cli.
        .args(["serve", "-Scli", "--addr", &addr])
        .args(extra)
        .arg(&wasm)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Ok(up_child(name, addr, c)),
        Err(e) => Err(missing(name, format!("{}: {e}", bin.display()))),
    }
}

fn task_pid(c: &Containerd, id: &str) -> i32 {
    let ls = c.ctr(&["task", "ls"]);
    ls.stdout
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&id)).then(|| w.get(1).and_then(|p| p.parse().ok())).flatten()
        })
        .unwrap_or_else(|| panic!("no task {id}: {}", ls.stdout))
}

fn runwasi() -> Started {
    let name = "(c) runwasi containerd-shim-wasmtime";
    let shim = std::env::var("RUNWASI_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("runwasi/bin/containerd-shim-wasmtime-v1"));
    if !shim.exists() {
        return Err(missing(name, format!("{} not found: run `make bench-peer RUNWASI_SRC=...`", shim.display())));
    }
    // The same runtime name as wasmcell: under another name for this run.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&shim, dir.path().join("containerd-shim-runwasi-v1")).unwrap();
    let path =
        format!("{}:{}:{}", dir.path().display(), target_dir().display(), std::env::var("PATH").unwrap_or_default());
    let c = Containerd::start_with_env(&[("PATH", &path)]);
    let addr = format!("127.0.0.1:{}", free_port());
    let env = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let r = c.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--net-host",
        "--platform",
        "wasi/wasm",
        "--runtime",
        "io.containerd.runwasi.v1",
        "--env",
        &env,
        wasmcell_e2e::FIXTURES_IMAGE,
        "runwasi-http",
        "/http.wasm",
    ]);
    if r.code != Some(0) {
        return Err(missing(name, format!("ctr run failed: {}", r.stderr.trim())));
    }
    let pid = task_pid(&c, "runwasi-http");
    let stop = move || {
        c.ctr(&["task", "kill", "-s", "SIGKILL", "runwasi-http"]);
        std::thread::sleep(Duration::from_millis(500));
        c.ctr(&["task", "delete", "runwasi-http"]);
        c.ctr(&["containers", "rm", "runwasi-http"]);
        drop(c);
        drop(dir);
    };
    Ok(Up { name: name.into(), addr, pid, stop: Some(Box::new(stop)) })
}

fn wasmcell_ctr(name: &str, wasm: &str, extra: &[&str]) -> Started {
    let c = Containerd::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    let mut args = vec!["--null-io", "--net-host", "--env", &env];
    args.extend_from_slice(extra);
    c.run_detached("wasmcell-http", &args, &[wasm]).ok();
    c.wait_status("wasmcell-http", "RUNNING");
    let pid = task_pid(&c, "wasmcell-http");
    let stop = move || {
        c.kill_and_delete("wasmcell-http", "SIGKILL");
        c.stop_and_check_clean();
    };
    Ok(Up { name: name.into(), addr, pid, stop: Some(Box::new(stop)) })
}

/// The network namespace of pod `pod`: its sandbox's, from the bundle.
fn pod_netns(c: &Cri, pod: &str) -> Option<String> {
    let spec = c.cd.dir.path().join("state/io.containerd.runtime.v2.task").join(wasmcell_e2e::cri::K8S_NS).join(pod);
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(spec.join("config.json")).ok()?).ok()?;
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(String::from)
}

/// (a2): the native server inside the pod's network namespace, at the pod
/// IP: the ceiling of the pod's network path, for row (e).
fn native_in_pod(c: &Cri, pod: &str, ip: &str) -> Started {
    let name = "(a2) native hyper, in the pod's network";
    let Some(netns) = pod_netns(c, pod) else {
        return Err(missing(name, "the pod's network namespace was not found in its bundle".into()));
    };
    let addr = format!("{ip}:8081");
    let bin = target_dir().join("wasmcell-http-baseline");
    match Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(&bin)
        .arg(&addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => Ok(up_child(name, addr, child)),
        Err(e) => Err(missing(name, format!("nsenter: {e}"))),
    }
}

/// (a2), when `with_native`, and (e): one pod.
fn wasmcell_cri(with_native: bool) -> Vec<Started> {
    let name = "(e) wasmcell, CRI pod";
    let c = Cri::start();
    let pod_cfg = c.pod_config("bench");
    let (pod, ip) = c.run_ready_pod(&pod_cfg);
    let native = with_native.then(|| native_in_pod(&c, &pod, &ip));
    let web = c
        .create(&pod, &pod_cfg, c.container_config("web", &["/http.wasm"], &[("WASMCELL_HTTP_ADDR", "0.0.0.0:8080")]))
        .expect("CreateContainer");
    c.start_container(&web).expect("StartContainer");
    let pid = c.shim_pids()[0];
    let stop = move || {
        c.remove_pod_and(&pod, &[&web]);
        c.stop_and_check_clean();
    };
    let web = Up { name: name.into(), addr: format!("{ip}:8080"), pid, stop: Some(Box::new(stop)) };
    native.into_iter().chain([Ok(web)]).collect()
}

const REUSE: &str = "wasmcell.dev/http-instance-reuse=1000";

fn main() {
    let secs: u64 = std::env::var("BENCH_HTTP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = std::env::var("BENCH_HTTP_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    assert!(Path::new("/usr/bin/wrk").exists(), "wrk is missing: apt-get install wrk");
    // BENCH_HTTP_ROWS=d,e measures only those rows (by their letter).
    let only: Option<Vec<String>> =
        std::env::var("BENCH_HTTP_ROWS").ok().map(|v| v.split(',').map(|s| format!("({})", s.trim())).collect());
    type Start = Box<dyn Fn() -> Started>;
    let all: Vec<(&str, Start)> = vec![
        ("(a)", Box::new(native)),
        ("(b)", Box::new(|| wasmtime_serve("(b) wasmtime serve 48", &[]))),
        ("(c)", Box::new(runwasi)),
        (
            "(b2)",
            Box::new(|| wasmtime_serve("(b2) wasmtime serve 48, reuse 1000", &["--max-instance-reuse-count", "1000"])),
        ),
        ("(d)", Box::new(|| wasmcell_ctr("(d) wasmcell, ctr --net-host", "/http.wasm", &[]))),
        ("(d2)", Box::new(|| wasmcell_ctr("(d2) wasmcell, ctr, reuse 1000", "/http.wasm", &["--annotation", REUSE]))),
        ("(d3)", Box::new(|| wasmcell_ctr("(d3) wasmcell, ctr, WASI 0.3 handler", "/p3-http.wasm", &[]))),
    ];
    let wanted = |tag: &str| only.as_ref().is_none_or(|o| o.iter().any(|t| t == tag));
    // Every server up first, each ready and warmed.
    let mut servers: Vec<Started> = all
        .iter()
        .map(|(tag, start)| if wanted(tag) { start() } else { Err(missing(tag, "not in BENCH_HTTP_ROWS".into())) })
        .collect();
    // (a2) and (e) share one pod.
    match (wanted("(a2)"), wanted("(e)")) {
        (false, false) => {}
        (with_native, true) => servers.extend(wasmcell_cri(with_native)),
        (true, false) => servers.extend(wasmcell_cri(true).into_iter().take(1)),
    }
    for s in &mut servers {
        if let Ok(up) = s {
            if let Err(why) = ready(up) {
                let name = up.name.clone();
                *s = Err(missing(&name, why));
            }
        }
    }
    // The c=32 points in rounds, every server once per round; then c=1.
    let mut points: Vec<Vec<Point>> = vec![Vec::new(); servers.len()];
    for round in 1..=rounds {
        eprintln!("bench-http: round {round} of {rounds}");
        for (s, p) in servers.iter().zip(points.iter_mut()) {
            if let Ok(up) = s {
                p.push(point(up, secs));
            }
        }
    }
    let rows: Vec<Row> = servers
        .iter()
        .zip(&points)
        .map(|(s, p)| match s {
            Ok(up) => row(&up.name, p, wrk(&up.addr, 1, secs).0),
            Err(r) => r.clone(),
        })
        .collect();
    drop(servers);
    println!();
    println!(
        "HTTP hello handler, wrk -t1 on this machine; c=32 in {rounds} rounds of {secs} s (median round), c=1 once:"
    );
    println!(
        "{:40} {:>9} {:>13} {:>8} {:>8} {:>8} {:>9}  {:>8} {:>8} {:>8}",
        "server",
        "req/s c32",
        "c32 spread",
        "req/s c1",
        "p50 ms",
        "p99 ms",
        "CPU s/1k",
        "/native",
        "/wt-serve",
        "/runwasi"
    );
    let base = |i: usize| rows[i].missing.is_none().then_some(&rows[i]);
    for r in &rows {
        if let Some(why) = &r.missing {
            println!("{:40} NOT MEASURED: {why}", r.name);
            continue;
        }
        let ratio =
            |b: Option<&Row>| b.and_then(|b| median_ratio(r, b)).map_or("-".to_string(), |x| format!("{x:.2}x"));
        let (lo, hi) = r.rounds.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "{:40} {:>9.0} {:>13} {:>8.0} {:>8.2} {:>8.2} {:>9.3}  {:>8} {:>8} {:>8}",
            r.name,
            r.rps32,
            format!("{lo:.0}-{hi:.0}"),
            r.rps1,
            r.p50_ms,
            r.p99_ms,
            r.cpu_per_k,
            ratio(base(0)),
            ratio(base(1)),
            ratio(base(2))
        );
    }
}
