//! Running a guest to completion: instantiate, call its entry point, map the
//! outcome to a container exit status.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::I32Exit;

use crate::ctx::{GuestConfig, GuestIo, P1State, P2State};
use crate::fairshare::{Budget, FairShare};
use crate::limiter::{max_handles, GuestStats, MemoryLimiter};
use crate::{Engine, EngineError, Kind, Program};

/// How a guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It returned, or called `exit(n)`.
    Code(i32),
    /// It trapped (the message is also written to its stderr).
    Trap(String),
    /// It trapped after a memory growth was refused by its memory limit.
    OutOfMemory(String),
}

impl Exit {
    /// The status containerd reports, as a Linux process would have it.
    pub fn status(&self) -> u32 {
        match self {
            Exit::Code(c) => (*c as u32) & 0xff,
            // 128 + SIGABRT, what the wasmtime CLI exits with on a trap.
            Exit::Trap(_) => 134,
            // 128 + SIGKILL, what the kernel's OOM killer leaves.
            Exit::OutOfMemory(_) => 137,
        }
    }
}

thread_local! {
    /// Thread CPU time at the start of the current guest poll on this thread.
    static POLL_START_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Adds the CPU time of every poll of `inner` to `stats.cpu_ns`, and charges
/// the host heap allocated during it to the guest (`hostmem`).
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    stats: Arc<GuestStats>,
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(inner: F, stats: Arc<GuestStats>) -> Self {
        Metered { inner: Box::pin(inner), stats }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_ns();
        POLL_START_NS.with(|c| c.set(start));
        let charging = self.stats.host.charging();
        let out = self.inner.as_mut().poll(cx);
        drop(charging);
        let spent = thread_cpu_ns().saturating_sub(start);
        self.stats.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

/// CPU use so far, including the poll in progress on this thread.
fn cpu_used_ns(stats: &GuestStats) -> u64 {
    let in_poll = thread_cpu_ns().saturating_sub(POLL_START_NS.with(|c| c.get()));
    stats.cpu_ns.load(Ordering::Relaxed) + in_poll
}

/// Called at every epoch tick while the guest runs: yield to the runtime (so
/// a kill lands and other guests run), and sleep off any CPU used beyond the
/// guest's quota or, when the shim's guests contend for its cores, beyond
/// its `cpu.shares` (see `fairshare`).
///
/// The quota is a token bucket: since the quota was set, the guest may have
/// used `elapsed * quota / period` of CPU plus one period's quota of burst.
/// Overshoot between two ticks is paid back by a longer sleep, so over time
/// the guest gets exactly its share.
pub(crate) fn deadline_callback<T>(
    fair: Arc<FairShare>,
    stats: Arc<GuestStats>,
) -> impl FnMut(wasmtime::StoreContextMut<T>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static {
    // (quota in force, when it took effect, CPU used then)
    let mut origin: Option<(wasmcell_grants::CpuQuota, Instant, u64)> = None;
    let mut budget = Budget::default();
    move |_| {
        let now = Instant::now();
        let used = cpu_used_ns(&stats);
        let key = Arc::as_ptr(&stats) as usize;
        let fair_wait = fair.tick(key, stats.cpu_shares(), now, used, &mut budget);
        let quota_wait = quota_wait(&mut origin, &stats, now, used);
        if let Some(wait) = quota_wait {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            stats.throttled_ns.fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
        }
        match quota_wait.max(fair_wait) {
            Some(wait) => Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(wait)))),
            None => Ok(UpdateDeadline::Yield(1)),
        }
    }
}

/// How long the guest must wait to be back within its CPU quota, if any.
fn quota_wait(
    origin: &mut Option<(wasmcell_grants::CpuQuota, Instant, u64)>,
    stats: &GuestStats,
    now: Instant,
    used: u64,
) -> Option<Duration> {
    let Some(q) = stats.cpu_quota() else {
        *origin = None;
        return None;
    };
    let (q0, t0, used0) = match *origin {
        Some(o) if o.0 == q => o,
        _ => {
            *origin = Some((q, now, used));
            return None;
        }
    };
    let share = q0.quota_us as f64 / q0.period_us as f64;
    let allowed = now.duration_since(t0).as_nanos() as f64 * share + (q0.quota_us * 1000) as f64;
    let spent = used.saturating_sub(used0) as f64;
    (spent > allowed).then(|| Duration::from_nanos(((spent - allowed) / share) as u64))
}

