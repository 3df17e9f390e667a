use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::process::normalize_abs;
use crate::GrantError;

/// A directory the guest sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// Where the guest sees it (absolute, normalized).
    pub guest: String,
    /// What backs it on the host.
    pub source: DirSource,
    /// The guest may not create, write or remove anything in it.
    pub readonly: bool,
}

impl DirGrant {
    /// The host path, for directories backed by one.
    pub fn host(&self) -> Option<&Path> {
        match &self.source {
            DirSource::Host(p) => Some(p),
            DirSource::Private { .. } => None,
        }
    }
}

/// What backs a granted directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirSource {
    /// A host directory (the rootfs, or a bind mount's source).
    Host(PathBuf),
    /// A fresh, empty tmpfs private to this container, removed with it (what
    /// a `tmpfs` mount is to a Linux container), of at most `size_bytes`: the
    /// kernel refuses writes past it (ENOSPC) and charges what is written to
    /// the container's memory cgroup.
    Private { size_bytes: u64 },
}

/// A tmpfs mount's size when its options name none: containerd's own
/// default for `/run` (`size=65536k`).
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// The `size=` of a tmpfs mount's options: bytes with an optional `k`, `m`
/// or `g` suffix (as tmpfs(5) takes it). A size relative to the host's RAM
/// (`%`) would let a spec take a share of the node: refused.
fn tmpfs_size(options: &[String], destination: &str) -> Result<u64, GrantError> {
    let Some(v) = options.iter().rev().find_map(|o| o.strip_prefix("size=")) else {
        return Ok(DEFAULT_TMPFS_BYTES);
    };
    let bad = || GrantError::TmpfsSize { destination: destination.to_string(), value: v.to_string() };
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|b| *b > 0).ok_or_else(bad)
}

/// A mount listed in the spec that the guest does not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenMount {
    pub destination: String,
    pub kind: String,
    pub why: &'static str,
}

pub(crate) fn root(spec: &Spec, bundle: &Path) -> Result<DirGrant, GrantError> {
    let root = spec.root().as_ref().ok_or(GrantError::NoRoot)?;
    if root.path().as_os_str().is_empty() {
        return Err(GrantError::NoRoot);
    }
    let host = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    Ok(DirGrant { guest: "/".into(), source: DirSource::Host(host), readonly: root.readonly().unwrap_or(false) })
}

/// Kernel interfaces a Linux container mounts that have no meaning for Wasm.
const KERNEL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "hugetlbfs",
    "fusectl",
    "configfs",
    "pstore",
];

