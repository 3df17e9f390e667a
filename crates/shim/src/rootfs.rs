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

/// Unmounts everything at or below `target` (lazily, so a busy mount cannot
/// keep the container from being deleted). Errors are logged, not returned:
/// this runs on cleanup paths that must go on.
pub(crate) fn unmount(target: &Path) {
    let Some(t) = target.to_str() else { return };
    if let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
        log::warn!("unmount {t}: {e}");
    }
}
