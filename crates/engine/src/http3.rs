//! Serving `wasi:http/handler@0.3` components: an instance takes several
//! requests at once.
//!
//! A WASI 0.3 handler is an async export, so one instance can have many
//! `handle` calls in flight; its store's event loop interleaves them at their
//! await points. wasmcell keeps a small set of such instances (workers), each
//! on its own task, and hands a request to the least busy one that has room:
//! at most [`MAX_CONCURRENT`] requests in flight on an instance, at most
//! [`MAX_REUSE`] requests over its life, and an instance idle for [`IDLE`]
//! is dropped. A new instance is made while fewer than one per core are
//! busy, so a CPU-bound handler still uses every core.
//!
//! What that means for isolation (as with `wasmtime serve` and Spin for 0.3
//! handlers): requests served by one instance share its linear memory and
//! globals. A trap ends the instance: the requests in flight on it fail
//! with a 500 and later requests get a fresh instance. Everything else holds
//! per request as for 0.2: the memory limit is charged across all instances,
//! CPU quota and shares apply at the instance's epoch points, and outgoing
//! requests follow the network grant.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use wasmtime::AsContextMut;
use wasmtime_wasi_http::handler::{Prepared, Proxy};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::ctx::P2State;

/// Requests in flight on one instance at most (`wasmtime serve`'s default).
pub const MAX_CONCURRENT: usize = 16;
/// Requests one instance serves over its life before it is replaced
/// (`wasmtime serve`'s default): state a handler leaks stays bounded.
pub const MAX_REUSE: usize = 128;
/// An instance with nothing to do for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(1);

pub(crate) type Request = hyper::Request<WasiBody>;
pub(crate) type Response = hyper::Response<WasiBody>;
type Reply = oneshot::Sender<wasmtime::Result<Response>>;

/// A request on its way to an instance.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) reply: Reply,
}

/// One live instance as the dispatcher sees it.
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests handed to it that have not yet had their response head.
    load: AtomicUsize,
    /// Requests handed to it in all.
    taken: AtomicUsize,
}

/// How a new instance is made and run: the server supplies the store (with
/// its limits and stdio) and the task wrapper (CPU metering, tick).
pub(crate) trait Host: Send + Sync + 'static {
    /// A fresh store for one instance of code compiled for `engine`.
    fn store(&self, engine: &wasmtime::Engine) -> Result<wasmtime::Store<P2State>, crate::EngineError>;
    /// Runs an instance's task (on the caller's runtime).
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) -> tokio::task::AbortHandle;
    /// The shim's word on an instance that ended in a trap.
    fn trapped(&self, error: &wasmtime::Error);
}

/// The instances serving one container.
pub(crate) struct Pool {
    pre: ServicePre<P2State>,
    workers: Mutex<Vec<Arc<Worker>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Instances worth running in parallel (one per core).
    parallel: usize,
}

/// Ends every instance of the pool when serving ends, however it ends (a
/// stop after the drain, or a kill dropping the server): the instances'
/// tasks hold the pool themselves, so its own drop would come too late for
/// a guest that never idles.
pub(crate) struct Stopper(pub(crate) Arc<Pool>);

impl Drop for Stopper {
    fn drop(&mut self) {
        self.0.workers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for t in self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl Pool {
    pub(crate) fn new(pre: ServicePre<P2State>) -> Arc<Self> {
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Pool { pre, workers: Mutex::new(Vec::new()), tasks: Mutex::new(Vec::new()), parallel })
    }

    /// Hands `request` to an instance; resolves to its response head (the
    /// body streams from the instance afterwards).
    pub(crate) async fn handle(self: &Arc<Self>, host: &Arc<dyn Host>, request: Request) -> wasmtime::Result<Response> {
        let (reply, rx) = oneshot::channel();
        let job = Job { request, reply };
        if let Some(job) = self.offer(job) {
            self.start(host, job);
        }
        rx.await.map_err(|_| wasmtime::format_err!("the instance serving the request ended before it answered"))?
    }

    /// Gives the job to a worker with room, preferring an idle one, or
    /// returns it when a new worker should take it.
    fn offer(&self, job: Job) -> Option<Job> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let busy = workers.iter().filter(|w| w.load.load(Ordering::Relaxed) > 0).count();
        let best = workers
            .iter()
            .filter(|w| w.taken.load(Ordering::Relaxed) < MAX_REUSE && w.load.load(Ordering::Relaxed) < MAX_CONCURRENT)
            .min_by_key(|w| w.load.load(Ordering::Relaxed));
        let best = match best {
            // An idle instance, or every core already has a busy one.
            Some(w) if w.load.load(Ordering::Relaxed) == 0 || busy >= self.parallel => w,
            _ => return Some(job),
        };
        best.load.fetch_add(1, Ordering::Relaxed);
        best.taken.fetch_add(1, Ordering::Relaxed);
        match best.jobs.send(job) {
            Ok(()) => None,
            Err(mpsc::error::SendError(job)) => {
                best.load.fetch_sub(1, Ordering::Relaxed);
                Some(job)
            }
        }
    }

