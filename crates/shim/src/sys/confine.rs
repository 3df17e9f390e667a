//! Confinement of the serving shim: once it has entered its network
//! namespace, the daemon gives up every capability it will not need again,
//! sets `no_new_privs`, and installs a seccomp filter. Guests run inside this
//! process, so this is what code that escaped Wasmtime's sandbox would hold.
//!
//! Capabilities, the bounding set and `no_new_privs` are properties of a
//! thread, inherited by the threads it creates; seccomp filters are too,
//! unless installed with `SECCOMP_FILTER_FLAG_TSYNC`. So [`apply`] runs on
//! the main thread while it is still the only thread (before any tokio
//! runtime exists): every thread the shim ever has inherits all of it. The
//! filters are still installed with TSYNC, which also covers a thread that a
//! library might have started early.
//!
//! Nothing here fails the shim: a host where a step is refused (a developer
//! running it without root) keeps serving, and [`log_outcome`] says what
//! was not applied. docs/security.md explains each choice to operators.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The capabilities the serving shim keeps, each with the work that needs it.
/// Every other capability leaves the effective, permitted, inheritable,
/// ambient and bounding sets.
pub const KEPT: [(Capability, &str); 5] = [
    (
        Capability::CAP_SYS_ADMIN,
        "mount(2) of each container's rootfs overlay at Create and umount2(2) at Delete",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "overlayfs checks the mounter's access to its layers (without it the mount itself fails); guests read and write image files of any owner, as root in a runc container does",
    ),
    (
        Capability::CAP_CHOWN,
        "overlayfs copy-up keeps a file's owner: a guest's first write to an image file not owned by root",
    ),
    (
        Capability::CAP_FOWNER,
        "guests set timestamps on image files they do not own (WASI set-times), as root in a runc container can",
    ),
    (
        Capability::CAP_NET_BIND_SERVICE,
        "HTTP components and guest sockets may listen on ports below 1024 of the container's network",
    ),
];

/// The bits of [`KEPT`], as `/proc/<pid>/status` prints CapEff and CapBnd.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _)| m | c.bitmask())
}

/// The highest capability index the `caps` crate knows; a newer kernel's
/// further capabilities leave the bounding set by number.
const LAST_KNOWN_CAP: u8 = 40;

/// What [`apply`] achieved, step by step.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub capabilities: Result<(), String>,
    pub no_new_privs: Result<(), String>,
    pub seccomp: Result<usize, String>,
    /// Threads of the process when [`apply`] ran (1 unless a library
    /// started one before `main` got here).
    pub threads: usize,
}

static OUTCOME: OnceLock<Outcome> = OnceLock::new();

/// Confines this process. Call once, on the main thread, before any other
/// thread exists and after the last step that needs what is given up
/// (entering the network namespace).
pub fn apply() {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    let capabilities = drop_capabilities();
    let no_new_privs = nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"));
    let seccomp = install_seccomp();
    let _ = OUTCOME.set(Outcome { capabilities, no_new_privs, seccomp, threads });
}

/// What [`apply`] achieved; `None` when it never ran.
pub fn outcome() -> Option<&'static Outcome> {
    OUTCOME.get()
}

/// Logs what [`apply`] achieved (it runs before the logger exists).
pub fn log_outcome() {
    let Some(o) = outcome() else {
        log::warn!("confinement: not applied (this process did not start as the serving daemon)");
        return;
    };
    let kept: Vec<String> = KEPT.iter().map(|(c, _)| c.to_string()).collect();
    match &o.capabilities {
        Ok(()) => log::info!("confinement: capabilities reduced to {} (mask {:#x})", kept.join(","), kept_mask()),
        Err(e) => log::warn!("confinement: capabilities not reduced: {e}; continuing"),
    }
    match &o.no_new_privs {
        Ok(()) => log::info!("confinement: no_new_privs set"),
        Err(e) => log::warn!("confinement: {e}; continuing"),
    }
    match &o.seccomp {
        Ok(n) => log::info!("confinement: seccomp filters installed ({n} syscalls denied with EPERM, clone3 ENOSYS)"),
        Err(e) => log::warn!("confinement: seccomp filter not installed: {e}; continuing"),
    }
    if o.threads > 1 {
        log::warn!(
            "confinement: {} threads existed when capabilities were dropped; only the main thread's descendants are reduced",
            o.threads
        );
    }
}

