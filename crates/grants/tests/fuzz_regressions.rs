//! Hostile specs, on stable: the committed fuzz corpus (`test/fuzz-corpus/
//! spec_grants`, replayed as `config.json` files) and hand-written cases.
//! Every one must end in a clear `Err` or in grants that keep the guest's
//! paths inside what the spec lists, without a panic and quickly.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use regressions::{corpus, timed};
use serde_json::{json, Value};
use wasmcell_grants::{grants, parse_spec, DirSource, GrantError, Grants, Options};

#[path = "../../../fuzz/regressions.rs"]
mod regressions;

/// `/` or `/a/b`: no empty, `.` or `..` component.
fn clean_abs(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// The properties every grant must have, whatever the spec said.
fn check(g: &Grants) {
    let p = &g.program;
    assert!(clean_abs(&p.entrypoint) && p.entrypoint != "/", "entrypoint {:?}", p.entrypoint);
    assert!(clean_abs(&p.cwd), "cwd {:?}", p.cwd);
    let mut keys = std::collections::HashSet::new();
    for (k, _) in &p.env {
        assert!(!k.is_empty() && !k.contains('='), "env key {k:?}");
        assert!(keys.insert(k), "duplicate env key {k:?}");
    }
    for d in &g.dirs {
        assert!(clean_abs(&d.guest) && d.guest != "/", "dir at {:?}", d.guest);
        if let DirSource::Host(h) = &d.source {
            assert!(clean_abs(h.to_str().unwrap()), "bind source {h:?}");
        }
    }
    if let Some(c) = g.limits.cpu {
        assert!(c.quota_us > 0 && (1_000..=1_000_000).contains(&c.period_us), "{c:?}");
    }
    let rows = g.rows();
    assert_eq!(rows[0].setting, "process.args[0]");
    assert!(g.to_string().starts_with("SETTING"));
}

/// What the shim does with a bundle's `config.json`.
fn run_bytes(bytes: &[u8]) -> Result<Grants, GrantError> {
    let spec = parse_spec(bytes)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let g = grants(&spec, &annotations, &Options { bundle: "/run/bundle".into() })?;
    check(&g);
    Ok(g)
}

/// A spec as `ctr run` writes it, with `patch` merged in (null removes a key).
fn spec(patch: Value) -> Value {
    let mut base = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["/hello.wasm"], "env": ["PATH=/usr/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]}
    });
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    merge(&mut base, patch);
    base
}

fn run(patch: Value) -> Result<Grants, GrantError> {
    run_bytes(&serde_json::to_vec(&spec(patch)).unwrap())
}

#[test]
fn corpus_replays_without_panic() {
    let files = corpus("spec_grants");
    assert!(!files.is_empty());
    for (path, bytes) in files {
        match run_bytes(&bytes) {
            Ok(_) => {}
            Err(e) => assert!(!e.to_string().is_empty(), "{}", path.display()),
        }
    }
}

#[test]
fn corpus_seeds_decide_as_expected() {
    let get = |name: &str| {
        let (_, b) = corpus("spec_grants").into_iter().find(|(p, _)| p.ends_with(name)).unwrap();
        run_bytes(&b)
    };
    assert!(get("ctr-run.json").is_ok());
    assert!(get("cri-sandbox.json").is_ok());
    assert!(get("cri-container.json").is_ok());
    assert_eq!(get("terminal.json"), Err(GrantError::Terminal));
    assert_eq!(get("mount-over-root.json"), Err(GrantError::MountOverRoot("/".into())));
    assert_eq!(get("mount-dotdot.json"), Err(GrantError::MountDestination("/a/../../etc".into())));
    assert_eq!(get("args-escape.json"), Err(GrantError::InvalidEntrypoint("/../../etc/passwd".into())));
    assert_eq!(get("bad-env.json"), Err(GrantError::InvalidEnv("NOEQUALS".into())));
    assert!(matches!(get("cpu-extreme.json"), Err(GrantError::CpuPeriod { .. })));
    assert_eq!(get("no-root.json"), Err(GrantError::NoRoot));
    assert!(matches!(get("truncated.json"), Err(GrantError::BadSpec(_))));
}

