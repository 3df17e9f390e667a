//! Wasmtime for wasmcell: one shared [`Engine`] per shim, compiled programs
//! that are pre-linked against WASI once, and guests that run under the
//! [`Grants`](wasmcell_grants::Grants) their container's spec allows.
//!
//! A guest is a Wasmtime store driven as a future on the caller's tokio
//! runtime. It yields at every epoch tick (10 ms), so dropping its future
//! (kill) takes effect promptly even in an infinite loop, and a CPU quota can
//! be enforced by sleeping at those yield points; so is `cpu.shares`
//! between the guests of one shim (see `fairshare`).

pub mod cache;
mod ctx;
mod error;
mod fairshare;
mod fsguard;
pub mod hostmem;
pub mod http;
mod http3;
mod imports;
pub mod keyvalue;
mod limiter;
mod output;
mod policy;
mod run;
mod ticker;
mod tiers;

use std::sync::Arc;

use wasmcell_oci::WasmKind;
use wasmtime::component::Component;
use wasmtime::{Config, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

pub use ctx::{read_config_dir, ConfigVars, GuestConfig, GuestIo, P2State, Preopen, SocketScope, Tmpfs};
pub use error::EngineError;
pub use fairshare::DEFAULT_SHARES;
pub use imports::describe;
pub use keyvalue::{KvStore, MemoryStore, RedisStore};
pub use limiter::{max_handles, set_max_handles, GuestStats, HostMemory, DEFAULT_MAX_HANDLES};
pub use policy::{admit, Granted};
pub use run::Exit;
pub use tiers::{Cancel, Concurrency, FirstStart, Tier};
pub use wasmcell_grants::Policy;

use ctx::P1State;

/// How often the epoch advances: the longest a guest runs between yields.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The shim-wide Wasmtime engine with its WASI linkers.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The optimizing tier: what the cache holds and later starts run.
    opt: tiers::Linked,
    /// The baseline tier, made at the first first start that uses it; None
    /// when this Wasmtime cannot make one (logged).
    baseline: std::sync::OnceLock<Option<tiers::Linked>>,
    /// The optimizing tier's configuration, which the baseline's derives from.
    config: Config,
    first_start: FirstStart,
    ticker: ticker::Ticker,
    fair: Arc<fairshare::FairShare>,
    cache: Option<cache::Cache>,
    compiler: Option<Compiler>,
    policy: Option<Arc<Policy>>,
    /// Whether this engine runs the component model's concurrency.
    concurrency: Concurrency,
    /// The twin without it, where the components that need none run (see
    /// [`Concurrency`]); only on the engine that has it.
    sync: Option<Engine>,
}

/// The Wasm `wasm` gives, got on the first call of any closure made on
/// the same `slot`, then borrowed from it.
fn once<'s, 'a: 's, F>(
    slot: &'s mut Option<std::borrow::Cow<'a, [u8]>>,
    wasm: &'s mut Option<F>,
) -> impl FnOnce() -> Result<std::borrow::Cow<'s, [u8]>, EngineError> + use<'s, 'a, F>
where
    F: FnOnce() -> Result<std::borrow::Cow<'a, [u8]>, EngineError>,
{
    move || {
        if slot.is_none() {
            let read = wasm.take().ok_or_else(|| EngineError::Setup("the Wasm could not be read".into()))?;
            *slot = Some(read()?);
        }
        let slot: &'s Option<std::borrow::Cow<'a, [u8]>> = slot;
        match slot {
            Some(w) => Ok(std::borrow::Cow::Borrowed(&**w)),
            None => Err(EngineError::Setup("the Wasm could not be read".into())),
        }
    }
}

/// What the two engines of a twin pair share.
struct Shared {
    cache: Option<cache::CacheConfig>,
    compiler: Option<Compiler>,
    policy: Option<Arc<Policy>>,
    ticker: ticker::Ticker,
    fair: Arc<fairshare::FairShare>,
}

/// Turns Wasm into this engine's compiled form for a tier
/// ([`Engine::precompile_tier`]'s output), possibly elsewhere: the shim runs
/// the compiler in a child process, so that a compile's memory and code
/// pages do not stay with a long-lived shim and a compiler crash cannot take
/// the shim down. A compile stops (with an error) once `Cancel` is set.
/// The compiled form is for an engine with or without the component
/// model's concurrency, as `Concurrency` says.
pub type Compiler =
    Arc<dyn Fn(&[u8], WasmKind, Tier, Concurrency, &Cancel) -> Result<Compiled, EngineError> + Send + Sync>;

