//! The serving shim is confined: after setup it holds only the capabilities
//! it needs (docs/security.md says which and why), `no_new_privs` is set,
//! and a seccomp filter is installed, on every thread; and it still does all
//! its work: metrics, kill, delete, later containers of a pod, rootfs mounts,
//! ports below 1024, files its guests do not own.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::wait::{until, wait_http};
use wasmcell_e2e::Containerd;

/// CAP_CHOWN (0), CAP_DAC_OVERRIDE (1), CAP_FOWNER (3),
/// CAP_NET_BIND_SERVICE (10), CAP_SYS_ADMIN (21): the keep-set of
/// crates/shim/src/sys/confine.rs, as /proc prints it.
const KEPT: u64 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 10) | (1 << 21);

fn status_fields(path: &str) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn hex(fields: &HashMap<String, String>, key: &str) -> u64 {
    u64::from_str_radix(&fields[key], 16).unwrap_or_else(|e| panic!("{key} {:?}: {e}", fields[key]))
}

/// Asserts the confinement of process `pid` and of each of its threads;
/// returns the process's status lines that show it.
fn assert_confined(pid: i32) -> Vec<String> {
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let path = format!("{}/status", t.path().display());
        let f = status_fields(&path);
        let what = format!("{path} ({})", f.get("Name").cloned().unwrap_or_default());
        assert_eq!(hex(&f, "CapEff"), KEPT, "CapEff of {what}");
        assert_eq!(hex(&f, "CapPrm"), KEPT, "CapPrm of {what}");
        assert_eq!(hex(&f, "CapBnd"), KEPT, "CapBnd of {what}");
        assert_eq!(hex(&f, "CapInh"), 0, "CapInh of {what}");
        assert_eq!(hex(&f, "CapAmb"), 0, "CapAmb of {what}");
        assert_eq!(f["NoNewPrivs"], "1", "NoNewPrivs of {what}");
        assert_eq!(f["Seccomp"], "2", "Seccomp (2 = filter) of {what}");
        let filters: u32 = f["Seccomp_filters"].parse().unwrap();
        assert!(filters >= 2, "Seccomp_filters of {what}: {filters}");
        threads += 1;
    }
    assert!(threads > 1, "the shim runs tokio workers: {threads} threads");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let lines: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp"))
        .map(String::from)
        .collect();
    println!("shim {pid}:\n  {}", lines.join("\n  "));
    lines
}

#[test]
fn serving_shim_is_confined_and_still_serves() {
    let c = Containerd::start();
    c.run_detached("conf1", &[], &["/spin.wasm"]).ok();
    c.wait_status("conf1", "RUNNING");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let first = shims[0];
    assert_confined(first);

    // The confined shim still answers metrics (cgroup and guest counters).
    let cpu = until(100, || c.cpu_usage_usec("conf1"), |cpu| *cpu > 0);
    assert!(cpu > 0, "metrics of a spinning guest from a confined shim");

    // A second container: its own shim (plain ctr), confined the same way.
    c.run_detached("conf2", &[], &["/spin.wasm"]).ok();
    c.wait_status("conf2", "RUNNING");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 2, "{shims:?}");
    let second = *shims.iter().find(|p| **p != first).unwrap();
    assert_confined(second);

    // Kill and delete: the confined shim unmounts the rootfs (CAP_SYS_ADMIN
    // kept), leaves and removes its cgroup, and exits.
    for id in ["conf1", "conf2"] {
        let del = c.kill_and_delete(id, "SIGKILL");
        assert!(del.stderr.contains("137") || del.stdout.contains("137"), "{del:?}");
    }
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shims still running after delete: {left:?}");
    let problems = c.log_problems(&["confinement", "seccomp", "capabilit"]);
    assert!(problems.is_empty(), "confinement warnings in the shim log: {problems:?}");
    let log = c.log();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("confinement: ")).collect();
    for step in ["capabilities reduced to", "no_new_privs set", "seccomp filters installed"] {
        assert!(said.iter().any(|l| l.contains(step)), "the shim log says {step:?}: {said:?}");
    }
    println!("{}", said.join("\n"));
    c.stop_and_check_clean();
}

/// A host directory that only its owner (not root) may enter, bound into
/// the container: the confined shim still reads and writes it for the
/// guest, as root in a runc container could (CAP_DAC_OVERRIDE kept).
#[test]
fn confined_shim_serves_files_its_guest_does_not_own() {
    let c = Containerd::start();
    let dir = c.dir.path().join("owned-by-1000");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("private.txt"), "only for uid 1000").unwrap();
    std::fs::set_permissions(dir.join("private.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for p in [dir.join("private.txt"), dir.clone()] {
        nix::unistd::chown(&p, Some(1000.into()), Some(1000.into())).unwrap();
    }
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display());
    let r = c.run(
        "owned",
        &["--mount", &mount],
        &["/probe.wasm", "read", "/data/private.txt", "write", "/data/new.txt", "write", "/rootfs-file.txt"],
    );
    r.ok();
    assert!(r.stdout.contains("read /data/private.txt: ok 17 bytes: only for uid 1000"), "{r:?}");
    assert!(r.stdout.contains("write /data/new.txt: ok"), "{r:?}");
    assert!(r.stdout.contains("write /rootfs-file.txt: ok"), "{r:?}");
    let new = dir.join("new.txt");
    assert_eq!(std::fs::read_to_string(&new).unwrap(), "written by probe\n");
    // Written as root: the shim does not change its user for a guest.
    assert_eq!(std::fs::metadata(&new).unwrap().uid(), 0);
    c.stop_and_check_clean();
}

/// One CRI pod shim serves the sandbox and then, already confined, creates
/// containers: mounts their rootfs overlays, and binds port 80 in the pod's
/// network namespace (CAP_NET_BIND_SERVICE kept).
#[test]
fn confined_pod_shim_creates_later_containers() {
    let c = Cri::start();
    let pod_cfg = c.pod_config("confined");
    let pod = c.run_pod(&pod_cfg).expect("RunPodSandbox");
    let ip = c.pod_status(&pod).expect("PodSandboxStatus").network.map(|n| n.ip).unwrap_or_default();
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_confined(shims[0]);

    let web = c
        .create(&pod, &pod_cfg, c.container_config("web80", &["/http.wasm"], &[("WASMCELL_HTTP_ADDR", "0.0.0.0:80")]))
        .expect("CreateContainer web80");
    c.start_container(&web).expect("StartContainer web80");
    let (status, body) = wait_http(&format!("{ip}:80"), "/confined");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path: /confined"), "{body}");

    let hello = c
        .create(&pod, &pod_cfg, c.container_config("hello", &["/hello.wasm", "again"], &[]))
        .expect("CreateContainer hello");
    c.start_container(&hello).expect("StartContainer hello");
    let st = c.wait_exited(&hello);
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(c.shim_pids(), shims, "the pod's one shim served every container");
    assert_confined(shims[0]);

    c.stop_container(&web, 10).expect("StopContainer web80");
    for id in [&web, &hello] {
        c.remove_container(id).expect("RemoveContainer");
    }
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shim left after the pod was removed: {left:?}");
    c.stop_and_check_clean();
}
