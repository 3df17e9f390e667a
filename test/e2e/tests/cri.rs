//! Kubernetes: pods through containerd's CRI plugin with the `wasmtime`
//! runtime handler, driven over CRI's gRPC API as kubelet drives it.

use k8s_cri::v1 as cri;
use wasmcell_e2e::cri::{http_get, Cri, PAUSE_IMAGE, WASM_IMAGE};
use wasmcell_e2e::wait::{until, wait_http};

#[test]
fn wasm_pod_lifecycle_like_kubelet() {
    let c = Cri::start();
    let v = c.version().expect("Version");
    assert!(v.runtime_name.contains("containerd"), "{v:?}");
    let images = c.list_images().expect("ListImages");
    for want in [PAUSE_IMAGE, WASM_IMAGE] {
        assert!(images.iter().any(|i| i.repo_tags.iter().any(|t| t.ends_with(want))), "{want} not in {images:?}");
    }

    // RunPodSandbox: the sandbox runs no process; one shim holds the pod.
    let pod_cfg = c.pod_config("web");
    let (pod, ip) = c.run_ready_pod(&pod_cfg);
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    // The shim joined the sandbox's cgroup without the pause-sized limits
    // kubelet gives a sandbox (cpu.shares 2), which would starve the pod.
    let v1 = format!("/sys/fs/cgroup/cpu/{}/pod-web/{pod}", c.cd.namespace);
    let v2 = format!("/sys/fs/cgroup/{}/pod-web/{pod}", c.cd.namespace);
    let (cg, weight_file, pause_value) = if std::path::Path::new(&v1).exists() {
        (v1, "cpu.shares", "2")
    } else if std::path::Path::new(&v2).join("cgroup.procs").exists() {
        (v2, "cpu.weight", "1")
    } else {
        panic!("the sandbox's cgroup was not created at {v1} or {v2}")
    };
    let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap_or_default();
    assert!(procs.lines().any(|p| p.trim() == shims[0].to_string()), "shim in the sandbox cgroup: {procs}");
    let weight = std::fs::read_to_string(format!("{cg}/{weight_file}")).unwrap_or_default();
    assert_ne!(weight.trim(), pause_value, "the pod's shim must not run with the pause container's CPU weight");

    // A command container: logs with stream tags, exit code, reason.
    let hello = c
        .create(&pod, &pod_cfg, c.container_config("hello", &["/hello.wasm", "from-cri"], &[("POD", "web")]))
        .expect("CreateContainer hello");
    c.start_container(&hello).expect("StartContainer hello");
    let st = c.wait_exited(&hello);
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"), "{st:?}");
    let lines = c.wait_log_lines(&pod_cfg, "hello", "args:");
    assert!(lines.contains(&("stdout".into(), "hello from wasmcell".into())), "{lines:?}");
    assert!(lines.iter().any(|(s, l)| s == "stdout" && l == "args: /hello.wasm from-cri"), "{lines:?}");
    assert!(lines.iter().any(|(s, l)| s == "stdout" && l == "env: POD=web"), "{lines:?}");

    // A failing command: its code and "Error".
    let failing = c
        .create(&pod, &pod_cfg, c.container_config("fails", &["/exit-code-p1.wasm", "3"], &[]))
        .expect("CreateContainer fails");
    c.start_container(&failing).expect("StartContainer fails");
    let st = c.wait_exited(&failing);
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    // A restart, as kubelet makes it: a new container of the same name,
    // attempt 1, in the same sandbox (and the same shim), next to the
    // exited one.
    let mut again = c.container_config("fails", &["/exit-code-p1.wasm", "4"], &[]);
    again.metadata.as_mut().unwrap().attempt = 1;
    again.log_path = "fails-1.log".into();
    let restarted = c.create(&pod, &pod_cfg, again).expect("CreateContainer fails, attempt 1");
    c.start_container(&restarted).expect("StartContainer fails, attempt 1");
    let st = c.wait_exited(&restarted);
    assert_eq!((st.exit_code, st.metadata.as_ref().map(|m| m.attempt)), (4, Some(1)), "{st:?}");
    assert_eq!(c.container_status(&failing).unwrap().exit_code, 3, "the first attempt keeps its status");
    assert_eq!(c.shim_pids(), shims, "the restart runs in the pod's shim");

    // An HTTP container: listens in the pod's network namespace, reachable
    // at the pod IP from the node, as a probe or a Service would reach it.
    let web = c
        .create(&pod, &pod_cfg, c.container_config("web", &["/http.wasm"], &[("WASMCELL_HTTP_ADDR", "0.0.0.0:8080")]))
        .expect("CreateContainer web");
    c.start_container(&web).expect("StartContainer web");
    let addr = format!("{ip}:8080");
    let (status, body) = wait_http(&addr, "/probe");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from wasmcell http") && body.contains("path: /probe"), "{body}");
    // Not on the host's loopback: the listener lives in the pod's netns.
    assert!(http_get("127.0.0.1:8080", "/").is_none(), "the pod's port must not be on the host's loopback");

    // A long-running command holding memory, for ContainerStats.
    let busy = c
        .create(&pod, &pod_cfg, c.container_config("busy", &["/probe.wasm", "alloc", "16", "sleep", "600000"], &[]))
        .expect("CreateContainer busy");
    c.start_container(&busy).expect("StartContainer busy");
    let mem = until(
        100,
        || {
            let s = c.container_stats(&busy).expect("ContainerStats");
            s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value)
        },
        |mem| *mem >= 16 << 20,
    );
    assert!(mem >= 16 << 20, "working set of a guest holding 16 MiB: {mem}");
    // UpdateContainerResources reaches the shim's Update: the new cap is live.
    c.update_memory_limit(&busy, 64 << 20).expect("UpdateContainerResources");
    let m = c.cd.ctr_ns(wasmcell_e2e::cri::K8S_NS, &["task", "metrics", &busy]);
    let limit = m
        .stdout
        .lines()
        .find(|l| l.starts_with("memory.usage_limit"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(String::from);
    assert_eq!(limit.as_deref(), Some("67108864"), "{m:?}");
    let s = c.container_stats(&web).expect("ContainerStats web");
    let cpu = s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
    assert!(cpu > 0, "CPU of a container that served a request: {s:?}");

    // Stats that add up: an idle HTTP container holds memory (its program's
    // resident image, warm pool slots), and the containers' figures are
    // within what the pod cgroup, which also holds the shim, is charged.
    let ws = |id: &str| {
        let s = c.container_stats(id).expect("ContainerStats");
        s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value)
    };
    let (web_ws, busy_ws) = (ws(&web), ws(&busy));
    let pod_dir = format!("{}/pod-web", c.cd.namespace);
    let pod_usage: u64 = [
        format!("/sys/fs/cgroup/{pod_dir}/memory.current"),
        format!("/sys/fs/cgroup/memory/{pod_dir}/memory.usage_in_bytes"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())
    .unwrap_or_else(|| panic!("no memory usage for the pod cgroup {pod_dir}"))
    .trim()
    .parse()
    .unwrap();
    eprintln!("working sets: web {} KiB, busy {} KiB; pod cgroup {} KiB", web_ws >> 10, busy_ws >> 10, pod_usage >> 10);
    assert!(web_ws > 0, "an idle HTTP container's working set is not 0");
    assert!(busy_ws >= 16 << 20, "{busy_ws}");
    assert!(web_ws + busy_ws <= pod_usage, "containers {} + {} > pod cgroup {pod_usage}", web_ws, busy_ws);

    // Four containers and the sandbox: still one shim process.
    assert_eq!(c.shim_pids(), shims, "every container of the pod is served by the pod's shim");

    // ExecSync, as kubelet's exec probes call it: another Wasm program of
    // the image runs with the container's grants (its env, its rootfs) and
    // reports its output and exit code.
    let r = c.exec_sync(&busy, &["/probe.wasm", "print", "ready", "ls", "/"]).expect("ExecSync");
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(r.exit_code, 0, "{out}");
    assert!(out.contains("print ready: ok ready") && out.contains("probe.wasm"), "the image's rootfs: {out}");
    // A failing probe fails with its own code.
    let r = c.exec_sync(&busy, &["/probe.wasm", "read", "/tmp/healthy"]).expect("ExecSync");
    assert_eq!(r.exit_code, 1, "{r:?}");
    // A Linux command (what a probe written for runc runs) is a failed
    // command, 126, with a line saying why: the probe fails, not "unknown".
    let r = c.exec_sync(&busy, &["cat", "/tmp/healthy"]).expect("ExecSync of a non-Wasm command");
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.exit_code, 126, "{r:?}");
    assert!(err.contains("only WebAssembly programs in the container's image can be executed"), "{err}");
    // The container is unaffected.
    assert_eq!(c.container_status(&busy).unwrap().state, cri::ContainerState::ContainerRunning as i32);

    // StopContainer: SIGTERM; the HTTP server drains and exits 0; the busy
    // command is killed after the grace period.
    c.stop_container(&web, 10).expect("StopContainer web");
    let st = c.container_status(&web).unwrap();
    assert_eq!(st.exit_code, 0, "graceful HTTP stop: {st:?}");
    c.stop_container(&busy, 1).expect("StopContainer busy");
    let st = c.container_status(&busy).unwrap();
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "{st:?}");
    assert!(st.exit_code == 137 || st.exit_code == 143, "{st:?}");

    for id in [&hello, &failing, &restarted, &web, &busy] {
        c.remove_container(id).expect("RemoveContainer");
    }
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    // The shim exits with the pod's last container.
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shim left after the pod was removed: {left:?}");
    c.stop_and_check_clean();
}

