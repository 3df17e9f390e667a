//! `wasi:http/proxy` components served as long-running HTTP containers.

use std::time::Duration;

use wasmcell_e2e::wait::{free_port, poll, until};
use wasmcell_e2e::{http_get as get, Containerd};

/// Waits (bounded) for the server to answer.
fn wait_up(addr: &str) {
    if poll(200, || get(addr, "/")).is_none() {
        panic!("HTTP server at {addr} never answered");
    }
}

fn start_server(c: &Containerd, id: &str, extra: &[&str], addr: &str, log: &std::path::Path) {
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    let uri = format!("file://{}", log.display());
    let mut args = vec!["--env", env.as_str(), "--log-uri", uri.as_str()];
    args.extend_from_slice(extra);
    c.run_detached(id, &args, &["/http.wasm"]).ok();
    c.wait_status(id, "RUNNING");
}

fn stop(c: &Containerd, id: &str) {
    c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    c.wait_status(id, "STOPPED");
    c.ctr(&["task", "delete", id]);
    c.ctr(&["containers", "rm", id]).ok();
}

#[test]
fn serves_requests_on_the_host_network_and_survives_a_trap() {
    let c = Containerd::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("http.log");
    start_server(&c, "web", &["--net-host"], &addr, &log);
    wait_up(&addr);
    let (status, body) = get(&addr, "/hello?x=1").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("hello from wasmcell http"), "{body}");
    assert!(
        body.contains("method: GET") && body.contains("path: /hello?x=1") && body.contains("x-test: probe-value"),
        "{body}"
    );
    // A trapping handler gives that request a 500; the server keeps serving.
    assert_eq!(get(&addr, "/trap").unwrap().0, 500);
    assert_eq!(get(&addr, "/after-trap").unwrap().0, 200);
    // Stats: requests and the memory of live instances.
    let m = c.ctr(&["task", "metrics", "web"]);
    m.ok();
    assert!(m.stdout.contains("pids.current"), "{m:?}");
    // The guest's stdout and the shim's note about the trap reach the log.
    let logged = until(
        100,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        |logged| logged.contains("request GET /after-trap") && logged.contains("trapped"),
    );
    assert!(logged.contains("request GET /hello?x=1"), "{logged}");
    assert!(logged.contains("handler trapped"), "{logged}");
    stop(&c, "web");
    c.stop_and_check_clean();
}

#[test]
fn private_network_is_not_reachable_from_the_host_but_serves_inside() {
    let c = Containerd::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = c.dir.path().join("http.log");
    start_server(&c, "private", &[], &addr, &log);
    let shim = c.shim_pids()[0];
    // Inside the container's network namespace (the shim's), it answers.
    let inside = {
        let addr = addr.clone();
        wasmcell_e2e::in_netns_of(shim, move || poll(200, || get(&addr, "/inside")))
    };
    let (status, body) = inside.expect("served inside its namespace");
    assert_eq!(status, 200);
    assert!(body.contains("path: /inside"));
    // From the host's network, nothing listens there.
    assert!(get(&addr, "/").is_none(), "reachable from the host network");
    stop(&c, "private");
    c.stop_and_check_clean();
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let mut c = Containerd::start();
    c.watch_events();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("http.log");
    start_server(&c, "graceful", &["--net-host"], &addr, &log);
    wait_up(&addr);
    let a = addr.clone();
    let slow = std::thread::spawn(move || get(&a, "/slow?ms=2000"));
    // Wait until the request is being handled (metrics: one live instance).
    for _ in 0..200 {
        let m = c.ctr(&["task", "metrics", "graceful"]);
        if m.stdout.lines().any(|l| l.starts_with("pids.current") && !l.trim_end().ends_with(" 0")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.ctr(&["task", "kill", "-s", "SIGTERM", "graceful"]).ok();
    let (status, body) = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "slow done\n"));
    c.wait_status("graceful", "STOPPED");
    let exit = c.exit_event("graceful");
    assert_eq!(exit["exit_status"].as_u64().unwrap_or(0), 0, "{exit}");
    // No new connections after the stop.
    assert!(get(&addr, "/").is_none());
    c.ctr(&["task", "delete", "graceful"]);
    c.ctr(&["containers", "rm", "graceful"]).ok();
    c.stop_and_check_clean();
}

