//! One container: what Create prepared, and its state machine
//! Created -> Running -> Stopped (or Created -> Stopped when killed unstarted).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::io::IoTasks;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{mpsc, watch};
use wasmcell_engine::{GuestConfig, GuestIo, GuestStats, Program};

use crate::rootfs;

/// What a container runs.
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

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    Created,
    Running,
    Stopped { status: u32, at: Timestamp },
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
    pub(crate) state: Mutex<State>,
    /// Set once, when the container stops: (exit status, time).
    pub(crate) exited: watch::Sender<Option<(u32, Timestamp)>>,
    /// Delivers signals to the running guest.
    pub(crate) kill: Mutex<Option<mpsc::UnboundedSender<u32>>>,
    /// An HTTP component's listening socket, bound at Create (in the
    /// container's network) and served from Start.
    pub(crate) listener: Mutex<Option<std::net::TcpListener>>,
}

impl Container {
    pub(crate) fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the exit once; returns false if it was already recorded.
    pub(crate) fn record_exit(&self, status: u32, at: Timestamp) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*st, State::Stopped { .. }) {
            return false;
        }
        *st = State::Stopped {
            status,
            at: at.clone(),
        };
        drop(st);
        self.exited.send_replace(Some((status, at)));
        true
    }

    /// Releases everything the container holds on the host: stdio, the
    /// rootfs mount, private directories.
    pub(crate) async fn release(&self) {
        drop(self.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.stdin_copy.close();
        self.io.shutdown().await;
        cleanup(&self.bundle, self.mounted_rootfs.as_deref());
    }
}

/// Directory of the container's private (tmpfs) directories.
pub(crate) fn private_dir(bundle: &Path) -> PathBuf {
    bundle.join("wasmcell")
}

fn cleanup(bundle: &Path, rootfs_mount: Option<&Path>) {
    if let Some(r) = rootfs_mount {
        rootfs::unmount(r);
    }
    rootfs::remove_views(bundle);
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
    cleanup(bundle, Some(&bundle.join("rootfs")));
}