/// What a [`Compiler`] made: Wasmtime's compiled form, in memory or in a
/// sealed in-memory file.
#[derive(Debug)]
pub enum Compiled {
    /// The compiled bytes.
    Bytes(Vec<u8>),
    /// An in-memory file (memfd) that the compiler child wrote the compiled
    /// form into and that can no longer change (sealed against writes,
    /// growth and shrinking): a first start maps it rather than copying it.
    /// The compiler must be this binary with this engine's configuration,
    /// as for [`Bytes`](Self::Bytes).
    Sealed(std::fs::File),
}

impl Compiled {
    /// The compiled bytes (read from the file for a sealed one).
    pub fn into_bytes(self) -> Result<Vec<u8>, EngineError> {
        match self {
            Compiled::Bytes(b) => Ok(b),
            sealed => cache::Artifact::from(sealed)
                .to_vec()
                .map_err(|e| EngineError::Io { what: "compiled artifact".into(), reason: e.to_string() }),
        }
    }
}

/// A compiled, pre-linked guest, ready to instantiate any number of times.
///
/// A first start may run baseline code while the optimized code is being
/// compiled (see `tiers`): the program then moves to the optimized code
/// when it is ready; instances made after that run it.
#[derive(Clone)]
pub struct Program {
    kind: Kind,
    upgrade: Option<Upgrade>,
}

/// What a program is, and the code it runs.
#[derive(Clone)]
pub(crate) enum Kind {
    /// A component exporting `wasi:cli/run@0.2.x`.
    Command(CommandPre<P2State>),
    /// A component exporting `wasi:cli/run@0.3.x`: an async command.
    Command3(wasmtime_wasi::p3::bindings::CommandPre<P2State>),
    /// A core module exporting `_start` (WASI preview 1).
    Module(wasmtime::InstancePre<P1State>),
    /// A component exporting `wasi:http/incoming-handler@0.2.x`: a server,
    /// one instance per request.
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<P2State>),
    /// A component exporting `wasi:http/handler@0.3.x`: a server whose
    /// instances each take several requests at once (see `http`).
    Http3(wasmtime_wasi_http::p3::bindings::ServicePre<P2State>),
}

impl Kind {
    /// The engine (tier) its code was compiled for.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        match self {
            Kind::Command(p) => p.instance_pre().engine(),
            Kind::Command3(p) => p.instance_pre().engine(),
            Kind::Module(p) => p.module().engine(),
            Kind::Http(p) => p.instance_pre().engine(),
            Kind::Http3(p) => p.instance_pre().engine(),
        }
    }
}

/// The optimized code of a program started on baseline code: `None` until
/// the background compile is done. Dropping the last copy of the program
/// cancels the compile.
#[derive(Clone)]
pub(crate) struct Upgrade {
    pub(crate) ready: tokio::sync::watch::Receiver<Option<Kind>>,
    _cancel: Arc<tiers::CancelOnDrop>,
}

impl Program {
    fn ready(kind: Kind) -> Self {
        Program { kind, upgrade: None }
    }

    /// What it runs now: the optimized code once it is ready, else what it
    /// started with.
    pub(crate) fn kind(&self) -> Kind {
        if let Some(Some(k)) = self.upgrade.as_ref().map(|u| u.ready.borrow().clone()) {
            return k;
        }
        self.kind.clone()
    }

    pub(crate) fn upgrade(&self) -> Option<&Upgrade> {
        self.upgrade.as_ref()
    }

    /// Stops its background compile now (its compiler child is killed,
    /// nothing is stored), for a container being deleted: its cgroup can
    /// then go at once, where the compiler would keep it busy. Copies of
    /// the program keep running the code they have.
    pub fn cancel_background_compile(&self) {
        if let Some(u) = &self.upgrade {
            u._cancel.0.cancel();
        }
    }

    /// Serves HTTP rather than running to completion.
    pub fn is_server(&self) -> bool {
        matches!(self.kind, Kind::Http(_) | Kind::Http3(_))
    }

    /// The tier of the code it runs now.
    pub fn tier(&self) -> Tier {
        match &self.upgrade {
            Some(u) if u.ready.borrow().is_none() => Tier::Baseline,
            _ => Tier::Optimized,
        }
    }

    /// Waits until it runs optimized code; false if that will not happen
    /// (the background compile failed or was cancelled).
    pub async fn optimized(&self) -> bool {
        match &self.upgrade {
            None => true,
            Some(u) => u.ready.clone().wait_for(|k| k.is_some()).await.is_ok(),
        }
    }

