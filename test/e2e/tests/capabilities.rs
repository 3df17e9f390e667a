//! Capabilities beyond CLI and HTTP (issue 19), through a real containerd:
//! `wasi:config` from the directory mounted at /run/wasi/config,
//! `wasi:keyvalue` granted by the annotation `wasmcell.dev/keyvalue`
//! (in memory, or a real redis-server the test starts), and a runtime
//! handler's policy file (`ctr run --runtime-config-path`, CRI's
//! `ConfigPath`). The fixture is `test/fixtures/caps-guest` (caps.wasm).

use std::path::Path;
use std::time::{Duration, Instant};

use wasmcell_e2e::cri::{Cri, STRICT_HANDLER};
use wasmcell_e2e::redis::Redis;
use wasmcell_e2e::{Containerd, Ran, Version};

const KV: &str = "wasmcell.dev/keyvalue";

/// A core module that uses Wasm GC (a struct) and exception handling (a
/// thrown and caught tag) and exits 7 through WASI preview 1.
const GC_AND_EXCEPTIONS: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (type $p (struct (field i32)))
  (tag $t (param i32))
  (func (export "_start")
    (block $h (result i32)
      (try_table (catch $t $h)
        (throw $t (struct.get $p 0 (struct.new $p (i32.const 7)))))
      (unreachable))
    (call $exit)))"#;

const POLICY: &str = "deny_imports = [\"wasi:sockets/*\"]\ndeny_wasm_features = [\"gc\", \"exceptions\"]\n";

/// A ConfigMap-like directory: two keys, and the `..data` bookkeeping a
/// ConfigMap volume has.
fn config_dir(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("config");
    std::fs::create_dir_all(d.join("..2026_12_01")).unwrap();
    std::fs::write(d.join("..2026_12_01/greeting"), "hello from a configmap").unwrap();
    std::os::unix::fs::symlink("..2026_12_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/greeting", d.join("greeting")).unwrap();
    std::fs::write(d.join("mode"), "strict").unwrap();
    d
}

fn kv_memory() -> String {
    format!("{KV}=memory")
}

