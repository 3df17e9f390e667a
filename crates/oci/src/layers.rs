//! Wasm carried as OCI image layers rather than as a file in a tar layer:
//! which layer media types are Wasm, which manifest of an index to read,
//! and which layer a container runs. Pure: the caller fetches the blobs
//! (the shim, from containerd's content store).

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use thiserror::Error;

/// A raw Wasm module or component as a layer: the CNCF TAG Runtime Wasm
/// artifact layout, and images built with `wasmcell image build --wasm-layers`.
pub const WASM_LAYER: &str = "application/wasm";
/// Layer media types other tools use for the same thing.
pub const WASM_LAYER_ALIASES: &[&str] =
    &["application/vnd.bytecodealliance.wasm.component.layer.v0+wasm", "application/vnd.wasm.content.layer.v1+wasm"];
/// Config media type of the CNCF TAG Runtime Wasm OCI artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer annotation naming the file a layer holds.
pub const TITLE: &str = "org.opencontainers.image.title";

pub fn is_wasm_layer(media_type: &str) -> bool {
    media_type == WASM_LAYER || WASM_LAYER_ALIASES.contains(&media_type)
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayerError {
    #[error("the image has no Wasm layers")]
    NoWasmLayers,
    #[error("the image has {count} Wasm layers and none is titled {wanted:?} (titles: {titles})")]
    Ambiguous { count: usize, wanted: String, titles: String },
    #[error("the image index lists no manifest")]
    EmptyIndex,
}

/// The manifest of an index to read: a Wasm platform (`wasi`, `wasip1`,
/// `wasip2` or architecture `wasm`) first, else the first one listed.
pub fn pick_manifest(index: &ImageIndex) -> Result<&Descriptor, LayerError> {
    let wasm_platform = |d: &&Descriptor| {
        d.platform().as_ref().is_some_and(|p| {
            let os = p.os().to_string();
            os.starts_with("wasi") || p.architecture().to_string() == "wasm"
        })
    };
    index.manifests().iter().find(wasm_platform).or_else(|| index.manifests().first()).ok_or(LayerError::EmptyIndex)
}

fn title(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(TITLE).map(String::as_str)
}

/// The Wasm layer that `entrypoint` (the container's `process.args[0]`)
/// names: the one whose title is its file name, or the only Wasm layer.
pub fn pick_wasm_layer<'a>(manifest: &'a ImageManifest, entrypoint: &str) -> Result<&'a Descriptor, LayerError> {
    let wasm: Vec<&Descriptor> = manifest.layers().iter().filter(|l| is_wasm_layer(l.media_type().as_ref())).collect();
    let wanted = entrypoint.rsplit('/').next().unwrap_or(entrypoint);
    if let Some(l) = wasm.iter().find(|l| title(l).is_some_and(|t| t.rsplit('/').next() == Some(wanted))) {
        return Ok(l);
    }
    match wasm.as_slice() {
        [] => Err(LayerError::NoWasmLayers),
        [only] => Ok(only),
        many => Err(LayerError::Ambiguous {
            count: many.len(),
            wanted: wanted.to_string(),
            titles: many.iter().map(|l| title(l).unwrap_or("(none)")).collect::<Vec<_>>().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(layers: serde_json::Value) -> ImageManifest {
        serde_json::from_value(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": WASM_CONFIG, "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": layers
        }))
        .unwrap()
    }

    fn layer(media: &str, byte: char, title: Option<&str>) -> serde_json::Value {
        let mut l = json!({"mediaType": media, "digest": format!("sha256:{}", byte.to_string().repeat(64)), "size": 8});
        if let Some(t) = title {
            l["annotations"] = json!({ TITLE: t });
        }
        l
    }

    #[test]
    fn picks_the_layer_the_entrypoint_names() {
        let m = manifest(json!([
            layer("application/vnd.oci.image.layer.v1.tar", 'a', None),
            layer(WASM_LAYER, 'b', Some("one.wasm")),
            layer(WASM_LAYER, 'c', Some("two.wasm")),
        ]));
        assert!(pick_wasm_layer(&m, "/two.wasm").unwrap().digest().to_string().ends_with('c'));
        assert!(pick_wasm_layer(&m, "one.wasm").unwrap().digest().to_string().ends_with('b'));
        assert!(matches!(pick_wasm_layer(&m, "/three.wasm"), Err(LayerError::Ambiguous { count: 2, .. })));
    }

    #[test]
    fn a_single_wasm_layer_runs_whatever_the_command_says() {
        let m = manifest(json!([layer(WASM_LAYER_ALIASES[0], 'd', None)]));
        assert!(pick_wasm_layer(&m, "/app.wasm").is_ok());
        let tar_only = manifest(json!([layer("application/vnd.oci.image.layer.v1.tar", 'a', None)]));
        assert_eq!(pick_wasm_layer(&tar_only, "/app.wasm"), Err(LayerError::NoWasmLayers));
    }

    #[test]
    fn prefers_a_wasm_platform_in_an_index() {
        let d = |os: &str, arch: &str, c: char| {
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": format!("sha256:{}", c.to_string().repeat(64)), "size": 1,
                   "platform": {"os": os, "architecture": arch}})
        };
        let index: ImageIndex = serde_json::from_value(json!({
            "schemaVersion": 2,
            "manifests": [d("linux", "amd64", 'a'), d("wasip2", "wasm", 'b')]
        }))
        .unwrap();
        assert!(pick_manifest(&index).unwrap().digest().to_string().ends_with('b'));
        let empty: ImageIndex = serde_json::from_value(json!({"schemaVersion": 2, "manifests": []})).unwrap();
        assert_eq!(pick_manifest(&empty), Err(LayerError::EmptyIndex));
    }
}