#[test]
fn native_container_in_a_wasm_pod_is_refused_clearly() {
    let c = Cri::start();
    let pod_cfg = c.pod_config("mixed");
    let pod = c.run_pod(&pod_cfg).expect("RunPodSandbox");
    // The static pause binary is a Linux executable, not Wasm.
    let native = c
        .create(&pod, &pod_cfg, c.container_config("sidecar", &["/pause"], &[]))
        .expect("CreateContainer (the shim is first involved at start)");
    let e = c.start_container(&native).expect_err("a native container must not start");
    assert!(e.message().contains("runc"), "the error must point to a runc RuntimeClass: {e:?}");
    // The pod keeps working: a Wasm container of it still runs.
    let hello = c.create(&pod, &pod_cfg, c.container_config("hello", &["/hello.wasm"], &[])).unwrap();
    c.start_container(&hello).unwrap();
    assert_eq!(c.wait_exited(&hello).exit_code, 0);
    c.remove_container(&native).expect("RemoveContainer native");
    c.remove_container(&hello).unwrap();
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    c.stop_and_check_clean();
}

/// The pod's shim is charged to the pod: it joins the sandbox's cgroup (in
/// the pod's) when it starts, before its runtime allocates, so the pod
/// cgroup's memory covers the shim's anonymous memory (issue 17, item 1).
#[test]
fn shim_memory_is_charged_to_the_pod() {
    let c = Cri::start();
    let pod_cfg = c.pod_config("charged");
    let (pod, _) = c.run_ready_pod(&pod_cfg);
    let id = c
        .create(&pod, &pod_cfg, c.container_config("holder", &["/probe.wasm", "alloc", "8", "sleep", "600000"], &[]))
        .expect("CreateContainer");
    c.start_container(&id).expect("StartContainer");
    let shim = *c.shim_pids().first().expect("the pod's shim");
    let rss_anon = || -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap();
        let kb = st.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1));
        kb.and_then(|v| v.parse::<u64>().ok()).unwrap() * 1024
    };
    let pod_dir = format!("{}/pod-charged", c.cd.namespace);
    // Anonymous memory charged to the pod cgroup (v1 `total_rss`, v2 `anon`):
    // file pages are charged to whoever first read them, so only anonymous
    // memory tells where the shim's own allocations went.
    let usage = || -> u64 {
        for (f, key) in [
            (format!("/sys/fs/cgroup/memory/{pod_dir}/memory.stat"), "total_rss "),
            (format!("/sys/fs/cgroup/{pod_dir}/memory.stat"), "anon "),
        ] {
            if let Ok(v) = std::fs::read_to_string(&f) {
                let line = v.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {f}"));
                return line[key.len()..].trim().parse().unwrap();
            }
        }
        panic!("no memory accounting for the pod cgroup {pod_dir}");
    };
    // The guest has allocated its 8 MiB once the shim's anonymous memory stops growing.
    let anon = until(100, rss_anon, |a| *a > 8 << 20);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let (anon, charged) = (rss_anon().max(anon), usage());
    eprintln!("shim RssAnon {} KiB, pod cgroup anonymous memory {} KiB", anon >> 10, charged >> 10);
    // Within 256 KiB: what the daemon allocated before it could join.
    assert!(
        charged + (256 << 10) >= anon,
        "the pod cgroup holds {charged} bytes of anonymous memory, the shim has {anon}"
    );
    c.stop_container(&id, 1).unwrap();
    c.remove_pod_and(&pod, &[&id]);
    c.stop_and_check_clean();
}

