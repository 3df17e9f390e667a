//! The guest's stdio: an OS pipe per stream between the guest and the shim,
//! and a copy task between each pipe and the fifo (or file) containerd gave.
//! The pipe decouples the guest from containerd: a guest writing to a full
//! pipe parks its own future only; the shim keeps serving.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use containerd_shim::asynchronous::io::IoTasks;
use nix::fcntl::OFlag;
use tokio::net::unix::pipe;
use wasmcell_engine::GuestIo;

use crate::ShimError;

fn os_pipe() -> Result<(OwnedFd, OwnedFd), ShimError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::Internal(format!("pipe: {e}")))
}

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> ShimError {
    ShimError::InvalidArgument(format!("cannot open {what} {path}: {e}"))
}

/// Output to a `file://` URI (`ctr run --log-uri file:///...`).
async fn copy_to_file(rx: pipe::Receiver, path: &str) -> Result<(), ShimError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| io_err("log file", path, e))?;
    tokio::spawn(async move {
        let (mut rx, mut file) = (rx, file);
        let _ = tokio::io::copy(&mut rx, &mut file).await;
    });
    Ok(())
}

async fn output(io: &IoTasks, target: &str, what: &str) -> Result<Option<OwnedFd>, ShimError> {
    if target.is_empty() {
        return Ok(None);
    }
    let (r, w) = os_pipe()?;
    let rx = pipe::Receiver::from_owned_fd(r).map_err(|e| io_err(what, target, e))?;
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
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
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
pub(crate) async fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<(IoTasks, Stdin, GuestIo), ShimError> {
    let io = IoTasks::default();
    let mut guest = GuestIo::default();
    let mut input = Stdin::default();
    let result = async {
        if !stdin.is_empty() {
            let (r, w) = os_pipe()?;
            let tx = pipe::Sender::from_owned_fd(w).map_err(|e| io_err("stdin", stdin, e))?;
            input = Stdin::spawn(stdin, tx);
            guest.stdin = Some(r);
        }
        guest.stdout = output(&io, stdout, "stdout").await?;
        guest.stderr = output(&io, stderr, "stderr").await?;
        Ok::<(), ShimError>(())
    }
    .await;
    match result {
        Ok(()) => Ok((io, input, guest)),
        Err(e) => {
            input.close();
            io.abort().await;
            Err(e)
        }
    }
}
