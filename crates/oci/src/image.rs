//! Build an OCI image-layout tarball from local files, offline.
//!
//! The result holds one manifest and imports with
//! `ctr image import --all-platforms FILE`. Three layouts ([`Layout`]):
//! the files in one uncompressed tar layer (runs on every containerd), each
//! `.wasm` file as an `application/wasm` layer of an ordinary image, or the
//! CNCF TAG Runtime Wasm OCI artifact. Entries are written in a fixed order
//! with zero timestamps, so the same inputs give the same digests.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("no files given: name at least one .wasm file")]
    NoFiles,
    #[error("no entrypoint: none of the files ends in .wasm; pass --entrypoint")]
    NoEntrypoint,
    #[error("image name {0:?} is not a valid reference (e.g. example.com/hello:latest)")]
    BadName(String),
    #[error("platform {0:?} must be OS/ARCH, e.g. wasi/wasm")]
    BadPlatform(String),
    #[error("destination {0:?} must be an absolute path without '..'")]
    BadDestination(String),
    #[error("{what} {value:?} must be KEY=VALUE")]
    BadPair { what: &'static str, value: String },
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write image: {0}")]
    Write(#[from] std::io::Error),
    /// An input that was to be read as an image tarball is not one.
    #[error("not an OCI image layout tarball: {0}")]
    NotLayout(String),
    #[error("image metadata: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("{path}: only WebAssembly files can be Wasm layers ({reason})")]
    NotWasmLayer { path: String, reason: crate::classify::NotWasm },
}

/// How the files travel in the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One uncompressed tar layer holding every file: an ordinary image
    /// that every containerd (1.6 included) unpacks into the rootfs.
    #[default]
    Tar,
    /// Each `.wasm` file as its own `application/wasm` layer (titled with
    /// its file name) of an ordinary image config. containerd >= 1.7.7
    /// and 2.x import and run it; the shim reads the layers from
    /// containerd's content store.
    WasmLayers,
    /// The CNCF TAG Runtime Wasm OCI artifact: config
    /// `application/vnd.wasm.config.v0+json` (`architecture: wasm`,
    /// `os: wasip2`, `layerDigests`, the component's imports and exports)
    /// and `application/wasm` layers. It has no entrypoint: CRI runs it
    /// with the pod's command; `ctr run` refuses its config type.
    Artifact,
}

/// One file to put into the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    pub source: PathBuf,
    /// Absolute path inside the image.
    pub destination: String,
}

impl FromStr for ImageFile {
    type Err = ImageError;
    /// `SRC` (placed at `/basename`) or `SRC:DEST`.
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let (src, dest) = match s.split_once(':') {
            Some((src, dest)) => (src.to_string(), dest.to_string()),
            None => {
                let base = Path::new(s).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
                (s.to_string(), format!("/{base}"))
            }
        };
        let ok = dest.starts_with('/') && dest.len() > 1 && !dest.split('/').any(|c| c == ".." || c == ".");
        if !ok {
            return Err(ImageError::BadDestination(dest));
        }
        Ok(ImageFile { source: src.into(), destination: dest })
    }
}

/// What goes into the image.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// Full reference, e.g. `example.com/wasmcell/hello:latest`.
    pub name: String,
    pub files: Vec<ImageFile>,
    /// Defaults to the first file ending in `.wasm`.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `KEY=VALUE` entries.
    pub labels: Vec<String>,
    pub working_dir: Option<String>,
    /// `OS/ARCH`; default `wasi/wasm`. (Other platforms exist for test
    /// images, e.g. a static native binary for a runc baseline.)
    pub platform: Option<String>,
    pub layout: Layout,
}

/// The digests of what was written, for callers that want to print them.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest: Descriptor,
    pub layer_digest: String,
}

/// JSON with object keys sorted (through `serde_json::Value`, whose maps are
/// ordered), so that maps held in a `HashMap` serialize the same every time.
fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ImageError> {
    let value = serde_json::to_value(v).map_err(std::io::Error::other)?;
    Ok(serde_json::to_vec(&value).map_err(std::io::Error::other)?)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn descriptor(media: MediaType, bytes: &[u8]) -> Result<Descriptor, ImageError> {
    Ok(DescriptorBuilder::default()
        .media_type(media)
        .size(bytes.len() as u64)
        .digest(Digest::from_str(&format!("sha256:{}", sha256(bytes)))?)
        .build()?)
}

fn check_pairs(what: &'static str, pairs: &[String]) -> Result<(), ImageError> {
    for p in pairs {
        if p.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(ImageError::BadPair { what, value: p.clone() });
        }
    }
    Ok(())
}

