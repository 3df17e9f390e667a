//! Memory accounting and the memory cap from `linux.resources.memory.limit`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::hostmem::{Charging, HostBudget};

/// Most resource handles one store may hold at once (open files and
/// directories, sockets, streams, HTTP fields, pollables): each open file or
/// socket is a descriptor of the shim process, so without a bound one guest
/// could take every descriptor the shim has and starve its other guests and
/// its own RPCs. [`set_max_handles`] sets it for the process (the shim
/// derives it from its descriptor limit); Wasmtime's own default is a
/// million. A guest past it gets an error, or traps ("resource table has no
/// free keys"), depending on the call.
pub const DEFAULT_MAX_HANDLES: usize = 4096;
static MAX_HANDLES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_HANDLES);

/// Sets the per-store handle bound (at least 64).
pub fn set_max_handles(n: usize) {
    MAX_HANDLES.store(n.max(64), Ordering::Relaxed);
}

/// The per-store handle bound.
pub fn max_handles() -> usize {
    MAX_HANDLES.load(Ordering::Relaxed)
}

/// Live figures of one guest, shared with the shim for Stats.
#[derive(Debug, Default)]
pub struct GuestStats {
    /// Bytes of linear memory and tables currently allocated.
    pub memory_bytes: AtomicU64,
    /// Highest `memory_bytes` seen.
    pub memory_max_bytes: AtomicU64,
    /// CPU time spent running the guest (and its WASI calls), in nanoseconds.
    pub cpu_ns: AtomicU64,
    /// A growth was refused because of the cap.
    pub oom: AtomicBool,
    /// Times a growth was refused.
    pub oom_events: AtomicU64,
    /// Times the guest was made to wait for its CPU quota.
    pub throttled: AtomicU64,
    /// Nanoseconds spent waiting for its CPU quota.
    pub throttled_ns: AtomicU64,
    /// HTTP: requests answered (successfully or not).
    pub requests_total: AtomicU64,
    /// HTTP: requests being handled now (one instance each).
    pub requests_in_flight: AtomicU64,
    /// HTTP: requests answered 500 because the handler failed.
    pub request_errors: AtomicU64,
    /// Memory cap in bytes, 0 for none. Live: Update changes it.
    memory_cap: AtomicU64,
    /// Host heap the guest's stores and WASI calls hold (see `hostmem`).
    pub host: HostMemory,
    /// CPU quota and period in microseconds, 0 for none. Live as well.
    cpu_quota_us: AtomicU64,
    cpu_period_us: AtomicU64,
    /// `cpu.shares`, 0 for the default weight. Live as well.
    cpu_shares: AtomicU64,
}

