//! Accepting the task API's connections when the shim is out of
//! descriptors. The ttrpc crate's own accept loop logs each failed accept
//! and tries again at once: with the shim at its descriptor limit that is a
//! spin that wrote 1.28 M `incoming conn fail ... Too many open files` lines
//! (178 MiB) to containerd's log in 3 s (issue 20). Here a failed accept for
//! want of a resource waits instead, 50 ms doubling up to 1 s, and the shim
//! says so at most once every 10 s, with the number of failures since.

use std::io;
use std::time::{Duration, Instant};

use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use futures::Stream;

/// Errors that last until something else frees a resource.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// When to retry, and when to say so.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    log_every: Duration,
    wait: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration, log_every: Duration) -> Self {
        Backoff { first, max, log_every, wait: first, last_log: None, unlogged: 0 }
    }

    /// After a failed accept at `now`: how long to wait before the next,
    /// and, if it is time to log, how many failures to report.
    pub(crate) fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let wait = self.wait;
        self.wait = (self.wait * 2).min(self.max);
        self.unlogged += 1;
        let log = match self.last_log {
            Some(t) if now.duration_since(t) < self.log_every => None,
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        };
        (wait, log)
    }

    /// After an accept worked: the next failure waits the shortest time.
    pub(crate) fn succeeded(&mut self) {
        self.wait = self.first;
    }
}

/// The accepted connections of `listener`, waiting out resource errors.
fn accepted(
    listener: tokio::net::UnixListener,
) -> impl Stream<Item = io::Result<tokio::net::UnixStream>> + Send + 'static {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1), Duration::from_secs(10));
    futures::stream::unfold((listener, backoff), |(listener, mut backoff)| async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    backoff.succeeded();
                    return Some((Ok(conn), (listener, backoff)));
                }
                Err(e) if out_of_resources(&e) => {
                    let (wait, log) = backoff.failed(Instant::now());
                    if let Some(n) = log {
                        log::warn!("ttrpc: cannot accept a connection ({n} failed since the last report): {e}; retrying in {wait:?}");
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Some((Err(e), (listener, backoff))),
            }
        }
    })
}

/// The task API's listener for ttrpc, with [`accepted`]'s back-off.
pub(crate) fn listener(l: std::os::unix::net::UnixListener) -> io::Result<Listener> {
    l.set_nonblocking(true)?;
    Ok(Listener::new(accepted(tokio::net::UnixListener::from_std(l)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_bound_and_reset_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1), Duration::from_secs(10));
        let t = Instant::now();
        let waits: Vec<u64> = (0..7).map(|_| b.failed(t).0.as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(t).0, Duration::from_millis(50));
    }

    /// The log volume: a spin of failures for 60 s (one every 50 ms, more
    /// than the back-off allows) is reported 6 times, each line with the
    /// count since the one before.
    #[test]
    fn failures_are_reported_once_per_interval_with_their_count() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1), Duration::from_secs(10));
        let t0 = Instant::now();
        let reports: Vec<u64> = (0..1200).filter_map(|i| b.failed(t0 + Duration::from_millis(50 * i)).1).collect();
        assert_eq!(reports.len(), 6, "{reports:?}");
        assert_eq!(reports[0], 1);
        assert_eq!(reports, [1, 200, 200, 200, 200, 200]);
        assert!(out_of_resources(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!out_of_resources(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }
}
