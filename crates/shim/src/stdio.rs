//! The guest's stdio: an OS pipe per stream between the guest and the shim,
//! and a copy task between each pipe and the fifo (or file) containerd gave.
//! The pipe decouples the guest from containerd: a guest writing to a full
//! pipe parks its own future only; the shim keeps serving.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use containerd_shim::asynchronous::io::IoTasks;
use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use wasmcell_engine::GuestIo;

use crate::ShimError;

fn os_pipe() -> Result<(OwnedFd, OwnedFd), ShimError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::Internal(format!("pipe: {e}")))
}

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> ShimError {
    ShimError::InvalidArgument(format!("cannot open {what} {path}: {e}"))
}

/// The read end of a guest's output pipe as its copy sees it, which tells
/// [`Drained`] once the copy has taken everything: at end of file (every
/// write end closed, all the bytes read and, by then, passed on) or when the
/// copy ends otherwise.
struct Tracked {
    rx: pipe::Receiver,
    done: Option<oneshot::Sender<()>>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.rx).poll_read(cx, buf);
        let eof = matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0;
        if eof || matches!(r, Poll::Ready(Err(_))) {
            self.done.take();
        }
        r
    }
}

/// Whether the output copies have passed on all the guest wrote.
///
/// A guest's exit must not be reported before that: the client (ctr, CRI)
/// takes the exit as its cue to finish reading, and output still in the
/// pipe between the guest and the copy would miss it. runc's shim gets this
/// order from the time the kernel takes to report a child's exit; here the
/// copy is a task that may not have run yet when the guest returns.
#[derive(Default)]
pub(crate) struct Drained(Vec<oneshot::Receiver<()>>);

/// How long an exit waits for the output copies. They finish as soon as the
/// client reads; the bound matters only for a client that stopped reading
/// with the fifo full.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(2);

impl Drained {
    fn track(&mut self, rx: pipe::Receiver) -> Tracked {
        let (tx, done) = oneshot::channel();
        self.0.push(done);
        Tracked { rx, done: Some(tx) }
    }

    /// Waits until every output copy has drained its pipe, at most `limit`;
    /// false if the limit ran out. The guest's write ends must be closed
    /// first (its future dropped), or this waits out the limit.
    pub(crate) async fn wait(self, limit: Duration) -> bool {
        let all = async {
            for done in self.0 {
                let _ = done.await;
            }
        };
        tokio::time::timeout(limit, all).await.is_ok()
    }
}

/// Takes the drained signal of a guest's output from `slot` and waits for it
/// (at most [`DRAIN_WAIT`]), logging when that runs out; `who` names the
/// process in the log line.
pub(crate) async fn wait_drained(slot: &std::sync::Mutex<Option<Drained>>, who: &str) {
    let drained = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(d) = drained {
        if !d.wait(DRAIN_WAIT).await {
            log::warn!("exit {who}: output not taken within {DRAIN_WAIT:?}; the rest may be lost");
        }
    }
}

/// Output to a `file://` URI (`ctr run --log-uri file:///...`).
async fn copy_to_file(rx: Tracked, path: &str) -> Result<(), ShimError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| io_err("log file", path, e))?;
    tokio::spawn(async move {
        let (mut rx, mut file) = (rx, file);
        // Drained once the file has it all, not when the pipe is empty.
        let done = rx.done.take();
        let _ = tokio::io::copy(&mut rx.rx, &mut file).await;
        drop(done);
    });
    Ok(())
}

async fn output(io: &IoTasks, drained: &mut Drained, target: &str, what: &str) -> Result<Option<OwnedFd>, ShimError> {
    if target.is_empty() {
        return Ok(None);
    }
    let (r, w) = os_pipe()?;
    let rx = drained.track(pipe::Receiver::from_owned_fd(r).map_err(|e| io_err(what, target, e))?);
    if let Some(path) = target.strip_prefix("file://") {
        copy_to_file(rx, path).await?;
    } else if target.contains("://") {
        return Err(ShimError::InvalidArgument(format!(
            "{what} {target}: only fifos and file:// log URIs are supported"
        )));
    } else {
        // The copy holds a read end of the fifo itself, so its write end
        // opens at once even before the client (ctr, CRI) has opened its
        // read end; what the guest writes and the copy closes before then
        // would be lost with the fifo. runc's shim avoids that by a blocking
        // open of the write end, which waits for the client's reader: the
        // same here, bounded, and kept open until the copy's own ends are.
        let client = client_reader(target).await;
        io.copy_to_fifo(rx, target).map_err(|e| io_err(what, target, e))?;
        drop(client);
    }
    Ok(Some(w))
}

