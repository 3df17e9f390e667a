//! Task events, published to containerd in the order they happen.
//!
//! Our own forwarder rather than the shim crate's publisher: that one
//! reconnects only on some errors, and after a containerd restart it keeps
//! retrying on the dead connection and then drops the event. A lost
//! `/tasks/exit` leaves a container "running" for ever in CRI's view. Here
//! every failure drops the connection; the next try reconnects, with
//! backoff, for as long as containerd may take to come back.

use std::time::Duration;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::topics::*;
use containerd_shim_protos::ttrpc::context::Context;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Events waiting to be forwarded; beyond this the newest are dropped (and
/// logged) rather than growing without bound.
const QUEUE: usize = 1024;
/// How long one event is retried while containerd is away.
const RETRY_FOR: Duration = Duration::from_secs(600);
/// A forward on a connection whose containerd died can hang rather than fail;
/// a live containerd answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Events {
    tx: mpsc::Sender<Envelope>,
    namespace: String,
    /// Events queued or being forwarded.
    pending: Arc<AtomicUsize>,
}

fn ttrpc_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    }
}

/// Forwards queued envelopes one at a time, in order.
async fn forward_all(address: String, mut rx: mpsc::Receiver<Envelope>, pending: Arc<AtomicUsize>) {
    let url = ttrpc_url(&address);
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = rx.recv().await {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut req = ForwardRequest::new();
        req.set_envelope(envelope);
        loop {
            if client.is_none() {
                match Client::connect(&url).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => log::debug!("events: connect {url}: {e}"),
                }
            }
            if let Some(c) = &client {
                match tokio::time::timeout(CALL_TIMEOUT, c.forward(Context::default(), &req)).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => log::warn!("events: forward {}: {e}; reconnecting", req.envelope().topic),
                    Err(_) => log::warn!("events: forward {}: timed out; reconnecting", req.envelope().topic),
                }
                client = None;
            }
            if started.elapsed() > RETRY_FOR {
                log::error!("events: dropping {} after {RETRY_FOR:?} without containerd", req.envelope().topic);
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Queuing never blocks (a full queue drops the newest event, logged), so
/// the service queues an exit under the lock of the state change it reports.
impl Events {
    /// Starts the forwarder; `address` is containerd's ttrpc socket.
    pub(crate) fn new(address: String, namespace: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(forward_all(address, rx, pending.clone()));
        Events { tx, namespace, pending }
    }

    /// Waits (at most `limit`) until every queued event reached containerd:
    /// the last container's TaskDelete must not die with the shim.
    pub(crate) async fn flush(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let mut value = Vec::new();
        if let Err(e) = event.write_to_vec_dyn(&mut value) {
            log::warn!("publish {topic}: encode: {e}");
            return;
        }
        let mut any = Any::new();
        any.type_url = event.descriptor_dyn().full_name().to_string();
        any.value = value;
        let mut env = Envelope::new();
        env.set_topic(topic.to_string());
        env.set_namespace(self.namespace.clone());
        env.set_timestamp(containerd_shim::util::timestamp().unwrap_or_default());
        env.set_event(any);
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(env) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            log::warn!("publish {topic}: queue full or closed, event dropped: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
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
        self.send(TASK_CREATE_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn start(&self, id: &str, pid: u32) {
        let ev = TaskStart { container_id: id.into(), pid, ..Default::default() };
        self.send(TASK_START_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn exit(&self, id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskExit {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.send(TASK_EXIT_EVENT_TOPIC, Box::new(ev))
    }

    /// The exit of exec process `exec_id` of container `container_id`.
    pub(crate) fn exec_exit(&self, container_id: &str, exec_id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskExit {
            container_id: container_id.into(),
            id: exec_id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.send(TASK_EXIT_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn exec_added(&self, container_id: &str, exec_id: &str) {
        let ev = TaskExecAdded { container_id: container_id.into(), exec_id: exec_id.into(), ..Default::default() };
        self.send(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn exec_started(&self, container_id: &str, exec_id: &str, pid: u32) {
        let ev =
            TaskExecStarted { container_id: container_id.into(), exec_id: exec_id.into(), pid, ..Default::default() };
        self.send(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn oom(&self, id: &str) {
        let ev = TaskOOM { container_id: id.into(), ..Default::default() };
        self.send(TASK_OOM_EVENT_TOPIC, Box::new(ev))
    }

    pub(crate) fn delete(&self, id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.send(TASK_DELETE_EVENT_TOPIC, Box::new(ev))
    }
}
