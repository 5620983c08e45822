//! Provenance: one in-toto statement per platform with a SLSA provenance v1 predicate naming the
//! coordinator, the agent and its hardware, native or emulated, the inputs and the times, and the
//! OCI documents that carry it as buildx stores it (an attestation manifest in the index) or as
//! an OCI 1.1 referrer of the platform's manifest.
//!
//! Everything here is made from what the database holds, never from the clock, so a stitch that
//! is retried or taken over by another replica pushes the same bytes under the same digests.

use std::collections::BTreeMap;

use archfarm_protocol::api::BuildMode;
use chrono::{SecondsFormat, TimeZone as _, Utc};
use oci_client::manifest::{ImageIndexEntry, Platform as OciPlatform, OCI_IMAGE_MEDIA_TYPE};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::store::{BuildRow, JobRow};

/// in-toto's statement type (v1; BuildKit writes v0.1, whose layout is the same).
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1's predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The build type archfarm's predicates declare: what `externalParameters` and
/// `internalParameters` hold is described in the README's "Provenance" section.
pub const BUILD_TYPE: &str = "urn:archfarm:buildtype:buildah:v1";
/// Media type of an attestation layer (and of a referrer's `artifactType`).
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// OCI's empty descriptor media type, the config of a referrer artifact.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// OCI image config media type, the config of a buildx-style attestation manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The index annotation the creation time goes in.
pub const CREATED: &str = "org.opencontainers.image.created";

/// Who made the statements: this coordinator, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    /// `runDetails.builder.id`: the coordinator's URL (`--public-url`, else made from its
    /// replica name and port).
    pub id: String,
}

/// A blob to put in the registry: its bytes, digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type of the descriptor that points at it.
    pub media_type: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// One platform's attestation: the statement, the blobs and the manifest that carry it.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The platform's manifest digest (the subject).
    pub subject: String,
    /// The statement as pushed (the layer's bytes parse to it).
    pub statement: Value,
    /// The config and the in-toto layer.
    pub blobs: Vec<Blob>,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Their digest.
    pub digest: String,
}

impl Attestation {
    /// The index entry buildx writes for it: platform `unknown/unknown`, annotated with the
    /// reference type and the platform manifest it is about.
    pub fn index_entry(&self) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
            digest: self.digest.clone(),
            size: self.manifest.len() as i64,
            platform: Some(OciPlatform {
                architecture: "unknown".into(),
                os: "unknown".into(),
                os_version: None,
                os_features: None,
                variant: None,
                features: None,
            }),
            annotations: Some(BTreeMap::from([
                (
                    "vnd.docker.reference.type".to_string(),
                    "attestation-manifest".to_string(),
                ),
                (
                    "vnd.docker.reference.digest".to_string(),
                    self.subject.clone(),
                ),
            ])),
            artifact_type: None,
        }
    }

    /// The descriptor of it in a referrers index (the tag schema's `sha256-<hex>` tag).
    pub fn referrer_descriptor(&self) -> Value {
        json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": self.digest,
            "size": self.manifest.len(),
            "artifactType": IN_TOTO_MEDIA_TYPE,
            "annotations": {"in-toto.io/predicate-type": PREDICATE_TYPE},
        })
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Unix milliseconds as RFC 3339 in UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// When the job was stitched, for `org.opencontainers.image.created`: the moment stitching
/// began, i.e. its last platform's build finished (a retried or taken-over stitch keeps it).
pub fn stitch_time(job: &JobRow, builds: &[BuildRow]) -> i64 {
    builds
        .iter()
        .filter_map(|b| b.finished_at)
        .max()
        .unwrap_or(job.updated_at)
}

/// The statement for `build` of `job`, whose pushed manifest is `digest`.
pub fn statement(builder: &Builder, job: &JobRow, build: &BuildRow, digest: &str) -> Value {
    // Secret build arguments never reach a statement, not even by name with a placeholder:
    // the statement is public wherever the image is.
    let args: BTreeMap<&String, &String> = job
        .build_args
        .iter()
        .filter(|(k, _)| !job.secret_build_args.contains(k))
        .collect();
    let host = build.builder_host.clone().unwrap_or_default();
    let mode = build.mode.map(BuildMode::as_str).unwrap_or("unknown");
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap_or(d).to_string();
    let mut external = json!({
        "context": {"digest": {"sha256": hex(job.context.as_str())}},
        "dockerfile": job.dockerfile,
        "platform": build.platform.to_string(),
        "buildArgs": args,
    });
    if let Some(t) = &job.target {
        external["target"] = json!(t);
    }
    // A platform is pushed only once its smoke test passed on the agent named below, so a
    // statement naming one says it ran there and exited 0.
    if let Some(test) = &job.smoke_test {
        external["smokeTest"] = json!({"command": test.command, "timeoutSecs": test.timeout_secs});
    }
    let mut metadata = json!({"invocationId": format!("{}/{}", job.id, build.id)});
    if let Some(t) = build.started_at {
        metadata["startedOn"] = json!(rfc3339(t));
    }
    if let Some(t) = build.finished_at {
        metadata["finishedOn"] = json!(rfc3339(t));
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": format!("{}/{}", job.registry, job.repository),
            "digest": {"sha256": hex(digest)},
        }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "job": job.id.to_string(),
                    "mode": mode,
                    "agent": {
                        "name": build.agent_name.clone().unwrap_or_default(),
                        "machine": host.machine,
                        "cpuModel": host.cpu_model,
                    },
                },
                "resolvedDependencies": [{
                    "name": "context",
                    "digest": {"sha256": hex(job.context.as_str())},
                }],
            },
            "runDetails": {
                "builder": {
                    "id": builder.id,
                    "version": {"archfarm": env!("CARGO_PKG_VERSION")},
                },
                "metadata": metadata,
            },
        },
    })
}