#[test]
fn entrypoint_path_tricks() {
    let entry =
        |arg0: &str, cwd: &str| run(json!({"process": {"args": [arg0], "cwd": cwd}})).map(|g| g.program.entrypoint);
    let invalid = |s: &str| Err(GrantError::InvalidEntrypoint(s.into()));
    assert_eq!(entry("/../../etc/passwd", "/"), invalid("/../../etc/passwd"));
    assert_eq!(entry("//x.wasm", "/"), Ok("/x.wasm".into()));
    assert_eq!(entry("./a/../../b", "/"), invalid("./a/../../b"));
    assert_eq!(entry("./a/../../b", "/srv/app"), invalid("./a/../../b"));
    assert_eq!(entry("../x.wasm", "/srv"), invalid("../x.wasm"));
    assert_eq!(entry("/a/b/..", "/"), invalid("/a/b/.."));
    assert_eq!(entry("", "/"), invalid(""));
    assert_eq!(entry(".", "/"), invalid("."));
    assert_eq!(entry("x.wasm/", "/"), invalid("x.wasm/"));
    assert_eq!(entry("///a//./b.wasm", "/"), Ok("/a/b.wasm".into()));
    assert_eq!(entry("x.wasm", "//srv//./app/"), Ok("/srv/app/x.wasm".into()));
    // A NUL byte is carried as is; opening it in the rootfs fails cleanly.
    assert_eq!(entry("/a\0b.wasm", "/"), Ok("/a\0b.wasm".into()));
    assert_eq!(
        run(json!({"process": {"args": ["x.wasm"], "cwd": "/srv/../.."}})).unwrap_err(),
        GrantError::InvalidCwd("/srv/../..".into())
    );
    assert_eq!(
        run(json!({"process": {"args": ["x.wasm"], "cwd": "srv"}})).unwrap_err(),
        GrantError::InvalidCwd("srv".into())
    );
}

#[test]
fn mount_path_tricks() {
    let m = |mounts: Value| run(json!({ "mounts": mounts }));
    let bind =
        |dest: &str, src: &str| json!([{"destination": dest, "type": "bind", "source": src, "options": ["rbind"]}]);
    assert_eq!(m(bind("/data/..", "/srv")), Err(GrantError::MountDestination("/data/..".into())));
    assert_eq!(m(bind("/../etc", "/srv")), Err(GrantError::MountDestination("/../etc".into())));
    assert_eq!(m(bind("..", "/srv")), Err(GrantError::MountDestination("..".into())));
    assert_eq!(m(bind("", "/srv")), Err(GrantError::MountDestination("".into())));
    assert_eq!(m(bind("/.", "/srv")), Err(GrantError::MountOverRoot("/.".into())));
    assert_eq!(m(bind("//", "/srv")), Err(GrantError::MountOverRoot("//".into())));
    assert_eq!(
        m(bind("/data", "/srv/../../etc")),
        Err(GrantError::BindSource { path: "/srv/../../etc".into(), destination: "/data".into() })
    );
    assert_eq!(
        m(bind("/data", "../etc")),
        Err(GrantError::BindSource { path: "../etc".into(), destination: "/data".into() })
    );
    assert_eq!(
        m(json!([{"destination": "/data", "options": ["bind"]}])),
        Err(GrantError::BindWithoutSource("/data".into()))
    );
    assert_eq!(
        m(json!([{"destination": "/", "type": "tmpfs", "source": "tmpfs"}])),
        Err(GrantError::MountOverRoot("/".into()))
    );
    // Normalized, not refused: `.` and repeated slashes.
    let g = m(bind("//data/./x/", "/srv//./data")).unwrap();
    assert_eq!(g.dirs[0].guest, "/data/x");
    assert_eq!(g.dirs[0].host(), Some(Path::new("/srv/data")));
    // A kernel filesystem anywhere, even over `/`, is hidden, never granted.
    let g = m(json!([{"destination": "/", "type": "proc", "source": "proc"}])).unwrap();
    assert!(g.dirs.is_empty() && g.hidden.len() == 1);
    // `/dev` trees are hidden whatever the spelling.
    let g = m(json!([{"destination": "/dev/./shm/", "type": "tmpfs", "source": "shm"}])).unwrap();
    assert!(g.dirs.is_empty(), "{:?}", g.dirs);
}

