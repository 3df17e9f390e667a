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
pub mod http;
mod http3;
mod imports;
pub mod keyvalue;
mod limiter;
mod policy;
mod run;
mod ticker;

use std::sync::Arc;

use wasmcell_oci::WasmKind;
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Config, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

pub use ctx::{read_config_dir, ConfigVars, GuestConfig, GuestIo, P2State, Preopen, SocketScope, Tmpfs};
pub use error::EngineError;
pub use fairshare::DEFAULT_SHARES;
pub use imports::describe;
pub use keyvalue::{KvStore, MemoryStore, RedisStore};
pub use limiter::{max_handles, set_max_handles, GuestStats, DEFAULT_MAX_HANDLES};
pub use policy::{admit, Granted};
pub use run::Exit;
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
    engine: wasmtime::Engine,
    components: ComponentLinker<P2State>,
    modules: Linker<P1State>,
    ticker: ticker::Ticker,
    fair: Arc<fairshare::FairShare>,
    cache: Option<cache::Cache>,
    compiler: Option<Compiler>,
    policy: Option<Arc<Policy>>,
}

/// Turns Wasm into this engine's compiled form ([`Engine::precompile`]'s
/// output), possibly elsewhere: the shim runs the compiler in a child
/// process, so that a compile's memory and code pages do not stay with a
/// long-lived shim and a compiler crash cannot take the shim down.
pub type Compiler = Arc<dyn Fn(&[u8], WasmKind) -> Result<Vec<u8>, EngineError> + Send + Sync>;

/// A compiled, pre-linked guest, ready to instantiate any number of times.
#[derive(Clone)]
pub enum Program {
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

impl Program {
    /// Serves HTTP rather than running to completion.
    pub fn is_server(&self) -> bool {
        matches!(self, Program::Http(_) | Program::Http3(_))
    }

    /// The compiled image it runs from: its code and data, mapped from
    /// the artifact.
    fn image(&self) -> std::ops::Range<*const u8> {
        match self {
            Program::Command(p) => p.instance_pre().component().image_range(),
            Program::Command3(p) => p.instance_pre().component().image_range(),
            Program::Module(p) => p.module().image_range(),
            Program::Http(p) => p.instance_pre().component().image_range(),
            Program::Http3(p) => p.instance_pre().component().image_range(),
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
        match self {
            Program::Command(_) => "wasi:cli/command@0.2 (component)",
            Program::Command3(_) => "wasi:cli/command@0.3 (component)",
            Program::Module(_) => "WASI preview 1 command (core module)",
            Program::Http(_) => "wasi:http/proxy@0.2 (component)",
            Program::Http3(_) => "wasi:http/service@0.3 (component)",
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
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            // WASI 0.3: async lifts and lowers, streams and futures.
            .wasm_component_model_async(true)
            .parallel_compilation(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling()));
        if let Some(p) = &policy {
            config.wasm_features(policy::denied(p), false);
        }
        let engine = wasmtime::Engine::new(&config).map_err(|e| match &policy {
            Some(p) if !p.deny_wasm_features.is_empty() => EngineError::Setup(format!(
                "policy {}: deny_wasm_features {:?}: {e:#}",
                p.path.display(),
                p.deny_wasm_features
            )),
            _ => EngineError::setup(e),
        })?;

        let mut components = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components).map_err(EngineError::setup)?;
        fsguard::guard_p2(&mut components).map_err(EngineError::setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut components).map_err(EngineError::setup)?;
        // WASI 0.3 in the same linker: a component may import both (Rust's
        // std brings 0.2 imports into every 0.3 component it builds).
        wasmtime_wasi::p3::add_to_linker(&mut components).map_err(EngineError::setup)?;
        fsguard::guard_p3(&mut components).map_err(EngineError::setup)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut components).map_err(EngineError::setup)?;
        // Served to every component; what a guest reads is what its spec
        // grants (an empty config store, no key-value store).
        wasmtime_wasi_config::add_to_linker(&mut components, P2State::config).map_err(EngineError::setup)?;
        keyvalue::add_to_linker(&mut components, P2State::keyvalue).map_err(EngineError::setup)?;
        let mut modules = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut P1State| &mut s.wasi)
            .map_err(EngineError::setup)?;