/// How long Create waits for the client to open its end of an output fifo.
const CLIENT_READER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A write end of fifo `path`, once some reader has it open (ENXIO until
/// then, for a non-blocking open); `None` after [`CLIENT_READER_WAIT`] or on
/// another error, and the copy then goes ahead as it would have.
async fn client_reader(path: &str) -> Option<std::fs::File> {
    let deadline = tokio::time::Instant::now() + CLIENT_READER_WAIT;
    loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path) {
            Ok(f) => return Some(f),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Err(e) => {
                log::warn!("output fifo {path}: no reader yet ({e}); output written before one opens it may be lost");
                return None;
            }
        }
    }
}

/// The copy of containerd's stdin fifo into the guest's stdin pipe.
///
/// It ends, and the guest reads EOF, when every writer of the fifo has closed
/// it (as with runc: `echo hi | ctr run ...` ends the guest's input even when
/// `ctr` wins the race against its own CloseIO), or at CloseIO.
#[derive(Clone, Default)]
pub(crate) struct Stdin {
    cancel: Arc<tokio::sync::Notify>,
    path: String,
}

impl Stdin {
    fn spawn(path: &str, tx: pipe::Sender) -> Self {
        let me = Stdin { cancel: Arc::new(tokio::sync::Notify::new()), path: path.to_string() };
        let cancel = me.cancel.clone();
        let p = path.to_string();
        tokio::spawn(async move {
            let copy = async {
                // A blocking open returns once containerd's writer is there;
                // opening non-blocking would read EOF before it arrives.
                let opened = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&p)
                })
                .await;
                let Ok(Ok(file)) = opened else { return };
                let Ok(mut rx) = pipe::Receiver::from_file(file) else { return };
                let mut tx = tx;
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            };
            tokio::select! {
                _ = copy => {}
                _ = cancel.notified() => {}
            }
        });
        me
    }

    /// CloseIO: end the guest's input now.
    pub(crate) fn close(&self) {
        self.cancel.notify_one();
        if !self.path.is_empty() {
            // Unblocks an open still waiting for a writer.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&self.path);
        }
    }
}

/// Opens the streams containerd asked for. Must run inside the shim's runtime.
pub(crate) async fn open(
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<(IoTasks, Stdin, GuestIo, Drained), ShimError> {
    let io = IoTasks::default();
    let mut guest = GuestIo::default();
    let mut input = Stdin::default();
    let mut drained = Drained::default();
    let result = async {
        if !stdin.is_empty() {
            let (r, w) = os_pipe()?;
            let tx = pipe::Sender::from_owned_fd(w).map_err(|e| io_err("stdin", stdin, e))?;
            input = Stdin::spawn(stdin, tx);
            guest.stdin = Some(r);
        }
        guest.stdout = output(&io, &mut drained, stdout, "stdout").await?;
        guest.stderr = output(&io, &mut drained, stderr, "stderr").await?;
        Ok::<(), ShimError>(())
    }
    .await;
    match result {
        Ok(()) => Ok((io, input, guest, drained)),
        Err(e) => {
            input.close();
            io.abort().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Where a test's copy writes: what it holds is visible at once.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl tokio::io::AsyncWrite for Sink {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A copy that starts late still hands over everything the guest wrote
    /// before `wait` returns.
    #[tokio::test]
    async fn wait_returns_after_the_copy_took_everything() {
        let mut drained = Drained::default();
        let (r, w) = os_pipe().unwrap();
        let mut rx = drained.track(pipe::Receiver::from_owned_fd(r).unwrap());
        let mut tx = pipe::Sender::from_owned_fd(w).unwrap();
        let data = vec![7u8; 48 * 1024];
        tx.write_all(&data).await.unwrap();
        drop(tx); // the guest is gone
        let sink = Sink::default();
        let mut to = sink.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::io::copy(&mut rx, &mut to).await.unwrap();
            // The reader stays alive: end of file alone must count.
            std::future::pending::<()>().await;
        });
        assert!(drained.wait(Duration::from_secs(30)).await);
        assert_eq!(sink.0.lock().unwrap().len(), data.len());
    }

    /// A write end still open (a guest still running) keeps it waiting: it
    /// gives up at the limit and says so.
    #[tokio::test]
    async fn wait_gives_up_at_the_limit_while_a_writer_is_open() {
        let mut drained = Drained::default();
        let (r, w) = os_pipe().unwrap();
        let mut rx = drained.track(pipe::Receiver::from_owned_fd(r).unwrap());
        tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut rx, &mut sink).await;
        });
        assert!(!drained.wait(Duration::from_millis(100)).await);
        drop(w);
    }

    /// A copy that ends without end of file (cancelled, or its fifo gone)
    /// counts as done: dropping the reader tells as much.
    #[tokio::test]
    async fn a_dropped_copy_counts_as_drained() {
        let mut drained = Drained::default();
        let (r, _w) = os_pipe().unwrap();
        let rx = drained.track(pipe::Receiver::from_owned_fd(r).unwrap());
        drop(rx);
        assert!(drained.wait(Duration::from_secs(30)).await);
    }
}
