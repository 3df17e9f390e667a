//! Serving `wasi:http/proxy` components: the shim listens on the guest's
//! behalf, inside the container's network, and calls its
//! `wasi:http/incoming-handler` for each request, on a fresh instance made
//! from the pre-instantiated component (instantiation is the only per-request
//! cost; compilation happened once). With the annotation
//! `wasmcell.dev/http-instance-reuse: N` a WASI 0.2 handler's instance serves
//! up to N requests one after another (`Warm`), as `wasmtime serve
//! --max-instance-reuse-count` does; WASI 0.3 handlers are pooled (`http3`).

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex, Semaphore};
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::ctx::{GuestConfig, GuestIo, P2State};
use crate::limiter::{GuestStats, MemoryLimiter};
use crate::run::{Exit, Metered};
use crate::{Engine, EngineError, Kind, Program};

/// How long a 0.2 instance kept for reuse waits for its next request before
/// it is dropped (`wasmtime serve`'s `--idle-instance-timeout` default).
pub const REUSE_IDLE: Duration = Duration::from_secs(1);

/// A 0.2 handler's instance between two of its requests.
struct Warm {
    store: Store<P2State>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    served: u32,
    since: std::time::Instant,
}

impl Warm {
    /// It has waited less than [`REUSE_IDLE`] for its next request.
    fn fresh(&self) -> bool {
        self.since.elapsed() < REUSE_IDLE
    }
}

/// Default bound on requests handled at once when `pids.limit` is unset.
pub const DEFAULT_CONCURRENCY: usize = 128;
/// Bound on open client connections.
const MAX_CONNECTIONS: usize = 4096;
/// In-flight requests get this long after a stop before they are cut off.
pub const GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's headers, counted from the
/// moment the connection is ready for a request: a new connection, or one
/// kept alive after a response. Past it the connection is closed, so
/// connections that send nothing, half a header, or idle after keep-alive
/// give their permit back (Go's `ReadHeaderTimeout` is commonly 10 s; nginx's
/// `client_header_timeout` 60 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One output stream shared by every request's instance (the container has
/// one stdout and one stderr, whatever the number of instances).
type SharedOut = crate::ctx::GuestOut;

fn shared(fd: Option<OwnedFd>) -> Result<Option<SharedOut>, EngineError> {
    fd.map(|fd| SharedOut::new(fd).map_err(|e| EngineError::Context { what: "stdio".into(), reason: e.to_string() }))
        .transpose()
}

/// What serves the requests.
#[derive(Clone)]
enum Handler {
    /// A 0.2 handler: a fresh instance per request.
    P2(ProxyPre<P2State>),
    /// A 0.3 handler: instances that take several requests each.
    P3(Arc<crate::http3::Pool>),
}

struct Server {
    engine: Engine,
    /// Swapped for the optimized code's when a first start's background
    /// compile is done; requests already running keep theirs.
    handler: std::sync::RwLock<Handler>,
    config: GuestConfig,
    stats: Arc<GuestStats>,
    stdout: Option<SharedOut>,
    stderr: Option<SharedOut>,
    /// The shim's own notes (traps) on the container's stderr.
    notes: Option<Arc<Mutex<tokio::net::unix::pipe::Sender>>>,
    requests: Semaphore,
    /// The bound on requests handled at once.
    concurrency: usize,
    /// Turns true when serving has ended (stopped or killed): instances
    /// still running then, on their own tasks, end too.
    ended: watch::Receiver<bool>,
    /// 0.2 instances waiting for their next request, the most recent last
    /// (empty unless `config.http_reuse` > 1).
    warm: std::sync::Mutex<Vec<Warm>>,
}

