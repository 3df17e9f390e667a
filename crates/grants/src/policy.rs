//! A runtime handler's policy: the TOML file its runtime options name
//! (`ConfigPath`, as for gVisor's runsc). It narrows what any container of
//! that handler may use, whatever its spec asks for:
//!
//! ```toml
//! deny_imports = ["wasi:sockets/*", "wasi:http/outgoing-handler"]
//! deny_wasm_features = ["gc", "exceptions"]
//! ```

use std::path::{Path, PathBuf};

use crate::GrantError;

/// Wasm proposals a policy may turn off, by their wasmparser names written
/// in kebab case. Those on by default are Wasmtime 48's defaults (the Wasm
/// 3.0 set) plus the component model's async ABI (WASI 0.3).
pub const WASM_FEATURES: &[&str] = &[
    "bulk-memory",
    "component-model-async",
    "custom-page-sizes",
    "exceptions",
    "extended-const",
    "function-references",
    "gc",
    "memory64",
    "multi-memory",
    "multi-value",
    "reference-types",
    "relaxed-simd",
    "simd",
    "stack-switching",
    "tail-call",
    "threads",
    "wide-arithmetic",
];

/// Keys a policy file may have.
const KEYS: &[&str] = &["deny_imports", "deny_wasm_features"];

/// What a runtime handler's policy denies. The default denies nothing
/// beyond what the spec does not grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The file it was read from, named in every refusal.
    pub path: PathBuf,
    /// Interface names without a version (`wasi:http/outgoing-handler`), or
    /// `package/*` for every interface of a package (`wasi:sockets/*`).
    pub deny_imports: Vec<String>,
    /// Names from [`WASM_FEATURES`], each turned off for this handler.
    pub deny_wasm_features: Vec<String>,
}

impl Policy {
    /// Parses a policy file's text; `path` is where it came from.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, GrantError> {
        let bad = |why: String| GrantError::Policy { path: path.display().to_string(), why };
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| bad(e.to_string()))?;
        let mut policy = Policy { path: path.to_path_buf(), ..Default::default() };
        for (key, item) in doc.iter() {
            if !KEYS.contains(&key) {
                return Err(bad(format!("unknown key `{key}`; a policy has only {}", KEYS.join(", "))));
            }
            let strings = || -> Result<Vec<String>, GrantError> {
                let arr = item.as_array().ok_or_else(|| bad(format!("`{key}` must be an array of strings")))?;
                arr.iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(format!("`{key}` must be an array of strings")))
                    })
                    .collect()
            };
            match key {
                "deny_imports" => {
                    for name in strings()? {
                        check_interface_pattern(&name).map_err(|why| bad(format!("deny_imports: {name:?} {why}")))?;
                        policy.deny_imports.push(name);
                    }
                }
                _ => {
                    for name in strings()? {
                        if !WASM_FEATURES.contains(&name.as_str()) {
                            return Err(bad(format!(
                                "deny_wasm_features: unknown feature {name:?}; known: {}",
                                WASM_FEATURES.join(", ")
                            )));
                        }
                        policy.deny_wasm_features.push(name);
                    }
                }
            }
        }
        Ok(policy)
    }

    /// The `deny_imports` entry that denies import `name` (versioned, as a
    /// component names it: `wasi:sockets/tcp@0.2.3`), if any.
    pub fn denied_import(&self, name: &str) -> Option<&str> {
        let unversioned = name.split_once('@').map_or(name, |(n, _)| n);
        self.deny_imports.iter().map(String::as_str).find(|p| match p.strip_suffix("/*") {
            Some(package) => unversioned.strip_prefix(package).is_some_and(|rest| rest.starts_with('/')),
            None => unversioned == *p,
        })
    }
}

fn check_interface_pattern(p: &str) -> Result<(), &'static str> {
    if p.contains('@') {
        return Err("must not carry a version: a policy denies every version of an interface");
    }
    let (package, iface) = p.split_once('/').ok_or("must be `namespace:package/interface` or `namespace:package/*`")?;
    if !package.contains(':') || iface.is_empty() || iface.contains('/') || (iface.contains('*') && iface != "*") {
        return Err("must be `namespace:package/interface` or `namespace:package/*`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Policy, GrantError> {
        Policy::parse(t, Path::new("/etc/wasmcell/strict.toml"))
    }

    #[test]
    fn parses_both_keys() {
        let p = parse("deny_imports = [\"wasi:sockets/*\", \"wasi:http/outgoing-handler\"]\ndeny_wasm_features = [\"gc\", \"exceptions\"]\n").unwrap();
        assert_eq!(p.deny_imports, ["wasi:sockets/*", "wasi:http/outgoing-handler"]);
        assert_eq!(p.deny_wasm_features, ["gc", "exceptions"]);
        assert_eq!(parse("").unwrap().deny_imports, Vec::<String>::new());
    }

    #[test]
    fn matches_imports_without_their_version() {
        let p = parse("deny_imports = [\"wasi:sockets/*\", \"wasi:http/outgoing-handler\"]").unwrap();
        assert_eq!(p.denied_import("wasi:sockets/tcp@0.2.3"), Some("wasi:sockets/*"));
        assert_eq!(p.denied_import("wasi:sockets/ip-name-lookup@0.3.0"), Some("wasi:sockets/*"));
        assert_eq!(p.denied_import("wasi:http/outgoing-handler@0.2.0"), Some("wasi:http/outgoing-handler"));
        assert_eq!(p.denied_import("wasi:http/types@0.2.0"), None);
        assert_eq!(p.denied_import("wasi:socketsx/tcp@0.2.0"), None);
        assert_eq!(p.denied_import("wasi:cli/stdout@0.2.0"), None);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (text, needle) in [
            ("deny_import = []", "unknown key `deny_import`"),
            ("[deny_imports]", "array of strings"),
            ("deny_imports = [1]", "array of strings"),
            ("deny_imports = [\"wasi:sockets/tcp@0.2.0\"]", "version"),
            ("deny_imports = [\"sockets\"]", "namespace:package"),
            ("deny_imports = [\"wasi:sockets/t*\"]", "namespace:package"),
            ("deny_wasm_features = [\"gcc\"]", "unknown feature \"gcc\""),
            ("deny_imports = [", "strict.toml"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("/etc/wasmcell/strict.toml"), "{text}: {e}");
        }
    }
}
