//! The task service: containerd's shim v2 task API over ttrpc.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{mpsc, watch};
use wasmcell_engine::{Engine, Exit, GuestConfig, GuestStats, Program, SocketScope};
use wasmcell_grants::{Grants, Network, Role};

use crate::container::{private_dir, Container, State, Workload};
use wasmcell_oci::EntrypointError;
use crate::events::Events;
use crate::sys::netns::{self, Joined};
use crate::{rootfs, stdio, ShimError};

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    engine: OnceLock<Engine>,
    events: Events,
    exit: Arc<ExitSignal>,
    pid: u32,
    /// containerd's gRPC address and this shim's namespace: where images'
    /// Wasm layers are read from.
    grpc_address: String,
    namespace: String,
    /// The cgroup this shim joined, and the container it belongs to.
    cgroup: Mutex<Option<(String, crate::sys::cgroup::Joined)>>,
    /// A leave of that cgroup under way since its container exited, which
    /// the container's Delete waits for.
    leaving: tokio::sync::Mutex<Option<(String, tokio::task::JoinHandle<()>)>>,
}

/// Guests run on a runtime of their own, so a guest that computes for its
/// whole epoch slice never delays a task RPC.
fn guest_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()).min(4))
            .thread_name("wasm-guest")
            .enable_all()
            .build()
            .expect("guest runtime")
    })
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The compile cache: `<Root>/cache` when the runtime options (containerd's
/// `runtimes.wasmtime.options`, type `containerd.runc.v1.Options`) set
/// `Root`; otherwise `WASMCELL_CACHE_DIR` / the default directory.
fn cache_config(
    options: Option<&containerd_shim_protos::protobuf::well_known_types::any::Any>,
) -> Option<wasmcell_engine::cache::CacheConfig> {
    use containerd_shim_protos::protobuf::Message;
    let from_env = wasmcell_engine::cache::CacheConfig::from_env();
    let root = options
        .filter(|a| a.type_url.ends_with("containerd.runc.v1.Options"))
        .and_then(|a| containerd_shim_protos::shim::oci::Options::parse_from_bytes(&a.value).ok())
        .map(|o| o.root)
        .filter(|r| !r.is_empty());
    match root {
        Some(r) => Some(wasmcell_engine::cache::CacheConfig {
            dir: std::path::Path::new(&r).join("cache"),
            ..from_env.unwrap_or_default()
        }),
        None => from_env,
    }
}

/// Where an HTTP component listens: `WASMCELL_HTTP_ADDR`, or the name other
/// shims use, `WASMTIME_HTTP_PROXY_SOCKET_ADDR`, from the container's env.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

fn http_addr(grants: &Grants) -> String {
    let env = &grants.program.env;
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    get("WASMCELL_HTTP_ADDR")
        .or_else(|| get("WASMTIME_HTTP_PROXY_SOCKET_ADDR"))
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string())
}

/// Binds an HTTP component's socket at Create, so a bad address or a port
/// in use fails the container before it starts. The shim process is in the
/// container's network namespace, so this is the container's port.
fn listen(grants: &Grants, scope: SocketScope) -> Result<std::net::TcpListener, ShimError> {
    let addr = http_addr(grants);
    if scope == SocketScope::Denied {
        return Err(ShimError::InvalidArgument(format!(
            "HTTP component needs the network its spec grants, and the shim could not enter it (see the shim log); cannot listen on {addr}"
        )));
    }
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| ShimError::InvalidArgument(format!("WASMCELL_HTTP_ADDR {addr:?} is not an IP:port address: {e}")))?;
    std::net::TcpListener::bind(sa).map_err(|e| ShimError::InvalidArgument(format!("HTTP component cannot listen on {addr}: {e}")))
}

