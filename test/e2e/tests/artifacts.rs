//! Wasm carried as image layers: `wasmcell image build --wasm-layers` (an
//! ordinary image config whose layers are `application/wasm`) through `ctr`,
//! and the CNCF TAG Runtime Wasm artifact (`--artifact`) through CRI, on the
//! containerd releases that accept such images (1.7 and 2.1; 1.6.20 refuses
//! them inside containerd, before any shim is involved).

use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::{fixtures_dir, Containerd, Version};

fn fixture(name: &str) -> String {
    fixtures_dir().join(name).display().to_string()
}

fn wasm_layers_through_ctr(v: Version) {
    let c = Containerd::start_bare_version(v);
    c.import_image(
        "wasmcell.test/layers:1",
        &[fixture("hello.wasm"), fixture("exit-code-p1.wasm")],
        &["--wasm-layers"],
    );
    let run = |id: &str, args: &[&str]| {
        let mut a = vec!["run", "--rm", "--platform", "wasi/wasm", "--runtime", wasmcell_e2e::RUNTIME];
        a.push("wasmcell.test/layers:1");
        a.push(id);
        a.extend_from_slice(args);
        c.ctr(&a)
    };
    // The image's entrypoint (the first .wasm): found as a layer, not a file.
    let r = run("layers-hello", &[]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell"), "{r:?}");
    // args[0] picks the layer by its title.
    let r = run("layers-exit", &["/exit-code-p1.wasm", "9"]);
    assert_eq!(r.code, Some(9), "{r:?}");
    // A name no layer has: a clear error, nothing left behind.
    let r = run("layers-missing", &["/nope.wasm"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("nope.wasm") && r.stderr.contains("Wasm layers"), "{r:?}");
    c.ctr(&["containers", "rm", "layers-missing"]);
    c.stop_and_check_clean();
}

fn artifact_through_cri(v: Version) {
    let c = Cri::start_version(v);
    c.build_and_import("wasmcell.test/artifact:1", &[fixture("hello.wasm")], &["--artifact"]);
    let pod_cfg = c.pod_config("artifact");
    let pod = c.run_pod(&pod_cfg).expect("RunPodSandbox");
    let mut cfg = c.container_config("app", &["/hello.wasm", "from-artifact"], &[]);
    cfg.image.as_mut().unwrap().image = "wasmcell.test/artifact:1".into();
    let id = c.create(&pod, &pod_cfg, cfg).expect("CreateContainer of a Wasm artifact");
    c.start_container(&id).expect("StartContainer of a Wasm artifact");
    let st = c.wait_exited(&id);
    assert_eq!(st.exit_code, 0, "{st:?}");
    let lines = c.wait_log_lines(&pod_cfg, "app", "args:");
    assert!(lines.iter().any(|(_, l)| l == "args: /hello.wasm from-artifact"), "{lines:?}");
    c.remove_container(&id).unwrap();
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    c.stop_and_check_clean();
}

#[test]
fn containerd_1_7_wasm_layers_and_artifact() {
    wasm_layers_through_ctr(Version::V1_7);
    artifact_through_cri(Version::V1_7);
}

#[test]
fn containerd_2_1_wasm_layers_and_artifact() {
    wasm_layers_through_ctr(Version::V2_1);
    artifact_through_cri(Version::V2_1);
}
