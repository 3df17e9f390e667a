//! Mount flags of what a guest can reach. A Wasm guest has no devices and no
//! set-id programs to run, so every mount below a directory it is granted is
//! made `nodev` and `nosuid`: a device node that an image carries (containerd
//! unpacks `blk`/`chr` tar entries as real nodes) or that a bound host
//! directory holds then cannot be opened (EACCES), whatever the WASI layer
//! above does.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

/// The per-mount flags of the mount holding `path`, as `MsFlags` a bind
/// remount must repeat to keep them.
fn current_flags(path: &Path) -> io::Result<MsFlags> {
    let f = statvfs(path).map_err(io::Error::from)?.flags();
    let mut ms = MsFlags::empty();
    for (fs, m) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_SYNCHRONOUS, MsFlags::MS_SYNCHRONOUS),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            ms |= m;
        }
    }
    Ok(ms)
}

/// Whether device nodes on the mount holding `path` can be opened.
pub fn allows_devices(path: &Path) -> io::Result<bool> {
    Ok(!statvfs(path).map_err(io::Error::from)?.flags().contains(FsFlags::ST_NODEV))
}

/// Mount points at or below `top`, outermost first, from
/// `/proc/self/mountinfo` (octal escapes of the kernel decoded).
fn mounts_below(top: &Path) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mounts_below(&info, top))
}

fn parse_mounts_below(info: &str, top: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(top))
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes every mount at or below `top` `nodev` and `nosuid` (and read-only
/// when `readonly`), keeping its other flags. Each mount is remounted on its
/// own: a bind remount changes one mount, not those below it.
pub fn harden(top: &Path, readonly: bool) -> io::Result<()> {
    for mp in mounts_below(top)? {
        let mut flags = current_flags(&mp)? | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &mp, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags, None::<&str>).map_err(
            |e| io::Error::new(io::Error::from(e).kind(), format!("remount {} nodev,nosuid: {e}", mp.display())),
        )?;
    }
    if allows_devices(top)? {
        return Err(io::Error::other(format!("{} still allows device nodes after remount", top.display())));
    }
    Ok(())
}

/// Binds `src` (with every mount below it) at `target`, an empty directory
/// this creates, and hardens the copy: the guest is handed `target`, never
/// `src` itself. On failure nothing stays mounted.
pub fn bind_hardened(src: &Path, target: &Path, readonly: bool) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(|e| {
        io::Error::new(io::Error::from(e).kind(), format!("bind {} at {}: {e}", src.display(), target.display()))
    })?;
    // Our copy must not propagate back to the host's mount (or receive new
    // ones) while the guest holds it.
    let _ = mount(None::<&str>, target, None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>);
    if let Err(e) = harden(target, readonly) {
        unmount_all(target);
        return Err(e);
    }
    Ok(())
}

/// Mounts a fresh tmpfs of at most `size_bytes` on `target` (an existing
/// directory): `nodev`, `nosuid`, `noexec`. The kernel refuses writes past
/// the size (ENOSPC) and charges the pages to the writer's memory cgroup (the
/// shim's, which is the container's), so a guest's private directory can
/// neither fill the filesystem under the bundle nor exceed its memory bound.
pub fn mount_tmpfs(target: &Path, size_bytes: u64) -> io::Result<()> {
    let data = format!("size={size_bytes},mode=0755");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("mount tmpfs at {}: {e}", target.display())))
}

/// Unmounts (lazily) every mount at or below `top`, innermost first.
/// Errors are logged: this runs on cleanup paths that must go on.
pub fn unmount_all(top: &Path) {
    let Ok(mut mps) = mounts_below(top) else { return };
    mps.reverse();
    for mp in mps {
        if let Err(e) = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmount {}: {e}", mp.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:30 / /run/b/rootfs rw,relatime - overlay overlay rw,lowerdir=/x
31 22 0:31 / /run/b/views/0 rw - tmpfs tmpfs rw
32 31 0:32 / /run/b/views/0/sub\\040dir rw - tmpfs tmpfs rw
33 22 0:33 / /run/b/views0 rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts_below_are_outermost_first_and_bounded_by_components() {
        let got = parse_mounts_below(INFO, Path::new("/run/b/views"));
        assert_eq!(got, vec![PathBuf::from("/run/b/views/0"), PathBuf::from("/run/b/views/0/sub dir")]);
        assert_eq!(parse_mounts_below(INFO, Path::new("/run/b/rootfs")), vec![PathBuf::from("/run/b/rootfs")]);
        assert!(parse_mounts_below(INFO, Path::new("/run/c")).is_empty());
    }

    #[test]
    fn unescape_decodes_octal_and_keeps_the_rest() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain\\"), "/plain\\");
        assert_eq!(unescape("/x\\09"), "/x\\09");
    }

    /// A private tmpfs is bounded by the kernel: a write past its size fails
    /// with ENOSPC, and it allows no device nodes.
    #[test]
    fn private_tmpfs_is_bounded() {
        assert!(nix::unistd::Uid::effective().is_root(), "this test needs root (mount): run the suite as root");
        let dir = tempfile::tempdir().unwrap();
        mount_tmpfs(dir.path(), 1 << 20).unwrap();
        let big = vec![7u8; 2 << 20];
        let err = std::fs::write(dir.path().join("fill"), &big).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(!allows_devices(dir.path()).unwrap());
        unmount_all(dir.path());
        assert!(mounts_below(dir.path()).unwrap().is_empty());
    }

    /// A real tmpfs with a device node in it: opening it works before
    /// `bind_hardened` and fails with EACCES through the hardened copy.
    #[test]
    fn hardened_bind_refuses_device_nodes() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test needs root (mount, mknod): run the suite as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let view = dir.path().join("view");
        std::fs::create_dir(&src).unwrap();
        mount(Some("tmpfs"), &src, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        let node = src.join("null");
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::fs::write(src.join("file"), b"ok").unwrap();
        assert!(std::fs::File::open(&node).is_ok(), "the device opens on its own mount");
        bind_hardened(&src, &view, true).unwrap();
        let err = std::fs::File::open(view.join("null")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert_eq!(std::fs::read(view.join("file")).unwrap(), b"ok");
        assert!(std::fs::write(view.join("file"), b"no").is_err(), "read-only view");
        assert!(!allows_devices(&view).unwrap());
        unmount_all(&view);
        unmount_all(&src);
        assert!(mounts_below(dir.path()).unwrap().is_empty());
    }
}
