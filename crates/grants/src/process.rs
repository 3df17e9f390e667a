use std::path::{Component, Path};

use oci_spec::runtime::Spec;

use crate::{GrantError, Ignored};

/// What the guest runs, and the world it is started in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// Absolute guest path of the Wasm file (`args[0]`, made absolute against cwd).
    pub entrypoint: String,
    /// The guest's argv; `argv[0]` is `args[0]` as written, the program name.
    pub argv: Vec<String>,
    /// The guest's entire environment, in spec order, later duplicates winning.
    pub env: Vec<(String, String)>,
    /// Initial working directory (absolute).
    pub cwd: String,
}

pub(crate) fn program(spec: &Spec) -> Result<Program, GrantError> {
    let process = spec.process().as_ref().ok_or(GrantError::NoProcess)?;
    if process.terminal().unwrap_or(false) {
        return Err(GrantError::Terminal);
    }
    let argv = process.args().clone().unwrap_or_default();
    let first = argv.first().ok_or(GrantError::NoArgs)?;

    let cwd = process.cwd().to_string_lossy().into_owned();
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    let cwd = normalize_abs(&cwd).ok_or_else(|| GrantError::InvalidCwd(cwd.clone()))?;

    let joined =
        if first.starts_with('/') { first.clone() } else { format!("{}/{}", cwd.trim_end_matches('/'), first) };
    let entrypoint = normalize_abs(&joined).ok_or_else(|| GrantError::InvalidEntrypoint(first.clone()))?;
    if entrypoint == "/" || first.ends_with('/') {
        return Err(GrantError::InvalidEntrypoint(first.clone()));
    }

    let mut all: Vec<(String, String)> = Vec::new();
    for entry in process.env().clone().unwrap_or_default() {
        let (k, v) = entry
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| GrantError::InvalidEnv(entry.clone()))?;
        all.push((k.to_string(), v.to_string()));
    }
    // Later duplicates win, each key at its last position: one pass from
    // the end with a set (linear, whatever the size of a hostile env).
    let mut seen = std::collections::HashSet::new();
    let mut env: Vec<(String, String)> = all.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
    env.reverse();

    Ok(Program { entrypoint, argv, env, cwd })
}

/// Lexically normalizes an absolute path, refusing any `..` (a guest path
/// never needs one, and refusing is simpler to reason about than clamping).
pub(crate) fn normalize_abs(p: &str) -> Option<String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Settings a Linux runtime hands to the kernel that have no object in a
/// Wasm guest: it makes no syscalls, has no uid and no signals of its own.
/// They are accepted (never fail a container for them) and listed for `explain`.
pub(crate) fn ignored(spec: &Spec) -> Vec<Ignored> {
    let mut out = Vec::new();
    if let Some(p) = spec.process() {
        if p.user().uid() != 0 || p.user().gid() != 0 {
            out.push(Ignored {
                setting: "process.user",
                why: "a guest has no uid/gid; files it writes in granted directories are owned by the shim's user",
            });
        }
        if p.rlimits().as_ref().is_some_and(|r| !r.is_empty()) {
            out.push(Ignored {
                setting: "process.rlimits",
                why: "a guest makes no syscalls; its memory and CPU are bounded by linux.resources instead",
            });
        }
        if p.capabilities().is_some() {
            out.push(Ignored {
                setting: "process.capabilities",
                why: "a guest cannot make privileged syscalls; it has exactly the grants listed here",
            });
        }
        if p.apparmor_profile().is_some() || p.selinux_label().is_some() {
            out.push(Ignored {
                setting: "process.apparmorProfile/selinuxLabel",
                why: "LSM labels confine processes; the guest runs inside the shim, whose own confinement applies",
            });
        }
        if p.oom_score_adj().is_some() {
            out.push(Ignored {
                setting: "process.oomScoreAdj",
                why: "the guest is not a process; the shim's own score is left to containerd",
            });
        }
    }
    if let Some(l) = spec.linux() {
        if l.seccomp().is_some() {
            out.push(Ignored {
                setting: "linux.seccomp",
                why: "a guest makes no syscalls; only WASI calls the grants allow",
            });
        }
        if l.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            out.push(Ignored { setting: "linux.devices", why: "device nodes are not exposed to guests" });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use serde_json::json;

    fn prog(patch: serde_json::Value) -> Result<Program, GrantError> {
        program(&spec(patch))
    }

    #[test]
    fn table() {
        // (patch, expected entrypoint / error)
        let cases: Vec<(serde_json::Value, Result<&str, GrantError>)> = vec![
            (json!({}), Ok("/hello.wasm")),
            (json!({"process": {"args": ["app.wasm"], "cwd": "/srv"}}), Ok("/srv/app.wasm")),
            (json!({"process": {"args": ["./bin/app.wasm"], "cwd": "/"}}), Ok("/bin/app.wasm")),
            (json!({"process": {"args": ["/a/./b.wasm"]}}), Ok("/a/b.wasm")),
            (
                json!({"process": {"args": ["/../etc/passwd"]}}),
                Err(GrantError::InvalidEntrypoint("/../etc/passwd".into())),
            ),
            (json!({"process": {"args": ["../x.wasm"]}}), Err(GrantError::InvalidEntrypoint("../x.wasm".into()))),
            (json!({"process": {"args": ["/"]}}), Err(GrantError::InvalidEntrypoint("/".into()))),
            (json!({"process": {"args": []}}), Err(GrantError::NoArgs)),
            (json!({"process": {"terminal": true}}), Err(GrantError::Terminal)),
            (json!({"process": {"cwd": "/a/../.."}}), Err(GrantError::InvalidCwd("/a/../..".into()))),
            (json!({"process": {"env": ["NOEQUALS"]}}), Err(GrantError::InvalidEnv("NOEQUALS".into()))),
            (json!({"process": {"env": ["=v"]}}), Err(GrantError::InvalidEnv("=v".into()))),
        ];
        for (patch, want) in cases {
            let got = prog(patch.clone()).map(|p| p.entrypoint);
            assert_eq!(got.as_deref().map_err(|e| e.clone()), want, "{patch}");
        }
    }

    #[test]
    fn no_process() {
        let mut s = spec(json!({}));
        s.set_process(None);
        assert_eq!(program(&s), Err(GrantError::NoProcess));
    }

    #[test]
    fn env_is_exactly_the_spec_later_wins() {
        let p = prog(json!({"process": {"env": ["A=1", "B=x=y", "A=2", "EMPTY="]}})).unwrap();
        assert_eq!(p.env, vec![("B".into(), "x=y".into()), ("A".into(), "2".into()), ("EMPTY".into(), "".into())]);
    }

    #[test]
    fn argv_keeps_program_name() {
        let p = prog(json!({"process": {"args": ["app.wasm", "--x"], "cwd": "/w"}})).unwrap();
        assert_eq!(p.argv, vec!["app.wasm", "--x"]);
        assert_eq!(p.cwd, "/w");
    }

    #[test]
    fn ignored_settings_are_listed_not_refused() {
        let s = spec(json!({
            "process": {"user": {"uid": 1000, "gid": 1000}, "oomScoreAdj": 5,
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 10}]},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}
        }));
        let names: Vec<_> = ignored(&s).iter().map(|i| i.setting).collect();
        assert_eq!(names, vec!["process.user", "process.rlimits", "process.oomScoreAdj", "linux.seccomp"]);
    }
}
