//! Per-platform images for the protocol-level agents to "finish" their builds with: tiny but real
//! (a config naming the platform, one layer), pushed to the local registry with the distribution
//! API, so that stitching verifies and indexes them exactly as it does buildah's.

use std::collections::BTreeMap;

use anyhow::Context as _;

use sha2::{Digest as _, Sha256};

use crate::swarm::send;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One pushed manifest.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `sha256:…` of the manifest bytes.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Pushed manifests by platform (`linux/arm64`).
pub type Images = BTreeMap<String, Pushed>;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes one image per platform to `http://{registry}/v2/{repository}`, tagged with the
/// platform's architecture.
pub async fn push_platform_images(
    http: &reqwest::Client,
    registry: &str,
    repository: &str,
    platforms: &[&str],
) -> anyhow::Result<Images> {
    // An empty tar (two zero blocks) is a valid layer; gzip is not needed for the registry.
    let layer = vec![0u8; 1024];
    let layer_digest = sha256(&layer);
    upload_blob(http, registry, repository, &layer, &layer_digest).await?;
    let mut images = Images::new();
    for platform in platforms {
        let (os, arch) = platform
            .split_once('/')
            .with_context(|| format!("platform '{platform}' is not os/arch"))?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))?;
        let config_digest = sha256(&config);
        upload_blob(http, registry, repository, &config, &config_digest).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let url = format!("http://{registry}/v2/{repository}/manifests/{arch}");
        let request = http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone());
        send(request, &format!("PUT {url}"), |s| s.is_success()).await?;
        images.insert(
            platform.to_string(),
            Pushed {
                digest: sha256(&manifest),
                media_type: OCI_MANIFEST.to_string(),
                size: manifest.len() as u64,
            },
        );
    }
    Ok(images)
}

/// A monolithic blob upload: `POST …/blobs/uploads/`, then `PUT <location>&digest=…`.
async fn upload_blob(
    http: &reqwest::Client,
    registry: &str,
    repository: &str,
    bytes: &[u8],
    digest: &str,
) -> anyhow::Result<()> {
    let start = format!("http://{registry}/v2/{repository}/blobs/uploads/");
    let resp = send(http.post(&start), &format!("POST {start}"), |s| {
        s == reqwest::StatusCode::ACCEPTED
    })
    .await?;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the registry gave no upload location")?
        .to_string();
    let mut url = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("digest=");
    url.push_str(digest);
    let request = http
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec());
    send(request, &format!("PUT {url}"), |s| {
        s == reqwest::StatusCode::CREATED
    })
    .await?;
    Ok(())
}
