//! Where Wasm becomes machine code, in two tiers.
//!
//! - The optimizing tier (Cranelift) makes the code every later start runs,
//!   from the compile cache.
//! - The baseline tier (Winch) compiles several times faster, into slower
//!   code. A first start on a node, when the cache has no optimized
//!   artifact yet, runs baseline code at once while the optimizing compile
//!   fills the cache in the background; a running HTTP service moves its
//!   new instances over when the optimized code is ready.
//!
//! Each tier is its own Wasmtime engine with its own WASI linkers (compiled
//! code is tied to the engine it was made for); both share the epoch clock,
//! the CPU fair share and the compile cache. Baseline artifacts are never
//! cached: they serve one container's first start only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wasmparser::WasmFeatures as F;
use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{Config, Linker};

use crate::ctx::{P1State, P2State};
use crate::{fsguard, keyvalue, EngineError};

/// Whether an engine runs the component model's concurrency (WASI 0.3:
/// async lifts and lowers, streams, futures, concurrent host calls).
///
/// Wasmtime runs every export call of an engine that has it through its
/// concurrent event loop, which a WASI 0.2 component never needs: the HTTP
/// bench's 0.2 handler served 13% more requests per second on an engine
/// without it. So each engine has a twin without it, and a component that
/// compiles and links without it (no async lifts or lowers, no 0.3 imports)
/// runs there; the others run on the engine that has it. Compiled code is
/// specific to one of the two: their artifacts are distinct cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// WASI 0.3 and the component model's async, as well as 0.2 and
    /// preview 1.
    On,
    /// WASI 0.2 components only (core modules too, but those always run on
    /// the engine that has it).
    Off,
}

/// Which compiler makes a program's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Cranelift: the code later starts load from the cache.
    Optimized,
    /// Winch: a fast compile into slower code, for a first start.
    Baseline,
}

/// How a first start (no optimized artifact in the cache) gets its code:
/// `WASMCELL_FIRST_START` and `WASMCELL_BASELINE_MIN_KB` in the shim's
/// environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// Baseline code now, optimized code in the background, for Wasm of at
    /// least `min_bytes` (the default: 1 MiB). Smaller Wasm compiles to
    /// optimized code in well under a second, and a short-lived container
    /// deleted before its background compile ends would leave the next start
    /// a first start again.
    Baseline { min_bytes: usize },
    /// Wait for the optimized code, as every start did before the tiers.
    Optimized,
}

/// Wasm smaller than this starts on optimized code by default.
pub const DEFAULT_BASELINE_MIN_BYTES: usize = 1 << 20;

impl FirstStart {
    /// From `WASMCELL_FIRST_START` (`baseline`, the default, or
    /// `optimized`) and `WASMCELL_BASELINE_MIN_KB`; an unknown value is
    /// logged and the default kept.
    pub fn from_env() -> Self {
        let min_bytes = match std::env::var("WASMCELL_BASELINE_MIN_KB") {
            Err(_) => DEFAULT_BASELINE_MIN_BYTES,
            Ok(v) => v.trim().parse::<usize>().map(|kb| kb.saturating_mul(1024)).unwrap_or_else(|_| {
                log::warn!("WASMCELL_BASELINE_MIN_KB={v:?} is not a number of KiB; using 1024");
                DEFAULT_BASELINE_MIN_BYTES
            }),
        };
        match std::env::var("WASMCELL_FIRST_START").as_deref() {
            Err(_) | Ok("" | "baseline") => FirstStart::Baseline { min_bytes },
            Ok("optimized") => FirstStart::Optimized,
            Ok(other) => {
                log::warn!("WASMCELL_FIRST_START={other:?}: not `baseline` or `optimized`; using baseline");
                FirstStart::Baseline { min_bytes }
            }
        }
    }

    /// Whether Wasm of `len` bytes starts on baseline code.
    pub(crate) fn baseline_for(self, len: usize) -> bool {
        matches!(self, FirstStart::Baseline { min_bytes } if len >= min_bytes)
    }
}

