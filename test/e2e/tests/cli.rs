//! The binaries' own command lines: `wasmcell explain`, `wasmcell image
//! build` errors, the shim's `-v` and `-info`.

use std::process::Command;

use wasmcell_e2e::target_dir;

fn wasmcell(args: &[&str]) -> std::process::Output {
    Command::new(target_dir().join("wasmcell")).args(args).output().expect("wasmcell binary (cargo build --release)")
}

#[test]
fn explain_prints_the_grants_table_of_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/app.wasm", "serve"], "env": ["A=1", "B=2"], "cwd": "/", "user": {"uid": 1000, "gid": 1000}},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/proc", "type": "proc", "source": "proc"}
        ],
        "linux": {
            "namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}],
            "resources": {"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}}
        }
    });
    std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
    // The program itself, a WASI 0.3 HTTP handler: named by its exports.
    std::fs::create_dir(d.path().join("rootfs")).unwrap();
    std::fs::copy(wasmcell_e2e::fixtures_dir().join("p3-http.wasm"), d.path().join("rootfs/app.wasm")).unwrap();
    let out = wasmcell(&["explain", d.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "program /app.wasm runs as: WASI 0.3 HTTP server (wasi:http/handler@0.3.0)",
        "runs /app.wasm from the rootfs",
        "preopened as / (read-only)",
        "preopened at /data (read-only)",
        "/proc",
        "not exposed",
        "/var/run/netns/cni-1",
        "67108864",
        "0.50 of a core",
        "process.user",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let out = wasmcell(&["explain", "--json", d.path().join("config.json").to_str().unwrap()]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.as_array().unwrap().iter().any(|r| r["setting"] == "linux.namespaces[network]"));
}

/// explain shows the wasi:config keys (not their values), the key-value
/// grant, and the handler's policy with what it refuses for this program.
#[test]
fn explain_shows_config_keys_keyvalue_and_the_policy() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("greeting"), "a secret value").unwrap();
    std::fs::write(config.join("mode"), "strict").unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/caps.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/run/wasi/config", "type": "bind", "source": config, "options": ["rbind", "ro"]}],
        "annotations": {"wasmcell.dev/keyvalue": "memory"}
    });
    std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
    std::fs::create_dir(d.path().join("rootfs")).unwrap();
    std::fs::copy(wasmcell_e2e::fixtures_dir().join("caps.wasm"), d.path().join("rootfs/caps.wasm")).unwrap();
    let policy = d.path().join("strict.toml");
    std::fs::write(&policy, "deny_imports = [\"wasi:keyvalue/*\"]\n").unwrap();
    let out = wasmcell(&["explain", d.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["keys: greeting, mode", "wasi:keyvalue: an in-memory store", "runtime policy (ConfigPath)"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("a secret value"), "values are not shown:\n{text}");
    assert!(!text.contains("refused at create"), "{text}");
    let out = wasmcell(&["explain", "--policy", policy.to_str().unwrap(), d.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("denies imports [wasi:keyvalue/*]"), "{text}");
    assert!(text.contains("refused at create") && text.contains("deny_imports"), "{text}");
}

#[test]
fn explain_says_why_a_spec_would_be_refused() {
    let d = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/app.wasm"], "cwd": "/", "terminal": true, "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"}
    });
    std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
    let out = wasmcell(&["explain", d.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would be refused") && err.contains("terminal"), "{err}");
}

#[test]
fn image_build_refuses_bad_arguments() {
    let d = tempfile::tempdir().unwrap();
    let out_tar = d.path().join("x.tar");
    let out = wasmcell(&["image", "build", "-t", "x", "-o", out_tar.to_str().unwrap(), "/nonexistent/a.wasm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/a.wasm"));
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "no partial output on failure");
}

#[test]
fn shim_version_and_info() {
    let shim = target_dir().join("containerd-shim-wasmtime-v1");
    let out = Command::new(&shim).arg("-v").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("io.containerd.wasmtime.v1"));
    let out = Command::new(&shim).arg("-info").stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("io.containerd.wasmtime.v1"));
}
