//! What a container is to Kubernetes: a pod's sandbox, a member of a pod, or
//! a container of its own (`ctr run`). CRI says so in annotations it writes
//! into every spec; nothing here guesses from image names or arguments.

use std::collections::HashMap;

/// CRI's annotation naming the kind of container: `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not part of a pod: runs its Wasm in a shim of its own.
    Standalone,
    /// A pod's sandbox ("pause") container. It runs nothing: it holds the
    /// pod's network namespace and cgroup for the pod's other containers.
    Sandbox { id: String },
    /// A container of pod `sandbox_id`, served by that pod's shim.
    PodMember { sandbox_id: String },
}

impl Role {
    /// The pod this container belongs to, if any.
    pub fn sandbox_id(&self) -> Option<&str> {
        match self {
            Role::Standalone => None,
            Role::Sandbox { id } => Some(id),
            Role::PodMember { sandbox_id } => Some(sandbox_id),
        }
    }
}

pub(crate) fn role(annotations: &HashMap<String, String>) -> Role {
    let sandbox = annotations.get(SANDBOX_ID).filter(|s| !s.is_empty()).cloned();
    match (annotations.get(CONTAINER_TYPE).map(String::as_str), sandbox) {
        (Some("sandbox"), Some(id)) => Role::Sandbox { id },
        (_, Some(sandbox_id)) => Role::PodMember { sandbox_id },
        _ => Role::Standalone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn table() {
        let cases = vec![
            (ann(&[]), Role::Standalone),
            (ann(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "p1")]), Role::Sandbox { id: "p1".into() }),
            (ann(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "p1")]), Role::PodMember { sandbox_id: "p1".into() }),
            // A sandbox id without a type is still a pod member.
            (ann(&[(SANDBOX_ID, "p1")]), Role::PodMember { sandbox_id: "p1".into() }),
            // A type without a sandbox id names no pod: on its own.
            (ann(&[(CONTAINER_TYPE, "sandbox")]), Role::Standalone),
            (ann(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "")]), Role::Standalone),
        ];
        for (a, want) in cases {
            assert_eq!(role(&a), want, "{a:?}");
        }
    }
}
