//! The Create pipeline: spec -> grants -> cgroup -> rootfs -> stdio -> Wasm
//! (read, classify, compile or load, link) -> views of granted directories
//! -> an HTTP component's socket. Everything Start could fail on is checked
//! here; on any failure nothing stays behind (mounts, views, private
//! directories, the cgroup).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use wasmcell_engine::{Granted, GuestConfig, GuestStats, KvStore, MemoryStore, RedisStore, SocketScope};
use wasmcell_grants::{Grants, KeyValue, Network, Role};
use wasmcell_oci::EntrypointError;

use crate::container::{cleanup, private_dir, Container, Workload};
use crate::lifecycle::Lifecycle;
use crate::sys::netns::{self, Joined};
use crate::task::{blocking, TaskService};
use crate::{config, stdio, ShimError};

/// Binds an HTTP component's socket at Create, so a bad address or a port
/// in use fails the container before it starts. The shim process is in the
/// container's network namespace, so this is the container's port.
fn listen(grants: &Grants, scope: SocketScope) -> Result<std::net::TcpListener, ShimError> {
    let addr = config::http_addr(grants);
    if scope == SocketScope::Denied {
        return Err(ShimError::InvalidArgument(format!(
            "HTTP component needs the network its spec grants, and the shim could not enter it (see the shim log); cannot listen on {addr}"
        )));
    }
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| {
        ShimError::InvalidArgument(format!("WASMCELL_HTTP_ADDR {addr:?} is not an IP:port address: {e}"))
    })?;
    std::net::TcpListener::bind(sa)
        .map_err(|e| ShimError::InvalidArgument(format!("HTTP component cannot listen on {addr}: {e}")))
}

/// An image that is not Wasm gets told where it belongs.
fn not_wasm_hint(e: EntrypointError, role: &Role) -> ShimError {
    if !matches!(e, EntrypointError::NotWasm { .. }) {
        return e.into();
    }
    let hint = match role {
        Role::Standalone => "this runtime (io.containerd.wasmtime.v1) runs only WebAssembly; run native images with the default runc runtime",
        _ => "this pod's RuntimeClass runs only WebAssembly; run native (Linux) containers in a pod whose RuntimeClass uses runc",
    };
    ShimError::InvalidArgument(format!("{e}: {hint}"))
}

/// Sockets for a guest: only when the shim really sits in the network the
/// container's spec asks for; otherwise none at all.
fn socket_scope(network: &Network, joined: &Joined) -> SocketScope {
    match (network, joined) {
        (_, Joined::Failed(_)) => {
            log::warn!("the shim could not enter its network ({joined:?}): no sockets granted");
            SocketScope::Denied
        }
        (Network::Host, Joined::Host) => SocketScope::Namespace { dns: true },
        (Network::Private, Joined::Private) => SocketScope::Namespace { dns: false },
        (Network::Namespace(p), Joined::Path(q)) if p == q => SocketScope::Namespace { dns: true },
        // Whatever the shim joined, a path that names the namespace it is in
        // is that network: a hostNetwork pod's containers name the sandbox's
        // (the shim's own, the host's) as /proc/<shim pid>/ns/net.
        (Network::Namespace(p), _) if netns::is_current(p) => SocketScope::Namespace { dns: true },
        _ => {
            log::warn!("guest network {network:?} differs from the shim's ({joined:?}): no sockets granted");
            SocketScope::Denied
        }
    }
}

