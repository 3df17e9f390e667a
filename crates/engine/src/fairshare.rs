//! `linux.resources.cpu.shares` between the guests of one shim.
//!
//! The guests of a pod are stores on the shim's few worker threads, so the
//! kernel cannot weigh them against each other: it sees one process. This
//! module does what the kernel's fair scheduler does for the processes of a
//! cgroup, at the granularity of epoch ticks:
//!
//! - A guest is *busy* while it keeps reaching epoch deadlines (it is using
//!   CPU) or sleeps off a fair-share debt; a guest blocked on I/O or a timer
//!   reaches no deadline and drops out after [`BUSY_WINDOW`].
//! - While there are no more busy guests than the shim has cores, nobody is
//!   limited (shares, like the kernel's, only matter under contention).
//! - Otherwise the cores are divided in proportion to the weights, no guest
//!   getting more than one core (one guest runs on one thread at a time);
//!   what a capped guest cannot use goes to the others ("water filling").
//! - Each guest holds a small CPU budget that refills at its share; a guest
//!   over budget sleeps at its tick until it is even, which frees its
//!   thread for the guests below their share.
//!
//! Shares are relative: 2048 against 1024 is 2:1, whatever the absolute
//! values; a guest without `cpu.shares` weighs 1024, as in cgroup v1.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The weight of a guest whose spec sets no `cpu.shares`.
pub const DEFAULT_SHARES: u64 = 1024;
/// How long a guest counts as busy after its last tick.
const BUSY_WINDOW: Duration = Duration::from_millis(30);
/// CPU a guest may run ahead of its share before it is made to wait.
const BURST: Duration = Duration::from_millis(20);
/// How often the number of usable cores is read again.
const CAPACITY_TTL: Duration = Duration::from_secs(1);

/// The shim-wide view: which guests are busy, with which weights.
pub(crate) struct FairShare {
    state: Mutex<State>,
    /// Fixed capacity (tests); `None`: read from the runtime and the host.
    fixed_capacity: Option<f64>,
}

struct State {
    guests: HashMap<usize, Busy>,
    capacity: Option<(f64, Instant)>,
}

#[derive(Clone, Copy)]
struct Busy {
    weight: u64,
    until: Instant,
}

/// One guest's budget, kept by its epoch callback.
#[derive(Default)]
pub(crate) struct Budget {
    /// Nanoseconds of CPU the guest may still use at its share.
    tokens: f64,
    /// When the budget was last settled, and the guest's CPU time then.
    last: Option<(Instant, u64)>,
}

impl FairShare {
    pub(crate) fn new() -> Self {
        FairShare { state: Mutex::new(State { guests: HashMap::new(), capacity: None }), fixed_capacity: None }
    }

    #[cfg(test)]
    fn with_capacity(cores: f64) -> Self {
        FairShare { fixed_capacity: Some(cores), ..Self::new() }
    }

    /// Cores the guests of this shim can run on at once: the runtime's
    /// worker threads, bounded by the CPUs the shim may use (affinity and
    /// cgroup quota).
    fn capacity(&self, state: &mut State, now: Instant) -> f64 {
        if let Some(c) = self.fixed_capacity {
            return c;
        }
        if let Some((c, at)) = state.capacity {
            if now.duration_since(at) < CAPACITY_TTL {
                return c;
            }
        }
        let workers = tokio::runtime::Handle::try_current().map_or(usize::MAX, |h| h.metrics().num_workers());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = workers.min(cpus).max(1) as f64;
        state.capacity = Some((c, now));
        c
    }

    /// Called at every tick of guest `key` (its stats' address: the same for
    /// all instances of one container) with its weight and CPU time so far.
    /// Returns how long it must wait to be back within its share.
    pub(crate) fn tick(
        &self,
        key: usize,
        weight: u64,
        now: Instant,
        cpu_ns: u64,
        budget: &mut Budget,
    ) -> Option<Duration> {
        let weight = weight.max(1);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.guests.retain(|_, b| b.until > now);
        let until = state.guests.get(&key).map_or(now, |b| b.until).max(now + BUSY_WINDOW);
        state.guests.insert(key, Busy { weight, until });
        let capacity = self.capacity(&mut state, now);
        let share = share_of(key, &state.guests, capacity);

        let (then, cpu_then) = budget.last.unwrap_or((now, cpu_ns));
        budget.last = Some((now, cpu_ns));
        let burst = BURST.as_nanos() as f64;
        let Some(share) = share else {
            budget.tokens = burst;
            return None;
        };
        let earned = now.duration_since(then).as_nanos() as f64 * share;
        let spent = cpu_ns.saturating_sub(cpu_then) as f64;
        budget.tokens = (budget.tokens + earned).min(burst) - spent;
        if budget.tokens >= 0.0 {
            return None;
        }
        let wait = Duration::from_nanos((-budget.tokens / share) as u64);
        // Still contending while it waits: the others' shares stay put.
        if let Some(b) = state.guests.get_mut(&key) {
            b.until = b.until.max(now + wait + BUSY_WINDOW);
        }
        Some(wait)
    }
}

