//! The shim joins its container's cgroup (`linux.cgroupsPath`), so that the
//! kernel enforces an outer bound around everything the guest can make the
//! shim do, and node tooling sees the container's usage where it expects it.
//!
//! Membership is per process, so a shim joins one cgroup: its first
//! container's (for a pod, the first is the sandbox). The cgroup's limits are
//! the spec's plus headroom for the shim itself: the guest's own limits are
//! enforced exactly inside Wasmtime; the kernel's must never kill the shim
//! for the few MiB its runtime needs.

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;
use wasmcell_grants::Limits;

/// Memory the shim process needs beside its guests' linear memories.
pub const MEMORY_HEADROOM: u64 = 64 << 20;

/// A cgroup this shim created and joined.
pub struct Joined {
    cgroup: Cgroup,
    pub path: String,
}

/// `linux.cgroupsPath` as a path below each hierarchy's root.
///
/// Two styles exist: cgroupfs (`/default/ctr-id`, `kubepods/pod1/c1`) and
/// systemd (`slice:prefix:name`, e.g. `kubepods-besteffort-pod1.slice:cri-containerd:c1`),
/// where a slice `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice` and
/// the unit is the scope `prefix-name.scope`.
pub fn resolve_path(cgroups_path: &str) -> Option<String> {
    let p = cgroups_path.trim();
    if p.is_empty() {
        return None;
    }
    let parts: Vec<&str> = p.split(':').collect();
    if parts.len() == 3 && !p.starts_with('/') {
        let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
        let mut dir = String::new();
        if !slice.is_empty() && slice != "-.slice" {
            let stem = slice.strip_suffix(".slice")?;
            let mut acc = String::new();
            for (i, seg) in stem.split('-').enumerate() {
                if seg.is_empty() {
                    return None;
                }
                if i > 0 {
                    acc.push('-');
                }
                acc.push_str(seg);
                dir.push('/');
                dir.push_str(&acc);
                dir.push_str(".slice");
            }
        }
        let unit = if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") };
        return Some(format!("{dir}/{unit}"));
    }
    if p.split('/').any(|c| c == "..") {
        return None;
    }
    Some(format!("/{}", p.trim_start_matches('/')))
}

/// Creates the cgroup, sets its outer limits and moves this process in.
pub fn join(cgroups_path: &str, limits: &Limits) -> Result<Joined, String> {
    let path = resolve_path(cgroups_path).ok_or_else(|| format!("invalid cgroupsPath {cgroups_path:?}"))?;
    let rel = path.trim_start_matches('/').to_string();
    let cgroup = Cgroup::new(hierarchies::auto(), &rel).map_err(|e| format!("create cgroup {path}: {e}"))?;
    if let Some(mem) = limits.memory_bytes {
        if let Some(m) = cgroup.controller_of::<MemController>() {
            if let Err(e) = m.set_limit(mem.saturating_add(MEMORY_HEADROOM) as i64) {
                log::warn!("cgroup {path}: memory limit: {e}");
            }
        }
    }
    if let Some(cpu) = cgroup.controller_of::<CpuController>() {
        if let Some(q) = limits.cpu {
            // A tenth of a core on top, for the shim's own RPC handling.
            let quota = q.quota_us + q.period_us / 10;
            if let Err(e) = cpu.set_cfs_quota_and_period(Some(quota as i64), Some(q.period_us)) {
                log::warn!("cgroup {path}: cpu quota: {e}");
            }
        }
        if let Some(s) = limits.cpu_shares {
            if let Err(e) = cpu.set_shares(s) {
                log::warn!("cgroup {path}: cpu shares: {e}");
            }
        }
    }
    cgroup
        .add_task_by_tgid(CgroupPid::from(std::process::id() as u64))
        .map_err(|e| format!("join cgroup {path}: {e}"))?;
    Ok(Joined { cgroup, path })
}

impl super::Membership for Joined {
    fn path(&self) -> &str {
        &self.path
    }

    fn leave(self: Box<Self>) {
        (*self).leave()
    }
}

impl Joined {
    /// Moves this process to the parent cgroup and removes the container's.
    pub fn leave(self) {
        let pid = CgroupPid::from(std::process::id() as u64);
        if let Err(e) = self.cgroup.move_task_to_parent_by_tgid(pid) {
            log::warn!("leave cgroup {}: {e}", self.path);
            return;
        }
        if let Err(e) = self.cgroup.delete() {
            log::warn!("remove cgroup {}: {e}", self.path);
        }
    }
}

/// The cgroup the serving shim joined at start, before it allocated anything
/// (so that all of its memory is charged there, for a pod the pod's), until
/// Create of the container it belongs to takes it over.
static EARLY: std::sync::Mutex<Option<Joined>> = std::sync::Mutex::new(None);

