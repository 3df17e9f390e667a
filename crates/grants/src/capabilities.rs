//! Capabilities beyond files and sockets: `wasi:config` (from a directory
//! mounted at [`CONFIG_DIR`]) and `wasi:keyvalue` (from the annotation
//! [`KEYVALUE_ANNOTATION`]). Both are denied unless the spec grants them.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::{DirGrant, DirSource, GrantError};

/// Where a container's `wasi:config` entries come from: one entry per file
/// of the directory mounted here (a ConfigMap or Secret volume in
/// Kubernetes, a bind mount with `ctr`).
pub const CONFIG_DIR: &str = "/run/wasi/config";

/// The annotation that grants `wasi:keyvalue`: `memory` or
/// `redis://HOST:PORT[/DB]`.
pub const KEYVALUE_ANNOTATION: &str = "wasmcell.dev/keyvalue";

/// The annotation that lets one instance of a WASI 0.2 HTTP handler serve
/// up to N requests, one after another (1, the default: a fresh instance per
/// request). Requests then share the instance's memory and globals, as they
/// do with `wasmtime serve --max-instance-reuse-count N`.
pub const HTTP_REUSE_ANNOTATION: &str = "wasmcell.dev/http-instance-reuse";

/// The most requests one reused instance serves.
pub const MAX_HTTP_REUSE: u32 = 1 << 20;

pub(crate) fn http_reuse(annotations: &HashMap<String, String>) -> Result<u32, GrantError> {
    let Some(v) = annotations.get(HTTP_REUSE_ANNOTATION) else {
        return Ok(1);
    };
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_HTTP_REUSE).contains(&n) => Ok(n),
        _ => Err(GrantError::Annotation {
            name: HTTP_REUSE_ANNOTATION,
            value: v.clone(),
            why: format!("must be a number of requests from 1 (a fresh instance per request) to {MAX_HTTP_REUSE}"),
        }),
    }
}

/// Which key-value store a guest's `wasi:keyvalue` reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyValue {
    /// No grant: a component importing `wasi:keyvalue` is refused.
    Denied,
    /// One in-process store shared by the containers of one shim (a pod's,
    /// or one `ctr run` container's), gone with it.
    Memory,
    /// A Redis server, reached from the container's network.
    Redis { url: String },
}

pub(crate) fn keyvalue(annotations: &HashMap<String, String>) -> Result<KeyValue, GrantError> {
    let Some(v) = annotations.get(KEYVALUE_ANNOTATION) else {
        return Ok(KeyValue::Denied);
    };
    let bad = |why: &str| GrantError::Annotation { name: KEYVALUE_ANNOTATION, value: v.clone(), why: why.to_string() };
    let v = v.trim();
    if v == "memory" {
        return Ok(KeyValue::Memory);
    }
    let Some(rest) = v.strip_prefix("redis://") else {
        return Err(bad("must be `memory` or `redis://HOST:PORT[/DB]`"));
    };
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    if hostport.contains('@') {
        return Err(bad("credentials do not belong in an annotation, which every reader of the pod sees"));
    }
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("needs an explicit :PORT"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("needs a host and a port between 1 and 65535"));
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(bad("the database after the `/` must be a number"));
    }
    Ok(KeyValue::Redis { url: v.to_string() })
}

/// The host directory whose files are the guest's `wasi:config` entries: a
/// bind mount's source at [`CONFIG_DIR`]. Without one the store is empty.
pub(crate) fn config_dir(dirs: &[DirGrant]) -> Option<PathBuf> {
    dirs.iter().rev().find(|d| d.guest == CONFIG_DIR).and_then(|d| match &d.source {
        DirSource::Host(h) => Some(h.clone()),
        DirSource::Private { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_reuse_is_one_unless_annotated_with_a_count() {
        let a = |v: &str| HashMap::from([(HTTP_REUSE_ANNOTATION.to_string(), v.to_string())]);
        assert_eq!(http_reuse(&HashMap::new()).unwrap(), 1);
        assert_eq!(http_reuse(&a("100")).unwrap(), 100);
        for bad in ["0", "-1", "many", "", "1048577"] {
            let e = http_reuse(&a(bad)).unwrap_err().to_string();
            assert!(e.contains(HTTP_REUSE_ANNOTATION) && e.contains("from 1"), "{bad}: {e}");
        }
    }

    use super::*;

    fn kv(v: &str) -> Result<KeyValue, GrantError> {
        keyvalue(&HashMap::from([(KEYVALUE_ANNOTATION.to_string(), v.to_string())]))
    }

    #[test]
    fn keyvalue_annotation() {
        assert_eq!(keyvalue(&HashMap::new()), Ok(KeyValue::Denied));
        assert_eq!(kv("memory"), Ok(KeyValue::Memory));
        assert_eq!(kv("redis://127.0.0.1:6379"), Ok(KeyValue::Redis { url: "redis://127.0.0.1:6379".into() }));
        assert_eq!(kv("redis://cache.ns:6380/2"), Ok(KeyValue::Redis { url: "redis://cache.ns:6380/2".into() }));
        for bad in [
            "",
            "Memory",
            "sqlite:///x",
            "redis://host",
            "redis://:6379",
            "redis://h:0",
            "redis://h:1/x",
            "redis://u:p@h:1",
        ] {
            let e = kv(bad).unwrap_err().to_string();
            assert!(e.contains(KEYVALUE_ANNOTATION), "{bad}: {e}");
        }
    }

    #[test]
    fn config_dir_is_the_last_mount_at_its_path() {
        let d = |guest: &str, source: DirSource| DirGrant { guest: guest.into(), source, readonly: true };
        assert_eq!(config_dir(&[]), None);
        let dirs = vec![
            d("/data", DirSource::Host("/srv/data".into())),
            d(CONFIG_DIR, DirSource::Host("/a".into())),
            d(CONFIG_DIR, DirSource::Host("/b".into())),
        ];
        assert_eq!(config_dir(&dirs), Some("/b".into()));
        assert_eq!(config_dir(&[d(CONFIG_DIR, DirSource::Private { size_bytes: 1 })]), None);
    }
}
