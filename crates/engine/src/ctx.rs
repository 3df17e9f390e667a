//! From grants to a WASI context: every capability the guest gets is added
//! here, explicitly. `WasiCtxBuilder` starts with nothing: no args, no env, no
//! preopens, stdio closed, and all socket addresses denied.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use wasmcell_grants::{DirSource, Grants, Limits};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::keyvalue::{KvStore, KvView};
use crate::limiter::MemoryLimiter;
use crate::EngineError;

/// Store data of a component guest.
pub struct P2State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) hooks: HttpHooks,
    pub(crate) config: ConfigVars,
    pub(crate) keyvalue: Option<KvStore>,
}

impl P2State {
    pub(crate) fn config(&mut self) -> wasmtime_wasi_config::WasiConfig<'_> {
        wasmtime_wasi_config::WasiConfig::from(&*self.config.0)
    }

    pub(crate) fn keyvalue(&mut self) -> KvView<'_> {
        KvView { store: self.keyvalue.as_ref(), table: &mut self.table }
    }
}

/// A guest's `wasi:config` entries, shared by all its instances.
#[derive(Clone, Default)]
pub struct ConfigVars(std::sync::Arc<wasmtime_wasi_config::WasiConfigVariables>, std::sync::Arc<[String]>);

impl ConfigVars {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        let mut keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        ConfigVars(std::sync::Arc::new(entries.into_iter().collect()), keys.into())
    }

    /// The keys, sorted (values are not shown: they may be secrets).
    pub fn keys(&self) -> &[String] {
        &self.1
    }
}

impl std::fmt::Debug for ConfigVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigVars{:?}", self.1)
    }
}

/// Most `wasi:config` entries read from a config directory, and most bytes
/// of all their values together (a ConfigMap holds at most 1 MiB).
pub const CONFIG_MAX_ENTRIES: usize = 4096;
pub const CONFIG_MAX_BYTES: u64 = 4 << 20;

/// The `wasi:config` entries of a directory: one per regular file (symlinks
/// followed inside the directory only, as a ConfigMap volume's `key ->
/// ..data/key` are), key = file name, value = its contents, which must be
/// UTF-8. Names starting with `..` (a ConfigMap volume's own bookkeeping)
/// and subdirectories are skipped.
pub fn read_config_dir(dir: &Path) -> Result<Vec<(String, String)>, EngineError> {
    let err = |reason: String| EngineError::Context { what: format!("wasi:config from {}", dir.display()), reason };
    let d = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in d.entries().map_err(|e| err(e.to_string()))? {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(err(format!("file name {name:?} is not UTF-8")));
        };
        if name.starts_with("..") {
            continue;
        }
        // Follows symlinks, and refuses those leading out of the directory.
        let meta = d.metadata(name).map_err(|e| err(format!("{name}: {e}")))?;
        if meta.is_dir() {
            continue;
        }
        if !meta.is_file() {
            return Err(err(format!("{name} is not a regular file")));
        }
        total += meta.len();
        if total > CONFIG_MAX_BYTES || out.len() >= CONFIG_MAX_ENTRIES {
            return Err(err(format!(
                "more than {CONFIG_MAX_ENTRIES} files or {} MiB of values",
                CONFIG_MAX_BYTES >> 20
            )));
        }
        let bytes = d.read(name).map_err(|e| err(format!("{name}: {e}")))?;
        let value = String::from_utf8(bytes)
            .map_err(|_| err(format!("{name} is not UTF-8 text, and wasi:config values are strings")))?;
        out.push((name.to_string(), value));
    }
    out.sort();
    Ok(out)
}