/// The uncompressed layer tar holding `files`, with parent directories.
fn layer(files: &[ImageFile]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let rel = f.destination.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            acc.push_str(part);
            acc.push('/');
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                builder.append_data(&mut h, &acc, std::io::empty())?;
            }
        }
        let data = std::fs::read(&f.source)
            .map_err(|source| ImageError::Read { path: f.source.display().to_string(), source })?;
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        builder.append_data(&mut h, rel, data.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

/// Writes the image-layout tarball for `spec` to `out`.
pub fn build(spec: &ImageSpec, out: impl Write) -> Result<Built, ImageError> {
    if spec.files.is_empty() {
        return Err(ImageError::NoFiles);
    }
    let (repo, tag) = split_name(&spec.name)?;
    check_pairs("--env", &spec.env)?;
    check_pairs("--label", &spec.labels)?;
    let entrypoint = match &spec.entrypoint {
        Some(e) if !e.is_empty() => e.clone(),
        _ => vec![spec
            .files
            .iter()
            .find(|f| f.destination.ends_with(".wasm"))
            .ok_or(ImageError::NoEntrypoint)?
            .destination
            .clone()],
    };

    let (os, arch) = match spec.platform.as_deref() {
        None | Some("") => ("wasi".to_string(), "wasm".to_string()),
        Some(p) => match p.split_once('/') {
            Some((o, a)) if !o.is_empty() && !a.is_empty() => (o.to_string(), a.to_string()),
            _ => return Err(ImageError::BadPlatform(p.to_string())),
        },
    };
    let layers = match spec.layout {
        Layout::Tar => {
            let l = layer(&spec.files)?;
            vec![(descriptor(MediaType::ImageLayer, &l)?, l)]
        }
        Layout::WasmLayers | Layout::Artifact => wasm_layers(&spec.files)?,
    };
    // rootfs.diff_ids lists what unpacks into the rootfs: the tar layer
    // (uncompressed: its diff id is its digest). containerd leaves layers
    // of other media types (Wasm) out of the rootfs and expects them out
    // of diff_ids too.
    let diff_ids: Vec<String> = match spec.layout {
        Layout::Tar => layers.iter().map(|(d, _)| d.digest().to_string()).collect(),
        Layout::WasmLayers | Layout::Artifact => Vec::new(),
    };
    if spec.layout == Layout::Artifact {
        return write_layout(out, &repo, &tag, artifact_config(&layers)?, layers, ("wasip2", "wasm"));
    }

    let labels: HashMap<String, String> =
        spec.labels.iter().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    let mut cfg = ConfigBuilder::default().entrypoint(entrypoint).env(spec.env.clone());
    if !spec.cmd.is_empty() {
        cfg = cfg.cmd(spec.cmd.clone());
    }
    if !labels.is_empty() {
        cfg = cfg.labels(labels);
    }
    if let Some(w) = &spec.working_dir {
        cfg = cfg.working_dir(w.clone());
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::from(arch.as_str()))
        .os(Os::from(os.as_str()))
        .config(cfg.build()?)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(diff_ids).build()?)
        .build()?;
    let config_bytes = canonical_json(&config)?;
    let config_desc = descriptor(MediaType::ImageConfig, &config_bytes)?;
    write_layout(out, &repo, &tag, (config_desc, config_bytes), layers, (&os, &arch))
}

/// Each file as an `application/wasm` layer titled with its file name.
fn wasm_layers(files: &[ImageFile]) -> Result<Vec<(Descriptor, Vec<u8>)>, ImageError> {
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(&f.source)
            .map_err(|source| ImageError::Read { path: f.source.display().to_string(), source })?;
        crate::classify(&data)
            .map_err(|reason| ImageError::NotWasmLayer { path: f.source.display().to_string(), reason })?;
        let mut d = descriptor(MediaType::Other(crate::layers::WASM_LAYER.into()), &data)?;
        let name = f.destination.rsplit('/').next().unwrap_or(&f.destination).to_string();
        d.set_annotations(Some(HashMap::from([(crate::layers::TITLE.to_string(), name)])));
        out.push((d, data));
    }
    Ok(out)
}

