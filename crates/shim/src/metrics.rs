//! Stats for `ctr task metrics` / CRI ContainerStats, in containerd's cgroup
//! v2 metrics format, from the guest's own accounting: memory is its live
//! instances' linear memories and tables, the host heap its stores and WASI
//! calls hold (HTTP fields and bodies, handles), plus what the container holds
//! between instances (its program's resident image, its share of the warm
//! pool: `held`); CPU the time its stores were being polled.

use std::sync::atomic::Ordering;

use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use wasmcell_engine::GuestStats;

/// For an HTTP server, `pids.current` is the number of live instances
/// (requests being handled); for a command, 1 while it runs.
pub(crate) fn to_any(
    stats: &GuestStats,
    memory_limit: Option<u64>,
    live: bool,
    server: bool,
    held: u64,
) -> Result<Any, String> {
    let guest = stats.memory_total();
    let current = if server { stats.requests_in_flight.load(Ordering::Relaxed) } else { u64::from(live) };
    let cpu_ns = stats.cpu_ns.load(Ordering::Relaxed);
    let m = Metrics {
        pids: Some(PidsStat { current, limit: 0, ..Default::default() }).into(),
        cpu: Some(CPUStat {
            usage_usec: cpu_ns / 1000,
            user_usec: cpu_ns / 1000,
            system_usec: 0,
            nr_throttled: stats.throttled.load(Ordering::Relaxed),
            throttled_usec: stats.throttled_ns.load(Ordering::Relaxed) / 1000,
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            usage: guest + held,
            usage_limit: memory_limit.unwrap_or(u64::MAX),
            max_usage: stats.memory_max_bytes.load(Ordering::Relaxed).max(guest) + held,
            anon: guest,
            file_mapped: held,
            ..Default::default()
        })
        .into(),
        memory_events: Some(MemoryEvents {
            max: stats.oom_events.load(Ordering::Relaxed),
            oom: u64::from(stats.oom.load(Ordering::Relaxed)),
            oom_kill: u64::from(stats.oom.load(Ordering::Relaxed)),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let mut any = Any::new();
    any.type_url = "io.containerd.cgroups.v2.Metrics".to_string();
    any.value = m.write_to_bytes().map_err(|e| e.to_string())?;
    Ok(any)
}
