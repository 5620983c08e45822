//! Stitching: verify each pushed per-platform manifest and push one image index over them.
//!
//! The check reads what the registry holds, not what agents said: the manifest must hash to the
//! reported digest, and its image config must name the platform the build was for, so a mislabelled
//! agent cannot put an amd64 image into a release's arm64 slot.
//!
//! Agents push every platform's image to the job's first repository. When the tags name other
//! repositories too (as `docker buildx build -t a.lan/team/app:1 -t b.lan/other/app:1` may), the
//! children are made available in each of them before any tag moves: in the same registry by a
//! cross-repository blob mount (copied when the registry answers 202 instead), in another registry
//! by streaming each blob from the first repository (never a whole layer in memory: uploads go in
//! parts of [`limits::UPLOAD_CHUNK_BYTES`](archfarm_protocol::limits::UPLOAD_CHUNK_BYTES)), then
//! the child manifests by digest, byte for byte. Then the index is pushed by digest to every
//! repository, and only then under each tag, so every repository serves the same index digest.
//!
//! A registry has no compare-and-set on tags, so each tag's move goes through a [`TagGate`],
//! which orders the moves of different jobs (a tag never goes back to an older job's index) and
//! bounds how long the push may take.
//!
//! Unless the job asked for none, each platform gets a provenance attestation
//! ([`crate::provenance`]), pushed to every repository like the children: as an attestation
//! manifest inside the index (buildx's default), or as an OCI 1.1 referrer of the child, listed
//! under the tag schema's `sha256-<hex>` tag where the registry has no referrers API.

use std::collections::HashMap;

use archfarm_protocol::registry_text::{sanitise, sanitise_message};
use archfarm_protocol::{ImageRef, Platform};
use futures::TryStreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, Platform as OciPlatform,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use archfarm_protocol::provenance::AttestTo;

use crate::provenance::{self, Attestation, Builder};
use crate::store::{BuildRow, JobRow};

/// Why an index could not be pushed.
#[derive(Debug, thiserror::Error)]
pub enum StitchError {
    /// A build has no pushed digest (it did not succeed).
    #[error("{0}: the build has no pushed image")]
    NotPushed(Platform),
    /// The registry did not answer as expected.
    #[error("registry {registry}: {message}")]
    Registry {
        /// Registry host.
        registry: String,
        /// What went wrong.
        message: String,
        /// Whether trying again later may help (connection refused, timeouts, 5xx, 429).
        transient: bool,
    },
    /// The pushed manifest is not what the agent reported.
    #[error("{platform}: the pushed manifest {digest} {problem}")]
    BadManifest {
        /// Platform of the build.
        platform: Platform,
        /// Reported digest.
        digest: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The image config names another platform.
    #[error("{platform}: the pushed image's config says {found}, not {platform}; the agent that built it may be mislabelled")]
    PlatformMismatch {
        /// Platform the build was for.
        platform: Platform,
        /// What the config says.
        found: String,
    },
    /// This stitching attempt may move no tag any more: the job left `stitching` (cancelled,
    /// failed) or its stitching lease lapsed or was taken over.
    #[error("stitching stopped: {0}")]
    Stopped(String),
    /// The order of tag moves could not be checked or kept (the database did not answer, or a
    /// tag's push lease lapsed during its push); trying again may help.
    #[error("{0}")]
    TagOrder(String),
}

impl StitchError {
    /// Whether trying the whole stitch again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            StitchError::Registry { transient, .. } => *transient,
            StitchError::TagOrder(_) => true,
            _ => false,
        }
    }
}

/// Orders the tag moves of different jobs. Asked before and after each tag's push; the
/// implementation holds the tag's push lease in between.
pub trait TagGate {
    /// Before `tag` (a whole reference) moves: `Some(limit)` to push, which must be over within
    /// `limit` (less than what is left of the tag's lease); `None` to leave the tag alone (a
    /// newer job moved it). An error stops the stitch.
    fn claim(
        &self,
        tag: &str,
    ) -> impl std::future::Future<Output = Result<Option<std::time::Duration>, StitchError>> + Send;