#[test]
fn outgoing_requests_follow_the_network_grant() {
    let c = Containerd::start();
    let (up, server) = wasmcell_e2e::one_shot_http_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream",
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("http.log");
    start_server(&c, "fetcher", &["--net-host"], &addr, &log);
    wait_up(&addr);
    let (status, body) = get(&addr, &format!("/fetch?url=http://{up}/")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fetched 200: upstream"), "{body}");
    server.join().unwrap();
    stop(&c, "fetcher");
    c.stop_and_check_clean();
}

#[test]
fn port_in_use_fails_at_create_with_a_clear_error() {
    let c = Containerd::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    let r = c.run_detached("busy", &["--net-host", "--env", &env], &["/http.wasm"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("cannot listen on") && r.stderr.contains(&addr), "{r:?}");
    c.ctr(&["containers", "rm", "busy"]);
    c.stop_and_check_clean();
}

/// Concurrent requests to a handler that writes to its stdout, with the
/// container's output going to a log (as under Kubernetes, where it always
/// does): every request is answered, and every line reaches the log.
/// (Instances once shared one buffered stream, which refuses concurrent
/// writers: most requests then failed with a 500.)
#[test]
fn concurrent_requests_that_log_are_all_answered() {
    let c = Containerd::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("http.log");
    start_server(&c, "web", &["--net-host"], &addr, &log);
    wait_up(&addr);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let addr = addr.clone();
                s.spawn(move || {
                    (0..25).map(|i| get(&addr, &format!("/c{w}-{i}")).map_or(0, |(st, _)| st)).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", statuses.len());
    let logged =
        until(100, || std::fs::read_to_string(&log).unwrap_or_default(), |l| l.contains("request GET /c15-24"));
    for w in 0..16 {
        for i in 0..25 {
            assert!(logged.contains(&format!("request GET /c{w}-{i}\n")), "line of /c{w}-{i} missing");
        }
    }
    assert!(!logged.contains("concurrent writes"), "{logged}");
    stop(&c, "web");
    c.stop_and_check_clean();
}

/// The instances' request counts over sequential `GET /count`s, 50 ms
/// apart (time for an instance to be kept before the next request).
fn counts(addr: &str, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            let (status, body) = get(addr, "/count").expect("GET /count");
            assert_eq!(status, 200, "{body}");
            body.trim().strip_prefix("count: ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{body}"))
        })
        .collect()
}

/// A WASI 0.2 handler gets a fresh instance per request (its count is
/// always 1); with `wasmcell.dev/http-instance-reuse=3` an instance serves
/// up to three requests in turn (the counts go past 1, never past 3); a
/// trapped instance is not reused; a bad value is refused at create.
#[test]
fn http_instances_are_fresh_per_request_unless_reuse_is_annotated() {
    let c = Containerd::start();
    let log = c.dir.path().join("http.log");
    let fresh = format!("127.0.0.1:{}", free_port());
    start_server(&c, "fresh", &["--net-host"], &fresh, &log);
    wait_up(&fresh);
    assert_eq!(counts(&fresh, 6), vec![1; 6], "without the annotation every request gets a fresh instance");
    stop(&c, "fresh");

    let reused = format!("127.0.0.1:{}", free_port());
    start_server(&c, "reused", &["--net-host", "--annotation", "wasmcell.dev/http-instance-reuse=3"], &reused, &log);
    wait_up(&reused);
    let seen = counts(&reused, 12);
    assert!(seen.iter().any(|n| *n > 1), "an instance served several requests: {seen:?}");
    assert!(seen.iter().all(|n| *n <= 3), "no instance served more than 3: {seen:?}");
    // A trap ends that instance; the next request is served.
    assert_eq!(get(&reused, "/trap").unwrap().0, 500);
    assert_eq!(get(&reused, "/count").unwrap().0, 200);
    stop(&c, "reused");

    let addr = format!("127.0.0.1:{}", free_port());
    let env = format!("WASMCELL_HTTP_ADDR={addr}");
    let r = c.run_detached(
        "bad",
        &["--net-host", "--env", &env, "--annotation", "wasmcell.dev/http-instance-reuse=0"],
        &["/http.wasm"],
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("wasmcell.dev/http-instance-reuse"), "{}", r.stderr);
    c.ctr(&["containers", "rm", "bad"]).ok();
    c.stop_and_check_clean();
}

/// Issue 15's regression check, through containerd: 32 requests at once to
/// a handler under a 6 MiB memory limit, each instance holding about
/// 1.1 MiB for 300 ms. They cannot all be live at once, so some get a 500
/// while the others are answered; the server then serves on, and its stats
/// (`ctr task metrics`) show the limit, with the memory held afterwards
/// within it.
#[test]
fn concurrent_requests_under_a_memory_limit_are_held_to_it() {
    const LIMIT: u64 = 6 << 20;
    let c = Containerd::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = c.dir.path().join("http.log");
    let limit = LIMIT.to_string();
    start_server(&c, "capped", &["--net-host", "--memory-limit", &limit], &addr, &log);
    wait_up(&addr);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let addr = addr.clone();
                s.spawn(move || get(&addr, "/slow?ms=300").map_or(0, |(st, _)| st))
            })
            .collect();
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200 || *s == 500), "every request is answered: {statuses:?}");
    assert!(statuses.contains(&200), "requests that fit are served: {statuses:?}");
    assert!(statuses.contains(&500), "32 instances of ~1.1 MiB cannot all fit in 6 MiB: {statuses:?}");
    assert_eq!(get(&addr, "/after").unwrap().0, 200, "the server serves on");
    let m = c.metrics("capped");
    assert_eq!(m.get("memory.usage_limit"), Some(&LIMIT), "{m:?}");
    assert!(m.get("memory.usage").is_some_and(|u| *u <= LIMIT), "{m:?}");
    stop(&c, "capped");
    c.stop_and_check_clean();
}
