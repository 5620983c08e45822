//! What `archfarm build --metadata-file` and `--iidfile` write once a job has pushed its index,
//! in the shape `docker buildx build` writes them, so pipeline steps written for buildx (e.g.
//! reading `containerimage.digest` after docker/build-push-action) read archfarm's the same way.

use std::path::Path;

use archfarm_protocol::api::Job;
use serde_json::{json, Map, Value};

/// The metadata of a succeeded job: buildx's keys (`containerimage.digest`,
/// `containerimage.descriptor`, `image.name`) and archfarm's own under `archfarm.*` (the job,
/// each platform's manifest digest, agent and whether it was emulated).
pub fn of(job: &Job) -> Value {
    let mut out = Map::new();
    if let Some(digest) = &job.index_digest {
        out.insert("containerimage.digest".into(), json!(digest));
        let mut descriptor = Map::new();
        if let Some(media_type) = &job.index_media_type {
            descriptor.insert("mediaType".into(), json!(media_type));
        }
        descriptor.insert("digest".into(), json!(digest));
        // Absent only for a job finished by a coordinator from before it kept the size.
        if let Some(size) = job.index_size {
            descriptor.insert("size".into(), json!(size));
        }
        out.insert(
            "containerimage.descriptor".into(),
            Value::Object(descriptor),
        );
    }
    out.insert("image.name".into(), json!(job.tags.join(",")));
    out.insert("archfarm.job".into(), json!(job.id));
    let platforms: Map<String, Value> = job
        .builds
        .iter()
        .filter(|b| b.digest.is_some())
        .map(|b| {
            (
                b.platform.to_string(),
                json!({
                    "digest": b.digest,
                    "mediaType": b.media_type,
                    "agent": b.agent,
                    "mode": b.mode,
                }),
            )
        })
        .collect();
    out.insert("archfarm.platforms".into(), Value::Object(platforms));
    Value::Object(out)
}

/// Writes `text` to `path` whole or not at all (a temporary file beside it, then a rename), so a
/// pipeline step never reads half a file.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        serde_json::from_value(json!({
            "id": "00000000-0000-0000-0000-000000000001",
            "state": "succeeded",
            "tags": ["reg.lan/team/app:1", "reg.lan/team/app:latest"],
            "platforms": ["linux/amd64", "linux/arm64"],
            "index_digest": format!("sha256:{}", "a".repeat(64)),
            "index_media_type": "application/vnd.oci.image.index.v1+json",
            "index_size": 512,
            "error": null,
            "context": format!("sha256:{}", "b".repeat(64)),
            "dockerfile": "Dockerfile",
            "build_args": {},
            "target": null,
            "emulation": "fallback",
            "optional_platforms": [],
            "timeout_secs": 7200,
            "warnings": [],
            "created_at": "2026-12-05T00:00:00Z",
            "updated_at": "2026-12-05T00:00:00Z",
            "finished_at": "2026-12-05T00:01:00Z",
            "builds": [{
                "id": "00000000-0000-0000-0000-000000000002",
                "platform": "linux/arm64",
                "state": "succeeded",
                "agent": "pi-4",
                "mode": "native",
                "digest": format!("sha256:{}", "c".repeat(64)),
                "media_type": "application/vnd.oci.image.manifest.v1+json",
                "size": 123,
                "attempts": 1,
                "error": null,
                "waiting": null,
                "optional": false,
                "decision": null,
                "created_at": "2026-12-05T00:00:00Z",
                "started_at": null,
                "finished_at": null
            }]
        }))
        .unwrap()
    }

    #[test]
    fn buildx_keys_and_archfarms_own() {
        let m = of(&job());
        assert_eq!(
            m["containerimage.digest"],
            format!("sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            m["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            m["image.name"],
            "reg.lan/team/app:1,reg.lan/team/app:latest"
        );
        assert_eq!(m["archfarm.job"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(m["archfarm.platforms"]["linux/arm64"]["agent"], "pi-4");
        assert_eq!(m["archfarm.platforms"]["linux/arm64"]["mode"], "native");
    }

    #[test]
    fn tags_in_several_repositories_are_one_image_name() {
        // buildx writes every tag, whatever its repository, comma-separated under `image.name`;
        // the digest is the one index every repository serves.
        let mut j = job();
        j.tags = vec![
            "reg.lan/team/app:1".into(),
            "reg.lan/mirror/app:1".into(),
            "ghcr.io/team/app:1".into(),
        ];
        let m = of(&j);
        assert_eq!(
            m["image.name"],
            "reg.lan/team/app:1,reg.lan/mirror/app:1,ghcr.io/team/app:1"
        );
        assert_eq!(
            m["containerimage.digest"],
            m["containerimage.descriptor"]["digest"]
        );
    }

    #[test]
    fn files_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        write(&path, "{}\n").unwrap();
        write(&path, "{\"a\": 1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\": 1}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = write(&dir.path().join("missing/meta.json"), "{}").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
