//! Every raw Linux call of the shim lives below this module, each `unsafe`
//! block with its SAFETY argument. The rest of the crate calls safe wrappers.
//!
//! The calls the task service makes for a container (mount its rootfs, hand
//! its guest hardened views of granted directories, unmount, join and leave
//! a cgroup) go through [`Kernel`], so that Create, Start, Kill and Delete
//! run in unit tests without root against a fake.

pub mod cgroup;
pub mod confine;
pub mod mount;
pub mod netns;
pub mod process;

use std::path::Path;

use containerd_shim_protos::types::mount::Mount;
use wasmcell_engine::GuestConfig;
use wasmcell_grants::Limits;

use crate::ShimError;

/// A cgroup the shim process has joined.
pub(crate) trait Membership: Send {
    fn path(&self) -> &str;
    /// Moves the shim back to the parent cgroup and removes this one.
    fn leave(self: Box<Self>);
}

/// The kernel, as the task service uses it. Every method blocks: callers
/// run them on tokio's blocking threads.
pub(crate) trait Kernel: Send + Sync + 'static {
    /// Mounts the snapshot `mounts` at `target`, every mount there `nodev`
    /// and `nosuid` (and read-only when `readonly`). Nothing stays mounted
    /// on failure.
    fn mount_rootfs(&self, mounts: &[Mount], target: &Path, readonly: bool) -> Result<(), ShimError>;
    /// Mounts each private directory of `config` as a tmpfs of its size,
    /// replaces each host directory of its preopens (but the rootfs the shim
    /// mounted, and the private directories under `private`) by a hardened
    /// view below `bundle`, and checks that no preopen allows device nodes.
    fn grant_views(
        &self,
        config: &mut GuestConfig,
        bundle: &Path,
        mounted_rootfs: Option<&Path>,
        private: &Path,
    ) -> Result<(), ShimError>;
    /// Unmounts what the shim mounted for the container of `bundle`: the
    /// rootfs at `rootfs` (when it mounted one), the views and the private
    /// tmpfs mounts.
    fn unmount(&self, bundle: &Path, rootfs: Option<&Path>);
    /// Creates the cgroup at `linux.cgroupsPath` `path` with `limits` (plus
    /// the shim's headroom) and moves the shim process into it.
    fn join_cgroup(&self, path: &str, limits: &Limits) -> Result<Box<dyn Membership>, String>;
}

/// The real kernel.
pub(crate) struct Linux;

impl Kernel for Linux {
    fn mount_rootfs(&self, mounts: &[Mount], target: &Path, readonly: bool) -> Result<(), ShimError> {
        crate::rootfs::mount(mounts, target, readonly)
    }

    fn grant_views(
        &self,
        config: &mut GuestConfig,
        bundle: &Path,
        mounted_rootfs: Option<&Path>,
        private: &Path,
    ) -> Result<(), ShimError> {
        crate::rootfs::harden_preopens(config, bundle, mounted_rootfs, private)
    }

    fn unmount(&self, bundle: &Path, rootfs: Option<&Path>) {
        if let Some(r) = rootfs {
            crate::rootfs::unmount(r);
        }
        crate::rootfs::remove_views(bundle);
        mount::unmount_all(&crate::container::private_dir(bundle));
    }

    fn join_cgroup(&self, path: &str, limits: &Limits) -> Result<Box<dyn Membership>, String> {
        cgroup::join(path, limits).map(|j| Box::new(j) as Box<dyn Membership>)
    }
}
