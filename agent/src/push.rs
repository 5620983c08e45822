//! Uploading the image in an OCI layout to a registry under its own digest, with oci-client.
//!
//! The manifest is sent byte for byte as buildah wrote it, so the digest the agent reports is the
//! digest the registry serves and the coordinator can reference it from the index unchanged.
//!
//! A push that fails for a transient reason (connection refused or reset, timeout, 5xx, 429) is
//! started over with exponential backoff and jitter for up to [`Retry::budget`] (two minutes by
//! default), each retry noted in the build log; blobs that made it are not sent again. A permanent
//! failure (401/403, unknown repository, invalid manifest, ...) fails the push at once with the
//! reason [`crate::registry_error`] gives it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use archfarm_protocol::limits::UPLOAD_CHUNK_BYTES;
use archfarm_protocol::registry_hosts::RegistryHosts;
use archfarm_protocol::Digest;
use futures::TryStreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::HeaderValue;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio_util::io::ReaderStream;

use crate::backend::{LogSink, PushedImage};
use crate::backoff::Backoff;
use crate::registry_error::{self, Failure};

/// Longest wait for a connection to the registry.
pub const REGISTRY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a registry call may go without an answer: reqwest counts it from the start of a request
/// until its response headers, then between reads of the body. Blobs go up in one `PUT` when they
/// fit in one part of [`UPLOAD_CHUNK_BYTES`], in parts of exactly that size otherwise (the last
/// smaller), so each request stays well within it; a registry that stops answering fails the push
/// instead of holding the lease for ever.
pub const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an image could not be read from its layout or uploaded.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The OCI layout is not what buildah should have written.
    #[error("bad OCI layout {dir}: {reason}")]
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A registry call failed.
    #[error("registry {registry}: {action}: {}{}", failure.reason(), gave_up.as_deref().unwrap_or(""))]
    Registry {
        /// The registry.
        registry: String,
        /// What was being done, e.g. `uploading blob sha256:...`.
        action: String,
        /// Whether it may be retried, and why it failed in one line.
        failure: Failure,
        /// Set once retrying has stopped: how long it went on.
        gave_up: Option<String>,
        /// The cause (boxed: oci-client's errors are large).
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry keeps other bytes under the digest than the ones sent.
    #[error("registry {registry} serves {actual} for manifest {expected}; refusing to report it")]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// The digest of the bytes sent.
        expected: Digest,
        /// What the registry has.
        actual: String,
    },
}

/// Where to push.
#[derive(Debug, Clone)]
pub struct Target {
    /// Registry `host[:port]`.
    pub registry: String,
    /// Repository inside it.
    pub repository: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// The credential to push with; none means anonymous.
    pub auth: Option<archfarm_protocol::RegistryCredential>,
    /// Extra root CA certificates (PEM) trusted on top of the system's.
    pub ca_cert: Option<Vec<u8>>,
    /// Hosts besides the registry it may send the push on to (redirects, its token realm,
    /// upload locations); see [`RegistryHosts`].
    pub redirect_hosts: Vec<String>,
}

/// A blob of the image, as a file in the layout.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The file holding it.
    pub path: PathBuf,
}

/// The one image of an OCI layout: its manifest bytes and the blobs they reference.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The manifest exactly as stored.
    pub manifest: Vec<u8>,
    /// Digest of `manifest`.
    pub digest: Digest,
    /// Media type from the index's descriptor.
    pub media_type: String,
    /// Layers first, then the config.
    pub blobs: Vec<Blob>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Reads the single image of the layout at `dir`, checking every size and the manifest's digest.
pub fn read_layout(dir: &Path) -> Result<LayoutImage, PushError> {
    let bad = |reason: String| PushError::Layout {
        dir: dir.to_path_buf(),
        reason,
    };
    let index =
        std::fs::read(dir.join("index.json")).map_err(|e| bad(format!("index.json: {e}")))?;
    let index: Index =
        serde_json::from_slice(&index).map_err(|e| bad(format!("index.json: {e}")))?;
    let [desc] = index.manifests.as_slice() else {
        return Err(bad(format!(
            "index.json lists {} manifests, expected exactly one",
            index.manifests.len()
        )));
    };
    let digest = Digest::parse(&desc.digest).map_err(|e| bad(e.to_string()))?;
    let manifest = std::fs::read(blob_path(dir, digest.as_str()))
        .map_err(|e| bad(format!("manifest {digest}: {e}")))?;
    let actual = Digest::from_sha256_bytes(&Sha256::digest(&manifest));
    if actual != digest || manifest.len() as u64 != desc.size {
        return Err(bad(format!(
            "manifest {digest} ({} bytes) holds {} bytes hashing to {actual}",
            desc.size,
            manifest.len()
        )));
    }
    let parsed: Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| bad(format!("manifest {digest} is not an image manifest: {e}")))?;
    let media_type = desc
        .media_type
        .clone()
        .or(parsed.media_type)
        .ok_or_else(|| bad(format!("manifest {digest} has no media type")))?;
    let mut blobs = Vec::new();
    for d in parsed.layers.iter().chain(std::iter::once(&parsed.config)) {
        Digest::parse(&d.digest).map_err(|e| bad(e.to_string()))?;
        let path = blob_path(dir, &d.digest);
        let len = std::fs::metadata(&path)
            .map_err(|e| bad(format!("blob {}: {e}", d.digest)))?
            .len();
        if len != d.size {
            return Err(bad(format!(
                "blob {} is {len} bytes, the manifest says {}",
                d.digest, d.size
            )));
        }
        blobs.push(Blob {
            digest: d.digest.clone(),
            size: d.size,
            path,
        });
    }
    Ok(LayoutImage {
        manifest,
        digest,
        media_type,
        blobs,
    })
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