#[test]
fn config_comes_from_the_mount_and_is_empty_without_it() {
    let c = Containerd::start();
    let dir = config_dir(c.dir.path());
    let mount = format!("type=bind,src={},dst=/run/wasi/config,options=rbind:ro", dir.display());
    let anno = kv_memory();
    let r = c.run("cfg", &["--mount", &mount, "--annotation", &anno], &["/caps.wasm", "config", "all"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "greeting=hello from a configmap\nmode=strict\ncount=2\n", "{r:?}");
    // Without the mount the import links and every key is missing.
    let r = c.run("cfg-none", &["--annotation", &anno], &["/caps.wasm", "config", "get", "greeting"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "greeting missing\n"), "{r:?}");
    // Values are read at Create: the next container sees a change.
    std::fs::write(dir.join("mode"), "relaxed").unwrap();
    let r = c.run("cfg-2", &["--mount", &mount, "--annotation", &anno], &["/caps.wasm", "config", "get", "mode"]);
    assert_eq!(r.stdout, "mode=relaxed\n", "{r:?}");
    assert_eq!(c.wait_shims_gone(), Vec::<i32>::new(), "no shim left");
}

#[test]
fn keyvalue_is_refused_without_its_annotation() {
    let c = Containerd::start();
    let r = c.run("kv-denied", &[], &["/caps.wasm", "kv", "get", "", "k"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(
        text.contains("wasi:keyvalue/") && text.contains(KV),
        "the refusal names the import and the annotation: {r:?}"
    );
    // A bad value is refused with what is wrong with it.
    let r = c.run("kv-bad", &["--annotation", &format!("{KV}=sqlite:///x")], &["/caps.wasm", "kv", "get", "", "k"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("must be `memory` or `redis://HOST:PORT[/DB]`"), "{r:?}");
    // Granted: every bucket name works, each its own key space.
    let r = c.run("kv-mem", &["--annotation", &kv_memory()], &["/caps.wasm", "kv", "get", "any-bucket", "k"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "(none)\n"), "{r:?}");
    assert_eq!(c.wait_shims_gone(), Vec::<i32>::new(), "no shim left");
}

#[test]
fn redis_store_is_shared_and_its_failure_reaches_the_guest() {
    let c = Containerd::start();
    let mut redis = Redis::start();
    let anno = format!("{KV}={}", redis.url());
    // The host's network (where this redis listens on 127.0.0.1).
    let flags = ["--net-host", "--annotation", anno.as_str()];
    let r = c.run("kv-w", &flags, &["/caps.wasm", "kv", "set", "orders", "o-1", "paid"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok\n"), "{r:?}");
    let r = c.run("kv-i", &flags, &["/caps.wasm", "kv", "incr", "orders", "count", "41"]);
    assert_eq!(r.stdout, "41\n", "{r:?}");
    let r = c.run("kv-r", &flags, &["/caps.wasm", "kv", "mget", "orders", "o-1", "count", "o-2"]);
    assert_eq!(r.stdout, "o-1=paid\ncount=41\no-2 (none)\n", "{r:?}");
    assert_eq!(redis.cli(&["HGET", "orders", "o-1"]), "paid", "redis-cli sees what the guest wrote");
    // A private network namespace has no such redis: an error, not a hang.
    let r = c.run("kv-private", &["--annotation", anno.as_str()], &["/caps.wasm", "kv", "get", "orders", "o-1"]);
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.stderr.contains("kv error") && r.stderr.contains("redis"), "{r:?}");

    // Redis stopped while a guest polls it: the guest gets an error.
    let (tx, rx) = std::sync::mpsc::channel::<Ran>();
    let cd = &c;
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = tx.send(cd.run("kv-poll", &flags, &["/caps.wasm", "kv", "poll", "orders", "o-1", "60"]));
        });
        let started = Instant::now();
        // It is polling once the first value came back (a container's
        // start takes a moment); then redis goes away.
        while redis.cli(&["CLIENT", "LIST"]).lines().count() < 2 && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        redis.stop();
        let stopped = Instant::now();
        let r = rx.recv_timeout(Duration::from_secs(30)).expect("the guest ended after redis stopped");
        eprintln!("guest ended {:?} after redis was killed", stopped.elapsed());
        assert_eq!(r.code, Some(3), "{r:?}");
        assert!(r.stdout.contains("tick paid"), "it read before: {r:?}");
        assert!(r.stderr.contains("kv error"), "{r:?}");
    });
    assert_eq!(c.wait_shims_gone(), Vec::<i32>::new(), "no shim left");
}

#[test]
fn policy_refuses_denied_imports_and_features_and_caches_apart() {
    let c = Containerd::start();
    let d = c.dir.path();
    let gc = d.join("gc.wasm");
    std::fs::write(&gc, wat::parse_str(GC_AND_EXCEPTIONS).unwrap()).unwrap();
    c.import_image("wasmcell.test/gc:1", &[gc.display().to_string()], &[]);
    let policy = d.join("strict.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let strict = ["--runtime-config-path", policy.to_str().unwrap()];

    // By default, GC and exceptions run (Wasmtime 48's defaults).
    let r = c.run_image("wasmcell.test/gc:1", "gc-1", &[], &["/gc.wasm"]);
    assert_eq!(r.code, Some(7), "{r:?}");
    // Under the policy they are refused, though their artifact is cached.
    let r = c.run_image("wasmcell.test/gc:1", "gc-2", &strict, &["/gc.wasm"]);
    assert_ne!(r.code, Some(7), "{r:?}");
    for needle in ["`gc`", "`exceptions`", "strict.toml", "deny_wasm_features"] {
        assert!(r.stderr.contains(needle), "refusal names {needle}: {r:?}");
    }
    // And again without the policy.
    let r = c.run_image("wasmcell.test/gc:1", "gc-3", &[], &["/gc.wasm"]);
    assert_eq!(r.code, Some(7), "{r:?}");

    // A component importing wasi:sockets is refused under the policy; one
    // that does not runs under it.
    let r = c.run("probe-strict", &strict, &["/probe.wasm"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("`wasi:sockets/") && r.stderr.contains("deny_imports"), "{r:?}");
    let r = c.run("hello-strict", &strict, &["/hello.wasm"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");

    // Unknown keys are an error at Create, naming the file.
    std::fs::write(&policy, "deny_import = []\n").unwrap();
    let r = c.run("hello-badpolicy", &strict, &["/hello.wasm"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("unknown key `deny_import`") && r.stderr.contains("strict.toml"), "{r:?}");
    assert_eq!(c.wait_shims_gone(), Vec::<i32>::new(), "no shim left");
}

/// Through CRI: config from a volume, the in-memory store shared by two
/// containers of a pod (a pod annotation the handler lists), and a pod on
/// the strict handler, whose policy comes from its runtime options.
fn cri_capabilities(c: Cri) {
    let d = c.cd.dir.path().to_path_buf();
    let dir = config_dir(&d);
    let mut pod_cfg = c.pod_config("caps");
    pod_cfg.annotations.insert(KV.into(), "memory".into());
    let (pod, _) = c.run_ready_pod(&pod_cfg);
    let mut cfg = c.container_config("config", &["/caps.wasm", "config", "all"], &[]);
    cfg.mounts.push(k8s_cri::v1::Mount {
        container_path: "/run/wasi/config".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let mut ids = Vec::new();
    let mut run = |name: &str, cfg| {
        let id = c.create(&pod, &pod_cfg, cfg).unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        c.start_container(&id).expect("StartContainer");
        let st = c.wait_exited(&id);
        ids.push(id);
        st
    };
    let st = run("config", cfg);
    assert_eq!(st.exit_code, 0, "{st:?}");
    let lines = c.log_lines(&pod_cfg, "config");
    let out: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(out, ["greeting=hello from a configmap", "mode=strict", "count=2"], "{lines:?}");
    let st = run("writer", c.container_config("writer", &["/caps.wasm", "kv", "set", "pod", "k", "shared"], &[]));
    assert_eq!(st.exit_code, 0, "{st:?}");
    let st = run("reader", c.container_config("reader", &["/caps.wasm", "kv", "get", "pod", "k"], &[]));
    assert_eq!(st.exit_code, 0, "{st:?}");
    let lines = c.log_lines(&pod_cfg, "reader");
    assert!(lines.iter().any(|(_, l)| l == "shared"), "the pod's containers share the store: {lines:?}");
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.remove_pod_and(&pod, &refs);

    // The strict handler: its policy file, read at each Create.
    std::fs::write(d.join("strict.toml"), POLICY).unwrap();
    let strict_cfg = c.pod_config("strict");
    let spod = c.run_pod_on(&strict_cfg, STRICT_HANDLER).expect("RunPodSandbox on the strict handler");
    // CRI creates the task (the shim's Create) at StartContainer.
    let probe =
        c.create(&spod, &strict_cfg, c.container_config("probe", &["/probe.wasm"], &[])).expect("CreateContainer");
    let err = c.start_container(&probe).map(|()| panic!("probe started; log:\n{}", c.cd.log())).unwrap_err();
    assert!(err.message().contains("wasi:sockets/") && err.message().contains("strict.toml"), "{err:?}");
    let id =
        c.create(&spod, &strict_cfg, c.container_config("hello", &["/hello.wasm"], &[])).expect("hello is allowed");
    c.start_container(&id).expect("StartContainer");
    assert_eq!(c.wait_exited(&id).exit_code, 0);
    c.remove_pod_and(&spod, &[&probe, &id]);
    c.stop_and_check_clean();
}

#[test]
fn cri_config_keyvalue_and_policy_on_1_6() {
    cri_capabilities(Cri::start_version(Version::V1_6));
}

#[test]
fn cri_config_keyvalue_and_policy_on_2_1() {
    cri_capabilities(Cri::start_version(Version::V2_1));
}