/// The TAG Runtime Wasm artifact config for `layers`.
fn artifact_config(layers: &[(Descriptor, Vec<u8>)]) -> Result<(Descriptor, Vec<u8>), ImageError> {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    for (_, data) in layers {
        let (i, e) = crate::classify::component_interfaces(data);
        imports.extend(i);
        exports.extend(e);
    }
    let config = serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": layers.iter().map(|(d, _)| d.digest().to_string()).collect::<Vec<_>>(),
        "component": {"imports": imports, "exports": exports},
    });
    let bytes = canonical_json(&config)?;
    Ok((descriptor(MediaType::Other(crate::layers::WASM_CONFIG.into()), &bytes)?, bytes))
}

/// Manifest, index and blobs, as an image-layout tarball.
fn write_layout(
    out: impl Write,
    repo: &str,
    tag: &str,
    (config_desc, config_bytes): (Descriptor, Vec<u8>),
    layers: Vec<(Descriptor, Vec<u8>)>,
    (os, arch): (&str, &str),
) -> Result<Built, ImageError> {
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc.clone())
        .layers(layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
        .build()?;
    let manifest_bytes = canonical_json(&manifest)?;
    let mut manifest_desc = descriptor(MediaType::ImageManifest, &manifest_bytes)?;
    manifest_desc
        .set_platform(Some(PlatformBuilder::default().architecture(Arch::from(arch)).os(Os::from(os)).build()?));
    manifest_desc.set_annotations(Some(HashMap::from([
        ("io.containerd.image.name".to_string(), format!("{repo}:{tag}")),
        ("org.opencontainers.image.ref.name".to_string(), tag.to_string()),
    ])));

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc.clone()])
        .build()?;
    let index_bytes = canonical_json(&index)?;
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?;
    let layout_bytes = canonical_json(&layout)?;

    let mut tarball = tar::Builder::new(out);
    tarball.mode(tar::HeaderMode::Deterministic);
    let mut put = |path: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mode(if path.ends_with('/') { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tarball.append_data(&mut h, path, data)
    };
    put("oci-layout", &layout_bytes)?;
    put("blobs/", &[])?;
    put("blobs/sha256/", &[])?;
    let mut blobs: Vec<(&Descriptor, &Vec<u8>)> = layers.iter().map(|(d, b)| (d, b)).collect();
    blobs.push((&config_desc, &config_bytes));
    blobs.push((&manifest_desc, &manifest_bytes));
    let mut written = Vec::new();
    for (desc, bytes) in blobs {
        let digest = desc.digest().digest().to_string();
        // The same file twice is one blob.
        if !written.contains(&digest) {
            put(&format!("blobs/sha256/{digest}"), bytes)?;
            written.push(digest);
        }
    }
    put("index.json", &index_bytes)?;
    tarball.into_inner()?.flush()?;
    Ok(Built {
        manifest: manifest_desc,
        layer_digest: layers.first().map(|(d, _)| d.digest().to_string()).unwrap_or_default(),
    })
}

/// Splits `repo[:tag]` (a registry port is not a tag).
fn split_name(name: &str) -> Result<(String, String), ImageError> {
    let bad = || ImageError::BadName(name.to_string());
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('@') {
        return Err(bad());
    }
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    };
    if repo.is_empty() || tag.is_empty() || repo.ends_with('/') {
        return Err(bad());
    }
    Ok((repo.to_string(), tag.to_string()))
}

