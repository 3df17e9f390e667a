//! The container's root filesystem: the snapshotter's mounts that Create
//! passes, mounted at `<bundle>/rootfs` and unmounted on every way out; and
//! the views of the other host directories a guest is granted. Every mount a
//! guest reaches is `nodev` and `nosuid` ([`crate::sys::mount`]), which Create
//! checks before the guest can run.

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;

use crate::ShimError;

/// Mounts `mounts` on `target` in order, then makes every mount there
/// `nodev` and `nosuid` (and read-only when `readonly`). On failure nothing
/// stays mounted. Blocking.
pub(crate) fn mount(mounts: &[Mount], target: &Path, readonly: bool) -> Result<(), ShimError> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| ShimError::Internal(format!("create {}: {e}", target.display())))?;
    for m in mounts {
        let fs_type = Some(m.type_.as_str()).filter(|s| !s.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, target) {
            unmount(target);
            return Err(ShimError::Internal(format!(
                "mount rootfs ({} from {}) at {}: {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    if let Err(e) = crate::sys::mount::harden(target, readonly) {
        unmount(target);
        return Err(ShimError::Internal(format!("rootfs at {}: {e}", target.display())));
    }
    Ok(())
}

/// Directory of the hardened views of granted host directories.
pub(crate) fn views_dir(bundle: &Path) -> PathBuf {
    bundle.join("wasmcell-views")
}

/// Hands the guest hardened views instead of host directories: each preopen
/// backed by a host directory, except the rootfs the shim mounted itself
/// (`mounted_rootfs`, hardened by [`mount`]) and the container's private
/// directories under `private`, is bound below [`views_dir`] and made
/// `nodev`/`nosuid` (read-only as granted); each private directory becomes a
/// tmpfs of its granted size. Then every preopen is checked: one on a mount
/// that allows device nodes refuses the container. Blocking.
pub(crate) fn harden_preopens(
    config: &mut wasmcell_engine::GuestConfig,
    bundle: &Path,
    mounted_rootfs: Option<&Path>,
    private: &Path,
) -> Result<(), ShimError> {
    for t in &config.tmpfs {
        crate::sys::mount::mount_tmpfs(&t.host, t.size_bytes).map_err(|e| ShimError::Internal(e.to_string()))?;
    }
    let views = views_dir(bundle);
    for (i, p) in config.preopens.iter_mut().enumerate() {
        if Some(p.host.as_path()) == mounted_rootfs || p.host.starts_with(private) {
            continue;
        }
        let view = views.join(i.to_string());
        crate::sys::mount::bind_hardened(&p.host, &view, p.readonly)
            .map_err(|e| ShimError::Internal(format!("directory {} for the guest: {e}", p.guest)))?;
        p.host = view;
    }
    for p in &config.preopens {
        match crate::sys::mount::allows_devices(&p.host) {
            Ok(false) => {}
            Ok(true) => {
                return Err(ShimError::Internal(format!(
                    "directory {} ({}) is on a mount that allows device nodes; refusing to grant it",
                    p.guest,
                    p.host.display()
                )))
            }
            Err(e) => return Err(ShimError::Internal(format!("directory {}: {e}", p.guest))),
        }
    }
    Ok(())
}

/// Unmounts the views of [`harden_preopens`] and removes their (then empty)
/// mount points. Never removes anything recursively: a view that could not
/// be unmounted still shows a host directory.
pub(crate) fn remove_views(bundle: &Path) {
    let views = views_dir(bundle);
    if !views.exists() {
        return;
    }
    crate::sys::mount::unmount_all(&views);
    if let Ok(entries) = std::fs::read_dir(&views) {
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_dir(e.path()) {
                log::warn!("remove {}: {err}", e.path().display());
            }
        }
    }
    if let Err(err) = std::fs::remove_dir(&views) {
        log::warn!("remove {}: {err}", views.display());
    }
}

/// The device of the directories an overlay rootfs stacks, when all of them
/// are on one filesystem (the snapshotter's); see
/// [`wasmcell_oci::FileId::of`]. `None` for anything else.
pub(crate) fn layers_dev(mounts: &[Mount]) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let [m] = mounts else { return None };
    if m.type_ != "overlay" {
        return None;
    }
    let mut dirs = Vec::new();
    for o in &m.options {
        if let Some(l) = o.strip_prefix("lowerdir=") {
            dirs.extend(l.split(':'));
        } else if let Some(u) = o.strip_prefix("upperdir=") {
            dirs.push(u);
        }
    }
    let mut devs = dirs.iter().map(|d| std::fs::metadata(d).map(|m| m.dev()));
    let first = devs.next()?.ok()?;
    devs.all(|d| d.is_ok_and(|d| d == first)).then_some(first)
}

/// Unmounts everything at or below `target` (lazily, so a busy mount cannot
/// keep the container from being deleted). Errors are logged, not returned:
/// this runs on cleanup paths that must go on.
pub(crate) fn unmount(target: &Path) {
    let Some(t) = target.to_str() else { return };
    if let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
        log::warn!("unmount {t}: {e}");
    }
}
