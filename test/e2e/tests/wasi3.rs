//! WASI 0.3 components through a real containerd and `ctr`: a
//! `wasi:cli/run@0.3` command and a `wasi:http/handler@0.3` service
//! (fixtures built with the `wasip3` crate, `test/fixtures/p3-guests`).
//! The same handler in a CRI pod is in the versions suite (1.6, 1.7, 2.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use wasmcell_e2e::wait::{free_port, poll, until};
use wasmcell_e2e::{http_get as get, Containerd};

#[test]
fn p3_command_gets_its_grants_and_exits_with_its_code() {
    let c = Containerd::start();
    let data = c.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("greeting.txt"), "bound in\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", data.display());
    let r = c.run(
        "p3cmd",
        &["--env", "GREETING=hi", "--mount", &mount],
        &["/p3-command.wasm", "args", "env", "preopens", "ls", "/data", "read", "/data/greeting.txt", "exit", "3"],
    );
    assert_eq!(r.code, Some(3), "exit-with-code reaches the container's status: {r:?}");
    let out = &r.stdout;
    assert!(out.contains("arg: preopens\n"), "{out}");
    // Exactly process.env: the variable given, plus what ctr always sets.
    let env: Vec<&str> = out.lines().filter(|l| l.starts_with("env ") && !l.contains(": ")).collect();
    assert!(env.contains(&"env GREETING=hi"), "{env:?}");
    assert!(env.iter().all(|l| l.starts_with("env GREETING=") || l.starts_with("env PATH=")), "{env:?}");
    let pre: Vec<&str> = out.lines().filter(|l| l.starts_with("preopen ")).collect();
    // The rootfs, the bind mount, and the tmpfs ctr's default spec mounts.
    assert_eq!(pre, ["preopen /", "preopen /data", "preopen /run"], "{out}");
    assert!(out.contains("ls /data: ok greeting.txt\n"), "{out}");
    assert!(out.contains("read /data/greeting.txt: ok 9 bytes: bound in\n"), "{out}");

    // A read-only mount holds; the failed action makes the command fail.
    let r = c.run("p3ro", &["--mount", &mount], &["/p3-command.wasm", "write", "/data/new.txt"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("write /data/new.txt: denied"), "{r:?}");
    assert!(!data.join("new.txt").exists());
    c.stop_and_check_clean();
}

#[test]
fn p3_command_output_is_live_and_signals_stop_it_busy_or_waiting() {
    let mut c = Containerd::start();
    c.watch_events();
    let log = c.dir.path().join("p3.log");
    let uri = format!("file://{}", log.display());
    for (id, action) in [("p3spin", &["spin"][..]), ("p3wait", &["sleep", "600000"][..])] {
        let mut args = vec!["/p3-command.wasm", "stderr", "started"];
        args.extend_from_slice(action);
        c.run_detached(id, &["--log-uri", &uri], &args).ok();
        c.wait_status(id, "RUNNING");
        // Written while the guest still runs.
        let seen = until(100, || std::fs::read_to_string(&log).unwrap_or_default(), |l| l.contains("started"));
        assert!(seen.contains("started"), "stderr is streamed live: {seen:?}");
        let t = std::time::Instant::now();
        c.ctr(&["task", "kill", "-s", "SIGTERM", id]).ok();
        c.wait_status(id, "STOPPED");
        assert!(t.elapsed() < Duration::from_secs(10), "{id}: SIGTERM took {:?}", t.elapsed());
        let exit = c.exit_event(id);
        assert_eq!(exit["exit_status"].as_u64(), Some(143), "{id}: {exit}");
        c.ctr(&["task", "delete", id]);
        c.ctr(&["containers", "rm", id]).ok();
    }
    c.stop_and_check_clean();
}

/// A POST with a chunked body whose first chunk must come back before the
/// second is sent: the echo streams, it does not buffer the body whole.
fn streamed_echo(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    let first = "first-chunk-".repeat(100);
    write!(s, "{:x}\r\n{first}\r\n", first.len()).unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Read until the first chunk has come back, with the request still open.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(&first) {
        let n = r.read(&mut buf).expect("the first chunk is echoed before the body ends");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let second = "second-chunk";
    write!(s, "{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).unwrap();
    r.read_to_end(&mut got).unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn p3_http_handler_serves_streams_survives_a_trap_and_drains() {
    let mut c = Containerd::start();
    c.watch_events();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("p3http.log");
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    let uri = format!("file://{}", log.display());
    c.run_detached("p3web", &["--net-host", "--env", &env, "--log-uri", &uri], &["/p3-http.wasm"]).ok();
    c.wait_status("p3web", "RUNNING");
    let (status, body) = poll(200, || get(&addr, "/hello?x=1")).expect("the p3 handler answers");
    assert_eq!((status, body.as_str()), (200, "hello from p3 GET /hello?x=1\n"));

    let echoed = streamed_echo(&addr);
    assert!(echoed.contains("first-chunk-") && echoed.contains("second-chunk"), "{echoed}");

    // Many requests at once, each waiting 300 ms inside the guest: all served.
    let waiting: Vec<_> = (0..24)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || get(&a, "/slow?ms=300"))
        })
        .collect();
    for w in waiting {
        assert_eq!(w.join().unwrap().map(|r| r.0), Some(200));
    }

    // A trap: that request gets a 500, the next one a 200.
    assert_eq!(get(&addr, "/trap").unwrap().0, 500);
    assert_eq!(get(&addr, "/after-trap").unwrap().0, 200);
    let logged = until(100, || std::fs::read_to_string(&log).unwrap_or_default(), |l| l.contains("trapped"));
    assert!(logged.contains("handler trapped"), "{logged}");

    // Outgoing requests: the host network grants them.
    let (up, server) = wasmcell_e2e::one_shot_http_server(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    let (status, body) = get(&addr, &format!("/fetch?url=http://{up}/")).unwrap();
    assert_eq!((status, body.as_str()), (200, "fetched 204\n"));
    server.join().unwrap();

    // SIGTERM: the request in flight finishes, then the task exits 0.
    let a = addr.clone();
    let slow = std::thread::spawn(move || get(&a, "/slow?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    c.ctr(&["task", "kill", "-s", "SIGTERM", "p3web"]).ok();
    let done = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!((done.0, done.1.as_str()), (200, "slow done\n"));
    c.wait_status("p3web", "STOPPED");
    assert_eq!(c.exit_event("p3web")["exit_status"].as_u64().unwrap_or(0), 0);
    c.ctr(&["task", "delete", "p3web"]);
    c.ctr(&["containers", "rm", "p3web"]).ok();
    c.stop_and_check_clean();
}

#[test]
fn p3_http_handler_without_network_cannot_send_requests() {
    let c = Containerd::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    // A private network namespace: outgoing connections reach nothing on
    // the host's loopback (the grant is the namespace).
    c.run_detached("p3priv", &["--env", &env], &["/p3-http.wasm"]).ok();
    c.wait_status("p3priv", "RUNNING");
    let shim = c.shim_pids()[0];
    // A server on the host's loopback, which the namespace cannot reach.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let inside = {
        let addr = addr.clone();
        wasmcell_e2e::in_netns_of(shim, move || poll(200, || get(&addr, &format!("/fetch?url=http://{up}/"))))
    };
    let (status, body) = inside.expect("served inside its namespace");
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("fetch failed"), "{body}");
    c.kill_and_delete("p3priv", "SIGKILL");
    c.stop_and_check_clean();
}