impl TaskService {
    pub(crate) async fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, ShimError> {
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
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported for Wasm containers".into(),
            ));
        }
        // The handler's policy, checked at every Create, the sandbox's too:
        // a pod on a handler whose policy file is broken fails to start.
        log::info!(
            "create id={}: runtime options {:?}",
            req.id,
            req.options.as_ref().map(|a| (&a.type_url, a.value.len()))
        );
        if let Some(p) = self.handler_policy(req.options.as_ref())? {
            blocking(move || crate::config::load_policy(&p)).await??;
        }
        let bundle = PathBuf::from(&req.bundle);
        let b = bundle.clone();
        let (spec, grants) = blocking(move || wasmcell_grants::grants_for_bundle(&b)).await??;
        self.join_cgroup(&req.id, &spec, &grants).await;
        let kernel = self.inner.kernel.clone();
        // A sandbox reads nothing from its image: its snapshot stays unmounted.
        let sandbox = matches!(grants.role, Role::Sandbox { .. });
        let mounted = if req.rootfs.is_empty() || sandbox {
            None
        } else {
            let target = bundle.join("rootfs");
            let (k, m, t, ro) = (kernel.clone(), req.rootfs.clone(), target.clone(), grants.root.readonly);
            let mounted = blocking(move || k.mount_rootfs(&m, &t, ro)).await.and_then(|r| r);
            if let Err(e) = mounted {
                self.inner.cgroup.leave(&req.id).await;
                return Err(e);
            }
            Some(target)
        };
        let container = match self.prepare(&req, &grants, mounted.clone()).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let (k, b) = (kernel.clone(), bundle.clone());
                let _ = blocking(move || cleanup(k.as_ref(), &b, mounted.as_deref())).await;
                self.inner.cgroup.leave(&req.id).await;
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
            container.release(kernel).await;
            return Err(ShimError::AlreadyExists(req.id.clone()));
        }
        self.inner.events.create(
            &req.id,
            &req.bundle,
            req.rootfs.clone(),
            &req.stdin,
            &req.stdout,
            &req.stderr,
            self.inner.pid,
        );
        // Loading the guest freed far more heap than the guest keeps.
        tokio::task::spawn_blocking(crate::sys::process::trim_heap);
        Ok(api::CreateTaskResponse { pid: self.inner.pid, ..Default::default() })
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
            stats: Arc::new(GuestStats::for_limits(&grants.limits)),
            life: Lifecycle::new(),
            listener: Mutex::new(listener),
            execs: Mutex::default(),
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
    /// container's Wasm, resolves its grants to hardened views, and binds
    /// its HTTP socket.
    async fn prepare_wasm(
        &self,
        req: &api::CreateTaskRequest,
        grants: &Grants,
        bundle: &Path,
        mounted_rootfs: Option<&Path>,
    ) -> Result<(Workload, Option<std::net::TcpListener>), ShimError> {
        let rootfs = grants.root.host().expect("root is a host dir").to_path_buf();
        let entry = grants.program.entrypoint.clone();
        let opened = blocking(move || wasmcell_oci::open_entrypoint(&rootfs, &entry)).await?;
        // The first Create makes the engine (Wasmtime's, and the linkers):
        // blocking work, kept off the RPC threads like the rest.
        let (svc, options) = (self.clone(), req.options.clone().into_option());
        let engine = blocking(move || svc.engine_with(options.as_ref())).await??;
        let scope = socket_scope(&grants.network, &netns::joined());
        let keyvalue = self.keyvalue_store(grants, scope)?;
        let granted = Granted { keyvalue: keyvalue.is_some() };
        let program = match opened {
            Ok(file) => {
                // Its stats of the layer directories block too.
                let mounts = req.rootfs.clone();
                blocking(move || {
                    let id = file.id(crate::rootfs::layers_dev(&mounts));
                    engine.prepare_file(&file, id, granted)
                })
                .await??
            }
            // Not in the rootfs: the image may carry its Wasm as layers.
            Err(e @ (EntrypointError::NotFound(_) | EntrypointError::Rootfs { .. })) => {
                let (bytes, kind) = self.wasm_from_layers(&req.id, &grants.program.entrypoint, e).await?;
                blocking(move || engine.prepare(&bytes, kind, granted)).await??
            }
            Err(e) => return Err(not_wasm_hint(e, &grants.role)),
        };
        let g = grants.clone();
        let private = private_dir(bundle);
        let mut config = blocking(move || GuestConfig::from_grants(&g, &private, scope)).await??;
        config.keyvalue = keyvalue;
        let (k, b, m) = (self.inner.kernel.clone(), bundle.to_path_buf(), mounted_rootfs.map(Path::to_path_buf));
        let config =
            blocking(move || k.grant_views(&mut config, &b, m.as_deref(), &private_dir(&b)).map(|()| config)).await??;
        let listener = if program.is_server() { Some(listen(grants, scope)?) } else { None };
        Ok((Workload::Wasm { program, config }, listener))
    }

    /// The `wasi:keyvalue` store the container's grants name: the shim's
    /// in-memory store (shared by a pod's containers), or a Redis server,
    /// which the guest reaches only through the network its spec grants.
    fn keyvalue_store(&self, grants: &Grants, scope: SocketScope) -> Result<Option<KvStore>, ShimError> {
        Ok(match &grants.keyvalue {
            KeyValue::Denied => None,
            KeyValue::Memory => Some(KvStore::Memory(
                self.inner
                    .memory_kv
                    .get_or_init(|| Arc::new(MemoryStore::new(wasmcell_engine::keyvalue::MEMORY_STORE_MAX_BYTES)))
                    .clone(),
            )),
            KeyValue::Redis { url } => {
                if scope == SocketScope::Denied {
                    return Err(ShimError::InvalidArgument(format!(
                        "{}={url} needs the network the spec grants, and the shim could not enter it (see the shim log)",
                        wasmcell_grants::KEYVALUE_ANNOTATION
                    )));
                }
                let store = RedisStore::new(url).map_err(|e| {
                    ShimError::InvalidArgument(format!("{}: {e}", wasmcell_grants::KEYVALUE_ANNOTATION))
                })?;
                Some(KvStore::Redis(Arc::new(store)))
            }
        })
    }

    /// Joins the container's cgroup if this shim has not joined one yet.
    /// Never fails the container: a host that cannot do it (no privilege, no
    /// controller) only loses the outer bound, which is logged.
    async fn join_cgroup(&self, id: &str, spec: &oci_spec::runtime::Spec, grants: &Grants) {
        let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
            return;
        };
        if self.inner.cgroup.is_joined() {
            return;
        }
        let path = path.display().to_string();
        // Joined at the daemon's start already (see `sys::cgroup::join_early`).
        if let Some(joined) = crate::sys::cgroup::take_early(&path) {
            log::info!("create id={id}: in cgroup {} since the shim started", joined.path);
            self.inner.cgroup.set(id, Box::new(joined));
            return;
        }
        // A pod's shim joins the sandbox's cgroup and serves every container
        // of the pod from it. The sandbox's own limits are a pause
        // process's (kubelet gives it cpu.shares 2): applied here they would
        // starve the whole pod. The pod-level parent cgroup kubelet made,
        // with the sum of the pod's requests and limits, is the bound.
        let limits = match grants.role {
            Role::Sandbox { .. } => wasmcell_grants::Limits::default(),
            _ => grants.limits.clone(),
        };
        let k = self.inner.kernel.clone();
        match blocking(move || k.join_cgroup(&path, &limits)).await {
            Ok(Ok(joined)) => {
                log::info!("create id={id}: joined cgroup {}", joined.path());
                self.inner.cgroup.set(id, joined);
            }
            Ok(Err(e)) => log::warn!("create id={id}: {e}; continuing without the outer cgroup bound"),
            Err(e) => log::warn!("create id={id}: cgroup: {e}"),
        }
    }
}
