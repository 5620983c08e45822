//! The check of an image in its OCI layout: each layer's blob found from the manifest and
//! decompressed as its media type says, and the outcome noted in the build log.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use archfarm_protocol::foreign_binary::AllowedPaths;
use archfarm_protocol::Platform;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{files, CheckError, LayerId, Scan, Summary, MAX_LOGGED};

/// How a layer's blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (also several gzip members one after another).
    Gzip,
}

/// The compression of a layer media type; an error names the type when it is not a layer the
/// check can read (zstd, encrypted, or not a layer at all).
pub fn compression(media_type: &str) -> Result<Compression, String> {
    let base = media_type.split(';').next().unwrap_or_default().trim();
    if base.ends_with(".tar.gzip") || base.ends_with(".tar+gzip") {
        Ok(Compression::Gzip)
    } else if base.ends_with(".tar") || base.ends_with(".v1.tar") {
        Ok(Compression::None)
    } else if base.ends_with("+zstd") || base.ends_with(".zstd") {
        Err(format!(
            "its media type {base} is zstd-compressed, which the binary check does not read yet"
        ))
    } else {
        Err(format!("its media type {base} is not a tar layer"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    layers: Vec<LayerDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayerDescriptor {
    media_type: String,
    digest: String,
}

/// Checks the image of an OCI layout: `manifest` is its manifest, `blob_path` gives a blob's file
/// by digest. Blocking (run it off the async threads); stops when `cancel` fires.
pub fn check_image(
    manifest: &[u8],
    blob_path: impl Fn(&str) -> std::path::PathBuf,
    platform: &Platform,
    allowed: AllowedPaths,
    cancel: &CancellationToken,
) -> Result<Option<Summary>, CheckError> {
    let Some(mut scan) = Scan::new(platform, allowed) else {
        return Ok(None);
    };
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| CheckError::Manifest(e.to_string()))?;
    let count = manifest.layers.len();
    for (i, d) in manifest.layers.iter().enumerate() {
        let layer = LayerId {
            index: i + 1,
            count,
            digest: d.digest.clone(),
        };
        let path = blob_path(&d.digest);
        let unreadable = |reason: String| CheckError::Unreadable {
            layer: layer.clone(),
            reason,
        };
        let compression = compression(&d.media_type).map_err(unreadable)?;
        let file = File::open(&path)
            .map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
        read_layer(&mut scan, &layer, BufReader::new(file), compression, cancel)?;
    }
    match scan.finish() {
        (summary, found) if found.is_empty() => Ok(Some(summary)),
        (_, found) => Err(Scan::error(platform, found)),
    }
}

/// Feeds one compressed layer to `scan`.
pub fn read_layer(
    scan: &mut Scan,
    layer: &LayerId,
    blob: impl Read,
    compression: Compression,
    cancel: &CancellationToken,
) -> Result<(), CheckError> {
    match compression {
        Compression::None => scan.layer(layer, blob, cancel),
        Compression::Gzip => scan.layer(layer, flate2::read::MultiGzDecoder::new(blob), cancel),
    }
}

/// The blob file of `digest` in the OCI layout at `dir`.
pub fn layout_blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

/// Checks a built image in its OCI layout before it is pushed, noting the outcome in the build
/// log (each foreign file on a line of its own, up to [`MAX_LOGGED`]).
pub async fn check_layout(
    layout: &Path,
    manifest: &[u8],
    spec: &crate::backend::BuildSpec,
    log: &crate::backend::LogSink,
    cancel: &CancellationToken,
) -> Result<(), CheckError> {
    let allowed = AllowedPaths::parse(&spec.allow_foreign_binary).map_err(CheckError::Globs)?;
    let allowing = allowed.len();
    let started = std::time::Instant::now();
    let (dir, manifest, platform, stop) = (
        layout.to_path_buf(),
        manifest.to_vec(),
        spec.platform.clone(),
        cancel.clone(),
    );
    let outcome = tokio::task::spawn_blocking(move || {
        check_image(
            &manifest,
            |d| layout_blob(&dir, d),
            &platform,
            allowed,
            &stop,
        )
    })
    .await
    .map_err(|e| CheckError::Stopped(e.to_string()))?;
    let took = started.elapsed().as_secs_f64();
    match &outcome {
        Ok(None) => {
            log.note(format!(
                "binary check: no ELF machine is known for {}, so its files are not judged",
                spec.platform
            ))
            .await
        }
        Ok(Some(s)) => {
            let allowed = match (s.allowed, allowing) {
                (0, _) | (_, 0) => String::new(),
                (n, _) => format!(
                    "; {} for another architecture allowed by --allow-foreign-binary",
                    files(n as usize)
                ),
            };
            let native = s.native;
            let what = if native == 1 {
                "executable or shared object is"
            } else {
                "executables and shared objects are"
            };
            log.note(format!(
                "binary check: {native} {what} for {} ({} layers, {} entries, {} MiB){allowed} ({took:.1} s)",
                spec.platform,
                s.layers,
                s.entries,
                s.bytes / (1024 * 1024),
            ))
            .await
        }
        Err(CheckError::Foreign { found, .. }) => {
            log.note(format!(
                "binary check: {} cannot run on {} ({took:.1} s):",
                files(found.len()),
                spec.platform
            ))
            .await;
            for f in found.iter().take(MAX_LOGGED) {
                log.note(format!("  {}", f.describe())).await;
            }
            if found.len() > MAX_LOGGED {
                log.note(format!("  and {} more", found.len() - MAX_LOGGED))
                    .await;
            }
        }
        Err(e) => log.note(format!("binary check failed: {e}")).await,
    }
    outcome.map(|_| ())
}