#[test]
fn a_spec_with_10000_mounts() {
    let mounts: Vec<Value> = (0..10_000)
        .map(|i| match i % 3 {
            0 => json!({"destination": format!("/m/{i}"), "type": "bind", "source": format!("/srv/{i}"), "options": ["rbind", "ro"]}),
            1 => json!({"destination": format!("/t/{i}"), "type": "tmpfs", "source": "tmpfs"}),
            _ => json!({"destination": format!("/p/{i}"), "type": "proc", "source": "proc"}),
        })
        .collect();
    let bytes = serde_json::to_vec(&spec(json!({ "mounts": mounts }))).unwrap();
    let g = timed("10,000 mounts", Duration::from_secs(2), || run_bytes(&bytes)).unwrap();
    assert_eq!(g.dirs.len() + g.hidden.len(), 10_000);
    assert!(timed("explain of 10,000 mounts", Duration::from_secs(2), || g.to_string()).lines().count() > 10_000);
}

#[test]
fn a_1mb_environment_in_one_variable() {
    let big = format!("BIG={}", "x".repeat(1 << 20));
    let g = timed("1 MB env value", Duration::from_secs(2), || run(json!({"process": {"env": [big, "A=1"]}}))).unwrap();
    assert_eq!(g.program.env.len(), 2);
    assert_eq!(g.program.env[0].1.len(), 1 << 20);
    // The explain table names the variable, not its megabyte.
    assert!(g.to_string().len() < 4096);
}

fn short_variables(n: usize) -> (Vec<u8>, usize) {
    let env: Vec<String> = (0..n).map(|i| format!("K{i:06}=v")).collect();
    (serde_json::to_vec(&spec(json!({"process": {"env": env}}))).unwrap(), n)
}

/// 1 MiB of `Knnnnnn=v` entries: about 100,000 variables (a pod spec of that
/// size still fits etcd). Found while writing these tests: duplicate keys
/// were removed with a linear scan per entry, ~40 s of CPU at Create.
#[test]
fn a_1mb_environment_of_short_variables() {
    let (bytes, n) = short_variables((1 << 20) / 10);
    assert!(bytes.len() >= 1 << 20);
    let g = timed("1 MB env of short variables", Duration::from_secs(2), || run_bytes(&bytes)).unwrap();
    assert_eq!(g.program.env.len(), n);
}

/// The same at a tenth of the size stays within the bound even as it is.
#[test]
fn ten_thousand_short_variables() {
    let (bytes, n) = short_variables(10_000);
    let g = timed("10,000 env variables", Duration::from_secs(2), || run_bytes(&bytes)).unwrap();
    assert_eq!(g.program.env.len(), n);
}

#[test]
fn env_entries_that_are_not_pairs() {
    let env = |e: Value| run(json!({"process": {"env": e}})).map(|g| g.program.env);
    assert_eq!(env(json!(["=x"])), Err(GrantError::InvalidEnv("=x".into())));
    assert_eq!(env(json!([""])), Err(GrantError::InvalidEnv("".into())));
    assert_eq!(env(json!(["A=1", "A=2=3"])), Ok(vec![("A".into(), "2=3".into())]));
    assert_eq!(env(json!(["K\u{0}=v"])).unwrap()[0].0, "K\u{0}");
    assert!(matches!(env(json!([1])), Err(GrantError::BadSpec(_))));
}