impl PushError {
    /// True when the same push may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, PushError::Registry { failure, .. } if failure.is_transient())
    }
}

/// How long and how often a push is retried after transient failures.
#[derive(Debug, Clone)]
pub struct Retry {
    /// No retry starts later than this after the first attempt began.
    pub budget: Duration,
    /// Delays between attempts.
    pub backoff: Backoff,
}

impl Default for Retry {
    /// Two minutes, with delays from 1 s doubling up to 15 s.
    fn default() -> Self {
        Retry {
            budget: Duration::from_secs(120),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(15)),
        }
    }
}

/// [`push_with`] with the default [`Retry`].
pub async fn push(
    image: &LayoutImage,
    target: &Target,
    log: &LogSink,
) -> Result<PushedImage, PushError> {
    push_with(image, target, log, &Retry::default()).await
}

/// Uploads `image` to `target`, starting over after transient failures as `retry` allows.
pub async fn push_with(
    image: &LayoutImage,
    target: &Target,
    log: &LogSink,
    retry: &Retry,
) -> Result<PushedImage, PushError> {
    let client = client_for(target);
    let started = tokio::time::Instant::now();
    let mut backoff = retry.backoff.clone();
    backoff.reset();
    loop {
        let mut err = match push_once(&client, image, target, log).await {
            Ok(pushed) => return Ok(pushed),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let attempt = backoff.attempts() + 1;
        let delay = backoff.next_delay();
        let elapsed = started.elapsed();
        if elapsed + delay > retry.budget {
            if let PushError::Registry { gave_up, .. } = &mut err {
                *gave_up = Some(format!(
                    " (gave up after {attempt} attempts in {}s)",
                    elapsed.as_secs()
                ));
            }
            return Err(err);
        }
        tracing::warn!(registry = %target.registry, error = %crate::error_chain(&err), attempt, retry_in_ms = delay.as_millis() as u64, "push failed; retrying");
        log.note(format!(
            "{err}; retrying in {:.1}s (attempt {attempt}; retrying for up to {}s)",
            delay.as_secs_f64(),
            retry.budget.as_secs()
        ))
        .await;
        tokio::time::sleep(delay).await;
    }
}

fn client_for(target: &Target) -> Client {
    let protocol = if target.insecure {
        ClientProtocol::HttpsExcept(vec![registry_host(target)])
    } else {
        ClientProtocol::Https
    };
    let extra_root_certificates = target
        .ca_cert
        .iter()
        .map(|pem| Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        })
        .collect();
    // The registry is the submitter's choice; the agent's network is not theirs to reach.
    let hosts = RegistryHosts::new(&registry_host(target), &target.redirect_hosts);
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(REGISTRY_CONNECT_TIMEOUT),
        read_timeout: Some(REGISTRY_READ_TIMEOUT),
        extra_root_certificates,
        host_check: Some(Arc::new(move |url| hosts.check(url))),
        // Parts ECR takes: at least 5 MiB but the last, and a small blob in one PUT.
        push_chunk_size: Some(UPLOAD_CHUNK_BYTES),
        ..Default::default()
    })
}

/// The registry as oci-client resolves it (e.g. `docker.io` becomes `index.docker.io`).
fn registry_host(target: &Target) -> String {
    Reference::with_tag(
        target.registry.clone(),
        target.repository.clone(),
        "latest".into(),
    )
    .resolve_registry()
    .to_string()
}