/// A guest's [`HostBudget`]; a new one for every guest.
#[derive(Debug)]
pub struct HostMemory(&'static HostBudget);

impl Default for HostMemory {
    fn default() -> Self {
        HostMemory(HostBudget::leak())
    }
}

impl HostMemory {
    /// Bytes of host heap charged to the guest now.
    pub fn bytes(&self) -> u64 {
        self.0.bytes()
    }
    /// Charges what this thread allocates to the guest while alive.
    pub(crate) fn charging(&self) -> Charging {
        Charging::to(self.0)
    }
}

impl GuestStats {
    /// Linear memory, tables and host heap: what the memory limit bounds.
    pub fn memory_total(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed) + self.host.bytes()
    }

    /// Called each time a host call returns to the guest: a guest whose host
    /// heap has taken it over its memory limit traps there, as out of memory
    /// (exit 137 and TaskOOM for a command, a 500 for an HTTP request).
    pub(crate) fn check_host_memory(&self) -> wasmtime::Result<()> {
        let Some(cap) = self.memory_cap() else { return Ok(()) };
        let host = self.host.bytes();
        let linear = self.memory_bytes.load(Ordering::Relaxed);
        if host + linear <= cap {
            return Ok(());
        }
        self.oom.store(true, Ordering::Relaxed);
        self.oom_events.fetch_add(1, Ordering::Relaxed);
        Err(wasmtime::Error::msg(format!(
            "host memory the guest made (HTTP fields and bodies, handles, streams: {host} bytes) and its linear \
             memory ({linear} bytes) exceed its memory limit ({cap} bytes)"
        )))
    }

    /// Figures of a new guest whose live limits start as `limits` (Update
    /// changes them later).
    pub fn for_limits(limits: &wasmcell_grants::Limits) -> Self {
        let s = GuestStats::default();
        s.set_memory_cap(limits.memory_bytes);
        s.set_cpu_quota(limits.cpu);
        s.set_cpu_shares(limits.cpu_shares);
        s
    }

    pub fn set_memory_cap(&self, bytes: Option<u64>) {
        self.memory_cap.store(bytes.unwrap_or(0), Ordering::Relaxed);
    }
    pub fn memory_cap(&self) -> Option<u64> {
        Some(self.memory_cap.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }
    pub fn set_cpu_quota(&self, q: Option<wasmcell_grants::CpuQuota>) {
        let (quota, period) = q.map_or((0, 0), |q| (q.quota_us, q.period_us));
        self.cpu_period_us.store(period, Ordering::Relaxed);
        self.cpu_quota_us.store(quota, Ordering::Relaxed);
    }
    pub fn set_cpu_shares(&self, shares: Option<u64>) {
        self.cpu_shares.store(shares.unwrap_or(0), Ordering::Relaxed);
    }
    /// The guest's weight against the other guests of its shim.
    pub fn cpu_shares(&self) -> u64 {
        match self.cpu_shares.load(Ordering::Relaxed) {
            0 => crate::fairshare::DEFAULT_SHARES,
            s => s,
        }
    }
    pub fn cpu_quota(&self) -> Option<wasmcell_grants::CpuQuota> {
        let quota_us = self.cpu_quota_us.load(Ordering::Relaxed);
        let period_us = self.cpu_period_us.load(Ordering::Relaxed);
        (quota_us > 0 && period_us > 0).then_some(wasmcell_grants::CpuQuota { quota_us, period_us })
    }
}

pub(crate) struct MemoryLimiter {
    pub(crate) stats: Arc<GuestStats>,
    /// What this store has added to `stats.memory_bytes`, given back on drop.
    mine: u64,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.stats.memory_bytes.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

impl MemoryLimiter {
    pub(crate) fn new(stats: Arc<GuestStats>) -> Self {
        MemoryLimiter { stats, mine: 0 }
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let delta = desired.saturating_sub(current) as u64;
        // What the guest's host calls hold counts against the same limit.
        let cap = self.stats.memory_cap().map(|c| c.saturating_sub(self.stats.host.bytes()));
        // Check and charge in one atomic step: the instances of an HTTP
        // component grow concurrently against one counter, and a load, a
        // check and a separate add would let them overshoot the cap together.
        let charged = self.stats.memory_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            let now = used.saturating_add(delta);
            cap.is_none_or(|cap| now <= cap).then_some(now)
        });
        match charged {
            Ok(before) => {
                self.mine += delta;
                self.stats.memory_max_bytes.fetch_max(before + delta, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.oom.store(true, Ordering::Relaxed);
                self.stats.oom_events.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        // Table elements are pointer-sized on the host.
        let size = std::mem::size_of::<usize>();
        Ok(self.grow(current * size, desired * size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn caps_the_sum_of_growths() {
        let stats = Arc::new(GuestStats::default());
        stats.set_memory_cap(Some(100));
        let mut l = MemoryLimiter::new(stats.clone());
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.memory_growing(60, 100, None).unwrap());
        assert!(!l.memory_growing(100, 101, None).unwrap());
        assert!(stats.oom.load(Ordering::Relaxed));
        assert_eq!(stats.memory_bytes.load(Ordering::Relaxed), 100);
        assert!(!l.memory_growing(0, 10, Some(5)).unwrap());
    }

    /// Many stores (an HTTP component's instances) growing at once against
    /// one cap never exceed it together.
    #[test]
    fn concurrent_growths_never_exceed_the_cap() {
        const CAP: u64 = 64 << 10;
        for _ in 0..50 {
            let stats = Arc::new(GuestStats::default());
            stats.set_memory_cap(Some(CAP));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let stats = stats.clone();
                    std::thread::spawn(move || {
                        let mut l = MemoryLimiter::new(stats.clone());
                        let mut have = 0;
                        for _ in 0..64 {
                            if l.memory_growing(have, have + 1024, None).unwrap() {
                                have += 1024;
                            }
                            assert!(stats.memory_bytes.load(Ordering::Relaxed) <= CAP);
                        }
                        l
                    })
                })
                .collect();
            let limiters: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(stats.memory_bytes.load(Ordering::Relaxed), CAP, "the cap is reached exactly");
            assert!(stats.memory_max_bytes.load(Ordering::Relaxed) <= CAP);
            drop(limiters);
            assert_eq!(stats.memory_bytes.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn host_memory_counts_against_the_cap() {
        let stats = Arc::new(GuestStats::default());
        stats.set_memory_cap(Some(4 << 20));
        let mut l = MemoryLimiter::new(stats.clone());
        assert!(l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(stats.check_host_memory().is_ok());
        let held = {
            let _c = stats.host.charging();
            vec![1u8; 3 << 20]
        };
        // Linear memory and host heap together are over the cap: the next
        // host call's return traps, and growth is refused.
        let e = stats.check_host_memory().unwrap_err().to_string();
        assert!(e.contains("exceed its memory limit (4194304 bytes)"), "{e}");
        assert!(stats.oom.load(Ordering::Relaxed));
        assert!(!l.memory_growing(2 << 20, (2 << 20) + 65536, None).unwrap());
        assert!(stats.memory_total() >= 5 << 20);
        drop(held);
        assert!(stats.check_host_memory().is_ok());
        assert!(l.memory_growing(2 << 20, 3 << 20, None).unwrap());
    }

    #[test]
    fn uncapped_only_counts() {
        let stats = Arc::new(GuestStats::default());
        let mut l = MemoryLimiter::new(stats.clone());
        assert!(l.memory_growing(0, 1 << 30, None).unwrap());
        assert_eq!(stats.memory_max_bytes.load(Ordering::Relaxed), 1 << 30);
        assert!(!stats.oom.load(Ordering::Relaxed));
        drop(l);
        assert_eq!(stats.memory_bytes.load(Ordering::Relaxed), 0, "a dropped store gives its memory back");
    }
}
