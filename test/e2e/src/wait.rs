//! Bounded waits for the end-to-end suites, and the small helpers that go
//! with them.
//!
//! Every wait here is bounded by a count of tries, 50 ms apart ([`STEP`]),
//! never asserted on wall time: what is asserted is the value the wait
//! returns, so a slow machine fails only a test whose result is wrong.

use std::time::Duration;

use crate::http_get;

/// The pause between two tries of a wait.
pub const STEP: Duration = Duration::from_millis(50);

/// Calls `f` at most `tries` times (at least once), [`STEP`] apart, until
/// `done` accepts what it returned. Returns that value, or the last one `f` returned when
/// no try was accepted (for the caller to assert on, and to print).
pub fn until<T>(tries: usize, mut f: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let mut last = f();
    for _ in 1..tries {
        if done(&last) {
            break;
        }
        std::thread::sleep(STEP);
        last = f();
    }
    last
}

/// Calls `f` at most `tries` times, [`STEP`] apart, until it returns
/// `Some`; `None` when it never did.
pub fn poll<T>(tries: usize, f: impl FnMut() -> Option<T>) -> Option<T> {
    until(tries, f, Option::is_some)
}

/// Waits (at most `tries` times, [`STEP`] apart) until `f` lists nothing,
/// and returns what it listed last: empty, or what was left (shim PIDs,
/// mounts, ...) for the caller's assertion message.
pub fn settle<T>(tries: usize, f: impl FnMut() -> Vec<T>) -> Vec<T> {
    until(tries, f, Vec::is_empty)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for
/// a listener that is closed again before this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GETs `path` from the HTTP server at `addr` (with [`http_get`]) until it
/// answers, at most 200 times [`STEP`] apart; `(status, body)`. Panics with
/// `nothing answered at ADDR` when it never does.
pub fn wait_http(addr: &str, path: &str) -> (u16, String) {
    poll(200, || http_get(addr, path)).unwrap_or_else(|| panic!("nothing answered at {addr}"))
}