#[test]
fn extreme_resource_numbers() {
    let lim = |r: Value| run(json!({"linux": {"resources": r}})).map(|g| g.limits);
    let l = lim(json!({"memory": {"limit": i64::MAX, "swap": i64::MIN}, "pids": {"limit": i64::MAX}})).unwrap();
    assert_eq!(l.memory_bytes, Some(i64::MAX as u64));
    assert_eq!(l.instances, Some(i64::MAX as u64));
    let l = lim(
        json!({"memory": {"limit": i64::MIN}, "pids": {"limit": i64::MIN}, "cpu": {"quota": i64::MIN, "shares": 0}}),
    )
    .unwrap();
    assert_eq!((l.memory_bytes, l.instances, l.cpu, l.cpu_shares), (None, None, None, None));
    let l = lim(json!({"cpu": {"quota": i64::MAX, "period": 1000, "shares": u64::MAX}})).unwrap();
    assert_eq!(l.cpu.unwrap().quota_us, i64::MAX as u64);
    assert!(l.cpu.unwrap().cores().is_finite());
    assert_eq!(l.cpu_shares, Some(u64::MAX));
    assert_eq!(
        lim(json!({"cpu": {"quota": 1, "period": u64::MAX}})),
        Err(GrantError::CpuPeriod { quota: 1, period: u64::MAX })
    );
    assert_eq!(lim(json!({"cpu": {"quota": 1, "period": 999}})), Err(GrantError::CpuPeriod { quota: 1, period: 999 }));
    assert!(lim(json!({"cpu": {"quota": 1, "period": 1_000_000}})).is_ok());
    // Out of the field's range, or of the wrong type: a bad spec, not a wrap.
    assert!(matches!(lim(json!({"memory": {"limit": u64::MAX}})), Err(GrantError::BadSpec(_))));
    assert!(matches!(lim(json!({"cpu": {"period": -1}})), Err(GrantError::BadSpec(_))));
    assert!(matches!(lim(json!({"cpu": {"quota": 1.5}})), Err(GrantError::BadSpec(_))));
    assert!(matches!(lim(json!({"pids": {"limit": "16"}})), Err(GrantError::BadSpec(_))));
}

#[test]
fn namespaces_and_annotations() {
    let g = run(json!({"linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}, {"type": "network"}]}}))
        .unwrap();
    assert_eq!(g.network, wasmcell_grants::Network::Namespace("/proc/1/ns/net".into()));
    assert!(matches!(run(json!({"linux": {"namespaces": [{"type": "bogus"}]}})), Err(GrantError::BadSpec(_))));
    let g = run(
        json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": ""}}),
    )
    .unwrap();
    assert_eq!(g.role, wasmcell_grants::Role::Standalone);
    // Annotations grant nothing: a caller's own map is all that is consulted.
    let spec = parse_spec(&serde_json::to_vec(&spec(json!({}))).unwrap()).unwrap();
    let ann: HashMap<String, String> = [("io.kubernetes.cri.sandbox-id".to_string(), "p".repeat(1 << 16))].into();
    let g = grants(&spec, &ann, &Options::default()).unwrap();
    assert_eq!(g.role.sandbox_id().map(str::len), Some(1 << 16));
}

#[test]
fn malformed_documents() {
    let bad = |b: &[u8]| {
        assert!(
            matches!(run_bytes(b), Err(GrantError::BadSpec(_))),
            "{:?}",
            String::from_utf8_lossy(&b[..b.len().min(40)])
        )
    };
    bad(b"");
    bad(b"null");
    // serde reads a struct from a JSON array too (fields by position): an
    // empty one is a spec without a process, refused as such.
    assert_eq!(run_bytes(b"[]"), Err(GrantError::NoProcess));
    bad(b"\xff\xfe{}");
    bad(b"{\"ociVersion\": \"1.0.2\", \"process\": {\"args\": [\"/\xff.wasm\"]}}");
    // Nesting far past serde_json's recursion limit is an error, not a stack overflow.
    let deep = format!("{{\"ociVersion\":\"1\",\"annotations\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    bad(deep.as_bytes());
    // Duplicate keys, as serde reads them: an error, not a silent choice.
    let dup = br#"{"ociVersion":"1.0.2","root":{"path":"a"},"root":{"path":"b"}}"#;
    assert!(run_bytes(dup).is_err());
}
