//! Process-wide file descriptor plumbing.

/// Points stdout at stderr (which containerd set to /dev/null for the
/// daemon), closing the pipe `start` is reading: the signal that the daemon
/// is serving.
pub fn detach_stdout() {
    // SAFETY: dup2 on the process's own standard descriptors, which are open
    // for the whole life of the process; no Rust object owns fd 1.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        log::warn!("dup2 stderr over stdout: {}", std::io::Error::last_os_error());
    }
}