    /// After `tag` was pushed with the index `digest`: records the move and lets go of the lease.
    fn moved(
        &self,
        tag: &str,
        digest: &str,
    ) -> impl std::future::Future<Output = Result<(), StitchError>> + Send;
}

/// The index that was pushed.
#[derive(Debug, Clone)]
pub struct Stitched {
    /// Digest of the index bytes.
    pub digest: String,
    /// OCI index or Docker manifest list.
    pub media_type: String,
    /// Size of the index bytes.
    pub size: i64,
    /// The provenance statements pushed with it, one per platform (none when the job asked
    /// for none).
    pub provenance: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ConfigPlatform {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
}

/// A client for `registry`, over plain HTTP when `insecure`, trusting the system's roots only
/// (the coordinator uses [`crate::registry::RegistryAccess::client_for`], which adds its CA).
pub fn client_for(registry: &str, insecure: bool) -> Client {
    crate::registry::RegistryAccess::default().client_for(registry, insecure)
}

/// A registry as stitching speaks to it: a client and the credential for that registry.
#[derive(Clone)]
pub struct Endpoint {
    /// The client for the registry.
    pub client: Client,
    /// Its credential, or anonymous.
    pub auth: RegistryAuth,
}

/// One repository the job's tags name, with those tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Registry `host[:port]`, as the tags spell it.
    pub registry: String,
    /// Repository inside it.
    pub repository: String,
    /// The job's tags in this repository, whole references, in the job's order.
    pub tags: Vec<String>,
}

impl Destination {
    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn reference(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }
}

/// The repositories of `tags`, each once, in the order they first appear, with their tags.
pub fn destinations(tags: &[String]) -> Result<Vec<Destination>, String> {
    let mut out: Vec<Destination> = Vec::new();
    for tag in tags {
        let r = ImageRef::parse(tag).map_err(|e| format!("tag '{tag}' does not parse: {e}"))?;
        match out
            .iter_mut()
            .find(|d| d.registry == r.registry && d.repository == r.repository)
        {
            Some(d) => d.tags.push(tag.clone()),
            None => out.push(Destination {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                tags: vec![tag.clone()],
            }),
        }
    }
    Ok(out)
}

/// The registries of `tags`, each once, in order: the ones stitching needs a credential for.
pub fn registries(tags: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for d in destinations(tags)? {
        if !out.contains(&d.registry) {
            out.push(d.registry);
        }
    }
    Ok(out)
}

/// A verified child of the index: its manifest as pushed and the blobs it references.
struct Child {
    digest: String,
    media_type: String,
    bytes: bytes::Bytes,
    blobs: Vec<OciDescriptor>,
}

