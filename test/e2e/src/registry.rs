//! A real OCI registry on 127.0.0.1, which is where kubelet's images come
//! from: Debian's `docker-registry` (distribution 2.8), with its own config
//! and storage in a temp dir, and images pushed into it with `skopeo copy`
//! from the image-layout tarballs that `wasmcell image build` writes.
//!
//! The registry speaks plain HTTP (no TLS, no auth): the CRI daemon is told
//! so by a `hosts.toml` ([`crate::cri::Cri::trust_plain_http_registry`]).
//! It is stopped by PID in `Drop`, also when a test fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{http_get, wait};

pub struct Registry {
    /// `127.0.0.1:PORT`: the registry host of every reference pushed here.
    pub addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

fn require(binary: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {binary}")).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{binary}` is not on PATH: the registry tests need Debian's docker-registry and skopeo \
         (apt-get install docker-registry skopeo; test/scripts/deps.sh installs them)"
    );
}

impl Registry {
    /// Starts the registry on a free port and waits until it answers
    /// `GET /v2/`.
    pub fn start() -> Self {
        require("docker-registry");
        require("skopeo");
        let dir = tempfile::Builder::new().prefix("wcreg").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let addr = format!("127.0.0.1:{}", wait::free_port());
        // Not the package's /etc/docker/registry/config.yml: that one
        // listens on every address at :5000, with htpasswd auth and
        // storage in /var/lib.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {d}/storage\n\
             http:\n  addr: {addr}\n",
            d = d.display()
        );
        std::fs::write(d.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut r = Registry { addr, dir, child };
        let up = wait::until(200, || http_get(&r.addr, "/v2/").map(|(s, _)| s), |s| *s == Some(200));
        if up != Some(200) {
            let exited = r.child.try_wait();
            panic!("docker-registry never answered at {} ({exited:?}); its log:\n{}", r.addr, r.log());
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image-layout tarball `tar` (as `wasmcell image build -o`
    /// writes it, one manifest in its index) to `name:tag` and returns the
    /// reference kubelet would pull: `127.0.0.1:PORT/name:tag`. skopeo
    /// reads the tarball as it is (`oci-archive:`) and pushes the manifest,
    /// not the index around it; it gzips an uncompressed tar layer on the
    /// way, as a registry push does.
    pub fn push(&self, tar: &Path, name_tag: &str) -> String {
        let reference = format!("{}/{name_tag}", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", tar.display()))
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {} to {reference} failed: {}\nregistry log:\n{}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        reference
    }
}

/// The config digest of the one image in the image-layout tarball `tar`:
/// the image ID containerd gives it once pulled, whatever the push did to
/// its layers (skopeo's gzip leaves the config as it is).
pub fn config_digest(tar: &Path) -> String {
    let mut blobs = std::collections::HashMap::new();
    let file = std::fs::File::open(tar).unwrap_or_else(|e| panic!("{}: {e}", tar.display()));
    for entry in tar::Archive::new(file).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        blobs.insert(path.replace("blobs/sha256/", "sha256:"), data);
    }
    let json = |name: &str| -> serde_json::Value {
        let data = blobs.get(name).unwrap_or_else(|| panic!("{}: no {name}", tar.display()));
        serde_json::from_slice(data).unwrap()
    };
    let manifest = json("index.json")["manifests"][0]["digest"].as_str().unwrap().to_string();
    json(&manifest)["config"]["digest"].as_str().unwrap().to_string()
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill is SIGKILL to this PID: the registry keeps nothing
        // that needs a clean shutdown, and its storage goes with the dir.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
