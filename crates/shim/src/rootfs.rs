//! The container's root filesystem: the snapshotter's mounts that Create
//! passes, mounted at `<bundle>/rootfs` and unmounted on every way out.

use std::path::Path;

use containerd_shim_protos::types::mount::Mount;

use crate::ShimError;

/// Mounts `mounts` on `target` in order. On failure nothing stays mounted.
pub(crate) async fn mount(mounts: &[Mount], target: &Path) -> Result<(), ShimError> {
    if mounts.is_empty() {
        return Ok(());
    }
    tokio::fs::create_dir_all(target)
        .await
        .map_err(|e| ShimError::Internal(format!("create {}: {e}", target.display())))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, target).await {
            unmount(target);
            return Err(ShimError::Internal(format!(
                "mount rootfs ({} from {}) at {}: {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    Ok(())
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
