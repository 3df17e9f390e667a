//! A valid base spec (what `ctr run` writes) with fields chosen by the fuzzer:
//! odd mount destinations, sources and options, namespaces, extreme resource
//! numbers, env entries, cwd and args, CRI annotations. Gets past serde to
//! the grant rules, then checks the same properties as `spec_grants`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[derive(Arbitrary, Debug)]
enum Seg {
    Slash,
    Dot,
    DotDot,
    Name(u8),
    Raw(String),
}

const NAMES: &[&str] = &[
    "hello.wasm", "app.wasm", "bin", "etc", "passwd", "dev", "shm", "proc", "sys", "data", "rootfs",
    "x y", "\u{e9}", "\0", "a\\b", ".wasm", "~", "*", "\n", "-",
];

#[derive(Arbitrary, Debug)]
struct PathIn(Vec<Seg>);

impl PathIn {
    fn render(&self) -> String {
        let mut s = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Slash => s.push('/'),
                Seg::Dot => s.push('.'),
                Seg::DotDot => s.push_str(".."),
                Seg::Name(i) => s.push_str(NAMES[*i as usize % NAMES.len()]),
                Seg::Raw(r) => s.push_str(r),
            }
        }
        s
    }
}

/// Numbers at and around the edges the limits code cares about.
#[derive(Arbitrary, Debug)]
enum Num {
    Zero,
    NegOne,
    I64Min,
    I64Max,
    U64Max,
    Period(u8),
    Raw(i64),
    RawU(u64),
    Float(f64),
    Str,
}