/// Verifies every build's manifest in the job's first repository and pushes the index under every
/// tag of the job, after making the children available in every other repository the tags name.
/// `endpoints` holds a client and credential for every registry of the tags ([`registries`]);
/// `builder` is who the provenance names as having made it; `gate` orders each tag's move.
pub async fn stitch(
    endpoints: &HashMap<String, Endpoint>,
    job: &JobRow,
    builds: &[BuildRow],
    builder: &Builder,
    gate: &impl TagGate,
) -> Result<Stitched, StitchError> {
    let permanent = |registry: &str, message: String| StitchError::Registry {
        registry: registry.to_string(),
        message,
        transient: false,
    };
    let targets = destinations(&job.tags).map_err(|m| permanent(&job.registry, m))?;
    let endpoint = |registry: &str| {
        endpoints.get(registry).ok_or_else(|| {
            permanent(
                registry,
                "no client or credential was prepared for it".into(),
            )
        })
    };
    let source = Destination {
        registry: job.registry.clone(),
        repository: job.repository.clone(),
        tags: Vec::new(),
    };
    let from = endpoint(&source.registry)?;
    let registry_err = |registry: &str| {
        let registry = registry.to_string();
        move |e: OciDistributionError| StitchError::Registry {
            registry: registry.clone(),
            transient: is_transient(&e),
            message: registry_message(&e),
        }
    };
    let mut children = Vec::with_capacity(builds.len());
    let mut entries = Vec::with_capacity(builds.len());
    let mut attestations: Vec<Attestation> = Vec::new();
    for build in builds {
        let digest = build
            .digest
            .clone()
            .ok_or_else(|| StitchError::NotPushed(build.platform.clone()))?;
        let bad = |problem: String| StitchError::BadManifest {
            platform: build.platform.clone(),
            digest: digest.clone(),
            problem,
        };
        let reference = source.reference(&digest);
        let (bytes, _) = from
            .client
            .pull_manifest_raw(
                &reference,
                &from.auth,
                &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
            )
            .await
            .map_err(registry_err(&source.registry))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(bad(format!("hashes to {actual}")));
        }
        if build.size.is_some_and(|s| s != bytes.len() as i64) {
            return Err(bad(format!(
                "is {} bytes, not the {} reported",
                bytes.len(),
                build.size.unwrap_or(0)
            )));
        }
        let manifest: OciImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("is not an image manifest: {e}")))?;
        let media_type = manifest
            .media_type
            .clone()
            .or_else(|| build.media_type.clone())
            .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
        let mut config = Vec::new();
        from.client
            .pull_blob(&reference, &manifest.config, &mut config)
            .await
            .map_err(registry_err(&source.registry))?;
        let found: ConfigPlatform = serde_json::from_slice(&config)
            .map_err(|e| bad(format!("has an unreadable image config: {e}")))?;
        let os = found.os.unwrap_or_default();
        let arch = found.architecture.unwrap_or_default();
        let spelled = match &found.variant {
            Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
            _ => format!("{os}/{arch}"),
        };
        if Platform::parse(&spelled).ok().as_ref() != Some(&build.platform) {
            return Err(StitchError::PlatformMismatch {
                platform: build.platform.clone(),
                // The config's strings are whatever was pushed.
                found: sanitise(&spelled, 100),
            });
        }
        entries.push(ImageIndexEntry {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as i64,
            platform: Some(oci_platform(&build.platform)),
            annotations: None,
            artifact_type: None,
        });
        if job.attest_to != AttestTo::None {
            let statement = provenance::statement(builder, job, build, &digest);
            let referrer_of = (job.attest_to == AttestTo::Referrers)
                .then_some((media_type.as_str(), bytes.len() as i64));
            attestations.push(provenance::attestation(statement, &digest, referrer_of));
        }
        let mut blobs = manifest.layers.clone();
        blobs.push(manifest.config.clone());
        children.push(Child {
            digest,
            media_type,
            bytes,
            blobs,
        });
    }
    if job.attest_to == AttestTo::Index {
        // After every runnable manifest, as BuildKit places them.
        entries.extend(attestations.iter().map(Attestation::index_entry));
    }
    // An explicit `--annotation index:org.opencontainers.image.created=…` wins.
    let mut annotations = job.image_meta.index_annotations.clone();
    annotations
        .entry(provenance::CREATED.to_string())
        .or_insert_with(|| provenance::rfc3339(provenance::stitch_time(job, builds)));
    let (bytes, media_type) = index_bytes(entries, &annotations);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    // Every repository gets the children before any tag moves.
    for target in targets
        .iter()
        .filter(|t| (&t.registry, &t.repository) != (&source.registry, &source.repository))
    {
        let to = endpoint(&target.registry)?;
        copy_children(&source, from, target, to, &children)
            .await
            .map_err(registry_err(&target.registry))?;
        tracing::info!(job.id = %job.id, repository = %target.name(), children = children.len(), "children available");
    }
    // Every repository gets the attestations too: an index naming one must find it there, and
    // a referrer belongs beside its subject.
    if !attestations.is_empty() {
        for target in &targets {
            let to = endpoint(&target.registry)?;
            push_attestations(&source, target, to, &attestations, job.attest_to)
                .await
                .map_err(registry_err(&target.registry))?;
            tracing::info!(job.id = %job.id, repository = %target.name(), attest_to = %job.attest_to,
                attestations = attestations.len(), "provenance pushed");
        }
    }
    let content_type = || {
        media_type
            .parse()
            .expect("media types are valid header values")
    };
    // The index by digest in every repository first: a tag left on a newer job's index still
    // leaves this job's index where its digest finds it.
    for target in &targets {
        let to = endpoint(&target.registry)?;
        let reference = target.reference(&digest);
        to.client
            .store_auth_if_needed(reference.resolve_registry(), &to.auth)
            .await;
        to.client
            .push_manifest_raw(&reference, bytes.clone(), content_type())
            .await
            .map_err(registry_err(&target.registry))?;
    }
    for target in &targets {
        let to = endpoint(&target.registry)?;
        for tag in &target.tags {
            let reference: Reference = tag.parse().map_err(|e| {
                permanent(&target.registry, format!("tag '{tag}' does not parse: {e}"))
            })?;
            let Some(limit) = gate.claim(tag).await? else {
                continue;
            };
            // Bounded, so the push is over (on this side) while the tag's lease still holds; a
            // request the registry has already read may still land later, which is the window
            // the README owns up to.
            let push = to
                .client
                .push_manifest_raw(&reference, bytes.clone(), content_type());
            match tokio::time::timeout(limit, push).await {
                Ok(pushed) => pushed.map_err(registry_err(&target.registry))?,
                Err(_) => {
                    return Err(StitchError::Registry {
                        registry: target.registry.clone(),
                        message: format!(
                            "pushing the index under {tag} took longer than {} ms, the time the tag's push lease allows",
                            limit.as_millis()
                        ),
                        transient: true,
                    })
                }
            };
            gate.moved(tag, &digest).await?;
            tracing::info!(job.id = %job.id, tag, digest, "index pushed");
        }
    }
    Ok(Stitched {
        digest,
        media_type: media_type.to_string(),
        size: bytes.len() as i64,
        provenance: attestations.into_iter().map(|a| a.statement).collect(),
    })
}