        let ticker = ticker::Ticker::new(engine.clone(), TICK);
        let cache = cache.and_then(|c| match cache::Cache::open(c, &engine) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("compile cache disabled: {e}");
                None
            }
        });
        Ok(Engine {
            inner: Arc::new(Inner {
                engine,
                components,
                modules,
                ticker,
                fair: Arc::new(fairshare::FairShare::new()),
                cache,
                compiler,
                policy: policy.map(Arc::new),
            }),
        })
    }

    /// Bytes the pooling allocator keeps resident in slots no instance uses
    /// now (memories, tables and stacks kept warm for the next instance):
    /// memory the shim's guests caused and that stays with the shim.
    pub fn warm_pool_bytes(&self) -> u64 {
        self.inner.engine.pooling_allocator_metrics().map_or(0, |m| {
            (m.unused_memory_bytes_resident()
                + m.unused_table_bytes_resident()
                + m.unused_stack_bytes_resident().unwrap_or(0)) as u64
        })
    }

    /// The runtime handler's policy this engine enforces.
    pub fn policy(&self) -> Option<&Policy> {
        self.inner.policy.as_deref()
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// Compiles `bytes` in this process into Wasmtime's serialized form,
    /// loadable by any engine of this configuration.
    pub fn precompile(&self, bytes: &[u8], kind: WasmKind) -> Result<Vec<u8>, EngineError> {
        let engine = &self.inner.engine;
        match kind {
            WasmKind::Component => engine.precompile_component(bytes),
            WasmKind::Module => engine.precompile_module(bytes),
        }
        .map_err(EngineError::compile)
    }

    fn compile(&self, bytes: &[u8], kind: WasmKind) -> Result<Vec<u8>, EngineError> {
        match &self.inner.compiler {
            Some(c) => c(bytes, kind),
            None => self.precompile(bytes, kind),
        }
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
    /// compile cache, a start that finds the file compiled does not read it
    /// into memory: it hashes it through a small buffer or, when `id` (the
    /// file's identity) was seen before, does not read it at all (see
    /// [`cache`]).
    pub fn prepare_file(
        &self,
        wasm: &wasmcell_oci::WasmFile,
        id: Option<wasmcell_oci::FileId>,
        granted: Granted,
    ) -> Result<Program, EngineError> {
        let digest = match &self.inner.cache {
            Some(cache) => Some(match id.as_ref().and_then(|i| cache.known_digest(i)) {
                Some(d) => {
                    log::debug!("{}: digest known from the file's identity, not read", wasm.path);
                    d
                }
                None => {
                    let d = cache::digest_file(wasm.file())
                        .map_err(|e| EngineError::Io { what: wasm.path.clone(), reason: e.to_string() })?;
                    // Recorded only if the file kept its identity while it
                    // was hashed.
                    if let Some(i) =
                        id.as_ref().filter(|i| wasmcell_oci::FileId::of(wasm.file(), Some(i.dev)).as_ref() == Some(*i))
                    {
                        cache.remember_digest(i, &d);
                    }
                    d
                }
            }),
            None => None,
        };
        self.prepare_with(digest, wasm.kind, granted, || {
            let bytes =
                wasm.read_all().map_err(|e| EngineError::Io { what: wasm.path.clone(), reason: e.to_string() })?;
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

    /// Compiles (or loads from the cache, when `digest` is given) and links.
    fn prepare_with<'a>(
        &self,
        digest: Option<blake3::Hash>,
        kind: WasmKind,
        granted: Granted,
        wasm: impl FnOnce() -> Result<std::borrow::Cow<'a, [u8]>, EngineError>,
    ) -> Result<Program, EngineError> {
        let engine = &self.inner.engine;
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
        let source = match (digest, &self.inner.cache) {
            (Some(d), Some(cache)) => {
                let (artifact, outcome) = cache.get_or_compile(&d, kind, || self.compile(&checked()?, kind))?;
                log::debug!("{kind:?}: compile cache {outcome:?}");
                Source::Artifact(artifact)
            }
            _ if self.inner.compiler.is_some() => {
                Source::Artifact(cache::Artifact::compiled(self.compile(&checked()?, kind)?))
            }
            _ => Source::Wasm(checked()?),
        };
        match kind {
            WasmKind::Component => {
                let component = match &source {
                    Source::Artifact(a) => cache::load_component(engine, a)?,
                    Source::Wasm(w) => Component::new(engine, &**w).map_err(EngineError::compile)?,
                };
                // Also when the artifact came from the cache, without the Wasm.
                let ty = component.component_type();
                let names: Vec<&str> = ty.imports(engine).map(|(n, _)| n).collect();
                policy::check_imports(names, policy, granted)?;
                let pre = self
                    .inner
                    .components
                    .instantiate_pre(&component)
                    .map_err(|e| EngineError::link(imports::explain(&self.inner.components, &component, e)))?;
                // What it is comes from its exports, not its name; a
                // handler wins over a command, and 0.3 over 0.2.
                if let Ok(service) = wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
                    return Ok(Program::Http3(service));
                }
                if let Ok(proxy) = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre.clone()) {
                    return Ok(Program::Http(proxy));
                }
                if let Ok(cmd) = wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()) {
                    return Ok(Program::Command3(cmd));
                }
                let cmd = CommandPre::new(pre).map_err(|_| EngineError::NoEntry {
                    what: "component exports none of wasi:cli/run (0.2.x or 0.3.x), wasi:http/incoming-handler \
                           (0.2.x) or wasi:http/handler (0.3.x): nothing to run"
                        .into(),
                })?;
                Ok(Program::Command(cmd))
            }
            WasmKind::Module => {
                let module = match &source {
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
                let pre = self.inner.modules.instantiate_pre(&module).map_err(EngineError::link)?;
                Ok(Program::Module(pre))
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