    /// The compiled image it runs from: its code and data, mapped from
    /// the artifact.
    fn image(&self) -> std::ops::Range<*const u8> {
        match self.kind() {
            Kind::Command(p) => p.instance_pre().component().image_range(),
            Kind::Command3(p) => p.instance_pre().component().image_range(),
            Kind::Module(p) => p.module().image_range(),
            Kind::Http(p) => p.instance_pre().component().image_range(),
            Kind::Http3(p) => p.instance_pre().component().image_range(),
        }
    }

    /// Bytes of its image in memory now (the pages its instances touched:
    /// code run, data read), by mincore(2); 0 if that cannot be told.
    pub fn resident_image_bytes(&self) -> u64 {
        let r = self.image();
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as usize;
        let start = (r.start as usize) & !(page - 1);
        let end = r.end as usize;
        if end <= start {
            return 0;
        }
        let pages = (end - start).div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `start..end` lies within the image mapping `self` keeps
        // alive (start rounded down to its page, as mincore requires; the
        // mapping is page-aligned); `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        (vec.iter().filter(|b| **b & 1 == 1).count() * page) as u64
    }

    /// What it is, as `wasmcell explain` and the logs name it.
    pub fn world(&self) -> &'static str {
        match &self.kind {
            Kind::Command(_) => "wasi:cli/command@0.2 (component)",
            Kind::Command3(_) => "wasi:cli/command@0.3 (component)",
            Kind::Module(_) => "WASI preview 1 command (core module)",
            Kind::Http(_) => "wasi:http/proxy@0.2 (component)",
            Kind::Http3(_) => "wasi:http/service@0.3 (component)",
        }
    }
}

/// Bytes of a pooled linear memory slot kept mapped and reset in place
/// between instances, when the kernel can tell which pages an instance
/// dirtied (PAGEMAP_SCAN, Linux 6.7+): only those are reset, so a large
/// kept range costs nothing for a small guest.
const KEEP_RESIDENT_SCANNED: usize = 16 << 20;
/// The same without PAGEMAP_SCAN, where the kept range is zeroed whole: it
/// covers a small guest's memory (zeroing is then cheaper than madvise and
/// the refaults after it), no more.
const KEEP_RESIDENT_ZEROED: usize = 2 << 20;
/// Bytes of a table slot kept resident.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Whether this kernel has PAGEMAP_SCAN (Linux 6.7).
fn pagemap_scan_supported() -> bool {
    let uts = nix::sys::utsname::uname();
    let Ok(uts) = uts else { return false };
    release_at_least(&uts.release().to_string_lossy(), (6, 7))
}

/// Whether a kernel release string (`6.1.0-28-amd64`) is at least `min`.
fn release_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= min)
}

/// What decides the code an engine compiles (and so which artifacts it
/// loads): the same for the shim's engines and a compiler child's.
fn compile_config(policy: Option<&Policy>) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .wasm_component_model(true)
        // WASI 0.3: async lifts and lowers, streams and futures.
        .wasm_component_model_async(true)
        .parallel_compilation(true);
    if let Some(p) = policy {
        config.wasm_features(policy::denied(p), false);
    }
    config
}

/// The engine of a twin pair without the component model's concurrency.
fn without_concurrency(config: &mut Config) {
    config.wasm_component_model_async(false).concurrency_support(false);
}

/// Wasmtime's serialized form of `bytes`, compiled by `engine`.
fn precompile_with(engine: &wasmtime::Engine, bytes: &[u8], kind: WasmKind) -> Result<Vec<u8>, EngineError> {
    match kind {
        WasmKind::Component => engine.precompile_component(bytes),
        WasmKind::Module => engine.precompile_module(bytes),
    }
    .map_err(EngineError::compile)
}

