//! Task events, published to containerd in the order they happen.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskStart, TaskIO};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics::*;

pub(crate) struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub(crate) fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Events { publisher, namespace }
    }

    async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::warn!("publish {topic}: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create(
        &self,
        id: &str,
        bundle: &str,
        rootfs: Vec<containerd_shim_protos::types::mount::Mount>,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        pid: u32,
    ) {
        let ev = TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            rootfs,
            io: Some(TaskIO {
                stdin: stdin.into(),
                stdout: stdout.into(),
                stderr: stderr.into(),
                terminal: false,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.send(TASK_CREATE_EVENT_TOPIC, Box::new(ev)).await
    }

    pub(crate) async fn start(&self, id: &str, pid: u32) {
        let ev = TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.send(TASK_START_EVENT_TOPIC, Box::new(ev)).await
    }

    pub(crate) async fn exit(&self, id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskExit {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.send(TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await
    }

    pub(crate) async fn oom(&self, id: &str) {
        let ev = TaskOOM {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(TASK_OOM_EVENT_TOPIC, Box::new(ev)).await
    }

    pub(crate) async fn delete(&self, id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.send(TASK_DELETE_EVENT_TOPIC, Box::new(ev)).await
    }
}
