//! A guest's stdout or stderr as a WASI 0.2 output stream that writes
//! straight into the container's pipe.
//!
//! Wasmtime's `AsyncStdoutStream` hands each write to a task that writes it
//! later; an HTTP request's instance needs its own (they cannot share one), so
//! every request paid for a task, a registration of the pipe with the
//! reactor, and the wake-ups between them: with the guest logging a line per
//! request, as it always does under Kubernetes, the hello handler served
//! 12.7k requests/s against 21.8k without output. Here a write is a
//! non-blocking `write(2)` on the pipe in the guest's own call. Only when the
//! pipe is full (its reader is slow) are the bytes kept, at most
//! [`PERMIT`], and the guest waits in `wasi:io/poll` for the pipe to take
//! them, as with any stream.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use nix::errno::Errno;
use tokio::net::unix::pipe::Sender;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes a stream accepts before the pipe has taken the earlier ones.
pub(crate) const PERMIT: usize = 64 * 1024;

/// Writes as much of `buf` as the pipe takes now; the bytes written.
fn put(fd: &OwnedFd, buf: &[u8]) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match nix::unistd::write(fd.as_fd(), &buf[done..]) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Makes the pipe's open file description non-blocking (all its handles).
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

pub(crate) struct PipeOut {
    /// The pipe (its open file description is non-blocking).
    fd: Arc<OwnedFd>,
    /// Written by the guest, not yet taken by the pipe.
    pending: Vec<u8>,
    /// A flush is asked for and `pending` is not yet empty: no writes.
    flushing: bool,
    closed: bool,
    /// Made the first time the guest must wait for the pipe.
    waiter: Option<Sender>,
}

impl PipeOut {
    pub(crate) fn new(fd: Arc<OwnedFd>) -> Self {
        PipeOut { fd, pending: Vec::new(), flushing: false, closed: false, waiter: None }
    }

    /// Writes what is pending, as far as the pipe takes it now.
    fn drain(&mut self) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        let n = put(&self.fd, &self.pending).map_err(|e| self.failed(e))?;
        self.pending.drain(..n);
        if self.pending.is_empty() {
            self.flushing = false;
        }
        Ok(())
    }

    /// The stream error for a failed write; a reader gone closes the stream.
    fn failed(&mut self, e: Errno) -> StreamError {
        if e == Errno::EPIPE {
            self.closed = true;
            self.pending.clear();
            return StreamError::Closed;
        }
        StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string()))
    }

    fn permit(&self) -> usize {
        if self.flushing {
            0
        } else {
            PERMIT - self.pending.len()
        }
    }
}

impl OutputStream for PipeOut {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if bytes.len() > self.permit() {
            return Err(StreamError::trap("write beyond what check-write allowed"));
        }
        // The common case: straight into the pipe, nothing kept.
        let n = if self.pending.is_empty() { put(&self.fd, &bytes).map_err(|e| self.failed(e))? } else { 0 };
        self.pending.extend_from_slice(&bytes[n..]);
        self.drain()
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.drain()?;
        self.flushing = !self.pending.is_empty();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.drain()?;
        Ok(self.permit())
    }
}

#[async_trait::async_trait]
impl Pollable for PipeOut {
    async fn ready(&mut self) {
        loop {
            if self.drain().is_err() || self.permit() > 0 {
                return;
            }
            // The pipe is full: wait until it takes more.
            let waiter = match self.waiter.take() {
                Some(w) => w,
                None => match self.fd.try_clone().and_then(Sender::from_owned_fd) {
                    Ok(w) => w,
                    Err(e) => {
                        log::debug!("guest output: cannot wait for the pipe ({e}); retrying in 1 ms");
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        continue;
                    }
                },
            };
            if waiter.writable().await.is_ok() {
                // Through the waiter, so that a full pipe clears its readiness.
                match waiter.try_write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        self.closed = true;
                        self.pending.clear();
                    }
                    Err(_) => {}
                }
            }
            self.waiter = Some(waiter);
        }
    }
}

impl Drop for PipeOut {
    /// What the pipe has not taken yet is written by a task (bounded to 2 s):
    /// a guest's last line must not be lost because its instance ended first.
    fn drop(&mut self) {
        if self.drain().is_err() || self.pending.is_empty() {
            return;
        }
        let (Ok(handle), Ok(fd)) = (tokio::runtime::Handle::try_current(), self.fd.try_clone()) else { return };
        let rest = std::mem::take(&mut self.pending);
        handle.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut tx) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) else { return };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tx.write_all(&rest)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A pipe whose write end is non-blocking, as the shim's are.
    fn pipe() -> (OwnedFd, Arc<OwnedFd>) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(&w).unwrap();
        (r, Arc::new(w))
    }

    #[tokio::test]
    async fn writes_go_straight_into_the_pipe_in_order() {
        let (r, w) = pipe();
        let mut out = PipeOut::new(w);
        for line in ["one\n", "two\n", "three\n"] {
            assert!(out.check_write().unwrap() >= line.len());
            out.write(Bytes::from(line)).unwrap();
        }
        assert!(out.pending.is_empty());
        drop(out);
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "one\ntwo\nthree\n");
    }

    /// A full pipe: the bytes are kept, check-write gives less, a flush
    /// blocks writes until done, and `ready` resolves once the reader drains.
    #[tokio::test]
    async fn a_full_pipe_holds_the_guest_until_it_drains() {
        let (r, w) = pipe();
        let mut out = PipeOut::new(w);
        let chunk = Bytes::from(vec![b'x'; PERMIT]);
        let mut written = 0;
        while out.check_write().unwrap() == PERMIT {
            out.write(chunk.clone()).unwrap();
            written += PERMIT;
        }
        assert!(!out.pending.is_empty(), "the pipe is full and the rest is kept");
        out.flush().unwrap();
        assert_eq!(out.check_write().unwrap(), 0, "no writes while a flush is under way");
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::fs::File::from(r).read_to_end(&mut all).unwrap();
            all.len()
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), out.ready()).await.expect("ready once drained");
        assert!(out.pending.is_empty());
        drop(out);
        assert_eq!(reader.join().unwrap(), written);
    }

    #[tokio::test]
    async fn a_closed_pipe_is_a_closed_stream() {
        let (r, w) = pipe();
        drop(r);
        let mut out = PipeOut::new(w);
        let e = out.write(Bytes::from_static(b"lost\n"));
        assert!(matches!(e, Err(StreamError::Closed)), "{e:?}");
        assert!(matches!(out.check_write(), Err(StreamError::Closed)));
    }
}