impl wasmtime_wasi_http::WasiHttpView for P2State {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Outgoing HTTP (`wasi:http/outgoing-handler`) follows the network grant:
/// a guest without sockets cannot send requests either.
pub struct HttpHooks {
    pub(crate) allow_outgoing: bool,
}

type SendResult = wasmtime_wasi_http::Result<(
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, wasmtime_wasi_http::Error>,
    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        let _ = fut;
        let allow = self.allow_outgoing;
        Box::new(async move {
            if !allow {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

#[allow(dead_code)]
fn _send_result_type_check(_: SendResult) {}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Store data of a core-module (WASIp1) guest.
pub struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
}

/// The guest's stdio: pipe ends the shim connects to containerd's fifos.
/// `None` is a closed stream (reads EOF, writes are discarded).
#[derive(Default)]
pub struct GuestIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Which sockets the guest may use, as decided by the shim from the network
/// grant and the namespace the shim process actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketScope {
    /// No TCP, no UDP, no name lookup.
    Denied,
    /// TCP and UDP to any address reachable from the shim's current network
    /// namespace (which the shim chose to be the container's), and name
    /// lookup when `dns`.
    Namespace { dns: bool },
}

/// A directory the guest sees, resolved to a host path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

/// Everything the engine needs to start one guest.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub preopens: Vec<Preopen>,
    pub sockets: SocketScope,
    pub limits: Limits,
    /// The private directories among the preopens, to be mounted as tmpfs
    /// of the given size before the guest runs (by the shim; the engine
    /// only creates the directories).
    pub tmpfs: Vec<Tmpfs>,
    /// Its `wasi:config` entries (read at Create).
    pub config: ConfigVars,
    /// Its `wasi:keyvalue` store, when granted.
    pub keyvalue: Option<KvStore>,
    /// Requests one instance of a WASI 0.2 HTTP handler serves in turn
    /// (1: a fresh instance per request).
    pub http_reuse: u32,
}

/// A private directory of a guest and the size its tmpfs may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tmpfs {
    pub host: PathBuf,
    pub size_bytes: u64,
}

impl GuestConfig {
    /// Whether the guest may open sockets (and so send HTTP requests).
    pub fn allows_outgoing(&self) -> bool {
        matches!(self.sockets, SocketScope::Namespace { .. })
    }

    /// Resolves `grants` to host paths. Private (tmpfs) directories are
    /// created under `private_root`, which the caller removes with the
    /// container. Bind sources must exist and be directories: a file bind
    /// (e.g. `/etc/hosts`) cannot be preopened and is skipped with a warning.
    /// The `wasi:config` entries are read from the granted config directory
    /// now; the key-value store is the caller's to set.
    pub fn from_grants(grants: &Grants, private_root: &Path, sockets: SocketScope) -> Result<Self, EngineError> {
        let mut preopens = Vec::new();
        let mut tmpfs = Vec::new();
        let root = grants.root.host().expect("root is a host directory");
        preopens.push(Preopen { host: root.to_path_buf(), guest: "/".into(), readonly: grants.root.readonly });
        for (i, d) in grants.dirs.iter().enumerate() {
            let host = match &d.source {
                DirSource::Host(h) => {
                    let meta = std::fs::metadata(h).map_err(|e| EngineError::Context {
                        what: format!("mount at {}", d.guest),
                        reason: format!("source {}: {e}", h.display()),
                    })?;
                    if !meta.is_dir() {
                        log::warn!(
                            "mount {} -> {}: only directories can be granted to a Wasm guest; not exposed",
                            h.display(),
                            d.guest
                        );
                        continue;
                    }
                    h.clone()
                }
                DirSource::Private { size_bytes } => {
                    let p = private_root.join(format!("tmpfs-{i}"));
                    std::fs::create_dir_all(&p).map_err(|e| EngineError::Context {
                        what: format!("tmpfs at {}", d.guest),
                        reason: e.to_string(),
                    })?;
                    tmpfs.push(Tmpfs { host: p.clone(), size_bytes: *size_bytes });
                    p
                }
            };
            preopens.push(Preopen { host, guest: d.guest.clone(), readonly: d.readonly });
        }
        let config = match &grants.config_dir {
            Some(d) => ConfigVars::new(read_config_dir(d)?),
            None => ConfigVars::default(),
        };
        Ok(GuestConfig {
            argv: grants.program.argv.clone(),
            env: grants.program.env.clone(),
            cwd: grants.program.cwd.clone(),
            preopens,
            sockets,
            limits: grants.limits.clone(),
            tmpfs,
            config,
            keyvalue: None,
            http_reuse: grants.http_reuse,
        })
    }