/// The pooling instance allocator: an HTTP component gets a fresh instance
/// per request, and pooling makes that an index allocation plus a reset of
/// pages already mapped, instead of an mmap/munmap of a multi-GiB
/// reservation each time (which also costs every thread a TLB shootdown).
///
/// One shim serves one container or one pod, so the pool is sized for that;
/// the reservations are address space only (PROT_NONE), not memory. The
/// per-instance limits are generous so that large components (CPython built
/// with componentize-py has tables of tens of thousands of functions) still
/// instantiate: a container's real bound is its memory limit, enforced by the
/// store's limiter, not the pool's slot size.
fn pooling() -> wasmtime::PoolingAllocationConfig {
    let mut p = wasmtime::PoolingAllocationConfig::default();
    p.total_component_instances(256)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(512)
        .total_stacks(256)
        .max_component_instance_size(16 << 20)
        .max_core_instance_size(16 << 20)
        .max_memories_per_module(4)
        .max_tables_per_module(8)
        // Every table slot reserves `table_elements` pointers of address space.
        .table_elements(1 << 20)
        // wasm32's whole range: the container's memory limit, not the slot,
        // is what bounds a guest.
        .max_memory_size(4 << 30)
        // A slot's first pages are reset by writing zeros rather than by
        // madvise(DONTNEED): no syscall, no refault of the pages, and no TLB
        // shootdown of the other cores per instance (issue 15's profile:
        // decommit, faults and shootdowns were over half the shim's CPU).
        // Beyond the kept sizes (a guest that grew large) madvise is cheaper.
        .table_keep_resident(KEEP_RESIDENT_TABLE);
    // On Linux 6.7+ only the pages the instance dirtied are reset
    // (PAGEMAP_SCAN): on the p2 hello handler, shim CPU per 1000 requests
    // went from 86-92 ms to 50 ms, requests/s from 10k to 19.7k.
    if pagemap_scan_supported() {
        p.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(KEEP_RESIDENT_SCANNED);
    } else {
        p.linear_memory_keep_resident(KEEP_RESIDENT_ZEROED);
    }
    p
}

/// How much nicer than the shim a background compile runs: the container
/// that started on baseline code, and the shim's other containers, come
/// first; the compile has the CPU they leave (against a thread that is
/// always runnable it gets about a quarter of a core). Not more: until it
/// ends, the container runs the slower baseline code.
pub const BACKGROUND_NICE: libc::c_int = 5;

/// Makes this thread [`BACKGROUND_NICE`] nicer. On Linux the nice value is
/// per thread, and a compiler child forked from this thread inherits it; it
/// stays in the same cgroup, under the same CPU limit.
fn background_priority() {
    // SAFETY: errno is this thread's; getpriority and setpriority have no
    // memory effects (`0` is the calling thread). -1 is a valid nice value,
    // so errno tells an error.
    unsafe {
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        if *libc::__errno_location() == 0
            && libc::setpriority(libc::PRIO_PROCESS, 0, (now + BACKGROUND_NICE).min(19)) == 0
        {
            return;
        }
    }
    log::debug!("background compile keeps its priority: {}", std::io::Error::last_os_error());
}

/// What a program is made from: a compiled artifact, or the Wasm itself.
enum Source<'a> {
    Artifact(cache::Artifact),
    Wasm(std::borrow::Cow<'a, [u8]>),
}

impl Engine {
    /// An engine without a compile cache.
    pub fn new() -> Result<Self, EngineError> {
        Self::with_cache(None)
    }

    /// An engine whose compiled artifacts are cached as `cache` says. A cache
    /// that cannot be opened (read-only or full disk) is logged and skipped:
    /// containers still start, compiling every time.
    pub fn with_cache(cache: Option<cache::CacheConfig>) -> Result<Self, EngineError> {
        Self::with_options(cache, None)
    }

    /// An engine with a compile cache (as [`with_cache`](Self::with_cache))
    /// that compiles with `compiler` instead of in this process.
    pub fn with_options(cache: Option<cache::CacheConfig>, compiler: Option<Compiler>) -> Result<Self, EngineError> {
        Self::with_policy(cache, compiler, None)
    }

