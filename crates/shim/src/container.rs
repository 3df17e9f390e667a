//! One container: what Create prepared for it, and its [`Lifecycle`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::io::IoTasks;
use wasmcell_engine::{GuestConfig, GuestIo, GuestStats, Program};

use crate::lifecycle::Lifecycle;
use crate::sys::Kernel;

/// What a container runs. One per container, made once and never moved on a
/// hot path: the size difference of its variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Workload {
    /// A pod's sandbox: no Wasm and no process. It holds the pod (the shim
    /// sits in its network namespace and cgroup) until it is killed.
    Pause,
    /// A Wasm guest, compiled and linked at Create, with its grants.
    Wasm { program: Program, config: GuestConfig },
}

impl Workload {
    /// Serves HTTP rather than running to completion.
    pub(crate) fn is_server(&self) -> bool {
        matches!(self, Workload::Wasm { program, .. } if program.is_server())
    }
}

pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    /// `<bundle>/rootfs` when the shim mounted the snapshot there.
    pub(crate) mounted_rootfs: Option<PathBuf>,
    pub(crate) stdin: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) workload: Workload,
    pub(crate) io: IoTasks,
    pub(crate) stdin_copy: crate::stdio::Stdin,
    /// The guest's pipe ends, handed to the guest at Start.
    pub(crate) guest_io: Mutex<Option<GuestIo>>,
    /// Tells when the output copies have passed on all the guest wrote.
    pub(crate) drained: Mutex<Option<crate::stdio::Drained>>,
    pub(crate) stats: Arc<GuestStats>,
    /// The state machine, with the kill channel and the exit.
    pub(crate) life: Lifecycle,
    /// An HTTP component's listening socket, bound at Create (in the
    /// container's network) and served from Start.
    pub(crate) listener: Mutex<Option<std::net::TcpListener>>,
    /// Exec processes, by exec id, until each is deleted.
    pub(crate) execs: Mutex<std::collections::HashMap<String, Arc<crate::exec::Exec>>>,
}

impl Container {
    /// Releases everything the container holds on the host: stdio, the
    /// rootfs mount and views, private directories.
    pub(crate) async fn release(&self, kernel: Arc<dyn Kernel>) {
        // First: its compiler child runs in the container's cgroup, which
        // the deletion removes next.
        if let Workload::Wasm { program, .. } = &self.workload {
            program.cancel_background_compile();
        }
        let execs: Vec<_> = self.execs.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, e)| e).collect();
        for e in execs {
            e.release().await;
        }
        drop(self.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.stdin_copy.close();
        self.io.shutdown().await;
        let (bundle, rootfs) = (self.bundle.clone(), self.mounted_rootfs.clone());
        let _ = tokio::task::spawn_blocking(move || cleanup(kernel.as_ref(), &bundle, rootfs.as_deref())).await;
    }
}

/// Directory of the container's private (tmpfs) directories.
pub(crate) fn private_dir(bundle: &Path) -> PathBuf {
    bundle.join("wasmcell")
}

/// Unmounts what the shim mounted for `bundle`, then removes the private
/// directories (only after the unmounts: nothing below is a host's).
pub(crate) fn cleanup(kernel: &dyn Kernel, bundle: &Path, rootfs_mount: Option<&Path>) {
    kernel.unmount(bundle, rootfs_mount);
    let private = private_dir(bundle);
    if private.exists() {
        if let Err(e) = std::fs::remove_dir_all(&private) {
            log::warn!("remove {}: {e}", private.display());
        }
    }
}

/// Cleanup for a bundle whose shim is gone (`shim delete`): the rootfs may
/// still be mounted; what is mounted below the bundle is ours to unmount.
pub(crate) fn cleanup_bundle(bundle: &Path) {
    cleanup(&crate::sys::Linux, bundle, Some(&bundle.join("rootfs")));
}
