//! The Kubernetes path: the private containerd with its CRI plugin on, a CNI
//! bridge network from Debian's `containernetworking-plugins`, and a CRI
//! gRPC client that makes the calls kubelet makes.
//!
//! CRI tests run one at a time (a process-wide lock, and a file lock for
//! other test processes on the host): they share the bridge and its subnet. Everything else is private to the test's directory: IPAM
//! state, CNI config, logs, and the pods' cgroups (`/<namespace>/...`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::{fixtures_dir, target_dir, wait, Containerd, Release, Schema, Version};

/// The runtime handler registered for wasmcell, as a RuntimeClass names it.
pub const HANDLER: &str = "wasmtime";
/// A second handler of the same runtime, under the policy file
/// `strict.toml` in the test's containerd directory (written by the test).
pub const STRICT_HANDLER: &str = "wasmtime-strict";
/// The sandbox image CRI is configured with; built and imported locally.
pub const PAUSE_IMAGE: &str = "wasmcell.test/pause:1";
/// The Wasm fixtures, imported into CRI's namespace.
pub const WASM_IMAGE: &str = "wasmcell.test/fixtures:cri";
/// containerd's namespace for CRI.
pub const K8S_NS: &str = "k8s.io";
const BRIDGE: &str = "wasmcell0";
const SUBNET: &str = "10.237.0.0/24";

static CRI_LOCK: Mutex<()> = Mutex::new(());
/// The same, between test processes (test binaries, or two `cargo test`s).
const CRI_HOST_LOCK: &str = "/tmp/wasmcell-e2e-cri.lock";

fn host_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CRI_HOST_LOCK)
        .unwrap_or_else(|e| panic!("open {CRI_HOST_LOCK}: {e}"));
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {CRI_HOST_LOCK}: {e}"))
}

/// The CRI tables of the private containerd's config, in `schema`
/// (see test/scripts/cri-configs.md for why each line is there).
fn cri_section(d: &Path, schema: Schema) -> String {
    match schema {
        Schema::V2 => cri_section_v2(d),
        Schema::V3 => cri_section_v3(d),
    }
}

/// containerd 1.6 and 1.7: one plugin, `io.containerd.grpc.v1.cri`.
fn cri_section_v2(d: &Path) -> String {
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM lacks CAP_SYS_RESOURCE: never raise oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Pods' network namespaces below this containerd's state directory, so
  # a leaked one shows up as a mount left in the test's directory.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmcell.dev/*"]
      container_annotations = ["wasmcell.dev/*"]
    # The same runtime under a policy (the test writes the file).
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{STRICT_HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmcell.dev/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{STRICT_HANDLER}.options]
        ConfigPath = "{d}/strict.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{d}/cni"
  # Registry hosts (`hosts.toml` per host) from the test's directory only:
  # see Cri::trust_plain_http_registry.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
        d = d.display(),
        bin = cni_bin_dir().display(),
    )
}