/// Joins the cgroup of the bundle's container at the daemon's start, on the
/// main thread, before the runtime exists: memory is charged where it is
/// first touched, and stays there. A pod's sandbox gets no limits of its own
/// (see `create.rs`); another container gets its spec's. Never fails the
/// shim: a spec that cannot be read is left to Create to refuse, and a
/// failed join only loses the outer bound, as at Create.
pub fn join_early(bundle: &std::path::Path) {
    let Ok((spec, grants)) = wasmcell_grants::grants_for_bundle(bundle) else { return };
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else { return };
    let limits = match grants.role {
        wasmcell_grants::Role::Sandbox { .. } => Limits::default(),
        _ => grants.limits.clone(),
    };
    if let Ok(j) = join(&path.display().to_string(), &limits) {
        *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some(j);
    }
}

/// The cgroup joined at start, if it is the one at `cgroups_path`.
pub(crate) fn take_early(cgroups_path: &str) -> Option<Joined> {
    let path = resolve_path(cgroups_path)?;
    let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    if early.as_ref().is_some_and(|j| j.path == path) {
        early.take()
    } else {
        None
    }
}

/// Which container's cgroup the shim joined, and a leave under way. A shim
/// joins one cgroup, its first container's (a pod's sandbox); that
/// container owns it and leaves it when it stops (early, as soon as no other
/// guest runs: moving a process between cgroups waits for an RCU grace
/// period, which then passes while the client reacts to the exit) or at its
/// Delete, which waits for an early leave still running.
#[derive(Default)]
pub(crate) struct Owner {
    joined: std::sync::Mutex<Option<(String, Box<dyn super::Membership>)>>,
    leaving: tokio::sync::Mutex<Option<(String, tokio::task::JoinHandle<()>)>>,
}

impl Owner {
    /// Whether the shim joined a cgroup already.
    pub(crate) fn is_joined(&self) -> bool {
        self.joined.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Records that container `id` joined `m` (unless another did first).
    pub(crate) fn set(&self, id: &str, m: Box<dyn super::Membership>) {
        let mut slot = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((id.to_string(), m));
        }
    }

    fn take(&self, id: &str) -> Option<Box<dyn super::Membership>> {
        let mut slot = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((owner, _)) if owner == id => slot.take().map(|(_, m)| m),
            _ => None,
        }
    }

    /// Starts leaving in the background if container `id` owns the cgroup.
    pub(crate) async fn leave_early(&self, id: &str) {
        let mut leaving = self.leaving.lock().await;
        if let Some(m) = self.take(id) {
            *leaving = Some((id.to_string(), tokio::task::spawn_blocking(move || m.leave())));
        }
    }

    /// Leaves (or waits for the early leave) if container `id` owns it.
    pub(crate) async fn leave(&self, id: &str) {
        // Held throughout, so that a leave started at exit is either seen
        // here and waited for, or not started at all.
        let mut leaving = self.leaving.lock().await;
        if leaving.as_ref().is_some_and(|(owner, _)| owner == id) {
            if let Some((_, h)) = leaving.take() {
                let _ = h.await;
            }
            return;
        }
        if let Some(m) = self.take(id) {
            let _ = tokio::task::spawn_blocking(move || m.leave()).await;
        }
    }
}

/// Removes a container's cgroup after its shim died (`shim delete`).
/// What runs in the cgroup of a dead shim is the shim's own leftovers (its
/// compile child, killed with it but perhaps still exiting): as runc does on
/// delete, whatever is still there is killed, then the cgroup is removed,
/// tried again for up to 10 s while it is busy (a killed process keeps its
/// cgroup busy until its parent, containerd, has reaped it).
pub fn remove(cgroups_path: &str) {
    let Some(path) = resolve_path(cgroups_path) else { return };
    let cg = Cgroup::load(hierarchies::auto(), path.trim_start_matches('/'));
    let me = std::process::id() as u64;
    for attempt in 0..200 {
        if !cg.exists() {
            return;
        }
        for p in cg.procs() {
            if p.pid != me {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
        match cg.delete() {
            Ok(()) => return,
            Err(e) if attempt == 199 => log::warn!("remove cgroup {path}: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_path;

    #[test]
    fn path_styles() {
        let cases = [
            ("/default/ctr1", Some("/default/ctr1")),
            ("kubepods/besteffort/pod1/c1", Some("/kubepods/besteffort/pod1/c1")),
            ("", None),
            ("/a/../../etc", None),
            ("system.slice:cri-containerd:abc", Some("/system.slice/cri-containerd-abc.scope")),
            (
                "kubepods-besteffort-pod1.slice:cri-containerd:c1",
                Some(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-c1.scope",
                ),
            ),
            ("-.slice::c1", Some("/c1.scope")),
            ("bad:slice:x", None),
        ];
        for (input, want) in cases {
            assert_eq!(resolve_path(input).as_deref(), want, "{input}");
        }
    }
}