/// Proposals Winch does not compile (Wasmtime 48, x86_64): the baseline
/// engine turns them off, and Wasm that uses one starts on optimized code.
pub(crate) const WINCH_UNSUPPORTED: F = F::GC
    .union(F::FUNCTION_REFERENCES)
    .union(F::RELAXED_SIMD)
    .union(F::TAIL_CALL)
    .union(F::EXCEPTIONS)
    .union(F::LEGACY_EXCEPTIONS)
    .union(F::STACK_SWITCHING);

/// A tier's engine and its WASI linkers.
pub(crate) struct Linked {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) components: ComponentLinker<P2State>,
    pub(crate) modules: Linker<P1State>,
}

impl Linked {
    pub(crate) fn new(config: &Config, concurrency: Concurrency) -> wasmtime::Result<Linked> {
        let engine = wasmtime::Engine::new(config)?;
        let mut components = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components)?;
        fsguard::guard_p2(&mut components)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut components)?;
        // WASI 0.3 in the same linker: a component may import both (Rust's
        // std brings 0.2 imports into every 0.3 component it builds).
        if concurrency == Concurrency::On {
            wasmtime_wasi::p3::add_to_linker(&mut components)?;
            fsguard::guard_p3(&mut components)?;
            wasmtime_wasi_http::p3::add_to_linker(&mut components)?;
        }
        // Served to every component; what a guest reads is what its spec
        // grants (an empty config store, no key-value store).
        wasmtime_wasi_config::add_to_linker(&mut components, P2State::config)?;
        keyvalue::add_to_linker(&mut components, P2State::keyvalue)?;
        let mut modules = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut P1State| &mut s.wasi)?;
        Ok(Linked { engine, components, modules })
    }

    /// The baseline tier for an optimizing engine configured as `config`.
    pub(crate) fn baseline(config: &Config, concurrency: Concurrency) -> Result<Linked, EngineError> {
        Linked::new(&baseline_config(config), concurrency).map_err(EngineError::setup)
    }
}

/// The baseline tier's configuration for an optimizing engine configured as
/// `config`.
pub(crate) fn baseline_config(config: &Config) -> Config {
    let mut c = config.clone();
    c.strategy(wasmtime::Strategy::Winch).wasm_features(WINCH_UNSUPPORTED, false);
    // Winch still has Cranelift compile a trampoline for every function
    // that escapes (a table entry, an export): about a quarter of a
    // large component's baseline compile. They are a few instructions
    // each, so the fastest Cranelift settings lose nothing. Native unwind
    // info (.eh_frame) is only for outside unwinders such as profilers;
    // Wasmtime's own traps and backtraces do not use it. Baseline code
    // lives for one first start, so it goes without.
    c.cranelift_opt_level(wasmtime::OptLevel::None)
        .cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass)
        .native_unwind_info(false);
    c
}

/// Asks a compile to stop: the compiler is killed and nothing is stored.
/// Whoever waits on a compile registers [`on_cancel`](Self::on_cancel) to
/// hear of it at once, not at its next look at the flag.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    wakers: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl Cancel {
    pub fn cancel(&self) {
        let wakers = {
            let mut w = self.0.wakers.lock().unwrap_or_else(|p| p.into_inner());
            self.0.cancelled.store(true, Ordering::SeqCst);
            std::mem::take(&mut *w)
        };
        for wake in wakers {
            wake();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Runs `wake` when the compile is cancelled (now, if it already is).
    pub fn on_cancel(&self, wake: impl FnOnce() + Send + 'static) {
        let mut w = self.0.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.cancelled.load(Ordering::SeqCst) {
            drop(w);
            wake();
        } else {
            w.push(Box::new(wake));
        }
    }
}

/// Cancels a background compile when the last copy of its program (its
/// container's) is dropped.
pub(crate) struct CancelOnDrop(pub(crate) Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