pub(crate) fn mounts(spec: &Spec) -> Result<(Vec<DirGrant>, Vec<HiddenMount>), GrantError> {
    let mut dirs = Vec::new();
    let mut hidden = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let dest_raw = m.destination().to_string_lossy().into_owned();
        let destination = normalize_abs(&dest_raw).ok_or_else(|| GrantError::MountDestination(dest_raw.clone()))?;
        let options = m.options().clone().unwrap_or_default();
        let has = |o: &str| options.iter().any(|x| x == o);
        let kind = m.typ().clone().unwrap_or_default();
        let is_bind = kind == "bind" || has("bind") || has("rbind");

        if KERNEL_FS.contains(&kind.as_str()) {
            hidden.push(HiddenMount {
                destination,
                kind,
                why: "kernel interface; a Wasm guest has no kernel to talk to",
            });
            continue;
        }
        if destination == "/" {
            return Err(GrantError::MountOverRoot(dest_raw));
        }
        if is_bind {
            let src = m.source().as_ref().ok_or_else(|| GrantError::BindWithoutSource(dest_raw.clone()))?;
            let src_s = src.to_string_lossy().into_owned();
            let src_norm = normalize_abs(&src_s)
                .ok_or_else(|| GrantError::BindSource { path: src_s.clone(), destination: dest_raw.clone() })?;
            dirs.push(DirGrant {
                guest: destination,
                source: DirSource::Host(PathBuf::from(src_norm)),
                readonly: has("ro"),
            });
        } else if kind == "tmpfs" {
            if destination == "/dev" || destination.starts_with("/dev/") {
                hidden.push(HiddenMount { destination, kind, why: "device tree; a Wasm guest has no devices" });
                continue;
            }
            let size_bytes = tmpfs_size(&options, &destination)?;
            dirs.push(DirGrant { guest: destination, source: DirSource::Private { size_bytes }, readonly: has("ro") });
        } else {
            hidden.push(HiddenMount {
                destination,
                kind: if kind.is_empty() { "(none)".into() } else { kind },
                why: "only bind and tmpfs mounts are exposed to a guest",
            });
        }
    }
    Ok((dirs, hidden))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use serde_json::json;

    fn run(mounts: serde_json::Value) -> Result<(Vec<DirGrant>, Vec<HiddenMount>), GrantError> {
        super::mounts(&spec(json!({ "mounts": mounts })))
    }

    #[test]
    fn ctr_default_mounts_are_all_hidden() {
        let (dirs, hidden) = run(json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
        ]))
        .unwrap();
        assert!(dirs.is_empty(), "{dirs:?}");
        assert_eq!(hidden.len(), 7);
    }

    #[test]
    fn tmpfs_sizes_come_from_the_options() {
        let size = |opts: serde_json::Value| {
            run(json!([{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": opts}]))
                .map(|(d, _)| d[0].source.clone())
        };
        let private = |b: u64| Ok(DirSource::Private { size_bytes: b });
        assert_eq!(size(json!(["nosuid", "size=65536k"])), private(64 << 20));
        assert_eq!(size(json!(["size=1m"])), private(1 << 20));
        assert_eq!(size(json!(["size=2G"])), private(2 << 30));
        assert_eq!(size(json!(["size=4096"])), private(4096));
        assert_eq!(size(json!(["mode=755"])), private(DEFAULT_TMPFS_BYTES));
        for bad in ["size=50%", "size=", "size=0", "size=xm", "size=99999999999999999999g"] {
            let value = bad.trim_start_matches("size=").to_string();
            assert_eq!(size(json!([bad])), Err(GrantError::TmpfsSize { destination: "/run".into(), value }), "{bad}");
        }
    }

    #[test]
    fn bind_and_tmpfs_are_granted() {
        let (dirs, _) = run(json!([
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/rw/", "source": "/srv/rw", "options": ["rbind", "rw"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}
        ]))
        .unwrap();
        assert_eq!(
            dirs,
            vec![
                DirGrant { guest: "/data".into(), source: DirSource::Host("/srv/data".into()), readonly: true },
                DirGrant { guest: "/rw".into(), source: DirSource::Host("/srv/rw".into()), readonly: false },
                DirGrant {
                    guest: "/run".into(),
                    source: DirSource::Private { size_bytes: DEFAULT_TMPFS_BYTES },
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn other_filesystems_are_hidden() {
        let (dirs, hidden) = run(json!([{"destination": "/x", "type": "ext4", "source": "/dev/sda1"}])).unwrap();
        assert!(dirs.is_empty());
        assert_eq!(hidden[0].kind, "ext4");
    }

    #[test]
    fn rejections() {
        let cases = vec![
            (
                json!([{"destination": "data", "type": "bind", "source": "/a"}]),
                GrantError::MountDestination("data".into()),
            ),
            (
                json!([{"destination": "/a/../../etc", "type": "bind", "source": "/a"}]),
                GrantError::MountDestination("/a/../../etc".into()),
            ),
            (json!([{"destination": "/", "type": "bind", "source": "/a"}]), GrantError::MountOverRoot("/".into())),
            (json!([{"destination": "/d", "type": "bind"}]), GrantError::BindWithoutSource("/d".into())),
            (
                json!([{"destination": "/d", "type": "bind", "source": "/srv/../etc"}]),
                GrantError::BindSource { path: "/srv/../etc".into(), destination: "/d".into() },
            ),
            (
                json!([{"destination": "/d", "type": "bind", "source": "rel"}]),
                GrantError::BindSource { path: "rel".into(), destination: "/d".into() },
            ),
        ];
        for (m, want) in cases {
            assert_eq!(run(m.clone()).unwrap_err(), want, "{m}");
        }
    }

    #[test]
    fn root_relative_to_bundle_and_readonly() {
        let s = spec(json!({"root": {"path": "rootfs", "readonly": true}}));
        let r = root(&s, Path::new("/run/b")).unwrap();
        assert_eq!(r.host(), Some(Path::new("/run/b/rootfs")));
        assert!(r.readonly);
        let s = spec(json!({"root": {"path": "/abs/root"}}));
        assert_eq!(root(&s, Path::new("/b")).unwrap().host(), Some(Path::new("/abs/root")));
        let mut s = spec(json!({}));
        s.set_root(None);
        assert_eq!(root(&s, Path::new("/b")), Err(GrantError::NoRoot));
    }
}
