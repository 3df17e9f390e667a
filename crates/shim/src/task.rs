//! The task service: containerd's shim v2 task API over ttrpc. Each verb
//! here is thin: Create is in [`crate::create`], Start and the guest's
//! supervisor in [`crate::supervisor`], the state every verb decides on in
//! [`crate::lifecycle`]. Errors become ttrpc codes once, in
//! [`crate::error`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use wasmcell_engine::Engine;

use crate::container::{Container, Workload};
use crate::events::Events;
use crate::lifecycle::{Killed, State};
use crate::supervisor::{ignored_signal, now, stop_signal};
use crate::sys::{Kernel, Linux};
use crate::{config, ShimError};

#[derive(Clone)]
pub struct TaskService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) containers: Mutex<HashMap<String, Arc<Container>>>,
    pub(crate) engine: OnceLock<Engine>,
    pub(crate) events: Events,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) pid: u32,
    /// containerd's gRPC address and this shim's namespace: where images'
    /// Wasm layers are read from.
    pub(crate) grpc_address: String,
    pub(crate) namespace: String,
    /// The cgroup this shim joined, and which container owns it.
    pub(crate) cgroup: crate::sys::cgroup::Owner,
    pub(crate) kernel: Arc<dyn Kernel>,
    /// The in-memory `wasi:keyvalue` store of this shim's containers (a
    /// pod's), made when the first one is granted it.
    pub(crate) memory_kv: OnceLock<Arc<wasmcell_engine::MemoryStore>>,
    /// The runtime handler's policy file, from the first Create's runtime
    /// options (a pod's sandbox: containerd may send a pod's containers
    /// none), for every container of this shim.
    pub(crate) handler_policy: OnceLock<Option<std::path::PathBuf>>,
}

/// Runs blocking work (file reads, compiles, mounts, unmounts) off the RPC
/// worker threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ShimError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ShimError::Internal(e.to_string()))
}

impl TaskService {
    pub(crate) fn new(ttrpc_address: String, namespace: String, grpc_address: String, exit: Arc<ExitSignal>) -> Self {
        Self::with_kernel(ttrpc_address, namespace, grpc_address, exit, Arc::new(Linux))
    }

