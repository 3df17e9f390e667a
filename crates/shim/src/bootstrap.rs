//! The shim binary's three lives: `start` (spawn the serving daemon, or reuse
//! the pod's, and print its address), `delete` (clean up after a daemon that
//! died), and serving the task API.
//!
//! This is our own rather than `containerd_shim::asynchronous::run` because
//! every containerd a node runs must work: 1.6 reads `start`'s output as a
//! bare address and calls the task service as `containerd.task.v2.Task`; 2.x
//! accepts that too, and also speaks `containerd.task.v3.Task` and the
//! bootstrap protocol (protobuf on stdin and stdout). We serve both names.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::asynchronous::{spawn, ExitSignal};
use containerd_shim::{DeleteResponse, Flags, StartOpts};
use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::Server;

use crate::task::TaskService;

const MAX_STDIN: u64 = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn bundle_dir(flags: &Flags) -> PathBuf {
    if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| ".".into())
    } else {
        flags.bundle.clone().into()
    }
}

fn read_stdin() -> Vec<u8> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Vec::new();
    }
    let mut input = Vec::new();
    let _ = stdin.lock().take(MAX_STDIN).read_to_end(&mut input);
    input
}

/// What containerd passed to `start`: bootstrap params (containerd 2.3+), or
/// flags + environment + runtime options on stdin (every other version).
fn start_params(flags: &Flags, input: &[u8]) -> (BootstrapParams, bool) {
    if let Ok(p) = BootstrapParams::parse_from_bytes(input) {
        if !input.is_empty() && p.instance_id == flags.id && p.namespace == flags.namespace {
            return (p, true);
        }
    }
    let mut p = BootstrapParams {
        instance_id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        containerd_ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        containerd_grpc_address: flags.address.clone(),
        containerd_binary: flags.publish_binary.clone(),
        ..Default::default()
    };
    if let Ok(any) = Any::parse_from_bytes(input) {
        if !any.type_url.is_empty() {
            p.extensions.push(containerd_shim_protos::bootstrap_api::Extension {
                value: Some(any).into(),
                ..Default::default()
            });
        }
    }
    (p, false)
}

/// The containers of one pod share a shim; any other container gets its own.
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| wasmcell_grants::parse_spec(&b).ok())
        .and_then(|s| s.annotations().as_ref()?.get(wasmcell_grants::SANDBOX_ID).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

pub(crate) async fn start(flags: Flags) -> Result<(), BoxError> {
    let input = read_stdin();
    let (params, bootstrap) = start_params(&flags, &input);
    if params.containerd_ttrpc_address.is_empty() {
        return Err("TTRPC_ADDRESS is not set: containerd must start this shim".into());
    }
    let bundle = bundle_dir(&flags);
    let group = grouping(&bundle, &flags.id);
    // A container that gets a shim of its own (a pod's sandbox, or one
    // outside any pod): the daemon is born in its cgroup, so that even the
    // pages its loader writes before `main` are charged there. A pod's
    // other containers join their pod's running shim: nothing to do.
    if group == flags.id {
        crate::sys::cgroup::join_early(&bundle);
    }
    let mut opts = StartOpts::from(params);
    opts.debug |= flags.debug;
    let address = spawn(opts, &group, Vec::new()).await?;
    std::fs::write(bundle.join("address"), &address)?;
    let reply = if bootstrap {
        BootstrapResult {
            version: containerd_shim_protos::TASK_API_VERSION,
            address: address.clone(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()?
    } else {
        // A bare address: containerd 1.6 accepts nothing else, and later
        // versions read it as a task API v2 shim, which we also serve.
        address.clone().into_bytes()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)?;
    out.flush()?;
    Ok(())
}

pub(crate) async fn delete(flags: Flags) -> Result<(), BoxError> {
    // The daemon is gone (killed, crashed): undo what it set up for the
    // container of this bundle and report it killed.
    let bundle = bundle_dir(&flags);
    crate::container::cleanup_bundle(&bundle);
    if let Some(cg) = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| wasmcell_grants::parse_spec(&b).ok())
        .and_then(|s| s.linux().as_ref()?.cgroups_path().clone())
    {
        crate::sys::cgroup::remove(&cg.display().to_string());
    }
    let mut resp = DeleteResponse::new();
    resp.exit_status = 137;
    resp.exited_at = Some(containerd_shim::util::timestamp()?).into();
    let mut out = std::io::stdout().lock();
    out.write_all(&resp.write_to_bytes()?)?;
    out.flush()?;
    Ok(())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the task socket. `Ok(None)` when a live shim already serves it (a
/// second container of the same pod raced us): nothing more to do.
async fn listen(address: &str) -> Result<Option<std::os::unix::net::UnixListener>, BoxError> {
    let path = socket_path(address);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                std::fs::write("address", address)?;
                return Ok(None);
            }
            std::fs::remove_file(path)?;
            Ok(Some(std::os::unix::net::UnixListener::bind(path)?))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn serve(flags: Flags) -> Result<(), BoxError> {
    crate::logging::init(flags.debug)?;
    let Some(listener) = listen(&flags.socket).await? else {
        crate::sys::process::detach_stdout();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")?;

    let exit = Arc::new(ExitSignal::default());
    let service = TaskService::new(ttrpc_address, flags.namespace.clone(), flags.address.clone(), exit.clone());
    let task: Arc<dyn Task + Send + Sync> = Arc::new(service);
    let mut services = create_task(task.clone());
    for (name, svc) in create_task(task) {
        services.insert(name.replace(".v3.", ".v2."), svc);
    }
    let mut server = Server::new().add_listener(crate::accept::listener(listener)?).register_service(services);
    server.start().await?;
    // containerd's `start` waits for our stdout to close: we are up.
    crate::sys::process::detach_stdout();
    log::info!("serving {} for namespace {}", flags.socket, flags.namespace);
    crate::sys::confine::log_outcome();

    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut pipe)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::pipe()))
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => log::debug!("SIGTERM ignored: containerd ends a shim through Shutdown"),
                _ = int.recv() => log::debug!("SIGINT ignored"),
                _ = pipe.recv() => {}
            }
        }
    });
    exit.wait().await;
    log::info!("shutting down");
    // containerd keeps its connection open until we exit, so waiting for
    // connections to drain would wait for ever: bound it.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), server.shutdown()).await;
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    Ok(())
}
