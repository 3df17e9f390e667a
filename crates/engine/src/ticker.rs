//! The epoch clock of every engine (tier) of a shim. It runs only while
//! some guest is executing, so an idle shim wakes no thread at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Ticker {
    shared: Arc<Shared>,
}

struct Shared {
    engines: Mutex<Vec<wasmtime::Engine>>,
    active: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Held by a running guest; the clock stops when the last one is dropped.
pub(crate) struct Running {
    shared: Arc<Shared>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    pub(crate) fn new(tick: Duration) -> Self {
        let shared = Arc::new(Shared {
            engines: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                {
                    let mut guard = s.lock.lock().unwrap_or_else(|p| p.into_inner());
                    while s.active.load(Ordering::SeqCst) == 0 {
                        guard = s.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                    }
                }
                std::thread::sleep(tick);
                for e in s.engines.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    e.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        Ticker { shared }
    }

    /// Ticks `engine`'s epoch too.
    pub(crate) fn add(&self, engine: wasmtime::Engine) {
        self.shared.engines.lock().unwrap_or_else(|p| p.into_inner()).push(engine);
    }

    /// Keeps the clock running until the guard is dropped. Only the first
    /// guard (none held before) wakes the clock: an HTTP server takes one
    /// per request, and two workers taking the lock on every request would
    /// contend for it.
    pub(crate) fn running(&self) -> Running {
        if self.shared.active.fetch_add(1, Ordering::SeqCst) == 0 {
            // Under the lock: the clock is either before its check of
            // `active` (and sees this guard) or waiting (and is woken).
            let _guard = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        Running { shared: self.shared.clone() }
    }
}