impl Num {
    fn value(&self) -> Value {
        const EDGES: &[i64] = &[1, 999, 1_000, 1_001, 100_000, 999_999, 1_000_000, 1_000_001];
        match self {
            Num::Zero => json!(0),
            Num::NegOne => json!(-1),
            Num::I64Min => json!(i64::MIN),
            Num::I64Max => json!(i64::MAX),
            Num::U64Max => json!(u64::MAX),
            Num::Period(i) => json!(EDGES[*i as usize % EDGES.len()]),
            Num::Raw(n) => json!(n),
            Num::RawU(n) => json!(n),
            Num::Float(f) => json!(f),
            Num::Str => json!("100000"),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum MountType {
    Bind,
    Tmpfs,
    Proc,
    Sysfs,
    Cgroup,
    Devpts,
    None,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum MountOpt {
    Rbind,
    Bind,
    Ro,
    Rw,
    Nosuid,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct MountIn {
    destination: PathIn,
    typ: MountType,
    source: Option<PathIn>,
    options: Option<Vec<MountOpt>>,
}

#[derive(Arbitrary, Debug)]
enum NsType {
    Network,
    Pid,
    Mount,
    Ipc,
    Uts,
    User,
    Cgroup,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct NsIn {
    typ: NsType,
    path: Option<PathIn>,
}

#[derive(Arbitrary, Debug)]
struct Resources {
    memory_limit: Option<Num>,
    memory_swap: Option<Num>,
    cpu_quota: Option<Num>,
    cpu_period: Option<Num>,
    cpu_shares: Option<Num>,
    pids_limit: Option<Num>,
}

#[derive(Arbitrary, Debug)]
enum EnvIn {
    Pair(u8, String),
    Raw(String),
    Big { key: u8, len: u16 },
}

#[derive(Arbitrary, Debug)]
enum AnnKey {
    SandboxId,
    ContainerType,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    args: Option<Vec<PathIn>>,
    cwd: Option<PathIn>,
    env: Option<Vec<EnvIn>>,
    terminal: Option<bool>,
    user: Option<(u32, u32)>,
    rlimits: bool,
    capabilities: bool,
    oom_score_adj: Option<i32>,
    root: Option<(PathIn, Option<bool>)>,
    mounts: Option<Vec<MountIn>>,
    namespaces: Option<Vec<NsIn>>,
    resources: Option<Resources>,
    seccomp: bool,
    annotations: Vec<(AnnKey, String)>,
    drop_process: bool,
    drop_root: bool,
    drop_linux: bool,
}

const ENV_KEYS: &[&str] = &["PATH", "HOME", "A", "a", "", "=", "LD_PRELOAD", "K\0", "\u{e9}"];

fn build(i: &Input) -> Value {
    let mut spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "args": ["/hello.wasm"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "fuzz",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    let p = &mut spec["process"];
    if let Some(args) = &i.args {
        p["args"] = json!(args.iter().map(PathIn::render).collect::<Vec<_>>());
    }
    if let Some(cwd) = &i.cwd {
        p["cwd"] = json!(cwd.render());
    }
    if let Some(env) = &i.env {
        let env: Vec<String> = env
            .iter()
            .map(|e| match e {
                EnvIn::Pair(k, v) => format!("{}={v}", ENV_KEYS[*k as usize % ENV_KEYS.len()]),
                EnvIn::Raw(r) => r.clone(),
                EnvIn::Big { key, len } => format!("BIG{key}={}", "x".repeat(*len as usize)),
            })
            .collect();
        p["env"] = json!(env);
    }
    if let Some(t) = i.terminal {
        p["terminal"] = json!(t);
    }
    if let Some((uid, gid)) = i.user {
        p["user"] = json!({"uid": uid, "gid": gid});
    }
    if i.rlimits {
        p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
    }
    if i.capabilities {
        p["capabilities"] = json!({"bounding": ["CAP_NET_RAW"], "effective": ["CAP_NET_RAW"]});
    }
    if let Some(o) = i.oom_score_adj {
        p["oomScoreAdj"] = json!(o);
    }
    if let Some((path, ro)) = &i.root {
        spec["root"] = json!({"path": path.render()});
        if let Some(ro) = ro {
            spec["root"]["readonly"] = json!(ro);
        }
    }
    if let Some(mounts) = &i.mounts {
        let ms: Vec<Value> = mounts
            .iter()
            .map(|m| {
                let mut v = json!({"destination": m.destination.render()});
                let typ = match &m.typ {
                    MountType::Bind => Some("bind".to_string()),
                    MountType::Tmpfs => Some("tmpfs".to_string()),
                    MountType::Proc => Some("proc".to_string()),
                    MountType::Sysfs => Some("sysfs".to_string()),
                    MountType::Cgroup => Some("cgroup".to_string()),
                    MountType::Devpts => Some("devpts".to_string()),
                    MountType::None => None,
                    MountType::Other(s) => Some(s.clone()),
                };
                if let Some(t) = typ {
                    v["type"] = json!(t);
                }
                if let Some(s) = &m.source {
                    v["source"] = json!(s.render());
                }
                if let Some(opts) = &m.options {
                    let o: Vec<String> = opts
                        .iter()
                        .map(|o| match o {
                            MountOpt::Rbind => "rbind".into(),
                            MountOpt::Bind => "bind".into(),
                            MountOpt::Ro => "ro".into(),
                            MountOpt::Rw => "rw".into(),
                            MountOpt::Nosuid => "nosuid".into(),
                            MountOpt::Raw(s) => s.clone(),
                        })
                        .collect();
                    v["options"] = json!(o);
                }
                v
            })
            .collect();
        spec["mounts"] = json!(ms);
    }
    if let Some(nss) = &i.namespaces {
        let ns: Vec<Value> = nss
            .iter()
            .map(|n| {
                let typ = match &n.typ {
                    NsType::Network => "network".to_string(),
                    NsType::Pid => "pid".into(),
                    NsType::Mount => "mount".into(),
                    NsType::Ipc => "ipc".into(),
                    NsType::Uts => "uts".into(),
                    NsType::User => "user".into(),
                    NsType::Cgroup => "cgroup".into(),
                    NsType::Raw(s) => s.clone(),
                };
                let mut v = json!({"type": typ});
                if let Some(p) = &n.path {
                    v["path"] = json!(p.render());
                }
                v
            })
            .collect();
        spec["linux"]["namespaces"] = json!(ns);
    }
    if let Some(r) = &i.resources {
        let mut res = json!({});
        if r.memory_limit.is_some() || r.memory_swap.is_some() {
            res["memory"] = json!({});
            if let Some(n) = &r.memory_limit {
                res["memory"]["limit"] = n.value();
            }
            if let Some(n) = &r.memory_swap {
                res["memory"]["swap"] = n.value();
            }
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() || r.cpu_shares.is_some() {
            res["cpu"] = json!({});
            for (k, n) in [("quota", &r.cpu_quota), ("period", &r.cpu_period), ("shares", &r.cpu_shares)] {
                if let Some(n) = n {
                    res["cpu"][k] = n.value();
                }
            }
        }
        if let Some(n) = &r.pids_limit {
            res["pids"] = json!({"limit": n.value()});
        }
        spec["linux"]["resources"] = res;
    }
    if i.seccomp {
        spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO"});
    }
    if !i.annotations.is_empty() {
        let mut a = serde_json::Map::new();
        for (k, v) in &i.annotations {
            let k = match k {
                AnnKey::SandboxId => wasmcell_grants::SANDBOX_ID.to_string(),
                AnnKey::ContainerType => wasmcell_grants::CONTAINER_TYPE.to_string(),
                AnnKey::Raw(s) => s.clone(),
            };
            a.insert(k, json!(v));
        }
        spec["annotations"] = Value::Object(a);
    }
    let obj = spec.as_object_mut().unwrap();
    if i.drop_process {
        obj.remove("process");
    }
    if i.drop_root {
        obj.remove("root");
    }
    if i.drop_linux {
        obj.remove("linux");
    }
    spec
}

fuzz_target!(|input: Input| {
    let bytes = serde_json::to_vec(&build(&input)).unwrap();
    wasmcell_fuzz::check_spec_bytes(&bytes);
});
