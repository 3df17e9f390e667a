//! The guest's stdio: an OS pipe per stream between the guest and the shim,
//! and a copy task between each pipe and the fifo (or file) containerd gave.
//! The pipe decouples the guest from containerd: a guest writing to a full
//! pipe parks its own future only; the shim keeps serving.

use std::os::fd::OwnedFd;

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
        io.copy_to_fifo(rx, target).map_err(|e| io_err(what, target, e))?;
    }
    Ok(Some(w))
}

/// Opens the streams containerd asked for. Must run inside the shim's runtime.
pub(crate) async fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<(IoTasks, GuestIo), ShimError> {
    let io = IoTasks::default();
    let mut guest = GuestIo::default();
    let result = async {
        if !stdin.is_empty() {
            let (r, w) = os_pipe()?;
            let tx = pipe::Sender::from_owned_fd(w).map_err(|e| io_err("stdin", stdin, e))?;
            io.copy_from_fifo(stdin, tx).map_err(|e| io_err("stdin", stdin, e))?;
            guest.stdin = Some(r);
        }
        guest.stdout = output(&io, stdout, "stdout").await?;
        guest.stderr = output(&io, stderr, "stderr").await?;
        Ok::<(), ShimError>(())
    }
    .await;
    match result {
        Ok(()) => Ok((io, guest)),
        Err(e) => {
            io.abort().await;
            Err(e)
        }
    }
}