/// The `.wasm` files inside an OCI image-layout tarball (every layer of every
/// manifest it indexes), as (path in the image, bytes). Used to warm the
/// compile cache from an image before any container runs it.
pub fn wasm_files(tarball: impl std::io::Read) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    use std::io::Read;
    let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut index = None;
    let mut archive = tar::Archive::new(tarball);
    let tar_err = |e: std::io::Error| ImageError::NotLayout(e.to_string());
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let path = entry.path().map_err(tar_err)?.display().to_string();
        let path = path.trim_start_matches("./").to_string();
        if path == "index.json" || path.starts_with("blobs/sha256/") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(tar_err)?;
            if path == "index.json" {
                index = Some(data);
            } else {
                blobs.insert(path.trim_start_matches("blobs/sha256/").to_string(), data);
            }
        }
    }
    let bad = |what: &str| ImageError::NotLayout(what.to_string());
    let index: serde_json::Value =
        serde_json::from_slice(&index.ok_or_else(|| bad("no index.json"))?).map_err(|e| bad(&e.to_string()))?;
    let blob = |digest: &str| -> Result<&Vec<u8>, ImageError> {
        blobs.get(digest.trim_start_matches("sha256:")).ok_or_else(|| bad(&format!("missing blob {digest}")))
    };
    let mut out = Vec::new();
    for m in index["manifests"].as_array().cloned().unwrap_or_default() {
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(m["digest"].as_str().unwrap_or(""))?).map_err(|e| bad(&e.to_string()))?;
        for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let data = blob(layer["digest"].as_str().unwrap_or(""))?;
            let media = layer["mediaType"].as_str().unwrap_or("");
            if media.contains("wasm") {
                out.push((layer["digest"].as_str().unwrap_or("").to_string(), data.clone()));
                continue;
            }
            if media.ends_with("gzip") || media.ends_with("zstd") {
                continue; // compressed layers are not produced by `build`
            }
            let mut layer_tar = tar::Archive::new(data.as_slice());
            for e in layer_tar.entries()? {
                let mut e = e?;
                let p = e.path()?.display().to_string();
                if p.ends_with(".wasm") {
                    let mut bytes = Vec::new();
                    e.read_to_end(&mut bytes)?;
                    out.push((format!("/{}", p.trim_start_matches("./")), bytes));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod layout_tests {
    use super::tests::entries as blobs;
    use super::*;

    fn manifest_of(files: &HashMap<String, Vec<u8>>) -> serde_json::Value {
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let d = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        serde_json::from_slice(&files[&format!("blobs/sha256/{d}")]).unwrap()
    }

    fn spec(dir: &Path, layout: Layout) -> ImageSpec {
        let wasm = dir.join("app.wasm");
        std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
        ImageSpec {
            name: "example.com/app:v1".into(),
            files: vec![ImageFile { source: wasm, destination: "/app.wasm".into() }],
            layout,
            ..Default::default()
        }
    }

    #[test]
    fn wasm_layers_are_raw_titled_blobs_of_an_ordinary_image() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Vec::new();
        build(&spec(d.path(), Layout::WasmLayers), &mut t).unwrap();
        let files = blobs(&t);
        let m = manifest_of(&files);
        let l = &m["layers"][0];
        assert_eq!(l["mediaType"], crate::layers::WASM_LAYER);
        assert_eq!(l["annotations"][crate::layers::TITLE], "app.wasm");
        let digest = l["digest"].as_str().unwrap();
        assert_eq!(files[&format!("blobs/sha256/{}", &digest[7..])], b"\0asm\x0d\0\x01\0");
        assert_eq!(m["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        let config: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", &m["config"]["digest"].as_str().unwrap()[7..])])
                .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([]), "Wasm layers do not unpack");
        assert_eq!(config["config"]["Entrypoint"][0], "/app.wasm");
    }

    #[test]
    fn artifact_has_the_wasm_config_and_layer_digests() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Vec::new();
        build(&spec(d.path(), Layout::Artifact), &mut t).unwrap();
        let files = blobs(&t);
        let m = manifest_of(&files);
        assert_eq!(m["config"]["mediaType"], crate::layers::WASM_CONFIG);
        let config: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", &m["config"]["digest"].as_str().unwrap()[7..])])
                .unwrap();
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["layerDigests"][0], m["layers"][0]["digest"]);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["platform"]["os"], "wasip2");
    }

    #[test]
    fn only_wasm_can_be_a_wasm_layer() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path(), Layout::WasmLayers);
        let txt = d.path().join("notes.txt");
        std::fs::write(&txt, b"hello").unwrap();
        s.files.push(ImageFile { source: txt, destination: "/notes.txt".into() });
        assert!(matches!(build(&s, Vec::new()), Err(ImageError::NotWasmLayer { .. })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Every file of a tarball, by path.
    pub(super) fn entries(tarball: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(tarball);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                (e.path().unwrap().display().to_string(), v)
            })
            .collect()
    }

    #[test]
    fn file_arguments() {
        assert_eq!(
            "a/b/hello.wasm".parse::<ImageFile>().unwrap(),
            ImageFile { source: "a/b/hello.wasm".into(), destination: "/hello.wasm".into() }
        );
        assert_eq!("x:/bin/x.wasm".parse::<ImageFile>().unwrap().destination, "/bin/x.wasm");
        assert!("x:rel".parse::<ImageFile>().is_err());
        assert!("x:/a/../b".parse::<ImageFile>().is_err());
    }

    #[test]
    fn names() {
        assert_eq!(split_name("h").unwrap(), ("h".into(), "latest".into()));
        assert_eq!(split_name("reg:5000/a/h:v1").unwrap(), ("reg:5000/a/h".into(), "v1".into()));
        assert_eq!(split_name("reg:5000/a/h").unwrap(), ("reg:5000/a/h".into(), "latest".into()));
        assert!(split_name("").is_err());
        assert!(split_name("a b").is_err());
        assert!(split_name("a:").is_err());
    }

    #[test]
    fn builds_a_deterministic_layout() {
        let d = tempfile::tempdir().unwrap();
        let wasm = d.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
        let spec = ImageSpec {
            name: "example.com/hello:v1".into(),
            files: vec![
                ImageFile { source: wasm.clone(), destination: "/hello.wasm".into() },
                ImageFile { source: wasm.clone(), destination: "/data/copy.wasm".into() },
            ],
            env: vec!["A=1".into()],
            labels: vec!["org.example=yes".into()],
            ..Default::default()
        };
        let mut a = Vec::new();
        build(&spec, &mut a).unwrap();
        let mut b = Vec::new();
        build(&spec, &mut b).unwrap();
        assert!(a == b, "same inputs give the same bytes");

        let files = entries(&a);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["platform"]["os"], "wasi");
        assert_eq!(m["platform"]["architecture"], "wasm");
        assert_eq!(m["annotations"]["io.containerd.image.name"], "example.com/hello:v1");
        let mdigest = m["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let manifest: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{mdigest}")]).unwrap();
        let cdigest = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let config: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{cdigest}")]).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/hello.wasm");
        assert_eq!(config["config"]["Env"][0], "A=1");
        assert_eq!(config["os"], "wasi");
        let ldigest = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let layer = entries(&files[&format!("blobs/sha256/{ldigest}")]);
        assert!(layer.contains_key("hello.wasm") && layer.contains_key("data/copy.wasm"));
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{ldigest}"));
    }

    /// A tarball that is not one reads as such, never as a write failure.
    #[test]
    fn not_a_layout_is_named_so() {
        for input in [&b"garbage, not a tar at all"[..], &[0u8; 1024][..]] {
            let e = wasm_files(input).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("not an OCI image layout"), "{msg}");
            assert!(!msg.contains("write image"), "{msg}");
        }
    }

    #[test]
    fn wasm_files_come_back_out_of_the_tarball() {
        let d = tempfile::tempdir().unwrap();
        let wasm = d.path().join("a.wasm");
        std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
        let spec = ImageSpec {
            name: "x".into(),
            files: vec![ImageFile { source: wasm, destination: "/bin/a.wasm".into() }],
            ..Default::default()
        };
        let mut t = Vec::new();
        build(&spec, &mut t).unwrap();
        let files = wasm_files(t.as_slice()).unwrap();
        assert_eq!(files, vec![("/bin/a.wasm".to_string(), b"\0asm\x0d\0\x01\0".to_vec())]);
        assert!(wasm_files(&b"not a tar"[..]).is_err());
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            build(&ImageSpec { name: "x".into(), ..Default::default() }, Vec::new()),
            Err(ImageError::NoFiles)
        ));
        let spec = ImageSpec {
            name: "x".into(),
            files: vec![ImageFile { source: "/nonexistent/a.wasm".into(), destination: "/a.wasm".into() }],
            ..Default::default()
        };
        assert!(matches!(build(&spec, Vec::new()), Err(ImageError::Read { .. })));
        let spec = ImageSpec { env: vec!["NOEQ".into()], ..spec };
        assert!(matches!(build(&spec, Vec::new()), Err(ImageError::BadPair { .. })));
    }
}