/// The attestation for `build` as buildx stores it in an index: an OCI image manifest whose
/// config is a minimal `unknown/unknown` image config and whose one layer is the statement.
/// With `subject` (the platform manifest's descriptor: media type, size), an OCI 1.1 referrer
/// instead: the empty config, `artifactType` in-toto and `subject` set.
pub fn attestation(
    statement: Value,
    subject: &str,
    referrer_of: Option<(&str, i64)>,
) -> Attestation {
    let layer = Blob::new(
        IN_TOTO_MEDIA_TYPE,
        serde_json::to_vec(&statement).expect("a statement serialises"),
    );
    let mut layer_descriptor = layer.descriptor();
    layer_descriptor["annotations"] = json!({"in-toto.io/predicate-type": PREDICATE_TYPE});
    let (config, manifest) = match referrer_of {
        None => {
            let config = Blob::new(
                CONFIG_MEDIA_TYPE,
                serde_json::to_vec(&json!({
                    "architecture": "unknown",
                    "os": "unknown",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
                }))
                .expect("a config serialises"),
            );
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "config": config.descriptor(),
                "layers": [layer_descriptor],
            });
            (config, manifest)
        }
        Some((media_type, size)) => {
            let config = Blob::new(EMPTY_MEDIA_TYPE, b"{}".to_vec());
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "artifactType": IN_TOTO_MEDIA_TYPE,
                "config": config.descriptor(),
                "layers": [layer_descriptor],
                "subject": {"mediaType": media_type, "digest": subject, "size": size},
            });
            (config, manifest)
        }
    };
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
    Attestation {
        subject: subject.to_string(),
        statement,
        digest: sha256(&manifest),
        blobs: vec![config, layer],
        manifest,
    }
}