    /// The WASI context for this guest. Must be called inside a tokio runtime
    /// (the stdio pipes register with its reactor).
    pub(crate) fn builder(&self, io: GuestIo) -> Result<WasiCtxBuilder, EngineError> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.argv).envs(&self.env).initial_cwd(&self.cwd);
        for p in &self.preopens {
            let perms = if p.readonly { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            b.preopened_dir(&p.host, &p.guest, perms).map_err(|e| EngineError::Context {
                what: format!("directory {}", p.guest),
                reason: format!("{}: {e:#}", p.host.display()),
            })?;
        }
        match self.sockets {
            SocketScope::Denied => {
                b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
            }
            SocketScope::Namespace { dns } => {
                // The namespace itself is the boundary: the shim process runs
                // in the container's (or pod's) network namespace.
                b.allow_tcp(true)
                    .allow_udp(true)
                    .allow_ip_name_lookup(dns)
                    .socket_addr_check(|_, _| Box::pin(async { true }));
            }
        }
        let ctx_err = |what: &str, e: std::io::Error| EngineError::Context { what: what.into(), reason: e.to_string() };
        if let Some(fd) = io.stdin {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|e| ctx_err("stdin", e))?;
            b.stdin(AsyncStdinStream::new(rx));
        }
        if let Some(fd) = io.stdout {
            b.stdout(GuestOut::new(fd).map_err(|e| ctx_err("stdout", e))?);
        }
        if let Some(fd) = io.stderr {
            b.stderr(GuestOut::new(fd).map_err(|e| ctx_err("stderr", e))?);
        }
        Ok(b)
    }
}

/// A guest's stdout or stderr: a pipe to the shim's copier.
///
/// WASI 0.2 writes go straight into the pipe in the guest's call
/// (`output::PipeOut`). WASI 0.3 writes (`write-via-stream`) go into the
/// pipe through a tokio pipe writer, not Wasmtime's buffered stream: the buffered
/// stream's writer task would be dropped with the store, and the last bytes
/// of a guest that returns right after writing with them (seen: a p3
/// command's whole output, now and then).
#[derive(Clone)]
pub(crate) struct GuestOut {
    p2: std::sync::Arc<AsyncStdoutStream>,
    fd: std::sync::Arc<OwnedFd>,
}

impl GuestOut {
    /// Must be called inside a tokio runtime.
    pub(crate) fn new(fd: OwnedFd) -> std::io::Result<Self> {
        // Every handle's writes are non-blocking (see `output::PipeOut`).
        crate::output::set_nonblocking(&fd)?;
        let p2_end = fd.try_clone()?;
        let tx = tokio::net::unix::pipe::Sender::from_owned_fd(p2_end)?;
        Ok(GuestOut { p2: std::sync::Arc::new(AsyncStdoutStream::new(64 * 1024, tx)), fd: std::sync::Arc::new(fd) })
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOut {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOut {
    /// Each instance its own stream writing straight into the pipe
    /// (`output::PipeOut`): an HTTP component's instances write at once,
    /// and their lines interleave in the pipe as the writes of a
    /// container's processes do.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(crate::output::PipeOut::new(self.fd.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        match self.fd.try_clone().and_then(tokio::net::unix::pipe::Sender::from_owned_fd) {
            Ok(tx) => Box::new(tx),
            Err(e) => {
                log::warn!("guest output: {e}; writing through the buffered stream");
                self.p2.async_stream()
            }
        }
    }
}
