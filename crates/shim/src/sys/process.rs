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

/// An in-memory file (memfd) for the bytes a compiler child reads or
/// writes, handed to it as stdin or stdout: no pipe round trips, and what
/// the child wrote can be mapped rather than copied. Closed on exec (the
/// child gets its own descriptor); sealable (see [`seal`]).
pub fn memory_file(name: &str) -> std::io::Result<std::fs::File> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    Ok(std::fs::File::from(fd))
}

/// Makes a [`memory_file`] unchangeable: no write, growth or shrinking,
/// and no change to the seals, through any descriptor or mapping.
pub fn seal(f: &std::fs::File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let all = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(f, FcntlArg::F_ADD_SEALS(all))?;
    Ok(())
}

/// The whole of a sealed [`memory_file`], mapped read-only: the bytes a
/// parent handed over, without copying them into a buffer of one's own (for
/// an 18 MB component, reading them took about 25 ms of the compile's
/// single-threaded start). `None` for anything else (a pipe, a file that
/// could still change under the mapping): the caller reads it instead.
pub struct SealedMap {
    at: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl SealedMap {
    pub fn of(f: impl std::os::fd::AsFd, max: u64) -> Option<SealedMap> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let seals = SealFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GET_SEALS).ok()?);
        if !seals.contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK) {
            return None;
        }
        let len = u64::try_from(nix::sys::stat::fstat(&f).ok()?.st_size).ok()?;
        let size = std::num::NonZeroUsize::new(usize::try_from(len).ok()?).filter(|_| len <= max)?;
        // SAFETY: a new private read-only mapping of a file that no one can
        // write to or shrink any more (its seals), so the slice it backs
        // never changes and every page exists; unmapped only on drop.
        let at = unsafe {
            mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE, &f, 0).ok()?
        };
        Some(SealedMap { at, len: size.get() })
    }
}

impl std::ops::Deref for SealedMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable at `at` (see `of`) for as long
        // as `self` lives.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr() as *const u8, self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping `of` made, no longer borrowed (`self` is going).
        let _ = unsafe { nix::sys::mman::munmap(self.at, self.len) };
    }
}

/// Makes the child that `cmd` spawns die (SIGKILL) with the thread that
/// spawns it, and so with this process: a compile child must never outlive
/// the shim that waits for it (an orphan would burn CPU in the container's
/// cgroup and keep that cgroup from being removed).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: prctl and getppid are, and it
    // allocates nothing and touches no lock or memory of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody will ever read us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit
/// (no privilege needed) and returns it; the guests' handles are bounded
/// within it.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                log::warn!("raise open-file limit {soft} -> {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
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

/// Serves every allocation of 256 KiB or more from its own mapping, for
/// good. glibc starts there but raises the threshold to the size of each
/// large block freed, up to 32 MiB; past that, a compiler's output buffers
/// (a Vec doubling towards a 45 MB artifact) come from the heap, and each
/// growth copies the whole buffer where `mremap` would have moved pages.
/// The baseline compile of the bench's 18 MB component took 2.0 s instead
/// of 2.45 s with the threshold fixed, the optimizing compile the same.
pub fn map_large_allocations() {
    // SAFETY: mallopt only sets a glibc tunable; called at start, before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Drops this process's page-table entries for the pages of its own
/// executable that it maps read-only and has never modified: the code and
/// constant data that starting a container touched (the Wasm loader, the
/// linker, the task API's handlers) and that an idle container does not
/// run. The pages stay in the page cache, shared with every other shim; one
/// that is needed again is mapped back by the next page fault, from memory.
/// What a process maps counts in its resident and proportional set, so an
/// idle shim would otherwise keep paying for code it ran once.
///
/// Mappings holding any private (written) page are left alone: the
/// relocated read-only data (RELRO) is such a mapping, and dropping its
/// pages would bring back the file's unrelocated bytes.
pub fn release_code_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let mut released = 0usize;
    for (range, clean) in exe_mappings(&smaps, &exe.to_string_lossy()) {
        if !clean {
            continue;
        }
        // SAFETY: the range is a whole mapping of this process's executable
        // that is not writable and holds no private page (checked above;
        // without write permission none can appear). MADV_DONTNEED on such a
        // mapping only unmaps page-cache pages, which the next access maps
        // again with the same content.
        let rc = unsafe { libc::madvise(range.0 as *mut libc::c_void, range.1 - range.0, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += range.1 - range.0;
        }
    }
    log::debug!("released {} KiB of mapped executable pages", released >> 10);
}

/// The mappings of `exe` in `smaps` that are not writable, each with
/// whether it is clean (no private page: `Anonymous: 0 kB`).
fn exe_mappings(smaps: &str, exe: &str) -> Vec<((usize, usize), bool)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|(a, _)| a.chars().all(|c| c.is_ascii_hexdigit())) {
            current = None;
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            if path == exe && !perms.contains('w') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    current = Some((a, b));
                }
            }
        } else if first == "Anonymous:" {
            if let Some(r) = current.take() {
                out.push((r, fields.next() == Some("0")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_clean_read_only_mappings_of_the_executable() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 123 /usr/bin/shim
Size:               1024 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fe:00 123 /usr/bin/shim
Size:               8192 kB
Anonymous:             0 kB
55d0a0900000-55d0a0a00000 r--p 00900000 fe:00 123 /usr/bin/shim
Size:               1024 kB
Anonymous:           512 kB
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fe:00 123 /usr/bin/shim
Size:                 64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 00:00 0 
Anonymous:             0 kB
";
        let got = exe_mappings(smaps, "/usr/bin/shim");
        assert_eq!(
            got,
            vec![
                ((0x55d0a0000000, 0x55d0a0100000), true),
                ((0x55d0a0100000, 0x55d0a0900000), true),
                ((0x55d0a0900000, 0x55d0a0a00000), false), // RELRO: relocated, kept
            ]
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        release_code_pages();
        // Code and constants come back on use.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(!exe_mappings(&smaps, &exe.to_string_lossy()).is_empty(), "the test binary's own mappings are found");
    }

    #[test]
    fn maps_only_sealed_memory_files_within_the_bound() {
        use std::os::unix::fs::FileExt;
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let f = memory_file("test").unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        assert!(SealedMap::of(&f, 1 << 20).is_none(), "not sealed: it could change under the mapping");
        seal(&f).unwrap();
        assert!(SealedMap::of(&f, 99_999).is_none(), "larger than the bound");
        let m = SealedMap::of(&f, 1 << 20).expect("sealed and within the bound");
        assert!(*m == bytes[..], "the file's bytes");
        let empty = memory_file("empty").unwrap();
        seal(&empty).unwrap();
        assert!(SealedMap::of(&empty, 1 << 20).is_none(), "nothing to map");
    }
}