/// Tells every instance task that serving has ended, however it ends.
struct Ended(watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn text(status: u16, body: &str) -> hyper::Response<WasiBody> {
    let body = Full::new(Bytes::from(body.to_string())).map_err(|e: Infallible| match e {}).boxed_unsync();
    let mut r = hyper::Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

impl Handler {
    fn of(kind: &Kind) -> Result<Handler, EngineError> {
        match kind {
            Kind::Http(pre) => Ok(Handler::P2(pre.clone())),
            Kind::Http3(pre) => Ok(Handler::P3(crate::http3::Pool::new(pre.clone()))),
            _ => Err(EngineError::NoEntry { what: "not an HTTP handler: it runs, it is not served".into() }),
        }
    }

    /// Ends a 0.3 handler's instances when dropped (serving has ended).
    fn stopper(&self) -> Option<crate::http3::Stopper> {
        match self {
            Handler::P3(pool) => Some(crate::http3::Stopper(pool.clone())),
            Handler::P2(_) => None,
        }
    }
}

impl Server {
    async fn note(&self, msg: String) {
        if let Some(n) = &self.notes {
            let mut tx = n.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.write_all(msg.as_bytes())).await;
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<WasiBody>, Infallible> {
        // Back-pressure: a request waits for a free slot; it never makes the
        // shim hold more instances than the bound.
        let Ok(_permit) = self.requests.acquire().await else {
            return Ok(text(503, "server is stopping\n"));
        };
        let _running = self.engine.inner.ticker.running();
        self.stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let handler = self.handler.read().unwrap_or_else(|p| p.into_inner()).clone();
        let resp = match &handler {
            Handler::P2(pre) => self.clone().instance(pre.clone(), req).await,
            Handler::P3(pool) => {
                let host: Arc<dyn crate::http3::Host> = self.clone();
                let req = req.map(|b| b.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
                pool.handle(&host, req).await.map_err(|e| self.failure(&e))
            }
        };
        self.stats.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        let resp = match resp {
            Ok(r) => r,
            Err(msg) => {
                self.stats.request_errors.fetch_add(1, Ordering::Relaxed);
                self.note(format!("wasmcell: request failed: {msg}\n")).await;
                text(500, "internal server error\n")
            }
        };
        Ok(resp)
    }

    async fn instance(
        self: Arc<Self>,
        pre: ProxyPre<P2State>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<WasiBody>, String> {
        let engine = pre.instance_pre().engine();
        let warm = self.take_warm(engine);
        let (mut store, mut proxy, served) = match warm {
            Some(w) => (w.store, Some(w.proxy), w.served),
            None => (self.store(engine).map_err(|e| e.to_string())?, None, 0),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req).map_err(|e| format!("{e:#}"))?;
        let out = store.data_mut().http().new_response_outparam(tx).map_err(|e| format!("{e:#}"))?;
        let stats = self.stats.clone();
        // The instance runs on its own task so the body can keep streaming
        // after the response head is returned.
        let metered = stats.clone();
        let mut ended = self.ended.clone();
        let server = self.clone();
        let task = tokio::spawn(Metered::new(
            async move {
                let run = async {
                    let p = match proxy.take() {
                        Some(p) => p,
                        None => pre.instantiate_async(&mut store).await?,
                    };
                    p.wasi_http_incoming_handler().call_handle(&mut store, req, out).await?;
                    Ok::<_, wasmtime::Error>(p)
                };
                let p = tokio::select! {
                    r = run => r?,
                    _ = stopped(&mut ended) => return Err(wasmtime::Error::msg("the server stopped")),
                };
                // Kept for the next request only after a clean return: a
                // trapped instance is never reused.
                server.keep_warm(Warm { store, proxy: p, served: served + 1, since: std::time::Instant::now() });
                Ok::<(), wasmtime::Error>(())
            },
            metered,
        ));
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(format!("handler returned an error: {code:?}")),
            Err(_) => {
                let why = match task.await {
                    Ok(Ok(())) => "handler returned without setting a response".to_string(),
                    Ok(Err(e)) => self.failure(&e),
                    Err(e) => format!("handler task: {e}"),
                };
                Err(why)
            }
        }
    }
}

impl Server {
    /// A 0.2 instance of `engine`'s code kept from an earlier request, if
    /// reuse is on and one is waiting; stale ones are dropped.
    fn take_warm(&self, engine: &wasmtime::Engine) -> Option<Warm> {
        if self.config.http_reuse <= 1 {
            return None;
        }
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = warm.pop() {
            // Code of the tier in use (a first start's baseline instances
            // are not reused once the optimized code serves), not stale.
            if wasmtime::Engine::same(w.store.engine(), engine) && w.fresh() {
                return Some(w);
            }
        }
        None
    }

    /// Keeps `w` for a later request, unless it has served its share or
    /// serving has ended.
    fn keep_warm(&self, w: Warm) {
        if w.served >= self.config.http_reuse || *self.ended.borrow() {
            return;
        }
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if warm.len() < self.concurrency {
            warm.push(w);
        }
    }

    /// Drops the kept instances that waited longer than [`REUSE_IDLE`]
    /// (they hold a pool slot and their memory), or all of them.
    fn expire_warm(&self, all: bool) {
        let stale: Vec<Warm> = {
            let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            let (keep, stale) = std::mem::take(&mut *warm).into_iter().partition(|w| !all && w.fresh());
            *warm = keep;
            stale
        };
        drop(stale);
    }

    /// A store for one instance: stdio shared by all instances, the memory
    /// limiter on the container's budget, its share of the handle bound (a
    /// handler needs tens, at least 256), the epoch callback.
    fn store(&self, engine: &wasmtime::Engine) -> Result<Store<P2State>, EngineError> {
        let mut b = self.config.builder(GuestIo::default())?;
        if let Some(o) = &self.stdout {
            b.stdout(o.clone());
        }
        if let Some(o) = &self.stderr {
            b.stderr(o.clone());
        }
        let handles = (crate::limiter::max_handles() / self.concurrency).max(256);
        Ok(self.engine.component_store(
            engine,
            b.build(),
            MemoryLimiter::new(self.stats.clone()),
            &self.config,
            self.stats.clone(),
            handles,
        ))
    }

    /// Why a request failed, as the shim notes it.
    fn failure(&self, e: &wasmtime::Error) -> String {
        if self.stats.oom.load(Ordering::Relaxed) {
            format!("out of memory: {e:#}")
        } else {
            format!("handler trapped: {e:#}")
        }
    }
}

impl crate::http3::Host for Server {
    fn store(&self, engine: &wasmtime::Engine) -> Result<Store<P2State>, EngineError> {
        Server::store(self, engine)
    }

    fn spawn(&self, task: Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> tokio::task::AbortHandle {
        let ticking = self.engine.inner.ticker.running();
        tokio::spawn(Metered::new(
            async move {
                let _ticking = ticking;
                task.await
            },
            self.stats.clone(),
        ))
        .abort_handle()
    }

    fn trapped(&self, error: &wasmtime::Error) {
        log::debug!("http: a 0.3 instance ended: {}", self.failure(error));
    }
}

/// Aborts the reporting task when serving ends, however it ends.
struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Request counters in the shim's log (debug level), when they change.
async fn report(stats: Arc<GuestStats>) {
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = (stats.requests_total.load(Ordering::Relaxed), stats.requests_in_flight.load(Ordering::Relaxed));
        if now != last {
            log::debug!(
                "http: requests={} in_flight={} errors={} memory={}",
                now.0,
                now.1,
                stats.request_errors.load(Ordering::Relaxed),
                stats.memory_bytes.load(Ordering::Relaxed)
            );
            last = now;
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone); holds no borrow of
/// the channel afterwards, so the future stays `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

impl Engine {
    /// Serves `program` (an HTTP handler, 0.2 or 0.3; see
    /// [`Program::is_server`]) on `listener` until `stop` turns true; then stops
    /// accepting, lets in-flight requests finish (up to [`GRACE`]) and
    /// returns `Exit::Code(0)`. Dropping the future stops at once. A
    /// connection that takes longer than `header_timeout` to send a
    /// request's headers (see [`DEFAULT_HEADER_TIMEOUT`]) is closed.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve(
        &self,
        program: &Program,
        config: &GuestConfig,
        io: GuestIo,
        stats: Arc<GuestStats>,
        listener: std::net::TcpListener,
        mut stop: watch::Receiver<bool>,
        header_timeout: Duration,
    ) -> Result<Exit, EngineError> {
        // The live limits are `stats`' (see `Engine::run`).
        let kind = program.kind();
        let handler = Handler::of(&kind)?;
        let component = match &kind {
            Kind::Http(pre) => pre.instance_pre().component(),
            Kind::Http3(pre) => pre.instance_pre().component(),
            _ => unreachable!("Handler::of took only handlers"),
        };
        let ctx_err = |e: std::io::Error| EngineError::Context { what: "listener".into(), reason: e.to_string() };
        listener.set_nonblocking(true).map_err(ctx_err)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ctx_err)?;
        let notes = io
            .stderr
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok())
            .map(|tx| Arc::new(Mutex::new(tx)));
        let concurrency = config.limits.instances.map_or(DEFAULT_CONCURRENCY, |n| n as usize).max(1);
        let (end_tx, end_rx) = watch::channel(false);
        // A handler that does not import `wasi:filesystem` cannot reach its
        // preopens: its instances are built without them, which saves an
        // open and a close of every preopened directory per request.
        let mut config = config.clone();
        if !component.component_type().imports(kind.engine()).any(|(name, _)| name.starts_with("wasi:filesystem/")) {
            config.preopens.clear();
        }
        let server = Arc::new(Server {
            engine: self.clone(),
            handler: std::sync::RwLock::new(handler.clone()),
            config,
            stats: stats.clone(),
            stdout: shared(io.stdout)?,
            stderr: shared(io.stderr)?,
            notes,
            requests: Semaphore::new(concurrency),
            concurrency,
            ended: end_rx,
            warm: Default::default(),
        });
        let _ended = Ended(end_tx);
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let _reporter = Reporter(tokio::spawn(report(stats.clone())));
        let _expirer = (server.config.http_reuse > 1).then(|| {
            let server = server.clone();
            Reporter(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REUSE_IDLE / 2).await;
                    server.expire_warm(false);
                }
            }))
        });
        let _stopper = handler.stopper();
        // A first start's handler moves to the optimized code when it is
        // ready (new requests; a 0.3 handler's new instances).
        let _upgrader = program.upgrade().filter(|_| program.tier() == crate::Tier::Baseline).map(|u| {
            let (server, mut ready) = (server.clone(), u.ready.clone());
            Reporter(tokio::spawn(async move {
                let Ok(kind) = ready.wait_for(|k| k.is_some()).await.map(|k| k.clone()) else { return };
                let Some(Ok(new)) = kind.as_ref().map(Handler::of) else { return };
                let _stopper = new.stopper();
                *server.handler.write().unwrap_or_else(|p| p.into_inner()) = new;
                log::info!("http: new requests run the optimized code");
                // Holds the new 0.3 pool's stopper until serving ends.
                std::future::pending::<()>().await
            }))
        });
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let Ok(permit) = connections.clone().acquire_owned().await else { break };
            let accepted = tokio::select! {
                _ = stopped(&mut stop) => break,
                a = listener.accept() => a,
            };
            let (conn, _peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // A response goes out as head and body chunks: without NODELAY,
            // Nagle holds the second write for the client's delayed ACK.
            let _ = conn.set_nodelay(true);
            let server = server.clone();
            let mut stop = stop.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(move |req| server.clone().handle(req));
                let conn = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(conn), svc);
                let mut conn: Pin<Box<_>> = Box::pin(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(listener);
        server.expire_warm(true);
        // Stopping: in-flight requests finish, within the grace period.
        let drained = tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            log::warn!("http: requests still running after {GRACE:?}; cutting them off");
            tasks.abort_all();
        }
        Ok(Exit::Code(0))
    }
}
