//! The shim's settings, each read here once and passed down as values: the
//! compile cache (runtime options' `Root`, or `WASMCELL_CACHE_DIR` /
//! `WASMCELL_CACHE_MAX_MB`), an HTTP component's address (its env), and the
//! guest runtime's size.

use containerd_shim_protos::protobuf;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use wasmcell_engine::cache::CacheConfig;
use wasmcell_grants::{Grants, Policy};

use crate::ShimError;

/// The compile cache: `<Root>/cache` when the runtime options (containerd's
/// `runtimes.wasmtime.options`, type `containerd.runc.v1.Options`) set
/// `Root`; otherwise `WASMCELL_CACHE_DIR` / the default directory.
pub(crate) fn cache(options: Option<&Any>) -> Option<CacheConfig> {
    use containerd_shim_protos::protobuf::Message;
    let from_env = CacheConfig::from_env();
    let root = options
        .filter(|a| a.type_url.ends_with("containerd.runc.v1.Options"))
        .and_then(|a| containerd_shim_protos::shim::oci::Options::parse_from_bytes(&a.value).ok())
        .map(|o| o.root)
        .filter(|r| !r.is_empty());
    match root {
        Some(r) => Some(CacheConfig { dir: std::path::Path::new(&r).join("cache"), ..from_env.unwrap_or_default() }),
        None => from_env,
    }
}

/// The runtime handler's policy file: `ConfigPath` of the runtime options
/// when they are `runtimeoptions.v1.Options`, which containerd's CRI sends
/// for every runtime handler but runc's (`[...runtimes.NAME.options]
/// ConfigPath = "FILE"`) and `ctr run --runtime-config-path FILE` sends.
pub(crate) fn policy_path(options: Option<&Any>) -> Result<Option<std::path::PathBuf>, ShimError> {
    let Some(a) = options.filter(|a| a.type_url.ends_with("runtimeoptions.v1.Options")) else {
        return Ok(None);
    };
    // message Options { string type_url = 1; string config_path = 2; string config_body = 3; }
    let bad = |e: protobuf::Error| ShimError::InvalidArgument(format!("runtime options ({}): {e}", a.type_url));
    let mut input = protobuf::CodedInputStream::from_bytes(&a.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match (tag >> 3, tag & 7) {
            (2, 2) => path = input.read_string().map_err(bad)?,
            (_, wire) => {
                let wire = protobuf::rt::WireType::new(wire).ok_or_else(|| {
                    ShimError::InvalidArgument(format!("runtime options ({}): bad wire type {wire}", a.type_url))
                })?;
                input.skip_field(wire).map_err(bad)?
            }
        }
    }
    Ok((!path.is_empty()).then(|| path.into()))
}

/// Reads and checks the policy file at `path`.
pub(crate) fn load_policy(path: &std::path::Path) -> Result<Policy, ShimError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ShimError::InvalidArgument(format!("runtime policy {} (the handler's ConfigPath): {e}", path.display()))
    })?;
    Ok(Policy::parse(&text, path)?)
}

/// Where an HTTP component listens when its env says nothing.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// Where an HTTP component listens: `WASMCELL_HTTP_ADDR`, or the name other
/// shims use, `WASMTIME_HTTP_PROXY_SOCKET_ADDR`, from the container's env.
pub(crate) fn http_addr(grants: &Grants) -> String {
    let env = &grants.program.env;
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    get("WASMCELL_HTTP_ADDR")
        .or_else(|| get("WASMTIME_HTTP_PROXY_SOCKET_ADDR"))
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string())
}

/// How long compiling one guest may take before it is stopped and its
/// Create refused: `WASMCELL_COMPILE_TIMEOUT_SECS` in the shim's environment
/// (containerd's), 120 s by default. A 20 MB component compiles in about
/// 10 s on a 2-core node; a compile bomb would take minutes.
pub(crate) fn compile_timeout() -> std::time::Duration {
    parse_compile_timeout(std::env::var("WASMCELL_COMPILE_TIMEOUT_SECS").ok().as_deref())
}

pub(crate) const DEFAULT_COMPILE_TIMEOUT_SECS: u64 = 120;

fn parse_compile_timeout(v: Option<&str>) -> std::time::Duration {
    parse_secs("WASMCELL_COMPILE_TIMEOUT_SECS", v, DEFAULT_COMPILE_TIMEOUT_SECS)
}

/// How long an HTTP client may take to send a request's headers (idle
/// keep-alive time included): `WASMCELL_HTTP_HEADER_TIMEOUT_SECS`, 10 s by
/// default (see `wasmcell_engine::http::DEFAULT_HEADER_TIMEOUT`).
pub(crate) fn http_header_timeout() -> std::time::Duration {
    let default = wasmcell_engine::http::DEFAULT_HEADER_TIMEOUT.as_secs();
    let v = std::env::var("WASMCELL_HTTP_HEADER_TIMEOUT_SECS").ok();
    parse_secs("WASMCELL_HTTP_HEADER_TIMEOUT_SECS", v.as_deref(), default)
}

/// A positive number of seconds from knob `name`, or `default` (a bad value
/// is logged).
fn parse_secs(name: &str, v: Option<&str>, default: u64) -> std::time::Duration {
    let secs = match v.map(str::trim) {
        None | Some("") => default,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                log::warn!("{name}={s:?} is not a positive number of seconds; using {default}");
                default
            }
        },
    };
    std::time::Duration::from_secs(secs)
}

/// The handles one guest store may hold, from the shim's descriptor limit:
/// an eighth of it, so that a few guests at their bound still leave the
/// shim descriptors for its own work, between 256 and 16,384.
pub(crate) fn max_handles(nofile: u64) -> usize {
    (nofile / 8).clamp(256, 16_384) as usize
}

/// Worker threads of the runtime guests run on: the cores, at most 4.
pub(crate) fn guest_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).min(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_bound_from_the_descriptor_limit() {
        assert_eq!(max_handles(1024), 256);
        assert_eq!(max_handles(20_000), 2_500);
        assert_eq!(max_handles(1 << 20), 16_384);
    }

    #[test]
    fn compile_timeout_knob() {
        use std::time::Duration;
        assert_eq!(parse_compile_timeout(None), Duration::from_secs(DEFAULT_COMPILE_TIMEOUT_SECS));
        assert_eq!(parse_compile_timeout(Some("5")), Duration::from_secs(5));
        for bad in ["0", "-1", "soon", ""] {
            assert_eq!(parse_compile_timeout(Some(bad)), Duration::from_secs(DEFAULT_COMPILE_TIMEOUT_SECS), "{bad}");
        }
    }

    #[test]
    fn root_option_places_the_cache() {
        use containerd_shim_protos::protobuf::Message;
        let opts = containerd_shim_protos::shim::oci::Options { root: "/var/lib/wc".into(), ..Default::default() };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: opts.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert_eq!(cache(Some(&any)).unwrap().dir, std::path::Path::new("/var/lib/wc/cache"));
        let other = Any { type_url: "runtimeoptions.v1.Options".into(), ..any };
        assert_ne!(cache(Some(&other)).map(|c| c.dir), Some("/var/lib/wc/cache".into()));
    }
}
