//! Images from a real registry, which is how kubelet gets them: the three
//! kinds `wasmcell image build` makes (one tar layer, `--wasm-layers`,
//! `--artifact`), pushed with skopeo into a `docker-registry` on
//! 127.0.0.1, pulled with CRI's PullImage and run in a pod on the
//! `wasmtime` handler.
//!
//! One test per containerd release, each in seconds. 1.7 and 2.1 pull and
//! run all three kinds. 1.6 pulls the tar-layer image, and PullImage of
//! the other two fails (it cannot unpack `application/wasm` layers), but
//! leaves an image record that a container can run from, which is what
//! kubelet's retry of the pod does (docs/kubernetes.md, "Images from a
//! registry"). A release, docker-registry or skopeo that is missing fails
//! the test; nothing is skipped.

use k8s_cri::v1 as cri;
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::registry::{config_digest, Registry};
use wasmcell_e2e::{fixtures_dir, Version};

/// The image kinds of `wasmcell image build`: a name, its flags.
const TAR: (&str, &[&str]) = ("tar", &[]);
const WASM_LAYERS: (&str, &[&str]) = ("wasm-layers", &["--wasm-layers"]);
const ARTIFACT: (&str, &[&str]) = ("artifact", &["--artifact"]);

/// What containerd 1.6 says when CRI pulls an image with `application/wasm`
/// layers (`--wasm-layers`, `--artifact`): it expects a rootfs diff ID for
/// every layer of the manifest, and Wasm layers have none.
const REFUSED_ON_1_6: &str =
    "failed to unpack image on snapshotter overlayfs: mismatched image rootfs and manifest layers";

/// Builds image `kind` from hello.wasm and pushes it: the reference to
/// pull, and the image ID it must have once pulled.
fn build_and_push(c: &Cri, registry: &Registry, (kind, flags): (&str, &[&str])) -> (String, String) {
    let hello = fixtures_dir().join("hello.wasm").display().to_string();
    let tar = c.cd.build_image(&format!("wasmcell.test/{kind}:1"), &[hello], flags);
    (registry.push(&tar, &format!("wasmcell/{kind}:1")), config_digest(&tar))
}

/// Pulls `reference` and checks what CRI says it pulled: the image that
/// was built (`id`), known by its tag and its registry digest.
fn pull(c: &Cri, pod_cfg: &cri::PodSandboxConfig, reference: &str, id: &str) -> String {
    let image = c.pull_image(reference, pod_cfg).unwrap_or_else(|e| {
        panic!("PullImage {reference}: {e:?}\ncontainerd {} log:\n{}", c.cd.release.version, c.cd.log())
    });
    assert_eq!(image, id, "PullImage {reference}");
    let status = c.image_status(&image).expect("ImageStatus").unwrap_or_else(|| panic!("no image {image}"));
    let (repo, _tag) = reference.rsplit_once(':').unwrap();
    assert!(status.repo_tags.iter().any(|t| t == reference), "{status:?}");
    assert!(status.repo_digests.iter().any(|d| d.starts_with(&format!("{repo}@sha256:"))), "{status:?}");
    image
}

/// A container of `image` (an ID, as kubelet passes it after PullImage)
/// running hello.wasm with `kind` as its argument: it exits 0 and its
/// arguments reach the pod's log.
fn run_hello(c: &Cri, pod: &str, pod_cfg: &cri::PodSandboxConfig, image: &str, kind: &str) -> String {
    let mut cfg = c.container_config(kind, &["/hello.wasm", kind], &[]);
    cfg.image.as_mut().unwrap().image = image.into();
    let id = c.create(pod, pod_cfg, cfg).unwrap_or_else(|e| panic!("CreateContainer of the {kind} image: {e:?}"));
    c.start_container(&id).unwrap_or_else(|e| panic!("StartContainer of the {kind} image: {e:?}"));
    let st = c.wait_exited(&id);
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"), "{kind}: {st:?}");
    let want = format!("args: /hello.wasm {kind}");
    let lines = c.wait_log_lines(pod_cfg, kind, &want);
    assert!(lines.contains(&("stdout".into(), "hello from wasmcell".into())), "{kind}: {lines:?}");
    assert!(lines.iter().any(|(_, l)| *l == want), "{kind}: {lines:?}");
    id
}

/// Every kind is built, pushed and pulled; the ones in `refused` fail
/// PullImage with `refused_with`. Then each runs in one pod.
fn from_registry(v: Version, refused: &[&str], refused_with: &str) {
    let started = std::time::Instant::now();
    let registry = Registry::start();
    let c = Cri::start_version(v);
    c.trust_plain_http_registry(&registry.addr);
    let pod_cfg = c.pod_config("registry");

    let mut images = Vec::new();
    for kind in [TAR, WASM_LAYERS, ARTIFACT] {
        let (reference, id) = build_and_push(&c, &registry, kind);
        let image = if refused.contains(&kind.0) {
            let err = c.pull_image(&reference, &pod_cfg).expect_err(&format!("PullImage of the {} image", kind.0));
            assert!(err.message().contains(refused_with), "{}: {err:?}", kind.0);
            // containerd 1.6 records the image before it unpacks it and
            // keeps the record when the unpack fails: ImageStatus lists it
            // (without a repo digest), so kubelet's next try of an
            // IfNotPresent pod finds it present, skips the pull and starts
            // the container, which runs (the shim reads Wasm layers from
            // the content store, where the pull left them).
            let left = c.image_status(&reference).expect("ImageStatus");
            let left = left.unwrap_or_else(|| panic!("{}: no image record after the failed pull", kind.0));
            assert_eq!(left.id, id, "{}: {left:?}", kind.0);
            assert!(left.repo_digests.is_empty(), "{}: {left:?}", kind.0);
            left.id
        } else {
            pull(&c, &pod_cfg, &reference, &id)
        };
        images.push((kind.0, image));
    }

    let (pod, _ip) = c.run_ready_pod(&pod_cfg);
    let containers: Vec<String> =
        images.iter().map(|(kind, image)| run_hello(&c, &pod, &pod_cfg, image, kind)).collect();
    c.remove_pod_and(&pod, &containers.iter().map(String::as_str).collect::<Vec<_>>());
    let left = c.wait_shims_gone();
    assert!(left.is_empty(), "shim left after the pod was removed: {left:?}");
    let version = c.cd.release.version.clone();
    c.stop_and_check_clean();
    eprintln!("containerd {version}: {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn containerd_1_6() {
    from_registry(Version::V1_6, &[WASM_LAYERS.0, ARTIFACT.0], REFUSED_ON_1_6);
}

#[test]
fn containerd_1_7() {
    from_registry(Version::V1_7, &[], "");
}

#[test]
fn containerd_2_1() {
    from_registry(Version::V2_1, &[], "");
}
