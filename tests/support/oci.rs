//! Independent readers of what is in the registry: `skopeo` for manifests and configs, `umoci` for
//! image file systems. The tests believe these, not archfarm's own account.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::process::{clean_env, Scratch};

/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of a Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// An `Accept` header naming every manifest type above.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// An image index or manifest list, as far as the tests look into it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// 2 for both OCI and Docker.
    pub schema_version: u32,
    /// Optional in OCI, required by Docker.
    pub media_type: Option<String>,
    /// One descriptor per platform (what a runtime pulls; see `attestations`).
    pub manifests: Vec<Descriptor>,
    /// The attestation manifests BuildKit's layout adds (platform `unknown/unknown`, annotated
    /// `vnd.docker.reference.type=attestation-manifest`), which [`inspect_index`] moves here
    /// out of `manifests`.
    #[serde(skip)]
    pub attestations: Vec<Descriptor>,
    /// The index's annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A child descriptor of an index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The child manifest's media type.
    pub media_type: String,
    /// The child manifest's digest.
    pub digest: String,
    /// The child manifest's size in bytes.
    pub size: u64,
    /// The platform the child is for.
    pub platform: Option<PlatformSpec>,
    /// The descriptor's annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The `platform` of a descriptor, or the architecture fields of an image config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PlatformSpec {
    /// e.g. `arm64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v7`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// `sha256:HEX` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Runs `skopeo --insecure-policy ARGS`; stdout on success, stderr as the error otherwise.
///
/// `--insecure-policy` because the tests copy their own images from their own registry and must not
/// depend on the machine's /etc/containers/policy.json.
pub fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args);
    clean_env(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo (run scripts/setup.sh): {e}"));
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The manifest or index stored under `image` (`HOST/REPO:TAG` or `HOST/REPO@DIGEST`), byte for byte.
pub fn inspect_raw(image: &str) -> Result<Vec<u8>, String> {
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{image}"),
    ])
}

/// [`inspect_raw`] parsed as an index; panics when it is not one. Attestation manifests are in
/// `attestations`, the platforms' manifests in `manifests`.
pub fn inspect_index(image: &str) -> (Vec<u8>, Index) {
    let raw = inspect_raw(image).unwrap_or_else(|e| panic!("{e}"));
    let mut index: Index = serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "{image} is not an image index ({e}): {}",
            String::from_utf8_lossy(&raw)
        )
    });
    let (attestations, manifests) =
        std::mem::take(&mut index.manifests)
            .into_iter()
            .partition(|d| {
                d.annotations
                    .get("vnd.docker.reference.type")
                    .is_some_and(|t| t == "attestation-manifest")
            });
    index.manifests = manifests;
    index.attestations = attestations;
    (raw, index)
}

/// The architecture, os and variant in the config blob of the single-platform image `image`.
pub fn inspect_config(image: &str) -> PlatformSpec {
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--raw",
        &format!("docker://{image}"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "config of {image} lacks architecture/os ({e}): {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The unpacked file system of one single-platform image; removed on drop.
#[derive(Debug)]
pub struct ImageFs {
    rootfs: PathBuf,
    _dir: Scratch,
}

impl ImageFs {
    /// Copies `image` out of the registry into an OCI layout (skopeo) and unpacks it (umoci).
    pub fn unpack(image: &str) -> ImageFs {
        let dir = Scratch::new("unpack");
        let layout = format!("{}:img", dir.join("oci").display());
        skopeo(&[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("oci:{layout}"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let rootfs = dir.join("rootfs");
        let out = Command::new("umoci")
            .args(["raw", "unpack", "--image", &layout])
            .arg(&rootfs)
            .output()
            .unwrap_or_else(|e| panic!("cannot run umoci (run scripts/setup.sh): {e}"));
        assert!(
            out.status.success(),
            "umoci raw unpack {layout} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ImageFs { rootfs, _dir: dir }
    }

    /// The root of the unpacked file system.
    pub fn root(&self) -> &std::path::Path {
        &self.rootfs
    }

    /// A file's contents, trimmed of surrounding white space; panics when it is missing.
    pub fn read(&self, path_in_image: &str) -> String {
        let path = self.rootfs.join(path_in_image.trim_start_matches('/'));
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path_in_image} in the image: {e}"))
            .trim()
            .to_string()
    }
}

/// A manifest pushed by digest: what an agent reports in `complete`.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `sha256:...` of the manifest bytes.
    pub digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ManifestBlobs {
    config: BlobRef,
    layers: Vec<BlobRef>,
}

#[derive(Deserialize)]
struct BlobRef {
    digest: String,
}

/// Uploads the single image of the OCI layout `layout` to `http://REGISTRY/v2/REPOSITORY` over the
/// distribution API: blobs by monolithic upload, then the manifest under its own digest, no tag (as
/// an archfarm agent pushes).
pub fn push_layout_by_digest(layout: &std::path::Path, registry: &str, repository: &str) -> Pushed {
    let http = crate::http_client();
    let read_blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let index: LayoutIndex = serde_json::from_slice(
        &fs::read(layout.join("index.json")).expect("read the layout's index.json"),
    )
    .expect("parse the layout's index.json");
    assert_eq!(
        index.manifests.len(),
        1,
        "one image in {}",
        layout.display()
    );
    let desc = &index.manifests[0];
    let manifest = read_blob(&desc.digest);
    assert_eq!(
        sha256_digest(&manifest),
        desc.digest,
        "manifest blob digest"
    );
    let blobs: ManifestBlobs = serde_json::from_slice(&manifest).expect("parse the manifest");
    let base = format!("http://{registry}/v2/{repository}");
    for digest in
        std::iter::once(&blobs.config.digest).chain(blobs.layers.iter().map(|l| &l.digest))
    {
        let head = http
            .head(format!("{base}/blobs/{digest}"))
            .send()
            .expect("HEAD blob");
        if head.status().is_success() {
            continue;
        }
        let start = http
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .expect("start a blob upload");
        assert_eq!(start.status(), 202, "POST {base}/blobs/uploads/");
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload Location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("http://{registry}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(read_blob(digest))
            .send()
            .expect("PUT blob");
        assert_eq!(put.status(), 201, "upload of {digest}");
    }
    let put = http
        .put(format!("{base}/manifests/{}", desc.digest))
        .header("content-type", &desc.media_type)
        .body(manifest.clone())
        .send()
        .expect("PUT manifest");
    let status = put.status();
    assert_eq!(
        status,
        201,
        "PUT manifest: {}",
        put.text().unwrap_or_default()
    );
    Pushed {
        digest: desc.digest.clone(),
        media_type: desc.media_type.clone(),
        size: manifest.len() as u64,
    }
}
