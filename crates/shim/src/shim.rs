//! The shim binary's lifecycle actions: `start` (spawn or reuse the serving
//! daemon), `delete` (clean up after a daemon that died), and serving.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

use crate::service::TaskService;

/// Annotation CRI sets on every container of a pod: all of them are served
/// by the shim of the pod's sandbox.
pub(crate) const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub(crate) struct WasmShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: std::path::PathBuf,
}

#[async_trait]
impl Shim for WasmShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_else(|_| ".".into())
        } else {
            args.bundle.clone().into()
        };
        WasmShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = std::fs::read(self.bundle.join("config.json"))
            .ok()
            .and_then(|b| wasmcell_grants::parse_spec(&b).ok())
            .and_then(|s| s.annotations().as_ref()?.get(SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file(self.bundle.join("address"), &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The daemon is gone (killed, crashed): undo what it set up for the
        // container of this bundle and report it killed.
        log::info!("delete (cleanup) bundle={}", self.bundle.display());
        crate::container::cleanup_bundle(&self.bundle);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 137;
        resp.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(publisher, self.namespace.clone(), self.exit.clone())
    }
}