    /// An engine (as [`with_options`](Self::with_options)) under a runtime
    /// handler's policy: the Wasm features it denies are off in this
    /// engine, which also makes its compiled artifacts distinct cache
    /// entries; the imports it denies are refused at [`prepare`](Self::prepare).
    pub fn with_policy(
        cache: Option<cache::CacheConfig>,
        compiler: Option<Compiler>,
        policy: Option<Policy>,
    ) -> Result<Self, EngineError> {
        let mut config = compile_config(policy.as_ref());
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling()));
        let mut sync_config = config.clone();
        without_concurrency(&mut sync_config);
        let policy = policy.map(Arc::new);
        let ticker = ticker::Ticker::new(TICK);
        let fair = Arc::new(fairshare::FairShare::new());
        let shared = Shared { cache, compiler, policy, ticker, fair };
        let sync = Self::build(sync_config, Concurrency::Off, &shared, None)?;
        Self::build(config, Concurrency::On, &shared, Some(sync))
    }

    /// Compiles `bytes` for an engine under `policy` (as
    /// [`with_policy`](Self::with_policy) makes it) with the one Wasmtime
    /// engine that takes: no instance pool, no WASI linkers, no cache. What a
    /// compiler child runs; its artifact loads in the shim's engine.
    pub fn precompile_alone(
        bytes: &[u8],
        kind: WasmKind,
        tier: Tier,
        concurrency: Concurrency,
        policy: Option<&Policy>,
    ) -> Result<Vec<u8>, EngineError> {
        let mut config = compile_config(policy);
        if concurrency == Concurrency::Off {
            without_concurrency(&mut config);
        }
        if tier == Tier::Baseline {
            config = tiers::baseline_config(&config);
        }
        precompile_with(&wasmtime::Engine::new(&config).map_err(EngineError::setup)?, bytes, kind)
    }

    /// One engine of a twin pair (see [`Concurrency`]), sharing the epoch
    /// clock, the CPU fair share, the cache directory, the compiler and the
    /// policy with the other.
    fn build(
        config: Config,
        concurrency: Concurrency,
        shared: &Shared,
        sync: Option<Engine>,
    ) -> Result<Self, EngineError> {
        let policy = &shared.policy;
        let opt = tiers::Linked::new(&config, concurrency).map_err(|e| match policy {
            Some(p) if !p.deny_wasm_features.is_empty() => EngineError::Setup(format!(
                "policy {}: deny_wasm_features {:?}: {e:#}",
                p.path.display(),
                p.deny_wasm_features
            )),
            _ => EngineError::setup(e),
        })?;
        shared.ticker.add(opt.engine.clone());
        let cache = shared.cache.clone().and_then(|c| match cache::Cache::open(c, &opt.engine) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("compile cache disabled: {e}");
                None
            }
        });
        Ok(Engine {
            inner: Arc::new(Inner {
                opt,
                baseline: std::sync::OnceLock::new(),
                config,
                first_start: FirstStart::from_env(),
                ticker: shared.ticker.clone(),
                fair: shared.fair.clone(),
                cache,
                compiler: shared.compiler.clone(),
                policy: shared.policy.clone(),
                concurrency,
                sync,
            }),
        })
    }

    /// This engine with first starts made as `f` says (the default is
    /// `WASMCELL_FIRST_START`'s). Only before the engine is shared.
    pub fn with_first_start(mut self, f: FirstStart) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.first_start = f;
                inner.sync = inner.sync.take().map(|s| s.with_first_start(f));
            }
            None => log::warn!("with_first_start on a shared engine: ignored"),
        }
        self
    }

    /// The baseline tier, made on first use.
    fn baseline(&self) -> Option<&tiers::Linked> {
        self.inner
            .baseline
            .get_or_init(|| match tiers::Linked::baseline(&self.inner.config, self.inner.concurrency) {
                Ok(l) => {
                    self.inner.ticker.add(l.engine.clone());
                    Some(l)
                }
                Err(e) => {
                    log::warn!("no baseline compiler (first starts wait for optimized code): {e}");
                    None
                }
            })
            .as_ref()
    }

    fn tier(&self, tier: Tier) -> Result<&tiers::Linked, EngineError> {
        match tier {
            Tier::Optimized => Ok(&self.inner.opt),
            Tier::Baseline => self.baseline().ok_or_else(|| EngineError::Setup("no baseline compiler".into())),
        }
    }

    /// Bytes the pooling allocator keeps resident in slots no instance uses
    /// now (memories, tables and stacks kept warm for the next instance):
    /// memory the shim's guests caused and that stays with the shim.
    pub fn warm_pool_bytes(&self) -> u64 {
        let warm = |e: &wasmtime::Engine| {
            e.pooling_allocator_metrics().map_or(0, |m| {
                (m.unused_memory_bytes_resident()
                    + m.unused_table_bytes_resident()
                    + m.unused_stack_bytes_resident().unwrap_or(0)) as u64
            })
        };
        warm(&self.inner.opt.engine)
            + self.inner.baseline.get().and_then(Option::as_ref).map_or(0, |b| warm(&b.engine))
            + self.inner.sync.as_ref().map_or(0, Engine::warm_pool_bytes)
    }

    /// The runtime handler's policy this engine enforces.
    pub fn policy(&self) -> Option<&Policy> {
        self.inner.policy.as_deref()
    }

    /// The optimizing tier's Wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.opt.engine
    }

    /// Compiles `bytes` in this process into Wasmtime's serialized form,
    /// loadable by any engine of this configuration (optimized code).
    pub fn precompile(&self, bytes: &[u8], kind: WasmKind) -> Result<Vec<u8>, EngineError> {
        self.precompile_tier(bytes, kind, Tier::Optimized)
    }

    /// [`precompile`](Self::precompile) for a tier.
    pub fn precompile_tier(&self, bytes: &[u8], kind: WasmKind, tier: Tier) -> Result<Vec<u8>, EngineError> {
        precompile_with(&self.tier(tier)?.engine, bytes, kind)
    }

    fn compile(&self, bytes: &[u8], kind: WasmKind, tier: Tier, cancel: &Cancel) -> Result<Compiled, EngineError> {
        match &self.inner.compiler {
            Some(c) => c(bytes, kind, tier, self.inner.concurrency, cancel),
            None => self.precompile_tier(bytes, kind, tier).map(Compiled::Bytes),
        }
    }

    /// [`compile`](Self::compile) into bytes, as the cache stores them.
    fn compile_bytes(&self, bytes: &[u8], kind: WasmKind, tier: Tier, cancel: &Cancel) -> Result<Vec<u8>, EngineError> {
        self.compile(bytes, kind, tier, cancel)?.into_bytes()
    }

    /// Compiles `bytes` and links it against WASI, so that every reason it
    /// cannot run (malformed, a missing import, no entry point) is reported
    /// here, at Create, rather than at Start.
    /// Imports that need a grant (`wasi:keyvalue`) are refused unless
    /// `granted` has it; those the engine's policy denies always are.
    pub fn prepare(&self, bytes: &[u8], kind: WasmKind, granted: Granted) -> Result<Program, EngineError> {
        let digest = self.inner.cache.as_ref().map(|_| cache::digest(bytes));
        self.prepare_with(digest, kind, granted, || Ok(std::borrow::Cow::Borrowed(bytes)))
    }

    /// [`prepare`](Self::prepare) for a file of a container's rootfs. With a
    /// compile cache, a start of a file whose identity (`id`) was seen before
    /// and that is compiled does not read it at all (see [`cache`]).
    pub fn prepare_file(
        &self,
        wasm: &wasmcell_oci::WasmFile,
        id: Option<wasmcell_oci::FileId>,
        granted: Granted,
    ) -> Result<Program, EngineError> {
        let io = |e: wasmcell_oci::EntrypointError| EngineError::Io { what: wasm.path.clone(), reason: e.to_string() };
        // A file seen before: its recorded digest, the file not read unless
        // it must be compiled. One not seen before is most likely not
        // compiled either: read once, and hashed from memory (hashing it
        // from the file and then reading it cost a first start an extra pass
        // over the Wasm).
        let (digest, read) = match &self.inner.cache {
            Some(cache) => match id.as_ref().and_then(|i| cache.known_digest(i)) {
                Some(d) => {
                    log::debug!("{}: digest known from the file's identity, not read", wasm.path);
                    (Some(d), None)
                }
                None => {
                    let bytes = wasm.read_all().map_err(io)?;
                    let d = cache::digest(&bytes);
                    // Recorded only if the file kept its identity while it
                    // was read.
                    if let Some(i) =
                        id.as_ref().filter(|i| wasmcell_oci::FileId::of(wasm.file(), Some(i.dev)).as_ref() == Some(*i))
                    {
                        cache.remember_digest(i, &d);
                    }
                    (Some(d), Some(bytes))
                }
            },
            None => (None, None),
        };
        self.prepare_with(digest, wasm.kind, granted, || {
            if let Some(bytes) = read {
                return Ok(std::borrow::Cow::Owned(bytes));
            }
            let bytes = wasm.read_all().map_err(io)?;
            // What is compiled must be what was hashed: the artifact is
            // stored under that hash, for every container that runs it.
            if digest.is_some_and(|d| d != cache::digest(&bytes)) {
                // A recorded digest that no longer matches is dropped, so
                // the next start hashes the file afresh.
                if let (Some(cache), Some(id)) = (&self.inner.cache, id.as_ref()) {
                    cache.forget_digest(id);
                }
                return Err(EngineError::Changed(wasm.path.clone()));
            }
            Ok(std::borrow::Cow::Owned(bytes))
        })
    }

    /// The engine of this pair with or without the component model's
    /// concurrency (see [`Concurrency`]).
    pub fn with_concurrency(&self, concurrency: Concurrency) -> &Engine {
        match &self.inner.sync {
            Some(sync) if concurrency == Concurrency::Off => sync,
            _ => self,
        }
    }

    /// Compiles (or loads from the cache, when `digest` is given) and links,
    /// a component on the engine without concurrency when it runs there (see
    /// [`Concurrency`]).
    fn prepare_with<'a>(
        &self,
        digest: Option<blake3::Hash>,
        kind: WasmKind,
        granted: Granted,
        wasm: impl FnOnce() -> Result<std::borrow::Cow<'a, [u8]>, EngineError>,
    ) -> Result<Program, EngineError> {
        let Some(sync) = self.inner.sync.as_ref().filter(|_| kind == WasmKind::Component) else {
            return self.prepare_one(digest, kind, granted, wasm);
        };
        // Compiled before: for one engine or the other. A component that
        // needs concurrency is never tried on the other engine again.
        if let (Some(d), Some(cache), Some(sync_cache)) = (digest, &self.inner.cache, &sync.inner.cache) {
            if !sync_cache.contains(&d, kind) && cache.contains(&d, kind) {
                return self.prepare_one(digest, kind, granted, wasm);
            }
        }
        // Read (and hash-checked) once for both tries.
        let (mut read, mut wasm) = (None, Some(wasm));
        match sync.prepare_one(digest, kind, granted, once(&mut read, &mut wasm)) {
            Ok(p) => Ok(p),
            // Async lifts or lowers (the compiler refuses them without
            // concurrency), or WASI 0.3 imports or exports (not linked there).
            Err(e @ (EngineError::Compile(_) | EngineError::Link(_) | EngineError::NoEntry { .. })) => {
                log::debug!("{kind:?}: runs on the engine with the component model's concurrency ({e})");
                self.prepare_one(digest, kind, granted, once(&mut read, &mut wasm))
            }
            Err(e) => Err(e),
        }
    }

    /// [`prepare_with`](Self::prepare_with) on this engine.
    fn prepare_one<'a>(
        &self,
        digest: Option<blake3::Hash>,
        kind: WasmKind,
        granted: Granted,
        wasm: impl FnOnce() -> Result<std::borrow::Cow<'a, [u8]>, EngineError>,
    ) -> Result<Program, EngineError> {
        let policy = self.policy();
        // Whatever can be refused without compiling is refused first.
        let checked = || {
            let w = wasm()?;
            match kind {
                WasmKind::Module => imports::check_module(&w)?,
                WasmKind::Component => {
                    let names = imports::component_imports(&w);
                    policy::check_imports(names.iter().map(String::as_str), policy, granted)?;
                }
            }
            if let Some(p) = policy {
                policy::check_features(&w, p)?;
            }
            Ok::<_, EngineError>(w)
        };
        let never = Cancel::default();
        let source = match (digest, &self.inner.cache) {
            (Some(d), Some(cache)) => {
                if let Some(artifact) = cache.get(&d, kind) {
                    log::debug!("{kind:?}: compile cache Hit");
                    return self.link(Tier::Optimized, kind, &Source::Artifact(artifact), granted).map(Program::ready);
                }
                let w = checked()?;
                if self.inner.first_start.baseline_for(w.len()) {
                    if let Some(p) = self.first_start(d, &w, kind, granted)? {
                        return Ok(p);
                    }
                }
                let (artifact, outcome) =
                    cache.get_or_compile(&d, kind, || self.compile_bytes(&w, kind, Tier::Optimized, &never))?;
                log::debug!("{kind:?}: compile cache {outcome:?}");
                Source::Artifact(artifact)
            }
            _ if self.inner.compiler.is_some() => {
                Source::Artifact(cache::Artifact::from(self.compile(&checked()?, kind, Tier::Optimized, &never)?))
            }
            _ => Source::Wasm(checked()?),
        };
        self.link(Tier::Optimized, kind, &source, granted).map(Program::ready)
    }

    /// A first start: baseline code now, and the optimizing compile into
    /// the cache on a thread of its own, the program moving over when it is
    /// done. `None` when there is no baseline tier or it cannot compile
    /// this Wasm (a proposal Winch lacks): the caller compiles optimized
    /// code and waits for it.
    fn first_start(
        &self,
        digest: blake3::Hash,
        wasm: &[u8],
        kind: WasmKind,
        granted: Granted,
    ) -> Result<Option<Program>, EngineError> {
        if self.baseline().is_none() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let artifact = match self.compile(wasm, kind, Tier::Baseline, &Cancel::default()) {
            Ok(a) => a,
            // Invalid Wasm, or a proposal the baseline compiler lacks: the
            // optimizing compiler says which, or compiles it.
            Err(EngineError::Compile(e)) => {
                log::info!("{kind:?}: baseline compile refused ({e}); compiling optimized code");
                return Ok(None);
            }
            // It needs more memory than the optimizing compile (see the
            // shim's `heap`): that one may still fit in the container's limit.
            Err(EngineError::CompilerKilled(e)) => {
                log::warn!("{kind:?}: baseline compile failed ({e}); compiling optimized code");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let compiled = started.elapsed();
        let baseline = self.link(Tier::Baseline, kind, &Source::Artifact(cache::Artifact::from(artifact)), granted)?;
        log::info!(
            "{kind:?}: first start on baseline code (compiled in {} ms, loaded in {} ms); optimizing in the background",
            compiled.as_millis(),
            (started.elapsed() - compiled).as_millis()
        );
        let (tx, rx) = tokio::sync::watch::channel(None);
        let cancel = Cancel::default();
        let (engine, wasm, stop) = (self.clone(), wasm.to_vec(), cancel.clone());
        let spawned = std::thread::Builder::new().name("wasm-optimize".into()).spawn(move || {
            background_priority();
            let started = std::time::Instant::now();
            let cache = engine.inner.cache.as_ref().expect("first starts are for cached engines");
            let linked = cache
                .get_or_compile(&digest, kind, || engine.compile_bytes(&wasm, kind, Tier::Optimized, &stop))
                .and_then(|(artifact, _)| engine.link(Tier::Optimized, kind, &Source::Artifact(artifact), granted));
            match linked {
                Ok(k) => {
                    log::info!("{kind:?}: optimized code ready after {} ms", started.elapsed().as_millis());
                    let _ = tx.send(Some(k));
                }
                Err(_) if stop.is_cancelled() => log::info!("{kind:?}: optimizing compile cancelled"),
                Err(e) => log::warn!("{kind:?}: optimizing compile failed ({e}); the baseline code keeps running"),
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the optimizing compile: {e}; compiling optimized code now");
            return Ok(None);
        }
        Ok(Some(Program {
            kind: baseline,
            upgrade: Some(Upgrade { ready: rx, _cancel: Arc::new(tiers::CancelOnDrop(cancel)) }),
        }))
    }

    /// Makes a compiled artifact (or Wasm) of `tier` into a program: loads
    /// it, checks its imports against the policy and grants, links it.
    fn link(&self, tier: Tier, kind: WasmKind, source: &Source<'_>, granted: Granted) -> Result<Kind, EngineError> {
        let linked = self.tier(tier)?;
        let engine = &linked.engine;
        match kind {
            WasmKind::Component => {
                let component = match source {
                    Source::Artifact(a) => cache::load_component(engine, a)?,
                    Source::Wasm(w) => Component::new(engine, &**w).map_err(EngineError::compile)?,
                };
                // Also when the artifact came from the cache, without the Wasm.
                let ty = component.component_type();
                let names: Vec<&str> = ty.imports(engine).map(|(n, _)| n).collect();
                policy::check_imports(names, self.policy(), granted)?;
                let pre = linked
                    .components
                    .instantiate_pre(&component)
                    .map_err(|e| EngineError::link(imports::explain(&linked.components, &component, e)))?;
                // What it is comes from its exports, not its name; a
                // handler wins over a command, and 0.3 over 0.2.
                if let Ok(service) = wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
                    return Ok(Kind::Http3(service));
                }
                if let Ok(proxy) = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre.clone()) {
                    return Ok(Kind::Http(proxy));
                }
                if let Ok(cmd) = wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()) {
                    return Ok(Kind::Command3(cmd));
                }
                let cmd = CommandPre::new(pre).map_err(|_| EngineError::NoEntry {
                    what: "component exports none of wasi:cli/run (0.2.x or 0.3.x), wasi:http/incoming-handler \
                           (0.2.x) or wasi:http/handler (0.3.x): nothing to run"
                        .into(),
                })?;
                Ok(Kind::Command(cmd))
            }
            WasmKind::Module => {
                let module = match source {
                    Source::Artifact(a) => cache::load_module(engine, a)?,
                    Source::Wasm(w) => Module::new(engine, &**w).map_err(EngineError::compile)?,
                };
                match module.get_export("_start") {
                    Some(wasmtime::ExternType::Func(_)) => {}
                    _ => return Err(EngineError::NoEntry {
                        what:
                            "core module does not export a _start function (only WASI commands can run as a container)"
                                .into(),
                    }),
                }
                let pre = linked.modules.instantiate_pre(&module).map_err(EngineError::link)?;
                Ok(Kind::Module(pre))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_release_comparison() {
        use super::release_at_least as at_least;
        assert!(at_least("6.18.44-fc-v657", (6, 7)));
        assert!(at_least("6.7.0", (6, 7)));
        assert!(at_least("7.0.1", (6, 7)));
        assert!(!at_least("6.1.0-28-amd64", (6, 7)));
        assert!(!at_least("5.15.0", (6, 7)));
        assert!(!at_least("garbage", (6, 7)));
    }
}