/// An image that is not Wasm gets told where it belongs.
fn not_wasm_hint(e: wasmcell_oci::EntrypointError, role: &Role) -> ShimError {
    if !matches!(e, wasmcell_oci::EntrypointError::NotWasm { .. }) {
        return e.into();
    }
    let hint = match role {
        Role::Standalone => "this runtime (io.containerd.wasmtime.v1) runs only WebAssembly; run native images with the default runc runtime",
        _ => "this pod's RuntimeClass runs only WebAssembly; run native (Linux) containers in a pod whose RuntimeClass uses runc",
    };
    ShimError::InvalidArgument(format!("{e}: {hint}"))
}

/// Signals whose default action is not to terminate the process.
fn ignored_signal(sig: u32) -> bool {
    matches!(sig as i32, libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH)
}

fn stop_signal(sig: u32) -> bool {
    matches!(sig as i32, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// Sockets for a guest: only when the shim really sits in the network the
/// container's spec asks for; otherwise none at all.
fn socket_scope(network: &Network, joined: &Joined) -> SocketScope {
    match (network, joined) {
        (Network::Host, Joined::Host) => SocketScope::Namespace { dns: true },
        (Network::Private, Joined::Private) => SocketScope::Namespace { dns: false },
        (Network::Namespace(p), Joined::Path(q)) if p == q || netns::is_current(p) => SocketScope::Namespace { dns: true },
        _ => {
            log::warn!("guest network {network:?} differs from the shim's ({joined:?}): no sockets granted");
            SocketScope::Denied
        }
    }
}

impl TaskService {
    pub(crate) fn new(ttrpc_address: String, namespace: String, grpc_address: String, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                containers: Mutex::new(HashMap::new()),
                engine: OnceLock::new(),
                events: Events::new(ttrpc_address, namespace.clone()),
                grpc_address,
                namespace,
                exit,
                pid: std::process::id(),
                cgroup: Mutex::new(None),
                leaving: tokio::sync::Mutex::new(None),
            }),
        }
    }

    fn engine(&self) -> Result<Engine, ShimError> {
        self.engine_with(None)
    }

    /// The shim's engine, created at the first Create with the compile cache
    /// that Create's runtime options (or the environment) configure.
    fn engine_with(&self, options: Option<&containerd_shim_protos::protobuf::well_known_types::any::Any>) -> Result<Engine, ShimError> {
        if let Some(e) = self.inner.engine.get() {
            return Ok(e.clone());
        }
        let cache = cache_config(options);
        log::info!("compile cache: {}", cache.as_ref().map_or("off".to_string(), |c| c.dir.display().to_string()));
        let compiler: wasmcell_engine::Compiler = std::sync::Arc::new(crate::compiler::out_of_process);
        let e = Engine::with_options(cache, Some(compiler)).map_err(|e| ShimError::Internal(e.to_string()))?;
        Ok(self.inner.engine.get_or_init(|| e).clone())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    fn no_exec(exec_id: &str) -> Result<(), ShimError> {
        if exec_id.is_empty() {
            Ok(())
        } else {
            Err(ShimError::NotFound(format!("exec {exec_id} (Wasm containers have no exec processes)")))
        }
    }

    /// Everything Create does after the rootfs is mounted; the caller undoes
    /// the mount if this fails.
    async fn prepare(
        &self,
        req: &api::CreateTaskRequest,
        grants: &Grants,
        mounted_rootfs: Option<PathBuf>,
    ) -> Result<Container, ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        // The fifos first, as runc's shim does: the client (ctr) is waiting
        // to open its ends, and a Create that compiles for a while must not
        // leave it waiting for a writer that only appears later.
        let (io, stdin_copy, guest_io, drained) = stdio::open(&req.stdin, &req.stdout, &req.stderr).await?;
        let prepared = if let Role::Sandbox { .. } = grants.role {
            Ok((Workload::Pause, None))
        } else {
            self.prepare_wasm(req, grants, &bundle, mounted_rootfs.as_deref()).await
        };
        let (workload, listener) = match prepared {
            Ok(p) => p,
            Err(e) => {
                stdin_copy.close();
                io.abort().await;
                return Err(e);
            }
        };
        let stats = Arc::new(GuestStats::for_limits(&grants.limits));
        Ok(Container {
            id: req.id.clone(),
            bundle,
            mounted_rootfs,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            workload,
            io,
            stdin_copy,
            guest_io: Mutex::new(Some(guest_io)),
            drained: Mutex::new(Some(drained)),
            stats,
            state: Mutex::new(State::Created),
            exited: watch::channel(None).0,
            kill: Mutex::new(None),
            listener: Mutex::new(listener),
        })
    }

    /// The Wasm layer of container `id`'s image, from containerd's content
    /// store; `missing` (the rootfs lookup's error) when the image has none.
    async fn wasm_from_layers(
        &self,
        id: &str,
        entrypoint: &str,
        missing: EntrypointError,
    ) -> Result<(Vec<u8>, wasmcell_oci::WasmKind), ShimError> {
        let found = match crate::content::Client::connect(&self.inner.grpc_address, &self.inner.namespace).await {
            Ok(client) => client.wasm_layer(id, entrypoint).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(Some((bytes, digest))) => {
                log::info!("create id={id}: running Wasm layer {digest}");
                let kind = wasmcell_oci::classify(&bytes)
                    .map_err(|reason| EntrypointError::NotWasm { path: format!("layer {digest}"), reason })?;
                Ok((bytes, kind))
            }
            Ok(None) => Err(missing.into()),
            Err(why) => {
                log::warn!("create id={id}: image layers: {why}");
                Err(ShimError::InvalidArgument(format!("{missing}; reading the image's Wasm layers failed: {why}")))
            }
        }
    }

    /// Reads, classifies, compiles (or loads from the cache) and links the
    /// container's Wasm, resolves its grants, and binds its HTTP socket.
    async fn prepare_wasm(
        &self,
        req: &api::CreateTaskRequest,
        grants: &Grants,
        bundle: &Path,
        mounted_rootfs: Option<&Path>,
    ) -> Result<(Workload, Option<std::net::TcpListener>), ShimError> {
        let rootfs = grants.root.host().expect("root is a host dir").to_path_buf();
        let entry = grants.program.entrypoint.clone();
        let opened = tokio::task::spawn_blocking(move || wasmcell_oci::open_entrypoint(&rootfs, &entry))
            .await
            .map_err(|e| ShimError::Internal(e.to_string()))?;
        let engine = self.engine_with(req.options.as_ref())?;
        let prepared = match opened {
            Ok(file) => {
                // Its stats of the layer directories block too.
                let mounts = req.rootfs.clone();
                tokio::task::spawn_blocking(move || {
                    let id = file.id(rootfs::layers_dev(&mounts));
                    engine.prepare_file(&file, id)
                })
                .await
            }
            // Not in the rootfs: the image may carry its Wasm as layers.
            Err(e @ (EntrypointError::NotFound(_) | EntrypointError::Rootfs { .. })) => {
                let (bytes, kind) = self.wasm_from_layers(&req.id, &grants.program.entrypoint, e).await?;
                tokio::task::spawn_blocking(move || engine.prepare(&bytes, kind)).await
            }
            Err(e) => return Err(not_wasm_hint(e, &grants.role)),
        };
        let program = prepared.map_err(|e| ShimError::Internal(e.to_string()))??;
        let scope = socket_scope(&grants.network, &netns::joined());
        let mut config = GuestConfig::from_grants(grants, &private_dir(bundle), scope)?;
        let (b, mounted) = (bundle.to_path_buf(), mounted_rootfs.map(Path::to_path_buf));
        let config = tokio::task::spawn_blocking(move || {
            rootfs::harden_preopens(&mut config, &b, mounted.as_deref(), &private_dir(&b)).map(|()| config)
        })
        .await
        .map_err(|e| ShimError::Internal(e.to_string()))??;
        let listener = if program.is_server() {
            Some(listen(grants, scope)?)
        } else {
            None
        };
        Ok((Workload::Wasm { program, config }, listener))
    }

    async fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, ShimError> {
        if req.id.is_empty() {
            return Err(ShimError::InvalidArgument("container id is empty".into()));
        }
        if self.get(&req.id).is_ok() {
            return Err(ShimError::AlreadyExists(req.id.clone()));
        }
        if req.terminal {
            return Err(ShimError::InvalidArgument(
                "a terminal (tty) is not supported for Wasm containers: run without -t/--tty".into(),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint is not supported for Wasm containers".into()));
        }
        let bundle = PathBuf::from(&req.bundle);
        let b = bundle.clone();
        let (spec, grants) = tokio::task::spawn_blocking(move || wasmcell_grants::grants_for_bundle(&b))
            .await
            .map_err(|e| ShimError::Internal(e.to_string()))??;
        self.join_cgroup(&req.id, &spec, &grants).await;
        // A sandbox reads nothing from its image: its snapshot stays unmounted.
        let sandbox = matches!(grants.role, Role::Sandbox { .. });
        let mounted = if req.rootfs.is_empty() || sandbox {
            None
        } else {
            let target = bundle.join("rootfs");
            rootfs::mount(&req.rootfs, &target, grants.root.readonly).await?;
            Some(target)
        };
        let container = match self.prepare(&req, &grants, mounted.clone()).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if let Some(m) = &mounted {
                    rootfs::unmount(m);
                }
                rootfs::remove_views(&bundle);
                let _ = std::fs::remove_dir_all(private_dir(&bundle));
                self.leave_cgroup(&req.id).await;
                return Err(e);
            }
        };
        let inserted = {
            let mut map = self.inner.containers.lock().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&req.id) {
                false
            } else {
                map.insert(req.id.clone(), container.clone());
                true
            }
        };
        if !inserted {
            container.release().await;
            return Err(ShimError::AlreadyExists(req.id.clone()));
        }
        self.inner
            .events
            .create(&req.id, &req.bundle, req.rootfs.clone(), &req.stdin, &req.stdout, &req.stderr, self.inner.pid)
            .await;
        // Loading the guest freed far more heap than the guest keeps.
        tokio::task::spawn_blocking(crate::sys::process::trim_heap);
        Ok(api::CreateTaskResponse {
            pid: self.inner.pid,
            ..Default::default()
        })
    }

    /// Joins the container's cgroup if this shim has not joined one yet.
    /// Never fails the container: a host that cannot do it (no privilege, no
    /// controller) only loses the outer bound, which is logged.
    async fn join_cgroup(&self, id: &str, spec: &oci_spec::runtime::Spec, grants: &Grants) {
        let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
            return;
        };
        if self.inner.cgroup.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let path = path.display().to_string();
        // A pod's shim joins the sandbox's cgroup and serves every container
        // of the pod from it. The sandbox's own limits are a pause
        // process's (kubelet gives it cpu.shares 2): applied here they would
        // starve the whole pod. The pod-level parent cgroup kubelet made,
        // with the sum of the pod's requests and limits, is the bound.
        let limits = match grants.role {
            Role::Sandbox { .. } => wasmcell_grants::Limits::default(),
            _ => grants.limits.clone(),
        };
        match tokio::task::spawn_blocking(move || crate::sys::cgroup::join(&path, &limits)).await {
            Ok(Ok(joined)) => {
                log::info!("create id={id}: joined cgroup {}", joined.path);
                let mut slot = self.inner.cgroup.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some((id.to_string(), joined));
                }
            }
            Ok(Err(e)) => log::warn!("create id={id}: {e}; continuing without the outer cgroup bound"),
            Err(e) => log::warn!("create id={id}: cgroup: {e}"),
        }
    }

    /// The cgroup this shim joined, taken if container `id` owns it.
    fn take_cgroup(&self, id: &str) -> Option<crate::sys::cgroup::Joined> {
        let mut slot = self.inner.cgroup.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((owner, _)) if owner == id => slot.take().map(|(_, j)| j),
            _ => None,
        }
    }

    /// Leaves and removes the cgroup if container `id` owns it.
    async fn leave_cgroup(&self, id: &str) {
        // Held throughout, so that a leave started at exit is either seen
        // here and waited for, or not started at all.
        let mut leaving = self.inner.leaving.lock().await;
        if leaving.as_ref().is_some_and(|(owner, _)| owner == id) {
            if let Some((_, h)) = leaving.take() {
                let _ = h.await;
            }
            return;
        }
        if let Some(j) = self.take_cgroup(id) {
            let _ = tokio::task::spawn_blocking(move || j.leave()).await;
        }
    }

    /// Starts leaving the cgroup as soon as its container has exited, when
    /// no other guest of this shim still runs in it: moving a process
    /// between cgroups waits for an RCU grace period (10 ms and more), which
    /// then passes while the client reacts to the exit rather than inside
    /// its Delete.
    async fn leave_cgroup_early(&self, id: &str) {
        let others_run = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c.id != id && !matches!(c.state(), State::Stopped { .. }));
        if others_run {
            return;
        }
        let mut leaving = self.inner.leaving.lock().await;
        if let Some(j) = self.take_cgroup(id) {
            *leaving = Some((id.to_string(), tokio::task::spawn_blocking(move || j.leave())));
        }
    }

    /// Records an exit and tells containerd, once.
    async fn exited(&self, c: &Container, status: u32, oom: bool) {
        let at = now();
        if c.record_exit(status, at.clone()) {
            log::info!("exit id={} status={status}", c.id);
            if oom {
                self.inner.events.oom(&c.id).await;
            }
            self.inner.events.exit(&c.id, self.inner.pid, status, at).await;
        }
    }

    async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse, ShimError> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let engine = self.engine()?;
        let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<u32>();
        {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            if *st != State::Created {
                return Err(ShimError::FailedPrecondition(format!("container {} is not in the created state", c.id)));
            }
            *st = State::Running;
        }
        *c.kill.lock().unwrap_or_else(|p| p.into_inner()) = Some(kill_tx);
        let io = c.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        self.inner.events.start(&c.id, self.inner.pid).await;
        let svc = self.clone();
        let container = c.clone();
        let listener = c.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        guest_runtime().spawn(async move {
            let c = container;
            let (stop_tx, stop_rx) = watch::channel(false);
            let stats = c.stats.clone();
            // The guest's future lives in this block only: it is dropped at
            // the block's end, a killed guest's too, which closes the guest's
            // ends of its output pipes.
            let (status, oom) = {
                let run = async {
                    match (&c.workload, listener) {
                        (Workload::Wasm { program: Program::Http(pre), config }, Some(l)) => {
                            engine.serve(pre, config, io, stats, l, stop_rx).await
                        }
                        (Workload::Wasm { program, config }, _) => engine.run(program, config, io, stats).await,
                        // A sandbox runs until a signal ends it.
                        (Workload::Pause, _) => std::future::pending().await,
                    }
                };
                tokio::pin!(run);
                let server = c.workload.is_server();
                let pause = matches!(c.workload, Workload::Pause);
                loop {
                    tokio::select! {
                        r = &mut run => break match r {
                            Ok(exit) => (exit.status(), matches!(exit, Exit::OutOfMemory(_))),
                            Err(e) => {
                                log::error!("start id={}: {e}", c.id);
                                (126, false)
                            }
                        },
                        sig = kill_rx.recv() => match sig {
                            // A server stops gracefully on SIGTERM/SIGINT: no new
                            // connections, in-flight requests finish, exit 0.
                            Some(s) if server && (s as i32 == libc::SIGTERM || s as i32 == libc::SIGINT) => {
                                log::info!("id={}: stopping HTTP server gracefully", c.id);
                                let _ = stop_tx.send(true);
                            }
                            // A sandbox ends cleanly on SIGTERM/SIGINT, as pause does.
                            Some(s) if pause && (s as i32 == libc::SIGTERM || s as i32 == libc::SIGINT) => break (0, false),
                            Some(s) => break (128 + s, false),
                            None => break (128 + libc::SIGKILL as u32, false),
                        },
                    }
                }
            };
            let drained = c.drained.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(d) = drained {
                if !d.wait(stdio::DRAIN_WAIT).await {
                    log::warn!("exit id={}: output not taken within {:?}; the rest may be lost", c.id, stdio::DRAIN_WAIT);
                }
            }
            svc.exited(&c, status, oom).await;
            svc.leave_cgroup_early(&c.id).await;
        });
        // Once the guest runs, the shim mostly waits: give back what starting
        // it cost (freed heap, and the mapped code that ran once).
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let _ = tokio::task::spawn_blocking(|| {
                crate::sys::process::trim_heap();
                crate::sys::process::release_code_pages();
            })
            .await;
        });
        Ok(api::StartResponse {
            pid: self.inner.pid,
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: api::KillRequest) -> Result<(), ShimError> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let sig = req.signal;
        if sig == 0 {
            return match c.state() {
                State::Stopped { .. } => Err(ShimError::NotFound(format!("{}: process already finished", c.id))),
                _ => Ok(()),
            };
        }
        if stop_signal(sig) {
            return Err(ShimError::Unimplemented(format!(
                "signal {sig} would stop the process; Wasm containers cannot be paused"
            )));
        }
        match c.state() {
            State::Stopped { .. } => Err(ShimError::NotFound(format!("{}: process already finished", c.id))),
            _ if ignored_signal(sig) => Ok(()),
            State::Created => {
                self.exited(&c, 128 + sig, false).await;
                Ok(())
            }
            State::Running => {
                if let Some(tx) = c.kill.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    let _ = tx.send(sig);
                }
                Ok(())
            }
        }
    }

    async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let (status, at) = match c.state() {
            State::Running => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is running; kill it before deleting it",
                    c.id
                )))
            }
            State::Created => {
                let at = now();
                c.record_exit(137, at.clone());
                (137, at)
            }
            State::Stopped { status, at } => (status, at),
        };
        c.release().await;
        self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.id);
        self.leave_cgroup(&c.id).await;
        self.inner.events.delete(&c.id, self.inner.pid, status, at.clone()).await;
        log::info!("delete id={} status={status}", c.id);
        Ok(api::DeleteResponse {
            pid: self.inner.pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, ShimError> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let mut rx = c.exited.subscribe();
        let (status, at) = loop {
            if let Some(v) = rx.borrow_and_update().clone() {
                break v;
            }
            if rx.changed().await.is_err() {
                return Err(ShimError::Internal("container went away while waiting".into()));
            }
        };
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse, ShimError> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let mut resp = api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: self.inner.pid,
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            terminal: false,
            ..Default::default()
        };
        match c.state() {
            State::Created => resp.status = Status::CREATED.into(),
            State::Running => resp.status = Status::RUNNING.into(),
            State::Stopped { status, at } => {
                resp.status = Status::STOPPED.into();
                resp.exit_status = status;
                resp.exited_at = Some(at).into();
            }
        }
        Ok(resp)
    }

    fn do_update(&self, req: api::UpdateTaskRequest) -> Result<(), ShimError> {
        let c = self.get(&req.id)?;
        let Some(any) = req.resources.as_ref() else {
            return Ok(());
        };
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources are not a LinuxResources JSON object: {e}")))?;
        // Create's rule (a bad period is refused, not replaced), applied to
        // the sections the request carries.
        let lim = wasmcell_grants::Limits::from_resources(&res).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
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
        if c.state() == State::Running {
            resp.processes.push(api::ProcessInfo {
                pid: self.inner.pid,
                ..Default::default()
            });
        }
        Ok(resp)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let c = self.get(&req.id)?;
        let live = c.state() == State::Running;
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
        let any = crate::metrics::to_any(&c.stats, c.stats.memory_cap(), live, server).map_err(ShimError::Internal)?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.do_update(req)?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        log::info!("close_io id={} stdin={}", req.id, req.stdin);
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        c.stdin_copy.close();
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

    async fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        unimplemented("exec")
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, _req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        unimplemented("resize pty (there is no terminal)")
    }
}
