//! Turn a container's OCI runtime spec into the host grants of its Wasm guest.
//!
//! This crate is the security boundary of wasmcell, kept pure so it can be read
//! and tested on its own: it takes the bundle's `config.json` (plus annotations
//! and runtime options) and returns a typed [`Grants`] value, or a
//! [`GrantError`] naming the one rule the spec broke. It does no I/O, runs no
//! Wasm and knows nothing of containerd.
//!
//! Deny by default: a guest gets a capability only when a row below grants it.
//!
//! | spec setting | grant |
//! |---|---|
//! | `process.args` | the Wasm file (`args[0]`, resolved in the rootfs) and the guest's argv |
//! | `process.env` | the guest's whole environment; nothing of the host's |
//! | `process.cwd` | the guest's initial working directory |
//! | `root.path`, `root.readonly` | the rootfs preopened as `/` |
//! | `mounts` (bind) | the source preopened at the destination, `ro` honoured |
//! | `mounts` (tmpfs) | a private, empty, writable directory at the destination |
//! | `mounts` (proc, sysfs, ...) | nothing: kernel interfaces do not exist for a guest |
//! | network namespace | host sockets, sockets in a pod's namespace, or loopback only |
//! | `linux.resources` | memory cap, CPU quota and weight, live-instance cap |
//! | bind mount at `/run/wasi/config` | `wasi:config` entries: one per file (name = key, contents = value) |
//! | annotation `wasmcell.dev/keyvalue` | `wasi:keyvalue`: a pod-wide in-memory store, or a Redis server |
//! | annotation `wasmcell.dev/http-instance-reuse` | a WASI 0.2 HTTP handler's instance serves up to N requests in turn |
//!
//! The same table, filled in for one spec, is what [`Grants::rows`] returns and
//! `wasmcell explain` prints.

#![forbid(unsafe_code)]

mod capabilities;
mod error;
mod limits;
mod mounts;
mod network;
mod policy;
mod process;
mod role;
mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

pub use capabilities::{KeyValue, CONFIG_DIR, HTTP_REUSE_ANNOTATION, KEYVALUE_ANNOTATION, MAX_HTTP_REUSE};
pub use error::GrantError;
pub use limits::{CpuQuota, Limits};
pub use mounts::{DirGrant, DirSource, HiddenMount, DEFAULT_TMPFS_BYTES};
pub use network::Network;
pub use policy::{Policy, WASM_FEATURES};
pub use process::Program;
pub use role::{Role, CONTAINER_TYPE, SANDBOX_ID};
pub use table::{table, Row};

/// Everything a guest may use, decided from its container's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// What runs: the Wasm file, argv, environment, working directory.
    pub program: Program,
    /// The rootfs, preopened as `/`.
    pub root: DirGrant,
    /// Further directories preopened at their destination, in spec order.
    pub dirs: Vec<DirGrant>,
    /// Mounts the spec lists that the guest does not see, with the reason.
    pub hidden: Vec<HiddenMount>,
    /// Which sockets the guest may open.
    pub network: Network,
    /// Resource limits enforced inside Wasmtime.
    pub limits: Limits,
    /// Spec settings that mean nothing for a Wasm guest, recorded for `explain`.
    pub ignored: Vec<Ignored>,
    /// Sandbox, pod member or standalone, from CRI's annotations.
    pub role: Role,
    /// The host directory whose files are the guest's `wasi:config`
    /// entries (the mount at [`CONFIG_DIR`]); none: an empty store.
    pub config_dir: Option<PathBuf>,
    /// The guest's `wasi:keyvalue` store (annotation [`KEYVALUE_ANNOTATION`]).
    pub keyvalue: KeyValue,
    /// Requests one instance of a WASI 0.2 HTTP handler serves in turn
    /// (annotation [`HTTP_REUSE_ANNOTATION`]); 1: a fresh one each.
    pub http_reuse: u32,
}

/// A spec setting that is accepted but has no effect on a Wasm guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub setting: &'static str,
    pub why: &'static str,
}

/// Settings the runtime options or the node give, beside the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Directory holding the bundle; `root.path` is relative to it.
    pub bundle: PathBuf,
}

/// The one entry point: spec + annotations + options -> grants.
///
/// `annotations` are the ones containerd passes (the spec's own are merged in
/// by the caller or read from the spec: both are consulted, the argument wins).
pub fn grants(spec: &Spec, annotations: &HashMap<String, String>, options: &Options) -> Result<Grants, GrantError> {
    // No annotation grants anything (deny by default); CRI's say what the
    // container is to its pod.
    let role = role::role(annotations);
    let program = process::program(spec)?;
    let root = mounts::root(spec, &options.bundle)?;
    let (dirs, hidden) = mounts::mounts(spec)?;
    let network = network::network(spec);
    let limits = limits::limits(spec)?;
    let ignored = process::ignored(spec);
    let config_dir = capabilities::config_dir(&dirs);
    let keyvalue = capabilities::keyvalue(annotations)?;
    let http_reuse = capabilities::http_reuse(annotations)?;
    Ok(Grants { program, root, dirs, hidden, network, limits, ignored, role, config_dir, keyvalue, http_reuse })
}

/// The network a spec asks for, without judging the rest of the spec: the
/// shim enters it before anything else, and a spec refused later must still
/// not leave the shim in the host's network.
pub fn network_of(spec: &Spec) -> Network {
    network::network(spec)
}

/// Parses a `config.json` into a spec, with the error a user can act on.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec, GrantError> {
    serde_json::from_slice(bytes).map_err(|e| GrantError::BadSpec(e.to_string()))
}

/// Convenience: read `config.json` from a bundle directory and compute grants.
/// This is the only function here that touches the filesystem.
pub fn grants_for_bundle(bundle: &Path) -> Result<(Spec, Grants), GrantError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| GrantError::BadSpec(format!("read {}: {e}", path.display())))?;
    let spec = parse_spec(&bytes)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let g = grants(&spec, &annotations, &Options { bundle: bundle.to_path_buf() })?;
    Ok((spec, g))
}

#[cfg(test)]
pub(crate) mod testutil {
    use oci_spec::runtime::Spec;

    /// A minimal valid spec, as `ctr run` writes it, patched by `f`.
    pub fn spec(patch: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/hello.wasm", "a"],
                "env": ["PATH=/usr/bin", "GREETING=hi"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0}
            },
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        merge(&mut base, patch);
        serde_json::from_value(base).expect("test spec parses")
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_spec_to_grants() {
        let spec = testutil::spec(json!({}));
        let g = grants(&spec, &HashMap::new(), &Options { bundle: "/b".into() }).unwrap();
        assert_eq!(g.program.argv, vec!["/hello.wasm", "a"]);
        assert_eq!(g.root.host(), Some(Path::new("/b/rootfs")));
        assert_eq!(g.network, Network::Private);
        assert!(g.dirs.is_empty());
    }

    #[test]
    fn malformed_json_is_a_bad_spec() {
        assert!(matches!(parse_spec(b"{"), Err(GrantError::BadSpec(_))));
    }
}
