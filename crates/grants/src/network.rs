use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Which sockets a guest may open. Whatever the variant, every address is
/// checked by the host per socket (`socket_addr_check`); nothing is inherited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// No network namespace in the spec (`ctr run --net-host`, `hostNetwork: true`):
    /// TCP, UDP and name lookup on the host's network.
    Host,
    /// A namespace with a path (a pod's): the guest's sockets live in it.
    Namespace(PathBuf),
    /// A namespace without a path (plain `ctr run`): a fresh namespace with
    /// only loopback; the guest can reach nothing outside its own container.
    Private,
}

pub(crate) fn network(spec: &Spec) -> Network {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match ns {
        None => Network::Host,
        Some(n) => match n.path() {
            Some(p) if !p.as_os_str().is_empty() => Network::Namespace(p.clone()),
            _ => Network::Private,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use serde_json::json;

    #[test]
    fn table() {
        let cases = vec![
            (json!({"linux": {"namespaces": [{"type": "pid"}]}}), Network::Host),
            (json!({"linux": {"namespaces": [{"type": "network"}]}}), Network::Private),
            (json!({"linux": {"namespaces": [{"type": "network", "path": ""}]}}), Network::Private),
            (
                json!({"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}]}}),
                Network::Namespace("/var/run/netns/cni-1".into()),
            ),
        ];
        for (patch, want) in cases {
            assert_eq!(network(&spec(patch.clone())), want, "{patch}");
        }
        let mut s = spec(json!({}));
        s.set_linux(None);
        assert_eq!(network(&s), Network::Host);
    }
}
