//! A runtime handler's policy ([`Policy`]), and the container's grants, put
//! to a guest before it runs: Wasm features the engine turns off, and
//! imports refused by name. Both read the Wasm's structure and types; a
//! refusal costs no compile.

use wasmcell_grants::Policy;
use wasmparser::WasmFeatures as F;

use crate::EngineError;

/// The wasmparser flags a policy's feature name turns off, including the
/// proposals built on it (Wasmtime refuses relaxed SIMD without SIMD, GC
/// without function references, and so on).
pub(crate) fn flags(name: &str) -> Option<F> {
    Some(match name {
        "bulk-memory" => F::BULK_MEMORY,
        "component-model-async" => {
            F::CM_ASYNC | F::CM_ASYNC_STACKFUL | F::CM_MORE_ASYNC_BUILTINS | F::CM_THREADING | F::CM_ERROR_CONTEXT
        }
        "custom-page-sizes" => F::CUSTOM_PAGE_SIZES,
        "exceptions" => F::EXCEPTIONS | F::LEGACY_EXCEPTIONS,
        "extended-const" => F::EXTENDED_CONST,
        "function-references" => F::FUNCTION_REFERENCES | F::GC,
        "gc" => F::GC,
        "memory64" => F::MEMORY64,
        "multi-memory" => F::MULTI_MEMORY,
        "multi-value" => F::MULTI_VALUE,
        "reference-types" => F::REFERENCE_TYPES | F::FUNCTION_REFERENCES | F::GC,
        "relaxed-simd" => F::RELAXED_SIMD,
        "simd" => F::SIMD | F::RELAXED_SIMD,
        "stack-switching" => F::STACK_SWITCHING,
        "tail-call" => F::TAIL_CALL,
        "threads" => F::THREADS | F::SHARED_EVERYTHING_THREADS,
        "wide-arithmetic" => F::WIDE_ARITHMETIC,
        _ => return None,
    })
}

/// Every flag the policy turns off.
pub(crate) fn denied(policy: &Policy) -> F {
    policy.deny_wasm_features.iter().filter_map(|n| flags(n)).fold(F::empty(), |a, f| a | f)
}

fn validates(wasm: &[u8], features: F) -> bool {
    wasmparser::Validator::new_with_features(features).validate_all(wasm).is_ok()
}

/// Refuses Wasm that needs a feature the policy turns off, naming the
/// feature and the policy. Wasm that is invalid for another reason is left
/// to the compiler, which says where.
pub(crate) fn check_features(wasm: &[u8], policy: &Policy) -> Result<(), EngineError> {
    let off = denied(policy);
    if off.is_empty() || validates(wasm, F::all() - off) || !validates(wasm, F::all()) {
        return Ok(());
    }
    let used: Vec<&str> = policy
        .deny_wasm_features
        .iter()
        .map(String::as_str)
        .filter(|n| flags(n).is_some_and(|f| !validates(wasm, F::all() - f)))
        .collect();
    let what = match used.as_slice() {
        [] => format!("one of the Wasm features {:?}", policy.deny_wasm_features),
        [one] => format!("the Wasm feature `{one}`"),
        many => format!("the Wasm features {}", many.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
    };
    Err(EngineError::Denied(format!(
        "the guest uses {what}, which the runtime handler's policy {} turns off (deny_wasm_features)",
        policy.path.display()
    )))
}

/// What a container's spec grants beyond WASI's defaults, for the imports
/// that need a grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    /// `wasi:keyvalue` (annotation `wasmcell.dev/keyvalue`).
    pub keyvalue: bool,
}

/// Refuses the first import (a component's, `wasi:sockets/tcp@0.2.3`) that
/// the policy denies or that needs a grant the container lacks.
pub(crate) fn check_imports<'a>(
    imports: impl IntoIterator<Item = &'a str>,
    policy: Option<&Policy>,
    granted: Granted,
) -> Result<(), EngineError> {
    for name in imports {
        if let Some(rule) = policy.and_then(|p| p.denied_import(name)) {
            return Err(EngineError::Denied(format!(
                "the component imports `{name}`, which the runtime handler's policy {} denies (deny_imports {rule:?})",
                policy.map(|p| p.path.display().to_string()).unwrap_or_default()
            )));
        }
        if name.starts_with("wasi:keyvalue/") && !granted.keyvalue {
            return Err(EngineError::Denied(format!(
                "the component imports `{name}`, and this container has no key-value store: set the annotation \
                 {}=memory or =redis://HOST:PORT (in Kubernetes, on the pod, with the RuntimeClass's handler \
                 listing it in pod_annotations)",
                wasmcell_grants::KEYVALUE_ANNOTATION,
            )));
        }
    }
    Ok(())
}

/// Whether a Wasm file would be admitted under `policy` with `granted`,
/// read without compiling (for `wasmcell explain`).
pub fn admit(wasm: &[u8], policy: Option<&Policy>, granted: Granted) -> Result<(), EngineError> {
    let names = crate::imports::component_imports(wasm);
    check_imports(names.iter().map(String::as_str), policy, granted)?;
    match policy {
        Some(p) => check_features(wasm, p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_name_has_flags() {
        for n in wasmcell_grants::WASM_FEATURES {
            assert!(flags(n).is_some_and(|f| !f.is_empty()), "{n}");
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, std::path::Path::new("/etc/p.toml")).unwrap()
    }

    #[test]
    fn features_are_named_in_the_refusal() {
        let gc =
            wat::parse_str("(module (type (struct (field i32))) (func (drop (struct.new 0 (i32.const 1)))))").unwrap();
        assert!(check_features(&gc, &policy("")).is_ok());
        assert!(check_features(&gc, &policy("deny_wasm_features = [\"exceptions\"]")).is_ok());
        let e = check_features(&gc, &policy("deny_wasm_features = [\"exceptions\", \"gc\"]")).unwrap_err().to_string();
        assert!(e.contains("`gc`") && e.contains("/etc/p.toml") && e.contains("deny_wasm_features"), "{e}");
        // Invalid Wasm is the compiler's to report.
        assert!(check_features(b"\0asm\x01\0\0\0\x99", &policy("deny_wasm_features = [\"gc\"]")).is_ok());
    }

    #[test]
    fn imports_need_grants_and_pass_the_policy() {
        let p = policy("deny_imports = [\"wasi:sockets/*\"]");
        let none = Granted::default();
        assert!(check_imports(["wasi:cli/stdout@0.2.0"], Some(&p), none).is_ok());
        let e = check_imports(["wasi:cli/stdout@0.2.0", "wasi:sockets/tcp@0.2.0"], Some(&p), none).unwrap_err();
        assert!(e.to_string().contains("`wasi:sockets/tcp@0.2.0`") && e.to_string().contains("/etc/p.toml"));
        let e = check_imports(["wasi:keyvalue/store@0.2.0-draft"], None, none).unwrap_err().to_string();
        assert!(e.contains("wasmcell.dev/keyvalue=memory"), "{e}");
        assert!(check_imports(["wasi:keyvalue/store@0.2.0-draft"], None, Granted { keyvalue: true }).is_ok());
    }
}