/// Host memory a guest holds is checked each time one of its host calls
/// returns (see `GuestStats::check_host_memory`): one call can take it over
/// its limit by what that call allocates, no more.
fn host_memory_hook<T>(
    stats: Arc<GuestStats>,
) -> impl FnMut(wasmtime::StoreContextMut<'_, T>, wasmtime::CallHook) -> wasmtime::Result<()> + Send + Sync + 'static {
    move |_, hook| match hook {
        wasmtime::CallHook::ReturningFromHost => stats.check_host_memory(),
        _ => Ok(()),
    }
}

/// A store's handle bound, also within its memory limit: one handle per
/// 4 KiB of the limit (at least 256), so a guest runs out of handles about
/// when the host memory they hold would run it out of memory.
fn handles_within(handles: usize, stats: &GuestStats) -> usize {
    match stats.memory_cap() {
        Some(cap) => handles.min(usize::try_from(cap / 4096).unwrap_or(usize::MAX)).max(256),
        None => handles,
    }
}

impl Engine {
    /// Runs `program` to completion under `config`. Must be polled inside a
    /// tokio runtime. Dropping the future stops the guest at its next epoch
    /// tick at the latest; that is how a kill is delivered.
    pub async fn run(
        &self,
        program: &Program,
        config: &GuestConfig,
        io: GuestIo,
        stats: Arc<GuestStats>,
    ) -> Result<Exit, EngineError> {
        let _running = self.inner.ticker.running();
        // The live limits are `stats`' (`GuestStats::for_limits` at Create,
        // then Update's): an Update before Start, a cleared limit included,
        // holds.
        // A second handle on stderr, for the shim's own word on a trap.
        let stderr_note: Option<OwnedFd> = io.stderr.as_ref().and_then(|fd| fd.try_clone().ok());
        let builder = config.builder(io)?;
        // The optimized code if it is ready by now, else the baseline code.
        let kind = program.kind();
        let fut = self.run_inner(&kind, config, builder, stats.clone());
        let result = Metered { inner: Box::pin(fut), stats: stats.clone() }.await;
        let exit = match result {
            Ok(exit) => exit,
            Err(e) => {
                if let Some(code) = e.downcast_ref::<I32Exit>() {
                    Exit::Code(code.0)
                } else {
                    let msg = format!("{e:#}");
                    if stats.oom.load(Ordering::Relaxed) {
                        Exit::OutOfMemory(msg)
                    } else {
                        Exit::Trap(msg)
                    }
                }
            }
        };
        let note = match &exit {
            Exit::Code(_) => None,
            Exit::Trap(m) => Some(format!("wasmcell: guest trapped: {m}\n")),
            Exit::OutOfMemory(m) => Some(format!(
                "wasmcell: guest exceeded its memory limit ({} bytes): {m}\n",
                stats.memory_cap().unwrap_or(0)
            )),
        };
        if let (Some(note), Some(fd)) = (note, stderr_note) {
            if let Ok(mut tx) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
                // Bounded: a reader that never drains must not hold the exit.
                let _ = tokio::time::timeout(Duration::from_secs(2), tx.write_all(note.as_bytes())).await;
            }
        }
        Ok(exit)
    }

    /// A store for one component instance: the memory limiter, the handle
    /// bound, and the epoch callback that yields, enforces the CPU quota
    /// and shares.
    /// `engine` is the tier the instance's code was compiled for.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn component_store(
        &self,
        engine: &wasmtime::Engine,
        wasi: wasmtime_wasi::WasiCtx,
        limiter: MemoryLimiter,
        config: &GuestConfig,
        stats: Arc<GuestStats>,
        handles: usize,
    ) -> Store<P2State> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(handles_within(handles, &stats));
        let state = P2State {
            wasi,
            table,
            limiter,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: crate::ctx::HttpHooks { allow_outgoing: config.allows_outgoing() },
            config: config.config.clone(),
            keyvalue: config.keyvalue.clone(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.call_hook(host_memory_hook(stats.clone()));
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(deadline_callback(self.inner.fair.clone(), stats));
        store
    }

    async fn run_inner(
        &self,
        program: &Kind,
        config: &GuestConfig,
        mut builder: wasmtime_wasi::WasiCtxBuilder,
        stats: Arc<GuestStats>,
    ) -> wasmtime::Result<Exit> {
        let limiter = MemoryLimiter::new(stats.clone());
        let engine = program.engine();
        match program {
            Kind::Command(pre) => {
                let mut store = self.component_store(engine, builder.build(), limiter, config, stats, max_handles());
                let cmd = pre.instantiate_async(&mut store).await?;
                let out = cmd.wasi_cli_run().call_run(&mut store).await?;
                Ok(Exit::Code(if out.is_ok() { 0 } else { 1 }))
            }
            Kind::Command3(pre) => {
                let mut store = self.component_store(engine, builder.build(), limiter, config, stats, max_handles());
                let cmd = pre.instantiate_async(&mut store).await?;
                // The store's event loop runs the guest's tasks too; `run`
                // returning is the command's end, as `main` returning is.
                let out = store.run_concurrent(async |a| cmd.wasi_cli_run().call_run(a).await).await??;
                Ok(Exit::Code(if out.is_ok() { 0 } else { 1 }))
            }
            Kind::Http(_) | Kind::Http3(_) => {
                Err(wasmtime::Error::msg("an HTTP component is served with Engine::serve, not run"))
            }
            Kind::Module(pre) => {
                let mut wasi = builder.build_p1();
                wasmtime_wasi::WasiView::ctx(&mut wasi).table.set_max_capacity(handles_within(max_handles(), &stats));
                let state = P1State { wasi, limiter };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limiter);
                store.call_hook(host_memory_hook(stats.clone()));
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(deadline_callback(self.inner.fair.clone(), stats));
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await?;
                Ok(Exit::Code(0))
            }
        }
    }
}