    /// A new worker, whose first job is `job`.
    fn start(self: &Arc<Self>, host: &Arc<dyn Host>, job: Job) {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker { jobs: tx, load: AtomicUsize::new(1), taken: AtomicUsize::new(1) });
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).push(worker.clone());
        let task = Box::pin(self.clone().run(host.clone(), worker, job, rx));
        let handle = host.spawn(task);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Takes `worker` out of the dispatcher's view: no job is sent to it
    /// after this returns.
    fn retire(&self, worker: &Arc<Worker>) {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).retain(|w| !Arc::ptr_eq(w, worker));
    }

    /// One instance's life: instantiate, serve jobs until it is idle, worn
    /// out or trapped, then let its response bodies finish.
    async fn run(
        self: Arc<Self>,
        host: Arc<dyn Host>,
        worker: Arc<Worker>,
        first: Job,
        mut jobs: mpsc::UnboundedReceiver<Job>,
    ) {
        let instance = async {
            let mut store = host.store(self.pre.instance_pre().engine())?;
            let service = self.pre.instantiate_async(&mut store).await?;
            wasmtime::Result::<_>::Ok((store, service))
        };
        let (mut store, service) = match instance.await {
            Ok(i) => i,
            Err(e) => {
                self.retire(&worker);
                jobs.close();
                let _ = first.reply.send(Err(wasmtime::format_err!("cannot instantiate: {e:#}")));
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(wasmtime::format_err!("cannot instantiate: {e:#}")));
                }
                return;
            }
        };
        let proxy = Proxy::P3(service);
        let view: fn(&mut P2State) -> wasmtime_wasi_http::WasiHttpCtxView<'_> = P2State::http;
        let outcome = store
            .run_concurrent(async |accessor| -> wasmtime::Result<()> {
                let mut running = FuturesUnordered::new();
                let mut next = Some(first);
                let mut retired = false;
                loop {
                    if let Some(job) = next.take() {
                        let prepared = accessor
                            .with(|mut s| Prepared::new(s.as_context_mut(), &proxy, job.request, view, job.reply))?;
                        running.push(prepared.run(accessor, std::future::pending()));
                    }
                    tokio::select! {
                        Some(done) = running.next() => {
                            worker.load.fetch_sub(1, Ordering::Relaxed);
                            // A trap poisons the instance: end it.
                            done?;
                        }
                        job = jobs.recv() => match job {
                            Some(job) => next = Some(job),
                            None => break,
                        },
                        _ = tokio::time::sleep(IDLE), if running.is_empty() && !retired => {
                            self.retire(&worker);
                            retired = true;
                            // Jobs sent before it was retired are still served.
                            jobs.close();
                        }
                    }
                    if !retired && worker.taken.load(Ordering::Relaxed) >= MAX_REUSE {
                        self.retire(&worker);
                        retired = true;
                        jobs.close();
                    }
                }
                while let Some(done) = running.next().await {
                    worker.load.fetch_sub(1, Ordering::Relaxed);
                    done?;
                }
                // Response bodies and other tasks the guest left running.
                std::future::poll_fn(|cx| match accessor.poll_no_interesting_tasks(cx) {
                    Poll::Ready(()) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                })
                .await;
                Ok(())
            })
            .await
            .and_then(|r| r);
        self.retire(&worker);
        jobs.close();
        if let Err(e) = outcome {
            host.trapped(&e);
        }
        // Jobs this instance took but never started go to another one.
        while let Ok(job) = jobs.try_recv() {
            if let Some(job) = self.offer(job) {
                self.start(&host, job);
            }
        }
    }
}
