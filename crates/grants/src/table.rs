use std::fmt;

use crate::{DirSource, Grants, Network};

/// One line of the grants table: an OCI setting, its value in this spec, and
/// what the guest gets from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub setting: String,
    pub value: String,
    pub grant: String,
}

fn row(setting: impl Into<String>, value: impl Into<String>, grant: impl Into<String>) -> Row {
    Row { setting: setting.into(), value: value.into(), grant: grant.into() }
}

impl Grants {
    /// The grants as the table `docs/capabilities.md` describes.
    pub fn rows(&self) -> Vec<Row> {
        let p = &self.program;
        let mut rows = vec![
            row("process.args[0]", &p.argv[0], format!("runs {} from the rootfs", p.entrypoint)),
            row("process.args", format!("{:?}", p.argv), "the guest's argv"),
            row(
                "process.env",
                format!("{} variables", p.env.len()),
                format!(
                    "exactly these, nothing from the host: {}",
                    p.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ),
            row("process.cwd", &p.cwd, "initial working directory"),
        ];
        let root_host = self.root.host().map(|h| h.display().to_string()).unwrap_or_default();
        rows.push(row(
            "root",
            root_host,
            format!("preopened as / ({})", if self.root.readonly { "read-only" } else { "read-write" }),
        ));
        for d in &self.dirs {
            let (setting, value) = match &d.source {
                DirSource::Host(h) => ("mounts (bind)", h.display().to_string()),
                DirSource::Private { size_bytes } => {
                    ("mounts (tmpfs)", format!("private tmpfs of {} KiB", size_bytes >> 10))
                }
            };
            rows.push(row(
                setting,
                value,
                format!("preopened at {} ({})", d.guest, if d.readonly { "read-only" } else { "read-write" }),
            ));
        }
        for h in &self.hidden {
            rows.push(row(format!("mounts ({})", h.kind), &h.destination, format!("not exposed: {}", h.why)));
        }
        let (value, grant) = match &self.network {
            Network::Host => ("none (host network)".to_string(), "TCP, UDP and DNS on the host's network".to_string()),
            Network::Namespace(p) => {
                (p.display().to_string(), "TCP, UDP and DNS inside that namespace only".to_string())
            }
            Network::Private => {
                ("new, without path".to_string(), "loopback only, in a namespace of its own".to_string())
            }
        };
        rows.push(row("linux.namespaces[network]", value, grant));
        let l = &self.limits;
        rows.push(match l.memory_bytes {
            Some(b) => row(
                "linux.resources.memory.limit",
                b.to_string(),
                "cap on linear memory + tables; exceeding it exits 137 (OOM)",
            ),
            None => row("linux.resources.memory.limit", "unset", "no cap beyond the shim's cgroup"),
        });
        rows.push(match l.cpu {
            Some(c) => row(
                "linux.resources.cpu.quota/period",
                format!("{}/{}", c.quota_us, c.period_us),
                format!("at most {:.2} of a core", c.cores()),
            ),
            None => row("linux.resources.cpu.quota/period", "unset", "no CPU cap"),
        });
        if let Some(s) = l.cpu_shares {
            rows.push(row("linux.resources.cpu.shares", s.to_string(), "relative weight among this shim's guests"));
        }
        rows.push(match l.instances {
            Some(n) => row("linux.resources.pids.limit", n.to_string(), "most instances alive at once"),
            None => row("linux.resources.pids.limit", "unset", "no cap on live instances"),
        });
        rows.push(match &self.config_dir {
            Some(d) => row(
                format!("mounts (bind) at {}", crate::CONFIG_DIR),
                d.display().to_string(),
                "wasi:config: one entry per file (key = file name, value = contents), read at Create",
            ),
            None => row(format!("mounts at {}", crate::CONFIG_DIR), "none", "wasi:config links, with no entries"),
        });
        let kv = format!("annotations[{}]", crate::KEYVALUE_ANNOTATION);
        rows.push(match &self.keyvalue {
            crate::KeyValue::Denied => row(kv, "unset", "no wasi:keyvalue: a component importing it is refused"),
            crate::KeyValue::Memory => {
                row(kv, "memory", "wasi:keyvalue: an in-memory store shared by this shim's containers (the pod's)")
            }
            crate::KeyValue::Redis { url } => {
                row(kv, url, "wasi:keyvalue: that Redis server, reached from the container's network")
            }
        });
        let reuse = format!("annotations[{}]", crate::HTTP_REUSE_ANNOTATION);
        rows.push(match self.http_reuse {
            1 => row(reuse, "unset", "a WASI 0.2 HTTP handler gets a fresh instance per request"),
            n => row(
                reuse,
                n.to_string(),
                format!("a WASI 0.2 HTTP handler's instance serves up to {n} requests in turn: they share its memory"),
            ),
        });
        for i in &self.ignored {
            rows.push(row(i.setting, "set", format!("no effect: {}", i.why)));
        }
        match &self.role {
            crate::Role::Standalone => {}
            crate::Role::Sandbox { id } => rows.push(row(
                "annotations[io.kubernetes.cri.container-type]",
                format!("sandbox {id}"),
                "runs no Wasm: holds the pod's network namespace and cgroup",
            )),
            crate::Role::PodMember { sandbox_id } => rows.push(row(
                "annotations[io.kubernetes.cri.sandbox-id]",
                sandbox_id.clone(),
                "served by the pod's shim, in the pod's network",
            )),
        }
        rows
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", table(&self.rows()))
    }
}

/// Rows as the aligned table `wasmcell explain` prints.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut f = String::new();
    let w0 = rows.iter().map(|r| r.setting.len()).max().unwrap_or(0).max(7);
    let w1 = rows.iter().map(|r| r.value.chars().count().min(48)).max().unwrap_or(0).max(5);
    let _ = writeln!(f, "{:w0$}  {:w1$}  GRANT", "SETTING", "VALUE");
    for r in rows {
        let mut v: String = r.value.chars().take(48).collect();
        if r.value.chars().count() > 48 {
            v.pop();
            v.push('~');
        }
        let _ = writeln!(f, "{:w0$}  {:w1$}  {}", r.setting, v, r.grant);
    }
    f
}

#[cfg(test)]
mod tests {
    use crate::testutil::spec;
    use crate::{grants, Options};
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn table_names_every_grant() {
        let s = spec(json!({
            "mounts": [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
                       {"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"resources": {"memory": {"limit": 1048576}, "cpu": {"quota": 50000, "period": 100000}}}
        }));
        let g = grants(&s, &HashMap::new(), &Options { bundle: "/b".into() }).unwrap();
        let text = g.to_string();
        for needle in [
            "preopened as / (read-write)",
            "preopened at /data (read-only)",
            "not exposed",
            "loopback only",
            "1048576",
            "0.50 of a core",
            "GREETING",
            "wasi:config links, with no entries",
            "no wasi:keyvalue",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
