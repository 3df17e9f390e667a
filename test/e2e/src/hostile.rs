//! What a hostile tenant brings: a loop device standing in for the node's
//! disk, and images whose layers carry what `wasmcell image build` never
//! writes (device nodes).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A loop device over a 1 MiB file whose first bytes are a secret, detached
/// (by `losetup -d`) in `Drop`, also when the test fails.
pub struct LoopDevice {
    pub dev: PathBuf,
    pub backing: PathBuf,
    pub major: u64,
    pub minor: u64,
}

pub const DISK_SECRET: &[u8] = b"HOST-DISK-SECRET-0123456789\n";

impl LoopDevice {
    pub fn attach(dir: &Path) -> Self {
        let backing = dir.join("disk.img");
        let mut data = DISK_SECRET.to_vec();
        data.resize(1 << 20, 0);
        std::fs::write(&backing, &data).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output()
            .expect("losetup (util-linux's `mount` package) is needed for the device tests");
        assert!(
            out.status.success(),
            "losetup -f --show: {} (this host needs loop devices for the device-node tests)",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let meta = std::fs::metadata(&dev).unwrap();
        assert!(meta.file_type().is_block_device(), "{} is not a block device", dev.display());
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        LoopDevice { dev, backing, major: nix::sys::stat::major(rdev), minor: nix::sys::stat::minor(rdev) }
    }

    /// The device's first `n` bytes, read through the device itself.
    pub fn head(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        std::fs::File::open(&self.dev).unwrap().read_exact(&mut buf).unwrap();
        buf
    }

    /// A node for this device at `path` (mode 0666).
    pub fn mknod(&self, path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(self.major, self.minor),
        )
        .unwrap();
    }

    /// One layer tar with a block-device entry for this device at `name`
    /// (relative), as a hostile image carries it.
    pub fn layer(&self, name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Block);
        h.set_mode(0o666);
        h.set_size(0);
        h.set_mtime(0);
        h.set_device_major(self.major as u32).unwrap();
        h.set_device_minor(self.minor as u32).unwrap();
        b.append_data(&mut h, name, std::io::empty()).unwrap();
        b.into_inner().unwrap()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// Reads the OCI image-layout tarball `base` (as `wasmcell image build`
/// writes it: one manifest), adds `layer` (an uncompressed tar) on top of its
/// layers, and writes the result to `out` as image `name` (`REPO:TAG`).
pub fn add_layer(base: &Path, out: &Path, name: &str, layer: Vec<u8>) {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(base).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[&blob(&mdigest)]).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_slice(&files[&blob(&cdigest)]).unwrap();

    let ldigest = sha256(&layer);
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": ldigest,
        "size": layer.len(),
    }));
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(ldigest.clone().into());
    files.insert(blob(&ldigest), layer);

    let config_bytes = serde_json::to_vec(&config).unwrap();
    let cdigest = sha256(&config_bytes);
    manifest["config"]["digest"] = cdigest.clone().into();
    manifest["config"]["size"] = config_bytes.len().into();
    files.insert(blob(&cdigest), config_bytes);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = sha256(&manifest_bytes);
    index["manifests"][0]["digest"] = mdigest.clone().into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    index["manifests"][0]["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": tag,
    });
    files.insert(blob(&mdigest), manifest_bytes);
    files.insert("index.json".into(), serde_json::to_vec(&index).unwrap());

    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// Per-mount options (mountinfo's sixth field) of every mount of process
/// `pid` at or below `prefix`.
pub fn mount_options_below(pid: i32, prefix: &str) -> Vec<(String, String)> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(4)?.to_string(), f.get(5)?.to_string()))
        })
        .filter(|(mp, _)| mp.starts_with(prefix))
        .collect()
}