/// The share of a core `key` is entitled to among the busy `guests`, or
/// `None` when there is no contention (no more busy guests than cores).
fn share_of(key: usize, guests: &HashMap<usize, Busy>, capacity: f64) -> Option<f64> {
    if guests.len() as f64 <= capacity {
        return None;
    }
    let mut by_weight: Vec<(usize, u64)> = guests.iter().map(|(k, b)| (*k, b.weight)).collect();
    // Heaviest first: they are the ones a one-core cap can bind.
    by_weight.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut cores = capacity;
    let mut total: f64 = by_weight.iter().map(|g| g.1 as f64).sum();
    for (k, w) in by_weight {
        let share = cores * w as f64 / total;
        if share >= 1.0 {
            if k == key {
                return Some(1.0);
            }
            cores -= 1.0;
            total -= w as f64;
        } else {
            // Every lighter guest is below the cap as well.
            return guests.get(&key).map(|b| cores * b.weight as f64 / total);
        }
    }
    Some(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(weights: &[u64]) -> HashMap<usize, Busy> {
        let until = Instant::now() + Duration::from_secs(1);
        weights.iter().enumerate().map(|(k, w)| (k, Busy { weight: *w, until })).collect()
    }

    fn shares(weights: &[u64], cores: f64) -> Vec<Option<f64>> {
        let g = busy(weights);
        (0..weights.len()).map(|k| share_of(k, &g, cores).map(|s| (s * 1000.0).round() / 1000.0)).collect()
    }

    #[test]
    fn no_contention_no_limit() {
        assert_eq!(shares(&[2048, 1024], 2.0), vec![None, None]);
        assert_eq!(shares(&[1024], 1.0), vec![None]);
    }

    #[test]
    fn cores_divided_by_weight() {
        assert_eq!(shares(&[2048, 1024, 1024], 2.0), vec![Some(1.0), Some(0.5), Some(0.5)]);
        assert_eq!(shares(&[1024, 1024, 1024], 2.0), vec![Some(0.667); 3]);
        assert_eq!(shares(&[3072, 1024], 1.0), vec![Some(0.75), Some(0.25)]);
        // Relative: the same ratio at another scale gives the same split.
        assert_eq!(shares(&[6, 3, 3], 2.0), shares(&[2048, 1024, 1024], 2.0));
    }

    #[test]
    fn one_core_at_most_and_the_rest_goes_to_the_others() {
        // 4096 would be entitled to 1.33 cores; it can use 1, the other
        // core is split evenly by the two equal guests.
        assert_eq!(shares(&[4096, 1024, 1024], 2.0), vec![Some(1.0), Some(0.5), Some(0.5)]);
        assert_eq!(shares(&[8192, 8192, 1024, 1024], 3.0), vec![Some(1.0), Some(1.0), Some(0.5), Some(0.5)]);
    }

    /// Simulates guests that always want CPU on `cores` threads, ticking
    /// every 10 ms, and returns the CPU each got over `secs` seconds.
    fn simulate(weights: &[u64], cores: usize, secs: u64) -> Vec<f64> {
        let fair = FairShare::with_capacity(cores as f64);
        let tick = Duration::from_millis(10);
        let n = weights.len();
        let mut cpu = vec![0u64; n];
        let mut asleep_until = vec![None::<Instant>; n];
        let mut budgets: Vec<Budget> = (0..n).map(|_| Budget::default()).collect();
        let start = Instant::now();
        for step in 0..(secs * 100) {
            let now = start + tick * step as u32;
            // Guests that are awake take the threads in turn (round robin).
            let awake: Vec<usize> = (0..n).filter(|g| asleep_until[*g].is_none_or(|t| t <= now)).collect();
            let mut ran = Vec::new();
            for i in 0..cores.min(awake.len()) {
                ran.push(awake[(step as usize + i) % awake.len()]);
            }
            for g in ran {
                cpu[g] += tick.as_nanos() as u64;
                if let Some(wait) = fair.tick(g, weights[g], now + tick, cpu[g], &mut budgets[g]) {
                    asleep_until[g] = Some(now + tick + wait);
                }
            }
        }
        cpu.iter().map(|c| *c as f64 / (secs as f64 * 1e9)).collect()
    }

    #[test]
    fn busy_guests_get_cpu_in_proportion_to_their_shares() {
        let got = simulate(&[2048, 1024, 1024], 2, 20);
        eprintln!("2048/1024/1024 on 2 cores: {got:?}");
        assert!((got[1] - 0.5).abs() < 0.05 && (got[2] - 0.5).abs() < 0.05, "{got:?}");
        assert!(got[0] / got[1] > 1.5, "{got:?}");
        let got = simulate(&[3072, 1024], 1, 20);
        eprintln!("3072/1024 on 1 core: {got:?}");
        assert!((got[0] / got[1] - 3.0).abs() < 0.5, "{got:?}");
        // Work-conserving: the threads stay (nearly) fully used.
        assert!(got.iter().sum::<f64>() > 0.9, "{got:?}");
    }

    #[test]
    fn equal_shares_or_no_contention_change_nothing() {
        let got = simulate(&[1024, 1024], 2, 5);
        assert_eq!(got, vec![1.0, 1.0]);
        let got = simulate(&[1024, 1024, 1024], 2, 20);
        for g in &got {
            assert!((g - 0.667).abs() < 0.08, "{got:?}");
        }
    }

    #[test]
    fn an_idle_guest_drops_out() {
        let fair = FairShare::with_capacity(1.0);
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let (mut a, mut b) = (Budget::default(), Budget::default());
        // Both busy on one core, each accounting a full core: over budget.
        let mut waited = false;
        for step in 0..10 {
            let now = t0 + ms(10 * step);
            waited |= fair.tick(1, 1024, now, step * 10_000_000, &mut a).is_some();
            fair.tick(2, 1024, now, step * 10_000_000, &mut b);
        }
        assert!(waited, "contended and over its half: made to wait");
        // Guest 2 stops ticking: after the busy window guest 1 runs free.
        let later = t0 + ms(400);
        assert_eq!(fair.tick(1, 1024, later, 150_000_000, &mut a), None);
        assert_eq!(fair.tick(1, 1024, later + ms(10), 160_000_000, &mut a), None);
    }
}