    pub(crate) fn with_kernel(
        ttrpc_address: String,
        namespace: String,
        grpc_address: String,
        exit: Arc<ExitSignal>,
        kernel: Arc<dyn Kernel>,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                containers: Mutex::new(HashMap::new()),
                engine: OnceLock::new(),
                events: Events::new(ttrpc_address, namespace.clone()),
                grpc_address,
                namespace,
                exit,
                pid: std::process::id(),
                cgroup: Default::default(),
                kernel,
                memory_kv: OnceLock::new(),
                handler_policy: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn engine(&self) -> Result<Engine, ShimError> {
        match self.inner.engine.get() {
            Some(e) => Ok(e.clone()),
            None => self.engine_with(None),
        }
    }

    /// The shim's engine, created at the first Create with the compile cache
    /// and the runtime handler's policy that Create's runtime options (or
    /// the environment) configure. Every Create reads its policy file
    /// afresh: a file that no longer parses refuses the container, and one
    /// that differs from the engine's cannot apply to it (a pod's containers
    /// share one handler, so this takes a change of the file mid-pod).
    pub(crate) fn engine_with(&self, options: Option<&Any>) -> Result<Engine, ShimError> {
        let policy = match self.handler_policy(options)? {
            Some(p) => Some(config::load_policy(&p)?),
            None => None,
        };
        if let Some(e) = self.inner.engine.get() {
            if e.policy() != policy.as_ref() {
                let name = |p: Option<&wasmcell_engine::Policy>| {
                    p.map_or("no policy".to_string(), |p| format!("policy {}", p.path.display()))
                };
                return Err(ShimError::FailedPrecondition(format!(
                    "this shim runs its containers under {} as it read it at its first container, and this \
                     container asks for {} (as it reads now); a pod's containers share one runtime handler and its \
                     policy",
                    name(e.policy()),
                    name(policy.as_ref())
                )));
            }
            return Ok(e.clone());
        }
        let cache = config::cache(options);
        log::info!("compile cache: {}", cache.as_ref().map_or("off".to_string(), |c| c.dir.display().to_string()));
        if let Some(p) = &policy {
            log::info!(
                "runtime policy {}: deny_imports {:?}, deny_wasm_features {:?}",
                p.path.display(),
                p.deny_imports,
                p.deny_wasm_features
            );
        }
        let limit = config::compile_timeout();
        let features = policy.as_ref().map(|p| p.deny_wasm_features.clone()).unwrap_or_default();
        let compiler: wasmcell_engine::Compiler = Arc::new(move |b, k, tier, concurrency, cancel| {
            crate::compiler::out_of_process(b, k, tier, concurrency, cancel, limit, &features)
        });
        let e = Engine::with_policy(cache, Some(compiler), policy).map_err(|e| ShimError::Internal(e.to_string()))?;
        Ok(self.inner.engine.get_or_init(|| e).clone())
    }

    /// The handler's policy file: the one this Create's runtime options
    /// name, which must be the shim's (the first Create's), or the shim's
    /// when they name none.
    pub(crate) fn handler_policy(&self, options: Option<&Any>) -> Result<Option<std::path::PathBuf>, ShimError> {
        let named = config::policy_path(options)?;
        let shim = self.inner.handler_policy.get_or_init(|| named.clone());
        match named {
            Some(p) if shim.as_ref() != Some(&p) => Err(ShimError::FailedPrecondition(format!(
                "this container's runtime options name the policy {}, and this shim serves its pod under {}; a pod's \
                 containers share one runtime handler",
                p.display(),
                shim.as_ref().map_or("none".to_string(), |s| s.display().to_string())
            ))),
            _ => Ok(shim.clone()),
        }
    }

    /// Memory a container holds beyond its live instances' memories and
    /// tables: the resident pages of its program's image, and its share of
    /// the slots the pooling allocator keeps warm (split evenly among the
    /// shim's Wasm containers, whose instances made them).
    fn held_memory(&self, c: &Container) -> u64 {
        let Workload::Wasm { program, .. } = &c.workload else { return 0 };
        let image = program.resident_image_bytes();
        let wasm = {
            let map = self.inner.containers.lock().unwrap_or_else(|p| p.into_inner());
            map.values().filter(|c| matches!(c.workload, Workload::Wasm { .. })).count().max(1) as u64
        };
        let warm = self.inner.engine.get().map_or(0, |e| e.warm_pool_bytes());
        image + warm / wasm
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    pub(crate) async fn do_kill(&self, req: api::KillRequest) -> Result<(), ShimError> {
        let c = self.get(&req.id)?;
        let sig = req.signal;
        if !req.exec_id.is_empty() {
            let e = self.get_exec(&c, &req.exec_id)?;
            if sig == 0 || stop_signal(sig) {
                return match e.life.state() {
                    State::Stopped { .. } => Err(ShimError::NotFound(format!("{}: process already finished", e.id))),
                    _ if sig == 0 => Ok(()),
                    _ => Err(ShimError::Unimplemented(format!("signal {sig} would stop the process"))),
                };
            }
            let (events, pid) = (&self.inner.events, self.inner.pid);
            e.life.kill(&e.id, sig, ignored_signal(sig), now(), |status, at| {
                events.exec_exit(&c.id, &e.id, pid, status, at.clone())
            })?;
            return Ok(());
        }
        if sig == 0 {
            return match c.life.state() {
                State::Stopped { .. } => Err(ShimError::NotFound(format!("{}: process already finished", c.id))),
                _ => Ok(()),
            };
        }
        if stop_signal(sig) {
            return Err(ShimError::Unimplemented(format!(
                "signal {sig} would stop the process; Wasm containers cannot be paused"
            )));
        }
        let (events, pid) = (&self.inner.events, self.inner.pid);
        let killed = c
            .life
            .kill(&c.id, sig, ignored_signal(sig), now(), |status, at| events.exit(&c.id, pid, status, at.clone()))?;
        if let Killed::StoppedUnstarted(status) = killed {
            log::info!("exit id={} status={status} (killed before start)", c.id);
            self.kill_execs(&c);
        }
        Ok(())
    }

    pub(crate) async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&c, &req.exec_id).await;
        }
        let (status, at) = c.life.begin_delete(&c.id, now())?;
        c.release(self.inner.kernel.clone()).await;
        self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.id);
        self.inner.cgroup.leave(&c.id).await;
        self.inner.events.delete(&c.id, self.inner.pid, status, at.clone());
        log::info!("delete id={} status={status}", c.id);
        Ok(api::DeleteResponse {
            pid: self.inner.pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    pub(crate) async fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, ShimError> {
        let c = self.get(&req.id)?;
        let (status, at) = if req.exec_id.is_empty() {
            c.life.wait().await
        } else {
            self.get_exec(&c, &req.exec_id)?.life.wait().await
        };
        Ok(api::WaitResponse { exit_status: status, exited_at: Some(at).into(), ..Default::default() })
    }

    pub(crate) fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse, ShimError> {
        let c = self.get(&req.id)?;
        let exec = if req.exec_id.is_empty() { None } else { Some(self.get_exec(&c, &req.exec_id)?) };
        let (stdin, stdout, stderr) = match &exec {
            Some(e) => (e.stdin.clone(), e.stdout.clone(), e.stderr.clone()),
            None => (c.stdin.clone(), c.stdout.clone(), c.stderr.clone()),
        };
        let mut resp = api::StateResponse {
            id: exec.as_ref().map_or(c.id.clone(), |e| e.id.clone()),
            bundle: c.bundle.display().to_string(),
            pid: self.inner.pid,
            stdin,
            stdout,
            stderr,
            terminal: false,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        let state = match &exec {
            Some(e) => e.life.state(),
            None => c.life.state(),
        };
        match state {
            // Start has not returned yet: not running from the client's view.
            State::Created | State::Starting => resp.status = Status::CREATED.into(),
            State::Running => resp.status = Status::RUNNING.into(),
            State::Stopped { status, at } => {
                resp.status = Status::STOPPED.into();
                resp.exit_status = status;
                resp.exited_at = Some(at).into();
            }
        }
        Ok(resp)
    }

    pub(crate) fn do_update(&self, req: api::UpdateTaskRequest) -> Result<(), ShimError> {
        let c = self.get(&req.id)?;
        let Some(any) = req.resources.as_ref() else {
            return Ok(());
        };
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources are not a LinuxResources JSON object: {e}")))?;
        // Create's rule (a bad period is refused, not replaced), applied to
        // the sections the request carries.
        let lim = wasmcell_grants::Limits::from_resources(&res)?;
        if res.memory().as_ref().and_then(|m| m.limit()).is_some() {
            c.stats.set_memory_cap(lim.memory_bytes);
        }
        if res.cpu().is_some() {
            c.stats.set_cpu_quota(lim.cpu);
            if lim.cpu_shares.is_some() {
                c.stats.set_cpu_shares(lim.cpu_shares);
            }
        }
        log::info!("update id={}", c.id);
        Ok(())
    }
}

fn unimplemented<T>(what: &str) -> TtrpcResult<T> {
    Err(ShimError::Unimplemented(format!("{what} is not supported for Wasm containers")).into())
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create id={} bundle={}", req.id, req.bundle);
        self.do_create(req).await.map_err(|e| {
            log::warn!("create failed: {e}");
            e.into()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        log::info!("start id={}", req.id);
        Ok(self.do_start(req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!("kill id={} signal={}", req.id, req.signal);
        self.do_kill(req).await?;
        Ok(api::Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete id={}", req.id);
        Ok(self.do_delete(req).await?)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        log::debug!("wait id={}", req.id);
        Ok(self.do_wait(req).await?)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        Ok(self.do_state(req)?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let c = self.get(&req.id)?;
        let mut resp = api::PidsResponse::new();
        if c.life.state() == State::Running {
            resp.processes.push(api::ProcessInfo { pid: self.inner.pid, ..Default::default() });
        }
        // Execs run in the same process: listed with the shim's pid each.
        let execs = c
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.life.state() == State::Running)
            .count();
        for _ in 0..execs {
            resp.processes.push(api::ProcessInfo { pid: self.inner.pid, ..Default::default() });
        }
        Ok(resp)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let c = self.get(&req.id)?;
        let live = c.life.state() == State::Running;
        let server = c.workload.is_server();
        if server {
            use std::sync::atomic::Ordering::Relaxed;
            log::debug!(
                "stats id={} http requests={} in_flight={} errors={} memory={}",
                c.id,
                c.stats.requests_total.load(Relaxed),
                c.stats.requests_in_flight.load(Relaxed),
                c.stats.request_errors.load(Relaxed),
                c.stats.memory_bytes.load(Relaxed)
            );
        }
        let held = self.held_memory(&c);
        let any =
            crate::metrics::to_any(&c.stats, c.stats.memory_cap(), live, server, held).map_err(ShimError::Internal)?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.do_update(req)?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        log::info!("close_io id={} stdin={}", req.id, req.stdin);
        let c = self.get(&req.id)?;
        if req.exec_id.is_empty() {
            c.stdin_copy.close();
        } else {
            self.get_exec(&c, &req.exec_id)?.stdin_copy.close();
        }
        Ok(api::Empty::new())
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let _ = req;
        Ok(api::ConnectResponse {
            shim_pid: self.inner.pid,
            task_pid: self.inner.pid,
            version: format!("wasmcell {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let empty = self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if empty {
            log::info!("shutdown: no containers left, exiting");
            self.inner.events.flush(std::time::Duration::from_secs(2)).await;
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        unimplemented("pause")
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        unimplemented("resume")
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        unimplemented("checkpoint")
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        log::info!("exec id={} exec_id={}", req.id, req.exec_id);
        self.do_exec(req).await?;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, _req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        unimplemented("resize pty (there is no terminal)")
    }
}

/// The verbs through the service itself, with a fake kernel: no root, no
/// containerd. The guests are the real fixture components.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec;
    use crate::sys::Membership;
    use std::path::Path;
    use wasmcell_engine::GuestConfig;

    #[derive(Default)]
    struct FakeKernel {
        calls: Mutex<Vec<String>>,
    }

    impl FakeKernel {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn note(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
    }

    struct FakeCgroup(Arc<FakeKernel>, String);

    impl Membership for FakeCgroup {
        fn path(&self) -> &str {
            &self.1
        }
        fn leave(self: Box<Self>) {
            self.0.note(format!("leave {}", self.1));
        }
    }

    struct Shared(Arc<FakeKernel>);

    impl Kernel for Shared {
        fn mount_rootfs(
            &self,
            _: &[containerd_shim_protos::types::mount::Mount],
            t: &Path,
            ro: bool,
        ) -> Result<(), ShimError> {
            self.0.note(format!("mount {} ro={ro}", t.display()));
            Ok(())
        }
        fn grant_views(&self, config: &mut GuestConfig, _: &Path, _: Option<&Path>, _: &Path) -> Result<(), ShimError> {
            self.0.note(format!("views {}", config.preopens.len()));
            Ok(())
        }
        fn unmount(&self, bundle: &Path, rootfs: Option<&Path>) {
            self.0.note(format!("unmount {} {:?}", bundle.file_name().unwrap().to_string_lossy(), rootfs.is_some()));
        }
        fn join_cgroup(&self, path: &str, _: &wasmcell_grants::Limits) -> Result<Box<dyn Membership>, String> {
            self.0.note(format!("join {path}"));
            Ok(Box::new(FakeCgroup(self.0.clone(), path.to_string())))
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/wasm").join(name)
    }

    /// A bundle whose rootfs holds `wasm` and whose spec runs it.
    fn bundle(dir: &Path, id: &str, wasm: &str) -> String {
        let b = dir.join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::copy(fixture(wasm), b.join("rootfs").join(wasm)).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": [format!("/{wasm}")], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"cgroupsPath": format!("/test/{id}"), "namespaces": [{"type": "network"}]}
        });
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        b.display().to_string()
    }

    fn service(k: &Arc<FakeKernel>) -> TaskService {
        let svc = TaskService::with_kernel(
            "/nonexistent/ttrpc.sock".into(),
            "test".into(),
            "/nonexistent/grpc.sock".into(),
            Arc::new(ExitSignal::default()),
            Arc::new(Shared(k.clone())),
        );
        let _ = svc.inner.engine.set(Engine::new().unwrap());
        svc
    }

    async fn create(svc: &TaskService, id: &str, bundle: String) -> Result<api::CreateTaskResponse, ShimError> {
        svc.do_create(api::CreateTaskRequest { id: id.into(), bundle, ..Default::default() }).await
    }

    fn kill(id: &str, sig: i32) -> api::KillRequest {
        api::KillRequest { id: id.into(), signal: sig as u32, ..Default::default() }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn create_start_kill_delete_without_root() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        rt().block_on(async {
            let svc = service(&k);
            create(&svc, "spin", bundle(d.path(), "spin", "spin.wasm")).await.unwrap();
            assert!(matches!(
                create(&svc, "spin", bundle(d.path(), "spin", "spin.wasm")).await,
                Err(ShimError::AlreadyExists(_))
            ));
            svc.do_start(api::StartRequest { id: "spin".into(), ..Default::default() }).await.unwrap();
            let st = svc.do_state(api::StateRequest { id: "spin".into(), ..Default::default() }).unwrap();
            assert_eq!(st.status, Status::RUNNING.into());
            let refused = svc.do_delete(api::DeleteRequest { id: "spin".into(), ..Default::default() }).await;
            assert!(matches!(refused, Err(ShimError::FailedPrecondition(_))), "{refused:?}");
            svc.do_kill(kill("spin", libc::SIGKILL)).await.unwrap();
            let w = svc.do_wait(api::WaitRequest { id: "spin".into(), ..Default::default() }).await.unwrap();
            assert_eq!(w.exit_status, 137);
            let del = svc.do_delete(api::DeleteRequest { id: "spin".into(), ..Default::default() }).await.unwrap();
            assert_eq!(del.exit_status, 137);
            assert!(matches!(svc.get("spin"), Err(ShimError::NotFound(_))));
        });
        // The cgroup is left once: as the guest exits (no other guest runs),
        // or by Delete if that comes first; the views are unmounted once.
        let calls = k.calls();
        assert_eq!(calls[..2], ["join /test/spin", "views 1"]);
        let mut rest = calls[2..].to_vec();
        rest.sort();
        assert_eq!(rest, ["leave /test/spin", "unmount spin false"]);
    }

    /// Kill before Start stops the container (128 + signal), Start then
    /// fails, and Delete reports the kill's status.
    #[test]
    fn kill_before_start() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        rt().block_on(async {
            let svc = service(&k);
            create(&svc, "c", bundle(d.path(), "c", "hello.wasm")).await.unwrap();
            svc.do_kill(kill("c", libc::SIGTERM)).await.unwrap();
            let e = svc.do_start(api::StartRequest { id: "c".into(), ..Default::default() }).await;
            assert!(matches!(e, Err(ShimError::FailedPrecondition(_))), "{e:?}");
            let e = svc.do_kill(kill("c", libc::SIGKILL)).await;
            assert!(matches!(e, Err(ShimError::NotFound(_))), "{e:?}");
            let del = svc.do_delete(api::DeleteRequest { id: "c".into(), ..Default::default() }).await.unwrap();
            assert_eq!(del.exit_status, 128 + libc::SIGTERM as u32);
        });
    }

    /// A guest that runs to its end: exit 0 reaches Wait and Delete.
    #[test]
    fn exit_reaches_wait_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        rt().block_on(async {
            let svc = service(&k);
            create(&svc, "h", bundle(d.path(), "h", "hello.wasm")).await.unwrap();
            svc.do_start(api::StartRequest { id: "h".into(), ..Default::default() }).await.unwrap();
            let w = svc.do_wait(api::WaitRequest { id: "h".into(), ..Default::default() }).await.unwrap();
            assert_eq!(w.exit_status, 0);
            let e = svc.do_kill(kill("h", libc::SIGKILL)).await;
            assert!(matches!(e, Err(ShimError::NotFound(_))), "a finished guest cannot be signalled: {e:?}");
            let del = svc.do_delete(api::DeleteRequest { id: "h".into(), ..Default::default() }).await.unwrap();
            assert_eq!(del.exit_status, 0);
            let again = svc.do_delete(api::DeleteRequest { id: "h".into(), ..Default::default() }).await;
            assert!(matches!(again, Err(ShimError::NotFound(_))));
        });
    }

    /// A bad spec is refused at Create with nothing left: no cgroup kept.
    #[test]
    fn refused_create_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        rt().block_on(async {
            let svc = service(&k);
            let b = bundle(d.path(), "bad", "hello.wasm");
            std::fs::write(Path::new(&b).join("rootfs/hello.wasm"), b"not wasm").unwrap();
            let e = create(&svc, "bad", b).await;
            assert!(matches!(e, Err(ShimError::InvalidArgument(_))), "{e:?}");
            assert!(svc.get("bad").is_err());
        });
        assert_eq!(k.calls(), vec!["join /test/bad", "unmount bad false", "leave /test/bad"]);
    }

    fn exec_req(id: &str, exec_id: &str, args: &[&str], terminal: bool) -> api::ExecProcessRequest {
        let spec = serde_json::json!({"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}, "terminal": terminal});
        api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            terminal,
            spec: Some(Any { value: serde_json::to_vec(&spec).unwrap(), ..Default::default() }).into(),
            ..Default::default()
        }
    }

    /// Exec through the service: a Wasm program of the rootfs runs and its
    /// code reaches Wait; a non-Wasm command exits 126; a tty is refused; a
    /// running exec ends when its container is killed.
    #[test]
    fn exec_runs_beside_the_container() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        let b = bundle(d.path(), "c", "spin.wasm");
        std::fs::copy(fixture("exit-code-p1.wasm"), Path::new(&b).join("rootfs/exit.wasm")).unwrap();
        rt().block_on(async {
            let svc = service(&k);
            create(&svc, "c", b).await.unwrap();
            svc.do_start(api::StartRequest { id: "c".into(), ..Default::default() }).await.unwrap();
            let tty = svc.do_exec(exec_req("c", "t", &["/exit.wasm"], true)).await;
            assert!(matches!(tty, Err(ShimError::InvalidArgument(ref m)) if m.contains("tty")), "{tty:?}");
            let wait =
                |e: &str| svc.do_wait(api::WaitRequest { id: "c".into(), exec_id: e.into(), ..Default::default() });
            for (eid, args, want) in
                [("ok", vec!["/exit.wasm", "5"], 5), ("sh", vec!["/bin/sh", "-c", "true"], exec::CANNOT_EXECUTE)]
            {
                svc.do_exec(exec_req("c", eid, &args, false)).await.unwrap();
                svc.do_start(api::StartRequest { id: "c".into(), exec_id: eid.into(), ..Default::default() })
                    .await
                    .unwrap();
                assert_eq!(wait(eid).await.unwrap().exit_status, want, "{eid}");
                let del = api::DeleteRequest { id: "c".into(), exec_id: eid.into(), ..Default::default() };
                assert_eq!(svc.do_delete(del).await.unwrap().exit_status, want);
            }
            // A running exec ends with its container.
            svc.do_exec(exec_req("c", "long", &["/spin.wasm"], false)).await.unwrap();
            svc.do_start(api::StartRequest { id: "c".into(), exec_id: "long".into(), ..Default::default() })
                .await
                .unwrap();
            svc.do_kill(kill("c", libc::SIGKILL)).await.unwrap();
            assert_eq!(wait("long").await.unwrap().exit_status, 137);
            svc.do_delete(api::DeleteRequest { id: "c".into(), ..Default::default() }).await.unwrap();
        });
    }

    fn update(id: &str, resources: serde_json::Value) -> api::UpdateTaskRequest {
        api::UpdateTaskRequest {
            id: id.into(),
            resources: Some(Any { value: serde_json::to_vec(&resources).unwrap(), ..Default::default() }).into(),
            ..Default::default()
        }
    }

    /// Update follows Create's rules: a CPU period Create refuses is refused
    /// (it was silently replaced by 100000), and a memory limit cleared
    /// before Start stays cleared once the guest runs (Start used to put the
    /// spec's limit back).
    #[test]
    fn update_follows_creates_rules_and_holds_across_start() {
        let d = tempfile::tempdir().unwrap();
        let k = Arc::new(FakeKernel::default());
        let b = bundle(d.path(), "u", "spin.wasm");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(&b).join("config.json")).unwrap()).unwrap();
        spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}});
        std::fs::write(Path::new(&b).join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        rt().block_on(async {
            let svc = service(&k);
            create(&svc, "u", b).await.unwrap();
            let c = svc.get("u").unwrap();
            assert_eq!(c.stats.memory_cap(), Some(64 << 20));
            let bad = svc.do_update(update("u", serde_json::json!({"cpu": {"quota": 1000, "period": 10}})));
            assert!(matches!(bad, Err(ShimError::InvalidArgument(ref m)) if m.contains("period")), "{bad:?}");
            assert_eq!(c.stats.cpu_quota(), None, "a refused update changes nothing");
            svc.do_update(update("u", serde_json::json!({"memory": {"limit": -1}}))).unwrap();
            assert_eq!(c.stats.memory_cap(), None);
            svc.do_start(api::StartRequest { id: "u".into(), ..Default::default() }).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(c.stats.memory_cap(), None, "Start must not restore the spec's limit");
            svc.do_kill(kill("u", libc::SIGKILL)).await.unwrap();
            svc.do_wait(api::WaitRequest { id: "u".into(), ..Default::default() }).await.unwrap();
            svc.do_delete(api::DeleteRequest { id: "u".into(), ..Default::default() }).await.unwrap();
        });
    }
}
