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

/// Gives freed heap pages back to the kernel. Compiling or reading a guest
/// frees much more than a running guest keeps (the Wasm file is read whole,
/// compiling allocates freely); glibc would otherwise keep those pages in its
/// per-thread arenas for the life of the shim, and they count in the
/// container's memory.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it takes no pointers from us and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at two. glibc gives each thread that
/// allocates concurrently an arena of its own, up to eight per core, and an
/// arena keeps the pages of its peak: the shim's short bursts on blocking
/// threads (reading and linking a guest at Create) would otherwise each leave
/// one behind. Two keep the shim's two runtime workers from contending.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; called at start, before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
