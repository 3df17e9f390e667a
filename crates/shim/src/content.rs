//! Wasm that travels as image layers (`application/wasm` and its aliases)
//! rather than as a file in the rootfs: the shim reads it from containerd's
//! content store over containerd's gRPC API (the address containerd started
//! the shim with), as image -> manifest -> the Wasm layer.
//!
//! Which manifest and layer is decided in `wasmcell_oci::layers` (pure);
//! this module only fetches, and checks every blob against its digest.

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::with_namespace;
use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic::Request;
use wasmcell_oci::entrypoint::MAX_WASM_BYTES;
use wasmcell_oci::layers::{pick_manifest, pick_wasm_layer, LayerError};

/// Largest manifest or index the shim reads.
const MAX_JSON_BYTES: u64 = 4 << 20;

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

pub(crate) struct Client {
    channel: Channel,
    namespace: String,
}

fn rpc(what: &str, e: tonic::Status) -> String {
    format!("containerd {what}: {}", e.message())
}

impl Client {
    pub(crate) async fn connect(address: &str, namespace: &str) -> Result<Self, String> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let channel =
            containerd_client::connect(path).await.map_err(|e| format!("connect to containerd at {path}: {e}"))?;
        Ok(Client { channel, namespace: namespace.to_string() })
    }

    /// Reads blob `digest` (at most `max` bytes) and checks it against the digest.
    async fn blob(&self, digest: &str, size: i64, max: u64) -> Result<Vec<u8>, String> {
        if size < 0 || size as u64 > max {
            return Err(format!("blob {digest} is {size} bytes, more than the {max}-byte limit"));
        }
        let mut c = ContentClient::new(self.channel.clone());
        let req = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 };
        let mut stream = c
            .read(with_namespace!(req, self.namespace.as_str()))
            .await
            .map_err(|e| rpc("content read", e))?
            .into_inner();
        let mut data = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.message().await.map_err(|e| rpc("content read", e))? {
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > max {
                return Err(format!("blob {digest} exceeds the {max}-byte limit"));
            }
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if got != digest {
            return Err(format!("blob {digest} does not match its digest (got {got})"));
        }
        Ok(data)
    }

    /// The Wasm layer container `id` runs, or `None` when its image has no
    /// Wasm layers (an ordinary image: the rootfs is the place to look).
    pub(crate) async fn wasm_layer(&self, id: &str, entrypoint: &str) -> Result<Option<(Vec<u8>, String)>, String> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let container = containers
            .get(with_namespace!(GetContainerRequest { id: id.to_string() }, self.namespace.as_str()))
            .await
            .map_err(|e| rpc("get container", e))?
            .into_inner()
            .container
            .ok_or("containerd returned no container")?;
        if container.image.is_empty() {
            return Ok(None);
        }
        let mut images = ImagesClient::new(self.channel.clone());
        let image = images
            .get(with_namespace!(GetImageRequest { name: container.image.clone() }, self.namespace.as_str()))
            .await
            .map_err(|e| rpc(&format!("get image {}", container.image), e))?
            .into_inner()
            .image
            .ok_or("containerd returned no image")?;
        let target = image.target.ok_or_else(|| format!("image {} has no target", container.image))?;
        let mut manifest_bytes = self.blob(&target.digest, target.size, MAX_JSON_BYTES).await?;
        if INDEX_TYPES.contains(&target.media_type.as_str()) {
            let index: ImageIndex =
                serde_json::from_slice(&manifest_bytes).map_err(|e| format!("image index {}: {e}", target.digest))?;
            let m = pick_manifest(&index).map_err(|e| e.to_string())?;
            manifest_bytes = self.blob(m.digest().as_ref(), m.size() as i64, MAX_JSON_BYTES).await?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| format!("image manifest of {}: {e}", container.image))?;
        let layer = match pick_wasm_layer(&manifest, entrypoint) {
            Ok(l) => l,
            Err(LayerError::NoWasmLayers) => return Ok(None),
            Err(e) => return Err(format!("image {}: {e}", container.image)),
        };
        let digest = layer.digest().to_string();
        let data = self.blob(&digest, layer.size() as i64, MAX_WASM_BYTES).await?;
        Ok(Some((data, digest)))
    }
}