/// Puts each attestation's blobs and manifest (by digest) in `target`: blobs mounted from
/// `source` (where they went first) within one registry, uploaded otherwise. As referrers, also
/// lists each under its subject's `sha256-<hex>` tag (the OCI 1.1 tag schema) when the
/// registry has no referrers API to find them by (distribution 2.8, for one, has none).
async fn push_attestations(
    source: &Destination,
    target: &Destination,
    to: &Endpoint,
    attestations: &[Attestation],
    attest_to: AttestTo,
) -> Result<(), OciDistributionError> {
    let any = Reference::with_tag(
        target.registry.clone(),
        target.repository.clone(),
        "latest".into(),
    );
    to.client
        .store_auth_if_needed(any.resolve_registry(), &to.auth)
        .await;
    for attestation in attestations {
        for blob in &attestation.blobs {
            let at = target.reference(&blob.digest);
            if to.client.blob_exists(&at, &blob.digest).await? {
                continue;
            }
            let mounted = source.registry == target.registry
                && source.repository != target.repository
                && to
                    .client
                    .try_mount_blob(&at, &source.reference(&blob.digest), &blob.digest, &to.auth)
                    .await?;
            if !mounted {
                to.client
                    .push_blob(&at, blob.bytes.clone(), &blob.digest)
                    .await?;
            }
        }
        to.client
            .push_manifest_raw(
                &target.reference(&attestation.digest),
                attestation.manifest.clone(),
                OCI_IMAGE_MEDIA_TYPE
                    .parse()
                    .expect("a media type is a header value"),
            )
            .await?;
        if attest_to != AttestTo::Referrers {
            continue;
        }
        // oci-client asks the referrers API and, where the registry answers 404, reads the tag
        // schema's index itself: either way a listing that names the attestation needs nothing
        // more (a registry with the API lists it as soon as it has the manifest).
        let subject = target.reference(&attestation.subject);
        let listed = to
            .client
            .pull_referrers(&subject, None)
            .await
            .is_ok_and(|i| i.manifests.iter().any(|m| m.digest == attestation.digest));
        if listed {
            continue;
        }
        let tag = Reference::with_tag(
            target.registry.clone(),
            target.repository.clone(),
            provenance::referrers_tag(&attestation.subject),
        );
        let existing = match to
            .client
            .pull_manifest_raw(&tag, &to.auth, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
            .await
        {
            Ok((bytes, _)) => Some(bytes),
            Err(OciDistributionError::ImageManifestNotFoundError(_)) => None,
            Err(OciDistributionError::ServerError { code: 404, .. }) => None,
            // The first referrer of this manifest: its tag does not exist yet.
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == oci_client::errors::OciErrorCode::ManifestUnknown) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let index = provenance::referrers_index(existing.as_deref(), attestation);
        let index_type = OCI_IMAGE_INDEX_MEDIA_TYPE
            .parse()
            .expect("a media type is a header value");
        to.client.push_manifest_raw(&tag, index, index_type).await?;
        tracing::debug!(repository = %target.name(), tag = %tag, "referrer listed under the tag schema");
    }
    Ok(())
}

/// Makes `children` available in `target`: each blob it lacks mounted from `source` (same
/// registry) or copied, then each manifest put by digest with the bytes the agent pushed.
async fn copy_children(
    source: &Destination,
    from: &Endpoint,
    target: &Destination,
    to: &Endpoint,
    children: &[Child],
) -> Result<(), OciDistributionError> {
    let same_registry = source.registry == target.registry;
    let repository = Reference::with_tag(
        target.registry.clone(),
        target.repository.clone(),
        "latest".into(),
    );
    to.client
        .store_auth_if_needed(repository.resolve_registry(), &to.auth)
        .await;
    let mut seen: Vec<&str> = Vec::new();
    for blob in children.iter().flat_map(|c| &c.blobs) {
        if seen.contains(&blob.digest.as_str()) {
            continue;
        }
        seen.push(&blob.digest);
        let at = target.reference(&blob.digest);
        if to.client.blob_exists(&at, &blob.digest).await? {
            tracing::debug!(repository = %target.name(), blob = %blob.digest, "blob already there");
            continue;
        }
        let here = source.reference(&blob.digest);
        if same_registry
            && to
                .client
                .try_mount_blob(&at, &here, &blob.digest, &to.auth)
                .await?
        {
            tracing::debug!(repository = %target.name(), blob = %blob.digest, from = %source.name(), "blob mounted");
            continue;
        }
        // Streamed from one registry to the other: oci-client holds one part at a time.
        let stream = from
            .client
            .pull_blob_stream(&here, blob)
            .await?
            .map_err(OciDistributionError::from);
        let size = u64::try_from(blob.size).ok();
        to.client
            .push_blob_stream(&at, stream, &blob.digest, size)
            .await?;
        tracing::debug!(repository = %target.name(), blob = %blob.digest, size = blob.size, "blob copied");
    }
    for child in children {
        let content_type = child.media_type.parse().map_err(|_| {
            OciDistributionError::GenericError(Some(format!(
                "media type {:?} is not a header value",
                child.media_type
            )))
        })?;
        to.client
            .push_manifest_raw(
                &target.reference(&child.digest),
                child.bytes.clone(),
                content_type,
            )
            .await?;
    }
    Ok(())
}

/// A registry failure in one bounded line, sanitised (the registry's body is its own words, and
/// they reach the job's error, the CLI and the dashboard); a refused credential says so plainly,
/// since oci-client's own words for it vary with the registry's authentication scheme.
pub fn registry_message(e: &OciDistributionError) -> String {
    sanitise_message(&match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::ServerError { code: 401, .. } => format!(
            "401 unauthorized: the registry refused the credentials (the job's own, else the \
             coordinator's --registry-auth; or their absence): {}",
            detail(e)
        ),
        _ => detail(e),
    })
}