/// One attempt: blobs the registry lacks, then the manifest under its digest (no tag), then reads
/// the manifest back to make sure the registry keeps exactly those bytes.
async fn push_once(
    client: &Client,
    image: &LayoutImage,
    target: &Target,
    log: &LogSink,
) -> Result<PushedImage, PushError> {
    let reference = Reference::with_digest(
        target.registry.clone(),
        target.repository.clone(),
        image.digest.to_string(),
    );
    let err = |action: String| {
        let registry = target.registry.clone();
        move |source: OciDistributionError| PushError::Registry {
            registry,
            action,
            failure: registry_error::classify(&source),
            gave_up: None,
            source: Box::new(source),
        }
    };
    let auth = crate::registry_auth::oci_auth(target.auth.as_ref(), &target.registry).map_err(
        |message| PushError::Registry {
            registry: target.registry.clone(),
            action: "authenticating for push".into(),
            failure: Failure::Permanent(message.clone()),
            gave_up: None,
            source: Box::new(OciDistributionError::GenericError(Some(message))),
        },
    )?;
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(err("authenticating for push".into()))?;
    for blob in &image.blobs {
        let exists = client
            .blob_exists(&reference, &blob.digest)
            .await
            .map_err(err(format!("checking blob {}", blob.digest)))?;
        if exists {
            log.note(format!("blob {} already in the registry", blob.digest))
                .await;
            continue;
        }
        log.note(format!(
            "uploading blob {} ({} bytes)",
            blob.digest, blob.size
        ))
        .await;
        let file = tokio::fs::File::open(&blob.path)
            .await
            .map_err(|e| err(format!("reading blob {}", blob.digest))(e.into()))?;
        // Streamed: a layer can be far larger than the memory of a small agent. oci-client gathers
        // the reads into parts of UPLOAD_CHUNK_BYTES, one PATCH each (or one PUT for a blob that
        // fits in one), so it holds one part at a time.
        let stream = ReaderStream::with_capacity(file, 1 << 20).map_err(OciDistributionError::from);
        client
            .push_blob_stream(&reference, stream, &blob.digest, Some(blob.size))
            .await
            .map_err(err(format!("uploading blob {}", blob.digest)))?;
    }
    let content_type = HeaderValue::from_str(&image.media_type).map_err(|e| {
        err("sending the manifest".into())(OciDistributionError::GenericError(Some(e.to_string())))
    })?;
    let location = client
        .push_manifest_raw(&reference, image.manifest.clone(), content_type)
        .await
        .map_err(err(format!("putting manifest {}", image.digest)))?;
    if let Some(i) = location.rfind("sha256:") {
        if location[i..] != *image.digest.as_str() {
            return Err(PushError::DigestMismatch {
                registry: target.registry.clone(),
                expected: image.digest.clone(),
                actual: location[i..].to_string(),
            });
        }
    }
    // An independent read: the registry must serve these exact bytes under this digest.
    let (served, served_digest) = client
        .pull_manifest_raw(&reference, &auth, &[image.media_type.as_str()])
        .await
        .map_err(err(format!("reading back manifest {}", image.digest)))?;
    let served_sha = Digest::from_sha256_bytes(&Sha256::digest(&served));
    if served_sha != image.digest
        || served_digest != image.digest.as_str()
        || served.as_ref() != image.manifest.as_slice()
    {
        return Err(PushError::DigestMismatch {
            registry: target.registry.clone(),
            expected: image.digest.clone(),
            actual: served_sha.to_string(),
        });
    }
    Ok(PushedImage {
        digest: image.digest.clone(),
        media_type: image.media_type.clone(),
        size: image.manifest.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        Digest::from_sha256_bytes(&Sha256::digest(b)).to_string()
    }

    fn write_blob(dir: &Path, bytes: &[u8]) -> String {
        let d = sha(bytes);
        let p = blob_path(dir, &d);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        d
    }

    fn layout(manifests: usize, corrupt_layer: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let layer = b"layer bytes".as_slice();
        let config = br#"{"architecture":"arm64","os":"linux"}"#.as_slice();
        let ld = write_blob(dir.path(), layer);
        let cd = write_blob(dir.path(), config);
        let layer_size = if corrupt_layer { 99 } else { layer.len() };
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{layer_size}}}]}}"#,
            config.len()
        );
        let md = write_blob(dir.path(), manifest.as_bytes());
        let desc = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{}}}"#,
            manifest.len()
        );
        let list = vec![desc; manifests].join(",");
        std::fs::write(
            dir.path().join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{list}]}}"#),
        )
        .unwrap();
        dir
    }

    #[test]
    fn reads_one_image() {
        let dir = layout(1, false);
        let img = read_layout(dir.path()).unwrap();
        assert_eq!(img.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(img.digest.to_string(), sha(&img.manifest));
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.blobs[0].size, 11, "layers come first");
    }

    #[test]
    fn refuses_bad_layouts() {
        let e = read_layout(layout(2, false).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists 2 manifests"), "{e}");
        let e = read_layout(layout(1, true).path()).unwrap_err().to_string();
        assert!(e.contains("the manifest says 99"), "{e}");
        let e = read_layout(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index.json"), "{e}");
    }
}
