//! Network namespaces. A namespace is a property of a thread, inherited by
//! threads it creates; so the shim enters the container's namespace on its
//! main thread before any runtime thread exists, and every guest socket is
//! then opened inside it.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::OnceLock;

use nix::sched::{setns, unshare, CloneFlags};
use wasmcell_grants::Network;

/// Where the shim process's sockets live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined {
    /// The host's network (no namespace in the spec).
    Host,
    /// A fresh namespace of the shim's own, with loopback up.
    Private,
    /// The namespace at this path (a pod's).
    Path(std::path::PathBuf),
    /// Entering the namespace failed: guests get no sockets at all.
    Failed(String),
}

static JOINED: OnceLock<Joined> = OnceLock::new();

/// What [`enter_for_bundle`] achieved; `Host` when it never ran (tests).
pub fn joined() -> Joined {
    JOINED.get().cloned().unwrap_or(Joined::Host)
}

/// Reads `<bundle>/config.json` and moves this (single-threaded) process into
/// the network its spec asks for. Never fails the shim: a failure is recorded
/// and the guests then get no network (fail closed).
pub fn enter_for_bundle(bundle: &Path) {
    // Only the network is read here: a spec refused later (at Create, with
    // its message) must still not leave the shim in the host's network.
    let network = match std::fs::read(bundle.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| wasmcell_grants::parse_spec(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => wasmcell_grants::network_of(&spec),
        Err(_) => Network::Private,
    };
    let joined = match network {
        Network::Host => Joined::Host,
        Network::Private => match enter_private() {
            Ok(()) => Joined::Private,
            Err(e) => Joined::Failed(format!("new network namespace: {e}")),
        },
        Network::Namespace(path) => match enter_path(&path) {
            Ok(()) => Joined::Path(path),
            Err(e) => Joined::Failed(format!("join network namespace {}: {e}", path.display())),
        },
    };
    let _ = JOINED.set(joined);
}

fn enter_path(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn enter_private() -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    loopback_up()
}

/// `ip link set lo up` in the current namespace.
fn loopback_up() -> std::io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into `req.ifr_ifru`; `req` is a valid, exclusively borrowed ifreq and
    // `sock` an open socket for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` names the network namespace this process is in. Paths
/// differ for one namespace (CRI gives a pod's containers
/// `/proc/<sandbox pid>/ns/net`, the sandbox `/var/run/netns/cni-...`), so
/// namespaces are compared by identity: device and inode of the nsfs file.
pub fn is_current(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata("/proc/thread-self/ns/net")) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}