/// oci-client's words for `e`, with the registry's body sanitised on its own first, so an HTML
/// page shows as its title rather than as markup inside the sentence.
fn detail(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::ServerError { code, url, message } => format!(
            "the registry answered {code} to {url}: {}",
            sanitise_message(message)
        ),
        OciDistributionError::AuthenticationFailure(reason) => {
            format!("the token request failed: {}", sanitise_message(reason))
        }
        // reqwest's own words omit the cause, which is where the refused host is named.
        OciDistributionError::RequestError(re) if re.is_redirect() => {
            let mut cause: &dyn std::error::Error = re;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("the registry's redirect: {cause}")
        }
        _ => e.to_string(),
    }
}

/// Whether a registry failure may go away by itself: the registry is down or overloaded, as
/// opposed to refusing the request (401, 404, an invalid manifest), which retrying cannot fix.
pub fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect() || r.is_timeout() || r.is_request() || r.is_body()
        }
        OciDistributionError::ServerError { code, .. } => {
            *code >= 500 || *code == 429 || *code == 408
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// The index document: a Docker manifest list when every child is a Docker v2 manifest (older
/// clients expect that pairing), an OCI image index otherwise.
pub fn index_bytes(
    entries: Vec<ImageIndexEntry>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> (Vec<u8>, &'static str) {
    let docker = !entries.is_empty()
        && entries
            .iter()
            .all(|e| e.media_type == IMAGE_MANIFEST_MEDIA_TYPE);
    let media_type = if docker {
        IMAGE_MANIFEST_LIST_MEDIA_TYPE
    } else {
        OCI_IMAGE_INDEX_MEDIA_TYPE
    };
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(media_type.to_string()),
        manifests: entries,
        artifact_type: None,
        // `--annotation index:KEY=VALUE` (GHCR shows a multi-arch image's description from here).
        // A Docker manifest list has no annotations field; agents push OCI manifests, so the
        // index they get is an OCI one.
        annotations: (!docker && !annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
    };
    (
        serde_json::to_vec(&index).expect("an index serialises"),
        media_type,
    )
}

fn oci_platform(p: &Platform) -> OciPlatform {
    OciPlatform {
        architecture: p.architecture().into(),
        os: p.os().into(),
        os_version: None,
        os_features: None,
        variant: p.variant().map(str::to_string),
        features: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(media_type: &str, digest: &str, platform: &str) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 504,
            platform: Some(oci_platform(&platform.parse().unwrap())),
            annotations: None,
            artifact_type: None,
        }
    }

    #[test]
    fn oci_children_make_an_oci_index_with_exact_descriptors() {
        let (bytes, mt) = index_bytes(
            vec![
                entry(OCI_IMAGE_MEDIA_TYPE, "sha256:aa", "linux/amd64"),
                entry(OCI_IMAGE_MEDIA_TYPE, "sha256:bb", "linux/arm/v7"),
            ],
            &Default::default(),
        );
        assert_eq!(mt, OCI_IMAGE_INDEX_MEDIA_TYPE);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_IMAGE_INDEX_MEDIA_TYPE);
        let m = &v["manifests"];
        assert_eq!(m[0]["digest"], "sha256:aa");
        assert_eq!(m[0]["size"], 504);
        assert_eq!(m[0]["mediaType"], OCI_IMAGE_MEDIA_TYPE);
        assert_eq!(
            m[0]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            m[1]["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
    }

    #[test]
    fn registry_bodies_reach_the_job_bounded_and_sanitised() {
        let e = OciDistributionError::ServerError {
            code: 500,
            url: "http://r/v2/a/manifests/x".into(),
            message: format!("\u{1b}[31mboom\u{1b}[0m\n{}", "<p>".repeat(10_000)),
        };
        let m = registry_message(&e);
        assert!(m.chars().count() <= 300, "{m}");
        assert!(
            m.contains("boom") && !m.contains(|c: char| c.is_control()),
            "{m}"
        );
        let page = OciDistributionError::ServerError {
            code: 502,
            url: "http://r/v2/".into(),
            message: "<html><head><title>Bad Gateway</title></head><body>nginx</body></html>"
                .into(),
        };
        assert_eq!(
            registry_message(&page),
            "the registry answered 502 to http://r/v2/: an HTML page titled 'Bad Gateway'"
        );
        let auth =
            OciDistributionError::AuthenticationFailure("\u{1b}]0;x\u{7}bad\npassword".into());
        let m = registry_message(&auth);
        assert!(
            m.starts_with("401 unauthorized") && m.ends_with("bad password"),
            "{m}"
        );
    }

    #[test]
    fn docker_children_make_a_manifest_list() {
        let (bytes, mt) = index_bytes(
            vec![entry(IMAGE_MANIFEST_MEDIA_TYPE, "sha256:aa", "linux/s390x")],
            &Default::default(),
        );
        assert_eq!(mt, IMAGE_MANIFEST_LIST_MEDIA_TYPE);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mediaType"], IMAGE_MANIFEST_LIST_MEDIA_TYPE);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "s390x");
    }
}
