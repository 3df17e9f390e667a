use oci_spec::runtime::{LinuxResources, Spec};

use crate::GrantError;

/// Resource limits, enforced inside Wasmtime (and by the kernel on the shim's
/// cgroup as the outer bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of linear memory and table storage, summed over the guest's
    /// instances. Growing past it fails inside the guest; a guest that traps
    /// on the failure exits 137 (OOM-killed).
    pub memory_bytes: Option<u64>,
    /// At most `quota` microseconds of CPU every `period`.
    pub cpu: Option<CpuQuota>,
    /// Relative weight between the guests of one shim (cgroup `cpu.shares`).
    pub cpu_shares: Option<u64>,
    /// Most instances alive at once (bounds concurrent HTTP requests).
    pub instances: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// Share of one core, e.g. 0.5.
    pub fn cores(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// The kernel's default CFS period.
const DEFAULT_PERIOD_US: u64 = 100_000;

pub(crate) fn limits(spec: &Spec) -> Result<Limits, GrantError> {
    match spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        Some(res) => Limits::from_resources(res),
        None => Ok(Limits::default()),
    }
}

impl Limits {
    /// The limits `linux.resources` asks for: the one rule that Create (the
    /// spec) and Update (new resources for a live container) both follow.
    pub fn from_resources(res: &LinuxResources) -> Result<Limits, GrantError> {
        from_resources(res)
    }
}

fn from_resources(res: &LinuxResources) -> Result<Limits, GrantError> {
    let memory_bytes = res.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0).map(|l| l as u64);
    let (cpu, cpu_shares) = match res.cpu() {
        None => (None, None),
        Some(c) => {
            let quota = c.quota().filter(|q| *q > 0);
            let cpu = match quota {
                None => None,
                Some(q) => {
                    let period = c.period().filter(|p| *p != 0).unwrap_or(DEFAULT_PERIOD_US);
                    if !(1_000..=1_000_000).contains(&period) {
                        return Err(GrantError::CpuPeriod { quota: q, period });
                    }
                    Some(CpuQuota { quota_us: q as u64, period_us: period })
                }
            };
            (cpu, c.shares().filter(|s| *s > 0))
        }
    };
    let instances = res.pids().as_ref().map(|p| p.limit()).filter(|l| *l > 0).map(|l| l as u64);
    Ok(Limits { memory_bytes, cpu, cpu_shares, instances })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use serde_json::json;

    fn lim(resources: serde_json::Value) -> Result<Limits, GrantError> {
        limits(&spec(json!({"linux": {"resources": resources}})))
    }

    #[test]
    fn table() {
        let cases: Vec<(serde_json::Value, Result<Limits, GrantError>)> = vec![
            (json!({}), Ok(Limits::default())),
            (json!({"memory": {"limit": 67108864}}), Ok(Limits { memory_bytes: Some(64 << 20), ..Default::default() })),
            (json!({"memory": {"limit": -1}}), Ok(Limits::default())),
            (json!({"memory": {"limit": 0}}), Ok(Limits::default())),
            (
                json!({"cpu": {"quota": 50000, "period": 100000, "shares": 512}}),
                Ok(Limits {
                    cpu: Some(CpuQuota { quota_us: 50000, period_us: 100000 }),
                    cpu_shares: Some(512),
                    ..Default::default()
                }),
            ),
            (
                json!({"cpu": {"quota": 20000}}),
                Ok(Limits { cpu: Some(CpuQuota { quota_us: 20000, period_us: 100000 }), ..Default::default() }),
            ),
            (json!({"cpu": {"quota": -1, "period": 100000}}), Ok(Limits::default())),
            (json!({"cpu": {"quota": 1000, "period": 10}}), Err(GrantError::CpuPeriod { quota: 1000, period: 10 })),
            (json!({"pids": {"limit": 16}}), Ok(Limits { instances: Some(16), ..Default::default() })),
            (json!({"pids": {"limit": -1}}), Ok(Limits::default())),
        ];
        for (r, want) in cases {
            assert_eq!(lim(r.clone()), want, "{r}");
        }
    }

    #[test]
    fn cores() {
        assert_eq!(CpuQuota { quota_us: 50_000, period_us: 100_000 }.cores(), 0.5);
    }
}