/// containerd 2.x: images (with the sandbox image, now "pinned") and
/// runtime settings are plugins of their own; the gRPC plugin keeps only
/// the streaming server; the CNI binary directory is a list.
fn cri_section_v3(d: &Path) -> String {
    format!(
        r#"[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  # Registry hosts from the test's directory only, not 2.x's default
  # /etc/containerd/certs.d: see Cri::trust_plain_http_registry.
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d}/certs.d"
[plugins."io.containerd.cri.v1.runtime"]
  # This VM lacks CAP_SYS_RESOURCE: never raise oom_score_adj.
  restrict_oom_score_adj = true
  # Pods' network namespaces below this containerd's state directory, so
  # a leaked one shows up as a mount left in the test's directory.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmcell.dev/*"]
      container_annotations = ["wasmcell.dev/*"]
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{STRICT_HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmcell.dev/*"]
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{STRICT_HANDLER}.options]
        ConfigPath = "{d}/strict.toml"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{d}/cni"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        d = d.display(),
        bin = cni_bin_dir().display(),
    )
}

fn cni_bin_dir() -> PathBuf {
    for d in ["/usr/lib/cni", "/opt/cni/bin"] {
        if Path::new(d).join("bridge").exists() {
            return d.into();
        }
    }
    panic!("the CNI bridge plugin is missing: apt-get install containernetworking-plugins (`make test` does)");
}

/// A bridge + host-local network; IPAM state lives in the test's directory.
fn write_cni_config(d: &Path) {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "wasmcell-test",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": d.join("ipam").display().to_string(),
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    });
    std::fs::create_dir_all(d.join("cni")).unwrap();
    std::fs::write(d.join("cni/10-wasmcell.conflist"), serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
}

pub struct Cri {
    pub cd: Containerd,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    network: NetworkGuard,
    _host_lock: nix::fcntl::Flock<std::fs::File>,
    _lock: MutexGuard<'static, ()>,
}

/// Undoes, after a test (also a failed one), what the CNI bridge plugin
/// changed on the host: the bridge, and `ip_forward` it switches on.
struct NetworkGuard {
    ip_forward: String,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
        let _ = std::fs::write(IP_FORWARD, &self.ip_forward);
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A CRI call's error, as kubelet would see it.
pub type CriResult<T> = Result<T, tonic::Status>;

impl Cri {
    /// Starts containerd with CRI, waits until CRI reports the runtime and
    /// network ready, and imports the sandbox and fixture images.
    pub fn start() -> Self {
        Self::launch(&Release::default_release())
    }

    /// [`Cri::start`] with containerd release series `v`, its CRI tables in
    /// that release's config schema.
    pub fn start_version(v: Version) -> Self {
        Self::launch(&Release::of(v))
    }

    fn launch(release: &Release) -> Self {
        let lock = CRI_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let host_lock = host_lock();
        let network = NetworkGuard { ip_forward: std::fs::read_to_string(IP_FORWARD).unwrap_or_else(|_| "0".into()) };
        let cd = Containerd::launch(
            release,
            Some(&|d: &Path, schema: Schema| -> String {
                write_cni_config(d);
                cri_section(d, schema)
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let socket = cd.socket.clone();
        let channel = rt
            .block_on(tonic::transport::Endpoint::try_from("http://[::]:50051").unwrap().connect_with_connector(
                tower::service_fn(move |_: tonic::transport::Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }),
            ))
            .expect("connect to containerd's CRI");
        let c = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
            cd,
            network,
            _host_lock: host_lock,
            _lock: lock,
        };
        c.import_images();
        let mut last = None;
        let mut ready = false;
        for _ in 0..300 {
            match c.status() {
                Ok(s) if s.conditions.iter().all(|c| c.status) && !s.conditions.is_empty() => {
                    ready = true;
                    break;
                }
                other => last = Some(other),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ready {
            panic!("CRI never became ready: {last:?}\ncontainerd log:\n{}", c.cd.log());
        }
        c.wait_images_tagged(&[PAUSE_IMAGE, WASM_IMAGE]);
        c
    }

    /// Waits (bounded) until CRI lists every image in `names` by its tag.
    /// CRI learns about imported images from containerd's events, one per
    /// reference: 2.x may list an image by its ID before its name arrives
    /// (`repo_tags: []`), and a lookup by name fails until then.
    pub fn wait_images_tagged(&self, names: &[&str]) {
        let all_tagged = |images: &Vec<cri::Image>| {
            names.iter().all(|n| images.iter().any(|i| i.repo_tags.iter().any(|t| t.ends_with(n))))
        };
        let last = wait::until(200, || self.list_images().unwrap_or_default(), all_tagged);
        if !all_tagged(&last) {
            panic!("CRI never listed {names:?} by name: {last:?}");
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn version(&self) -> CriResult<cri::VersionResponse> {
        let mut r = self.runtime.clone();
        self.block_on(r.version(cri::VersionRequest::default())).map(|r| r.into_inner())
    }

    pub fn status(&self) -> CriResult<cri::RuntimeStatus> {
        let mut r = self.runtime.clone();
        self.block_on(r.status(cri::StatusRequest { verbose: false }))
            .map(|r| r.into_inner().status.unwrap_or_default())
    }

    fn import_images(&self) {
        let d = self.cd.dir.path();
        // The sandbox image: a static pause program. wasmcell never runs it
        // (a Wasm pod's sandbox holds no process), but CRI needs the image.
        let pause = d.join("pause");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/pause/pause.c");
        let out = Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&pause).arg(&src).output();
        match out {
            Ok(o) if o.status.success() => {}
            other => {
                panic!("building the pause image needs gcc and static libc (apt-get install gcc libc6-dev): {other:?}")
            }
        }
        let entry = format!("{}:/pause", pause.display());
        self.build_and_import(
            PAUSE_IMAGE,
            std::slice::from_ref(&entry),
            &["--platform", "linux/amd64", "--entrypoint", "/pause"],
        );
        let mut files: Vec<String> = std::fs::read_dir(fixtures_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .map(|p| p.display().to_string())
            .collect();
        files.sort();
        files.push(entry);
        self.build_and_import(WASM_IMAGE, &files, &["--env", "GREETING=hi", "--entrypoint", "/hello.wasm"]);
    }

    /// Imports the image-layout tarball `tar` into CRI's namespace and waits
    /// until CRI lists it as `name`.
    pub fn import_layout(&self, tar: &Path, name: &str) {
        self.cd.ctr_ns(K8S_NS, &["images", "import", "--all-platforms", tar.to_str().unwrap()]).ok();
        self.wait_images_tagged(&[name]);
    }

    /// Lets CRI pull from the plain-HTTP registry at `addr`
    /// (`127.0.0.1:PORT`): a `hosts.toml` for that host in the config_path
    /// directory, which 1.6, 1.7 and 2.x all read at each pull, so it may
    /// be written after containerd started. Without it, containerd speaks
    /// HTTPS to the registry.
    pub fn trust_plain_http_registry(&self, addr: &str) {
        let dir = self.cd.dir.path().join("certs.d").join(addr);
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = format!(
            r#"server = "http://{addr}"

[host."http://{addr}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"#
        );
        std::fs::write(dir.join("hosts.toml"), hosts).unwrap();
    }

    /// PullImage of `image` for a pod configured as `pod_config`, as kubelet
    /// calls it: the image's reference (its ID) on success.
    pub fn pull_image(&self, image: &str, pod_config: &cri::PodSandboxConfig) -> CriResult<String> {
        let mut i = self.images.clone();
        self.block_on(i.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            auth: None,
            sandbox_config: Some(pod_config.clone()),
        }))
        .map(|r| r.into_inner().image_ref)
    }

    /// ImageStatus of `image` (a name or an ID); `None` when CRI has no
    /// such image.
    pub fn image_status(&self, image: &str) -> CriResult<Option<cri::Image>> {
        let mut i = self.images.clone();
        self.block_on(i.image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        }))
        .map(|r| r.into_inner().image)
    }

    /// Removes `containers`, then stops and removes `pod`, as kubelet does
    /// when a pod is deleted; each call must succeed.
    pub fn remove_pod_and(&self, pod: &str, containers: &[&str]) {
        for id in containers {
            self.remove_container(id).expect("RemoveContainer");
        }
        self.stop_pod(pod).expect("StopPodSandbox");
        self.remove_pod(pod).expect("RemovePodSandbox");
    }

    /// `wasmcell image build`, then `ctr -n k8s.io images import`.
    pub fn build_and_import(&self, name: &str, files: &[String], extra: &[&str]) {
        let tar = self.cd.dir.path().join(format!("cri-{}.tar", name.replace(['/', ':'], "_")));
        let out = Command::new(target_dir().join("wasmcell"))
            .args(["image", "build", "-t", name, "-o"])
            .arg(&tar)
            .args(extra)
            .args(files)
            .output()
            .expect("run wasmcell");
        assert!(out.status.success(), "wasmcell image build: {}", String::from_utf8_lossy(&out.stderr));
        self.cd.ctr_ns(K8S_NS, &["images", "import", "--all-platforms", tar.to_str().unwrap()]).ok();
    }

    /// A pod config as kubelet writes it: metadata, log directory, the
    /// cgroup parent (under this test's namespace, so it is checked and
    /// cleaned like the ctr suites' cgroups).
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = format!("uid-{name}");
        let logs = self.cd.dir.path().join("pods").join(&uid);
        std::fs::create_dir_all(&logs).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid, namespace: "default".into(), attempt: 0 }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/pod-{name}", self.cd.namespace),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(&self, config: &cri::PodSandboxConfig) -> CriResult<String> {
        self.run_pod_on(config, HANDLER)
    }

    /// RunPodSandbox with runtime handler `handler` ([`HANDLER`] or
    /// [`STRICT_HANDLER`]).
    pub fn run_pod_on(&self, config: &cri::PodSandboxConfig, handler: &str) -> CriResult<String> {
        let mut r = self.runtime.clone();
        self.block_on(r.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        }))
        .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// RunPodSandbox, then PodSandboxStatus: the pod is ready, on the
    /// `wasmtime` handler, with an address from the CNI bridge. Returns the
    /// pod's id and IP.
    pub fn run_ready_pod(&self, config: &cri::PodSandboxConfig) -> (String, String) {
        let pod = self.run_pod(config).expect("RunPodSandbox");
        let ps = self.pod_status(&pod).expect("PodSandboxStatus");
        assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32, "{ps:?}");
        assert_eq!(ps.runtime_handler, HANDLER);
        let ip = ps.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
        assert!(ip.starts_with("10.237.0."), "pod IP from the CNI bridge: {ps:?}");
        (pod, ip)
    }

    pub fn pod_status(&self, id: &str) -> CriResult<cri::PodSandboxStatus> {
        let mut r = self.runtime.clone();
        self.block_on(r.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false }))
            .map(|r| r.into_inner().status.unwrap_or_default())
    }

    /// A container config for the fixtures image: `command` replaces the
    /// entrypoint (its first element names the .wasm file).
    pub fn container_config(&self, name: &str, command: &[&str], env: &[(&str, &str)]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: WASM_IMAGE.into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            envs: env.iter().map(|(k, v)| cri::KeyValue { key: k.to_string(), value: v.to_string() }).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    pub fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> CriResult<String> {
        let mut r = self.runtime.clone();
        self.block_on(r.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        }))
        .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.start_container(cri::StartContainerRequest { container_id: id.into() })).map(|_| ())
    }

    pub fn container_status(&self, id: &str) -> CriResult<cri::ContainerStatus> {
        let mut r = self.runtime.clone();
        self.block_on(r.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false }))
            .map(|r| r.into_inner().status.unwrap_or_default())
    }

    /// Waits (bounded by count) until the container has exited.
    pub fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let exited = |s: &cri::ContainerStatus| s.state == cri::ContainerState::ContainerExited as i32;
        let last = wait::until(600, || self.container_status(id).expect("ContainerStatus"), exited);
        if !exited(&last) {
            panic!("container {id} never exited: {last:?}");
        }
        last
    }

    /// UpdateContainerResources with a new memory limit (what kubelet sends
    /// for an in-place resize).
    pub fn update_memory_limit(&self, id: &str, bytes: i64) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: bytes, ..Default::default() }),
            ..Default::default()
        }))
        .map(|_| ())
    }

    pub fn container_stats(&self, id: &str) -> CriResult<cri::ContainerStats> {
        let mut r = self.runtime.clone();
        self.block_on(r.container_stats(cri::ContainerStatsRequest { container_id: id.into() }))
            .map(|r| r.into_inner().stats.unwrap_or_default())
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> CriResult<cri::ExecSyncResponse> {
        let mut r = self.runtime.clone();
        self.block_on(r.exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        }))
        .map(|r| r.into_inner())
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.stop_container(cri::StopContainerRequest { container_id: id.into(), timeout })).map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.remove_container(cri::RemoveContainerRequest { container_id: id.into() })).map(|_| ())
    }

    pub fn stop_pod(&self, id: &str) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })).map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> CriResult<()> {
        let mut r = self.runtime.clone();
        self.block_on(r.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })).map(|_| ())
    }

    pub fn list_images(&self) -> CriResult<Vec<cri::Image>> {
        let mut i = self.images.clone();
        self.block_on(i.list_images(cri::ListImagesRequest { filter: None })).map(|r| r.into_inner().images)
    }

    /// The CRI log file of a container: `(stream, line)` pairs, as kubelet
    /// reads them (`TIMESTAMP STREAM TAG LINE`).
    pub fn log_lines(&self, pod_config: &cri::PodSandboxConfig, name: &str) -> Vec<(String, String)> {
        let path = Path::new(&pod_config.log_directory).join(format!("{name}.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(4, ' ');
                let (_ts, stream, _tag) = (parts.next()?, parts.next()?, parts.next()?);
                Some((stream.to_string(), parts.next().unwrap_or("").to_string()))
            })
            .collect()
    }

    /// [`Cri::log_lines`] of container `name`, read again (at most 100
    /// times, [`wait::STEP`] apart) until a line contains `needle`: the
    /// container's output reaches its log file asynchronously. Returns the
    /// lines read last, for the caller to assert on.
    pub fn wait_log_lines(
        &self,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        needle: &str,
    ) -> Vec<(String, String)> {
        wait::until(100, || self.log_lines(pod_config, name), |lines| lines.iter().any(|(_, l)| l.contains(needle)))
    }

    /// Shim processes serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        self.cd.shim_pids()
    }

    /// [`Containerd::wait_shims_gone`]: after the pod's last container and
    /// the pod are removed, its shim exits; the PIDs still running.
    pub fn wait_shims_gone(&self) -> Vec<i32> {
        self.cd.wait_shims_gone()
    }

    /// Stops containerd and asserts nothing of any pod is left: no shim
    /// process, no mount (rootfs, shm, or the pods' network namespaces,
    /// which live under the state directory), no cgroup.
    pub fn stop_and_check_clean(self) {
        let Cri { cd, network, _host_lock, _lock, .. } = self;
        // Pod cgroups (`/<namespace>/pod-NAME`) belong to kubelet, which
        // removes them after the pod; the runtime's are the leaves below,
        // and none of those may be left.
        for pod in cd.cgroups() {
            let leaves: Vec<_> = std::fs::read_dir(&pod)
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(leaves.is_empty(), "container cgroups left behind: {leaves:?}");
            // As kubelet does, removed once empty: a pod's shim leaving its
            // own cgroup moves to this one, and may still be exiting.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = std::fs::remove_dir(&pod) {
                if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cd.stop_and_check_clean();
        drop(network);
    }
}

pub use crate::http_get;