/// A memory bomb in a pod with a memory limit ends as OOM (exit 137,
/// reason OOMKilled, from the shim's TaskOOM event), and a container of
/// another pod keeps running, its shim untouched (issue 17, item 1).
#[test]
fn memory_bomb_in_a_pod_is_oom_killed_and_other_pods_run_on() {
    let c = Cri::start();
    let victim_cfg = c.pod_config("victim");
    let (victim_pod, _) = c.run_ready_pod(&victim_cfg);
    let victim = c
        .create(
            &victim_pod,
            &victim_cfg,
            c.container_config("calm", &["/probe.wasm", "alloc", "4", "sleep", "600000"], &[]),
        )
        .expect("CreateContainer calm");
    c.start_container(&victim).expect("StartContainer calm");
    let before = c.shim_pids();

    let bomb_cfg = c.pod_config("bomb");
    let (bomb_pod, _) = c.run_ready_pod(&bomb_cfg);
    let mut cfg = c.container_config("bomb", &["/probe.wasm", "alloc", "512"], &[]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
        ..Default::default()
    });
    let bomb = c.create(&bomb_pod, &bomb_cfg, cfg).expect("CreateContainer bomb");
    c.start_container(&bomb).expect("StartContainer bomb");
    let st = c.wait_exited(&bomb);
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "OOMKilled"), "{st:?}");

    let calm = c.container_status(&victim).expect("ContainerStatus calm");
    assert_eq!(calm.state, cri::ContainerState::ContainerRunning as i32, "the other pod's container: {calm:?}");
    assert!(before.iter().all(|p| c.shim_pids().contains(p)), "the other pod's shim is still there");
    c.stop_container(&victim, 1).expect("StopContainer calm");
    c.remove_pod_and(&bomb_pod, &[&bomb]);
    c.remove_pod_and(&victim_pod, &[&victim]);
    c.stop_and_check_clean();
}