/// Reduces every capability set of this thread to [`KEPT`] (or to what of
/// it the thread had). The bounding set goes first: dropping from it needs
/// CAP_SETPCAP, which the last step gives up.
fn drop_capabilities() -> Result<(), String> {
    let keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    let mut errors = Vec::new();
    match caps::read(None, CapSet::Bounding) {
        Ok(bounding) => {
            for cap in bounding.difference(&keep) {
                if let Err(e) = caps::drop(None, CapSet::Bounding, *cap) {
                    errors.push(format!("bounding {cap}: {e}"));
                }
            }
        }
        Err(e) => errors.push(format!("read bounding set: {e}")),
    }
    if let Err(e) = drop_unknown_bounding() {
        errors.push(e);
    }
    if caps::runtime::ambient_set_supported().is_ok() {
        if let Err(e) = caps::clear(None, CapSet::Ambient) {
            errors.push(format!("ambient: {e}"));
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Inheritable) {
        errors.push(format!("inheritable: {e}"));
    }
    match caps::read(None, CapSet::Permitted) {
        Ok(permitted) => {
            let left: CapsHashSet = permitted.intersection(&keep).copied().collect();
            // Effective first: it must stay a subset of permitted.
            for set in [CapSet::Effective, CapSet::Permitted] {
                if let Err(e) = caps::set(None, set, &left) {
                    errors.push(format!("{set:?}: {e}"));
                }
            }
        }
        Err(e) => errors.push(format!("read permitted set: {e}")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Drops from the bounding set the capabilities of a kernel newer than the
/// `caps` crate (indices above [`LAST_KNOWN_CAP`] up to `cap_last_cap`).
fn drop_unknown_bounding() -> Result<(), String> {
    let last: u32 = match std::fs::read_to_string("/proc/sys/kernel/cap_last_cap") {
        Ok(s) => s.trim().parse().map_err(|e| format!("cap_last_cap {s:?}: {e}"))?,
        Err(_) => return Ok(()),
    };
    for idx in u32::from(LAST_KNOWN_CAP) + 1..=last {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers;
        // it changes only this thread's bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, idx as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(format!("bounding capability {idx}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Syscalls the serving shim never makes, denied with EPERM. A denylist,
/// not an allowlist: the shim's syscalls are the union of glibc's, tokio's,
/// Wasmtime's (which change between releases) and whatever a guest's WASI
/// calls lead to; one missing entry in an allowlist would break guests in
/// ways that look like host bugs. These are the calls that widen the
/// kernel's attack surface for code that escaped the Wasm sandbox.
const DENIED: &[(&str, i64)] = &[
    // Other processes' memory and file descriptors.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("process_madvise", libc::SYS_process_madvise),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    // The kernel itself: modules, kexec, reboot, swap, accounting, clocks.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("adjtimex", libc::SYS_adjtimex),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    // Large kernel subsystems the shim has no use for.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("move_pages", libc::SYS_move_pages),
    ("migrate_pages", libc::SYS_migrate_pages),
    // Files by handle: reach any file of a filesystem, past every path check.
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // Changing the root or namespaces: done once, before this filter.
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("setns", libc::SYS_setns),
    // The new mount API (rootfs mounts use mount(2)).
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    // System V IPC: the shim shares the host's IPC namespace.
    ("shmget", libc::SYS_shmget),
    ("shmat", libc::SYS_shmat),
    ("shmctl", libc::SYS_shmctl),
    ("shmdt", libc::SYS_shmdt),
    ("msgget", libc::SYS_msgget),
    ("msgsnd", libc::SYS_msgsnd),
    ("msgrcv", libc::SYS_msgrcv),
    ("msgctl", libc::SYS_msgctl),
    ("semget", libc::SYS_semget),
    ("semop", libc::SYS_semop),
    ("semtimedop", libc::SYS_semtimedop),
    ("semctl", libc::SYS_semctl),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
];

/// Namespace flags of clone(2) and unshare(2). `unshare(CLONE_FS)` stays
/// allowed: the shim library's rootfs mount uses it for long overlay
/// options. CLONE_NEWTIME shares its bit with clone(2)'s exit signal, so it
/// is checked for unshare only.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Socket families the shim and its guests use: containerd's sockets, guest
/// TCP/UDP, and netlink (glibc's address lookups). The rest (AF_ALG,
/// AF_VSOCK, AF_PACKET, AF_TIPC, AF_RDS, ...) load rarely used kernel code.
const SOCKET_FAMILIES: [libc::c_int; 4] = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

fn arg_has(flag: libc::c_int) -> Result<SeccompRule, String> {
    let bits = flag as u32 as u64;
    let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bits), bits)
        .map_err(|e| e.to_string())?;
    SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
}

fn arg_none_of(values: &[u64]) -> Result<SeccompRule, String> {
    let conds = values
        .iter()
        .map(|v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// The EPERM filter's rules: [`DENIED`] outright, plus calls denied for some
/// arguments only.
fn denied_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let mut unshare: Vec<SeccompRule> = NAMESPACE_FLAGS.iter().map(|f| arg_has(*f)).collect::<Result<_, _>>()?;
    unshare.push(arg_has(libc::CLONE_NEWTIME)?);
    rules.insert(libc::SYS_unshare, unshare);
    rules.insert(libc::SYS_clone, NAMESPACE_FLAGS.iter().map(|f| arg_has(*f)).collect::<Result<_, _>>()?);
    let families: Vec<u64> = SOCKET_FAMILIES.iter().map(|f| *f as u64).collect();
    rules.insert(libc::SYS_socket, vec![arg_none_of(&families)?]);
    // Reading the persona (0xffffffff) and the default (PER_LINUX) only:
    // READ_IMPLIES_EXEC would make every readable mapping executable.
    rules.insert(libc::SYS_personality, vec![arg_none_of(&[0, 0xffff_ffff])?]);
    Ok(rules)
}

/// The filters, in the order they are installed, with the number of
/// syscalls the first denies.
fn filters() -> Result<(Vec<BpfProgram>, usize), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("architecture: {e}"))?;
    let rules = denied_rules()?;
    let denied = rules.len();
    let compile = |rules, action| -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| e.to_string())
    };
    let mut progs = vec![compile(rules, SeccompAction::Errno(libc::EPERM as u32))?];
    // clone3 passes its flags in memory, where a filter cannot read them. Its
    // callers (glibc's pthread_create) fall back to clone(2), whose flags the
    // filter above checks, when the kernel says ENOSYS.
    progs.push(compile(BTreeMap::from([(libc::SYS_clone3, Vec::new())]), SeccompAction::Errno(libc::ENOSYS as u32))?);
    #[cfg(target_arch = "x86_64")]
    progs.push(x32_filter());
    Ok((progs, denied))
}

/// x32 syscalls arrive with the x86_64 audit architecture and bit 30 set in
/// their number, so a filter keyed on x86_64 numbers would not see them;
/// the shim never makes one. (The i386 ABI has its own audit architecture,
/// which the other filters answer with a kill.)
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> BpfProgram {
    // Opcodes of classic BPF (linux/bpf_common.h).
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.arch
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        // seccomp_data.nr
        ins(LD_W_ABS, 0, 0, 0),
        ins(JSET_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Compiles and installs the filters on every thread (TSYNC).
fn install_seccomp() -> Result<usize, String> {
    let (progs, denied) = filters()?;
    for prog in &progs {
        seccompiler::apply_filter_all_threads(prog).map_err(|e| e.to_string())?;
    }
    Ok(denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mask_is_the_documented_one() {
        // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, NET_BIND_SERVICE 10, SYS_ADMIN 21.
        assert_eq!(kept_mask(), 0x20_040b);
    }

    #[test]
    fn filters_compile_for_this_architecture() {
        let (progs, denied) = filters().unwrap();
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        // Every DENIED entry plus unshare, clone, socket and personality.
        assert_eq!(denied, DENIED.len() + 4);
        let mut names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DENIED.len(), "duplicate entry");
    }

    /// Set in the child process that [`confined_process_behaves`] starts.
    const CHILD: &str = "WASMCELL_CONFINE_TEST_CHILD";

    /// The filters and capability drop change the whole process, so they
    /// are tried in a child: this same test binary, running only this test.
    #[test]
    fn confined_process_behaves() {
        if std::env::var_os(CHILD).is_some() {
            confined_child();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "sys::confine::tests::confined_process_behaves", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "confined child failed:\n{text}");
        assert!(text.contains("confined child ok"), "{text}");
    }

    fn errno_of(r: nix::Result<impl Sized>) -> Option<nix::errno::Errno> {
        r.err()
    }

    fn confined_child() {
        use nix::errno::Errno;
        use nix::sched::{unshare, CloneFlags};
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

        let root = nix::unistd::geteuid().is_root();
        apply();
        let o = outcome().unwrap().clone();
        o.no_new_privs.clone().unwrap();
        o.seccomp.clone().unwrap();
        if root {
            o.capabilities.clone().unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let field = |name: &str| {
                let line = status.lines().find(|l| l.starts_with(name)).unwrap();
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
            };
            assert_eq!(field("CapEff:"), kept_mask() & field("CapPrm:"));
            assert_eq!(field("CapBnd:"), kept_mask());
            assert_eq!(field("CapInh:") | field("CapAmb:"), 0);
        }
        // Threads still start (clone3 answers ENOSYS, glibc falls back to
        // clone), and they inherit the filters.
        let t = std::thread::spawn(|| errno_of(unshare(CloneFlags::CLONE_NEWUSER)));
        assert_eq!(t.join().unwrap(), Some(Errno::EPERM));
        // Namespaces are refused; unshare(CLONE_FS) is not.
        assert_eq!(errno_of(unshare(CloneFlags::CLONE_NEWNET)), Some(Errno::EPERM));
        assert_eq!(errno_of(unshare(CloneFlags::CLONE_FS)), None);
        // Socket families: TCP, UDP and unix sockets work; AF_ALG does not.
        assert!(socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).is_ok());
        assert!(socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).is_ok());
        assert!(socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).is_ok());
        assert_eq!(
            errno_of(socket(AddressFamily::Alg, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)),
            Some(Errno::EPERM)
        );
        // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        // takes integers only; the filter refuses it before the kernel runs it.
        let rc = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
        assert_eq!((rc, Errno::last()), (-1, Errno::EPERM));
        // SAFETY: ptrace(PTRACE_TRACEME) takes no pointers; refused as above.
        let rc = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
        assert_eq!((rc, Errno::last()), (-1, Errno::EPERM));
        // SAFETY: getpid through its x32 number takes no arguments.
        let rc = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        assert_eq!((rc, Errno::last()), (-1, Errno::ENOSYS));
        if root {
            // What the shim keeps CAP_SYS_ADMIN for still works; chroot not.
            let dir = tempfile::tempdir().unwrap();
            nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
                .unwrap();
            nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
            assert_eq!(errno_of(nix::unistd::chroot(dir.path())), Some(Errno::EPERM));
        }
        println!("confined child ok");
    }
}