/// The referrers tag of the OCI 1.1 tag schema for `digest`: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// `existing` (the bytes under the referrers tag, if any) with `attestation` added once.
pub fn referrers_index(existing: Option<&[u8]>, attestation: &Attestation) -> Vec<u8> {
    let mut index: Value = existing
        .and_then(|b| serde_json::from_slice(b).ok())
        .filter(|v: &Value| v["manifests"].is_array())
        .unwrap_or_else(|| {
            json!({
                "schemaVersion": 2,
                "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
                "manifests": [],
            })
        });
    let manifests = index["manifests"].as_array_mut().expect("checked above");
    if !manifests
        .iter()
        .any(|m| m["digest"] == json!(attestation.digest))
    {
        manifests.push(attestation.referrer_descriptor());
    }
    serde_json::to_vec(&index).expect("an index serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> (JobRow, BuildRow) {
        let job = JobRow {
            id: uuid::Uuid::new_v4(),
            state: archfarm_protocol::api::JobState::Stitching,
            context: archfarm_protocol::Digest::parse(&format!("sha256:{}", "0".repeat(64)))
                .unwrap(),
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::from([
                ("VERSION".to_string(), "1.4".to_string()),
                ("TOKEN".to_string(), "hunter2".to_string()),
            ]),
            target: None,
            emulation: Default::default(),
            tags: vec!["reg.lan/team/app:1".into()],
            platforms: vec!["linux/arm64".parse().unwrap()],
            optional_platforms: Vec::new(),
            timeout_secs: 3600,
            warnings: Vec::new(),
            registry: "reg.lan".into(),
            repository: "team/app".into(),
            submitter: None,
            index_digest: None,
            index_media_type: None,
            index_size: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            secret_build_args: vec!["TOKEN".into()],
            secret_ids: Vec::new(),
            network: None,
            base_images: vec![],
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            attest_to: Default::default(),
            provenance: Vec::new(),
            smoke_test: Some(archfarm_protocol::smoke_test::SmokeTest {
                command: vec!["sh".into(), "-c".into(), "uname -m".into()],
                timeout_secs: 300,
            }),
        };
        let build = BuildRow {
            id: uuid::Uuid::new_v4(),
            job_id: job.id,
            platform: "linux/arm64".parse().unwrap(),
            state: archfarm_protocol::api::BuildState::Succeeded,
            agent_id: None,
            agent_name: Some("pi-4".into()),
            mode: Some(BuildMode::Emulated),
            lease_token: None,
            digest: None,
            media_type: None,
            size: None,
            attempts: 1,
            error: None,
            optional: false,
            decision: None,
            created_at: 0,
            queued_at: 0,
            started_at: Some(1_764_950_400_000),
            finished_at: Some(1_764_950_460_000),
            builder_host: Some(archfarm_protocol::provenance::AgentHost {
                machine: "x86_64".into(),
                cpu_model: "Xeon".into(),
            }),
        };
        (job, build)
    }

    #[test]
    fn a_statement_names_the_hardware_and_never_a_secret() {
        let (job, build) = rows();
        let builder = Builder {
            id: "https://farm.lan:8443".into(),
        };
        let digest = format!("sha256:{}", "c".repeat(64));
        let s = statement(&builder, &job, &build, &digest);
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["predicateType"], PREDICATE_TYPE);
        assert_eq!(s["subject"][0]["digest"]["sha256"], "c".repeat(64));
        assert_eq!(
            s["subject"][0]["name"],
            format!("{}/{}", job.registry, job.repository)
        );
        let p = &s["predicate"];
        let internal = &p["buildDefinition"]["internalParameters"];
        assert_eq!(internal["mode"], "emulated");
        assert_eq!(internal["agent"]["name"], "pi-4");
        assert_eq!(internal["agent"]["machine"], "x86_64");
        assert_eq!(internal["agent"]["cpuModel"], "Xeon");
        let external = &p["buildDefinition"]["externalParameters"];
        assert_eq!(external["buildArgs"], json!({"VERSION": "1.4"}));
        assert_eq!(external["dockerfile"], "Dockerfile");
        assert_eq!(
            external["smokeTest"],
            json!({"command": ["sh", "-c", "uname -m"], "timeoutSecs": 300})
        );
        assert_eq!(p["runDetails"]["builder"]["id"], "https://farm.lan:8443");
        assert_eq!(
            p["runDetails"]["metadata"]["startedOn"],
            "2025-12-05T16:00:00Z"
        );
        assert_eq!(
            p["runDetails"]["metadata"]["finishedOn"],
            "2025-12-05T16:01:00Z"
        );
        let text = s.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("TOKEN"),
            "{text}"
        );
    }

    #[test]
    fn attestation_manifests_as_buildx_and_as_referrers() {
        let (job, build) = rows();
        let builder = Builder { id: "x".into() };
        let child = format!("sha256:{}", "c".repeat(64));
        let a = attestation(statement(&builder, &job, &build, &child), &child, None);
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(a.digest, sha256(&a.manifest));
        assert_eq!(m["layers"][0]["mediaType"], IN_TOTO_MEDIA_TYPE);
        assert_eq!(
            m["layers"][0]["annotations"]["in-toto.io/predicate-type"],
            PREDICATE_TYPE
        );
        assert_eq!(m["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert!(m.get("subject").is_none());
        let layer: Value = serde_json::from_slice(&a.blobs[1].bytes).unwrap();
        assert_eq!(layer, a.statement);
        let e = serde_json::to_value(a.index_entry()).unwrap();
        assert_eq!(
            e["platform"],
            json!({"architecture": "unknown", "os": "unknown"})
        );
        assert_eq!(e["annotations"]["vnd.docker.reference.digest"], child);
        assert_eq!(
            e["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );

        let r = attestation(
            a.statement.clone(),
            &child,
            Some((OCI_IMAGE_MEDIA_TYPE, 504)),
        );
        let m: Value = serde_json::from_slice(&r.manifest).unwrap();
        assert_eq!(m["artifactType"], IN_TOTO_MEDIA_TYPE);
        assert_eq!(m["subject"]["digest"], child);
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(r.blobs[0].bytes, b"{}");
        assert_eq!(referrers_tag(&child), format!("sha256-{}", "c".repeat(64)));
        let once = referrers_index(None, &r);
        let twice = referrers_index(Some(&once), &r);
        assert_eq!(once, twice, "the same referrer is listed once");
        let v: Value = serde_json::from_slice(&twice).unwrap();
        assert_eq!(v["manifests"][0]["digest"], r.digest);
        assert_eq!(v["manifests"][0]["artifactType"], IN_TOTO_MEDIA_TYPE);
    }
}
