//! `/jobs`: submit, list, show and cancel multi-platform jobs.

use std::path::{Component, Path as FsPath};

use std::collections::BTreeMap;

use archfarm_protocol::api::{
    JobList, JobRequest, JobState, DEFAULT_JOB_TIMEOUT_SECS, MAX_JOB_REGISTRY_CREDENTIALS,
    MAX_REGISTRY_SECRET_BYTES, MAX_SUBMITTER_CHARS,
};
use archfarm_protocol::image_meta::ImageMeta;
use archfarm_protocol::RegistryCredential;
use archfarm_protocol::{CacheRef, ImageRef, Platform};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::access::Access;
use super::auth::Caller;
use super::error::{parse_id, ApiError, ApiJson, ApiQuery};
use super::gate::Authed;
use super::plain_http::PeerAddr;
use super::routes::Routes;
use super::views::{self, Fleet};
use crate::blobs::FileRead;

use crate::store::{JobCache, JobRow, NewJob};
use crate::AppState;
use uuid::Uuid;

/// Most platforms one job may ask for.
const MAX_PLATFORMS: usize = 16;
/// Most tags one job may push.
const MAX_TAGS: usize = 32;
/// Longest time limit a job may ask for: a week.
const MAX_JOB_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Most build arguments one job may pass.
const MAX_BUILD_ARGS: usize = 128;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .post("/jobs", Access::Submit, create)
        .get("/jobs", Access::Read, list)
        .get("/jobs/{id}", Access::Read, show)
        .get("/jobs/{id}/provenance", Access::Read, provenance)
        .post("/jobs/{id}/cancel", Access::Submit, cancel)
}

/// Checks everything about a request that needs no I/O, and normalises it.
pub fn validate(req: JobRequest) -> Result<NewJob, ApiError> {
    if req.platforms.is_empty() {
        return Err(ApiError::bad(
            "invalid_platform",
            "no platforms given: name at least one, e.g. linux/amd64",
        ));
    }
    let mut platforms: Vec<Platform> = Vec::new();
    add_platforms(&mut platforms, &req.platforms, "")?;
    let required = platforms.len();
    add_platforms(
        &mut platforms,
        &req.optional_platforms,
        "; a platform is either required or optional",
    )?;
    let optional_platforms = platforms[required..].to_vec();
    if platforms.len() > MAX_PLATFORMS {
        return Err(ApiError::bad(
            "invalid_platform",
            format!("at most {MAX_PLATFORMS} platforms per job"),
        ));
    }
    let timeout_secs = req.timeout_secs.unwrap_or(DEFAULT_JOB_TIMEOUT_SECS);
    if !(1..=MAX_JOB_TIMEOUT_SECS).contains(&timeout_secs) {
        return Err(ApiError::bad(
            "invalid_timeout",
            format!(
                "timeout_secs {timeout_secs} must be from 1 to {MAX_JOB_TIMEOUT_SECS} (7 days)"
            ),
        ));
    }
    if req.tags.is_empty() {
        return Err(ApiError::bad(
            "invalid_reference",
            "no tags given: name at least one, e.g. localhost:5000/app:1.0",
        ));
    }
    if req.tags.len() > MAX_TAGS {
        return Err(ApiError::bad(
            "invalid_reference",
            format!("at most {MAX_TAGS} tags per job"),
        ));
    }
    let mut refs: Vec<ImageRef> = Vec::new();
    for raw in &req.tags {
        let mut r =
            ImageRef::parse(raw).map_err(|e| ApiError::bad("invalid_reference", e.to_string()))?;
        if r.digest.is_some() {
            return Err(ApiError::bad(
                "invalid_reference",
                format!("tag '{raw}' has a digest; give a tag, the digest is computed"),
            ));
        }
        r.tag.get_or_insert_with(|| "latest".to_string());
        // Tags may name several repositories and registries, as buildx's do: agents push to the
        // first one's, stitching copies the children to the others (crate::stitch).
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    validate_dockerfile_path(&req.dockerfile)?;
    if req.build_args.len() > MAX_BUILD_ARGS {
        return Err(ApiError::bad(
            "invalid_build_arg",
            format!("at most {MAX_BUILD_ARGS} build arguments"),
        ));
    }
    for (k, v) in &req.build_args {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && k.len() <= 256;
        if !ok {
            return Err(ApiError::bad(
                "invalid_build_arg",
                format!("build argument name '{k}' must match [A-Za-z_][A-Za-z0-9_]*"),
            ));
        }
        if v.len() > 64 * 1024 {
            return Err(ApiError::bad(
                "invalid_build_arg",
                format!("build argument '{k}' is longer than 64 KiB"),
            ));
        }
    }
    let mut secret_build_args: Vec<String> = Vec::new();
    for name in &req.secret_build_args {
        if !req.build_args.contains_key(name) {
            return Err(ApiError::bad(
                "invalid_build_arg",
                format!(
                    "secret build argument '{name}' is not among the build arguments; pass its \
                     value as a build argument too"
                ),
            ));
        }
        if !secret_build_args.contains(name) {
            secret_build_args.push(name.clone());
        }
    }
    archfarm_protocol::build_secret::check_all(&req.secrets)
        .map_err(|m| ApiError::bad("invalid_secret", m))?;
    if let Some(t) = &req.target {
        if t.is_empty()
            || t.len() > 128
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ApiError::bad(
                "invalid_target",
                format!("target stage '{t}' must be 1 to 128 of A-Z a-z 0-9 _ - ."),
            ));
        }
    }
    let submitter = match req.submitter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() > MAX_SUBMITTER_CHARS || s.chars().any(char::is_control) => {
            return Err(ApiError::bad(
                "invalid_submitter",
                format!(
                    "submitter must be at most {MAX_SUBMITTER_CHARS} printable characters, e.g. ci-bot or alice@laptop"
                ),
            ))
        }
        Some(s) => Some(s.to_string()),
    };
    let network = match req.network.as_deref() {
        None => None,
        Some(raw) => archfarm_protocol::network::parse_job_network(raw)
            .map_err(|m| ApiError::bad("invalid_network", m))?,
    };
    let first = &refs[0];
    let cache = JobCache {
        to: parse_caches(&req.cache_to, "--cache-to")?,
        from: parse_caches(&req.cache_from, "--cache-from")?,
        no_cache: req.no_cache,
        pull: req.pull,
    };
    let image_meta = ImageMeta::parse(&req.labels, &req.annotations)
        .map_err(|m| ApiError::bad("invalid_label", m))?;
    archfarm_protocol::foreign_binary::AllowedPaths::parse(&req.allow_foreign_binary)
        .map_err(|m| ApiError::bad("invalid_allow_foreign_binary", m))?;
    if let Some(test) = &req.smoke_test {
        test.check()
            .map_err(|m| ApiError::bad("invalid_smoke_test", m))?;
    }
    Ok(NewJob {
        smoke_test: req.smoke_test,
        attest_to: req.attest_to.unwrap_or_default(),
        allow_foreign_binary: req.allow_foreign_binary,
        image_meta,
        cache,
        network,
        submitter,
        optional_platforms,
        timeout_secs: timeout_secs as i64,
        context: req.context,
        dockerfile: req.dockerfile,
        build_args: req.build_args,
        target: req.target,
        emulation: req.emulation,
        registry: first.registry.clone(),
        repository: first.repository.clone(),
        tags: refs.iter().map(ToString::to_string).collect(),
        platforms,
        secret_build_args,
        secrets: req.secrets,
        // Read from the context by the caller, which has it.
        base_images: Vec::new(),
    })
}

/// Most registry caches a job may name in each direction.
const MAX_CACHES: usize = 8;

/// Parses a job's `--cache-to` or `--cache-from` values (`flag` names them in errors).
fn parse_caches(raw: &[String], flag: &str) -> Result<Vec<CacheRef>, ApiError> {
    if raw.len() > MAX_CACHES {
        return Err(ApiError::bad(
            "invalid_cache",
            format!("at most {MAX_CACHES} {flag} values"),
        ));
    }
    let mut out: Vec<CacheRef> = Vec::new();
    for item in raw {
        let c = CacheRef::parse(item)
            .map_err(|e| ApiError::bad("invalid_cache", format!("{flag}: {e}")))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Gives a job that names no cache the coordinator's default (`--default-cache`), and checks that
/// every cache is in a registry the farm allows and in repositories the caller may push to: a
/// cache holds a build's layers, so reading another team's is as bad as writing it.
fn settle_caches(
    job: &mut NewJob,
    config: &crate::config::Config,
    caller: &Caller,
) -> Result<(), ApiError> {
    if job.cache.to.is_empty() && job.cache.from.is_empty() {
        if let Some(base) = &config.default_cache {
            // The farm's own location, below the job's already authorised push target: no
            // pattern of a limited token has to cover it, and no other target shares it.
            let c = CacheRef::default_for(base, &job.registry, &job.repository);
            job.cache.to = vec![c.clone()];
            job.cache.from = vec![c];
            return Ok(());
        }
    }
    for c in job.cache.to.iter().chain(&job.cache.from) {
        if !config.registry_allowed(&c.registry) {
            return Err(ApiError::bad(
                "registry_not_allowed",
                format!(
                    "this farm uses only {}; the cache {c} is in {}",
                    config.allowed_registries.join(", "),
                    c.registry
                ),
            ));
        }
        for p in &job.platforms {
            caller.may_push(
                &c.registry,
                &c.platform_repository(p),
                "the cache of this job would use",
            )?;
        }
    }
    Ok(())
}

/// Checks the registry credentials a job sent: each for a registry it pushes to (its tags'
/// registry, or that of a cache it names itself, which a limited token may push to too), none
/// twice, none too large. Messages name registries, never a value.
fn check_credentials(
    sent: BTreeMap<String, RegistryCredential>,
    job: &NewJob,
) -> Result<Vec<(String, RegistryCredential)>, ApiError> {
    let bad = |m: String| ApiError::bad("invalid_registry_credential", m);
    if sent.len() > MAX_JOB_REGISTRY_CREDENTIALS {
        return Err(bad(format!(
            "at most {MAX_JOB_REGISTRY_CREDENTIALS} registry credentials per job"
        )));
    }
    let normal = |r: &str| archfarm_protocol::registry_auth::normalise_registry(r).ok();
    // Every tag's registry: the index (and the children) go to each of them.
    let tag_registries = crate::stitch::registries(&job.tags).unwrap_or_default();
    let pushes_to: Vec<String> = std::iter::once(&job.registry)
        .chain(&tag_registries)
        .chain(
            job.cache
                .to
                .iter()
                .chain(&job.cache.from)
                .map(|c| &c.registry),
        )
        .filter_map(|r| normal(r))
        .collect();
    let mut out: Vec<(String, RegistryCredential)> = Vec::new();
    for (key, credential) in sent {
        let Some(registry) = normal(&key) else {
            return Err(bad(format!(
                "'{}' is not a registry HOST[:PORT]",
                key.chars().take(100).collect::<String>()
            )));
        };
        if !pushes_to.contains(&registry) {
            return Err(bad(format!(
                "a credential for {registry}, which this job neither pushes to nor names as a \
                 cache (it pushes to {}); send credentials only for those",
                job.registry
            )));
        }
        if out.iter().any(|(r, _)| r == &registry) {
            return Err(bad(format!("two credentials for {registry}; send one")));
        }
        if credential
            .secrets()
            .iter()
            .any(|s| s.expose().len() > MAX_REGISTRY_SECRET_BYTES || s.expose().is_empty())
        {
            return Err(bad(format!(
                "the credential for {registry} is empty or longer than {MAX_REGISTRY_SECRET_BYTES} bytes"
            )));
        }
        out.push((registry, credential));
    }
    Ok(out)
}

/// Parses `raw` onto `platforms`, refusing any that normalises to one already there.
fn add_platforms(
    platforms: &mut Vec<Platform>,
    raw: &[String],
    twice_hint: &str,
) -> Result<(), ApiError> {
    for item in raw {
        let p =
            Platform::parse(item).map_err(|e| ApiError::bad("invalid_platform", e.to_string()))?;
        if platforms.contains(&p) {
            return Err(ApiError::bad(
                "invalid_platform",
                format!("platform {p} is listed twice (once as '{item}'){twice_hint}"),
            ));
        }
        platforms.push(p);
    }
    Ok(())
}

fn validate_dockerfile_path(path: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::bad(
            "invalid_dockerfile",
            format!("dockerfile path '{path}' {why}"),
        )
    };
    if path.is_empty() || path.len() > 1024 {
        return Err(bad("must be 1 to 1024 characters"));
    }
    for c in FsPath::new(path).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(bad(
                    "must be relative and stay inside the context (no '..', no leading '/')",
                ))
            }
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    PeerAddr(peer): PeerAddr,
    ApiJson(mut req): ApiJson<JobRequest>,
) -> Result<(StatusCode, Json<archfarm_protocol::api::Job>), ApiError> {
    // The rule a lease follows on its way out holds for a job's secrets on their way in.
    let carried = super::plain_http::submitted_secrets(&req);
    if let Some(message) = super::plain_http::submission_refusal(&state.config, peer, &carried) {
        tracing::warn!(peer = ?peer, "job refused: it carries credentials or secrets over plain HTTP from another host");
        return Err(ApiError::Forbidden {
            code: "credentials_over_plain_http",
            message,
        });
    }
    let sent = std::mem::take(&mut req.registry_credentials);
    let mut job = validate(req)?;
    // Every repository the tags name passes the checks a single one would.
    let targets = crate::stitch::destinations(&job.tags)
        .map_err(|m| ApiError::bad("invalid_reference", m))?;
    // The farm's limit first: it holds for every caller, so it is a 400 (this request cannot be
    // served here), where a token's own patterns are a 403 (this caller may not).
    for target in &targets {
        if !state.config.registry_allowed(&target.registry) {
            return Err(ApiError::bad(
                "registry_not_allowed",
                format!(
                    "this farm pushes only to {}; {} is not among them",
                    state.config.allowed_registries.join(", "),
                    target.registry
                ),
            ));
        }
    }
    for target in &targets {
        caller.may_push(
            &target.registry,
            &target.repository,
            "this job would push to",
        )?;
    }
    // Before the farm's default cache is added: a job's credential is for where it pushes.
    let own = check_credentials(sent, &job)?;
    settle_caches(&mut job, &state.config, &caller)?;
    if !state.blobs.exists(&job.context).await? {
        return Err(ApiError::bad(
            "unknown_context",
            format!(
                "context {} was not uploaded; PUT it to /api/v1/contexts/{} first",
                job.context, job.context
            ),
        ));
    }
    let dockerfile = state
        .blobs
        .read_file(
            &job.context,
            &job.dockerfile,
            crate::base_images::MAX_DOCKERFILE_BYTES,
        )
        .await
        .map_err(|e| match e {
            // An archive stored before the caps existed may break them: the job cannot use it.
            crate::blobs::BlobError::Refused(e) => ApiError::bad(
                e.code(),
                format!("context {} cannot be used: {e}", job.context),
            ),
            e => ApiError::Internal(e.into()),
        })?;
    let base_images = match dockerfile {
        FileRead::Missing => {
            return Err(ApiError::bad(
                "missing_dockerfile",
                format!(
                    "the context has no file '{}'; add one or name another with -f/--file",
                    job.dockerfile
                ),
            ))
        }
        FileRead::Unread => Err(format!(
            "it is a symlink or larger than {} bytes",
            crate::base_images::MAX_DOCKERFILE_BYTES
        )),
        FileRead::Read(bytes) => crate::base_images::base_images(
            &String::from_utf8_lossy(&bytes),
            &job.build_args,
            &job.platforms,
        )
        .map_err(|e| e.to_string()),
    };
    // A Dockerfile this reader cannot follow still builds; its base images are pulled without
    // the coordinator's credentials.
    let mut outside = Vec::new();
    let unread = match base_images {
        Ok(images) => {
            // A limited token gets the farm's pull credentials only for base images in its own
            // repositories: with them, any other team's private image would be readable.
            for image in images {
                if caller.covers(&image.registry, &image.repository) {
                    job.base_images.push(image.to_string());
                } else {
                    outside.push(image.to_string());
                }
            }
            None
        }
        Err(why) => Some(format!(
            "could not read the base images of {}: {why}; its builds pull them without the \
             coordinator's registry credentials",
            job.dockerfile
        )),
    };
    let key = &state.credential_key;
    let id = state
        .store
        .insert_job_sealed(&job, |id| {
            own.iter()
                .map(|(registry, credential)| key.seal(id, registry, credential))
                .collect()
        })
        .await?;
    if !own.is_empty() {
        let registries: Vec<&str> = own.iter().map(|(r, _)| r.as_str()).collect();
        tracing::info!(job.id = %id, ?registries, "the job brought its own registry credentials");
    }
    if let Some(warning) = unread {
        tracing::info!(job.id = %id, %warning, "base images unknown");
        state.store.add_job_warning(id, &warning).await?;
    }
    if !outside.is_empty() {
        let warning = format!(
            "base images outside this token's repositories are pulled without the farm's registry \
             credentials: {}",
            outside.join(", ")
        );
        state.store.add_job_warning(id, &warning).await?;
    }
    state.metrics.job_entered(JobState::Queued);
    tracing::info!(job.id = %id, platforms = ?job.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        tags = ?job.tags, "job submitted");
    state.scheduler.wake_builds(&job.platforms).await;
    state
        .scheduler
        .wake_warm_agents(&job.registry, &job.repository, &job.platforms)
        .await;
    let row = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("job {id} vanished")))?;
    let fleet = Fleet::load(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(views::job(&state, row, &fleet).await?),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let fleet = Fleet::load(&state).await?;
    let mut jobs = Vec::new();
    for row in state.store.list_jobs(limit).await? {
        jobs.push(views::job(&state, row, &fleet).await?);
    }
    Ok(Json(JobList { jobs }))
}

async fn show(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<archfarm_protocol::api::Job>, ApiError> {
    let (_, row) = stored_job(&state, &raw).await?;
    let fleet = Fleet::load(&state).await?;
    Ok(Json(views::job(&state, row, &fleet).await?))
}

/// The provenance statements stored when the job was stitched: the ones pushed with its index.
async fn provenance(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<archfarm_protocol::api::JobProvenance>, ApiError> {
    let (_, row) = stored_job(&state, &raw).await?;
    Ok(Json(archfarm_protocol::api::JobProvenance {
        attest_to: row.attest_to,
        statements: row.provenance,
    }))
}

async fn cancel(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<archfarm_protocol::api::Job>, ApiError> {
    let (id, row) = stored_job(&state, &raw).await?;
    // A limited token stops only jobs it could have submitted: every repository is its own.
    let targets = crate::stitch::destinations(&row.tags).unwrap_or_default();
    caller.may_push(
        &row.registry,
        &row.repository,
        &format!("job {id} pushes to"),
    )?;
    for target in &targets {
        caller.may_push(
            &target.registry,
            &target.repository,
            &format!("job {id} pushes to"),
        )?;
    }
    if row.state.is_terminal() {
        let fleet = Fleet::load(&state).await?;
        return Ok(Json(views::job(&state, row, &fleet).await?));
    }
    // A stitching job is cancelled too: its stitching attempt finds its lease gone and moves no
    // further tag (tags it already moved stay on its index).
    if !crate::lifecycle::Ends::of(&state)
        .end(id, JobState::Cancelled, "cancelled by user")
        .await?
    {
        // It ended since we looked; report it as it is now.
        let now = state.store.get_job(id).await?.unwrap_or(row);
        let fleet = Fleet::load(&state).await?;
        return Ok(Json(views::job(&state, now, &fleet).await?));
    }
    let row = state.store.get_job(id).await?.unwrap_or(row);
    let fleet = Fleet::load(&state).await?;
    Ok(Json(views::job(&state, row, &fleet).await?))
}

/// The job `raw` names, or 404 naming it: what every per-job route reads first.
async fn stored_job(state: &AppState, raw: &str) -> Result<(Uuid, JobRow), ApiError> {
    let id = parse_id("job", raw)?;
    let row = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job with id '{id}'")))?;
    Ok((id, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(platforms: &[&str], tags: &[&str]) -> JobRequest {
        serde_json::from_value(serde_json::json!({
            "context": format!("sha256:{}", "a".repeat(64)),
            "platforms": platforms,
            "tags": tags,
        }))
        .unwrap()
    }

    fn message(e: ApiError) -> (String, String) {
        match e {
            ApiError::BadRequest { code, message } => (code.to_string(), message),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn normalises_platforms_and_tags() {
        let job = validate(req(
            &["amd64", "linux/aarch64"],
            &["localhost:5000/app", "localhost:5000/app:1"],
        ))
        .unwrap();
        assert_eq!(
            job.platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64"]
        );
        assert_eq!(
            job.tags,
            ["localhost:5000/app:latest", "localhost:5000/app:1"]
        );
        assert_eq!(
            (job.registry.as_str(), job.repository.as_str()),
            ("localhost:5000", "app")
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases: Vec<(JobRequest, &str, &str)> = vec![
            (
                req(&["linux/mips"], &["localhost:5000/a:1"]),
                "invalid_platform",
                "linux/arm64",
            ),
            (
                req(&[], &["localhost:5000/a:1"]),
                "invalid_platform",
                "no platforms",
            ),
            (
                req(&["arm64", "linux/arm64/v8"], &["localhost:5000/a:1"]),
                "invalid_platform",
                "listed twice",
            ),
            (
                req(&["amd64"], &["localhost:5000/Bad:1"]),
                "invalid_reference",
                "must be lowercase",
            ),
            (req(&["amd64"], &[]), "invalid_reference", "no tags"),
        ];
        for (r, code, needle) in cases {
            let (c, m) = message(validate(r).unwrap_err());
            assert_eq!(c, code, "{m}");
            assert!(m.contains(needle), "{m}");
        }
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.dockerfile = "../Dockerfile".into();
        assert!(message(validate(r).unwrap_err())
            .1
            .contains("stay inside the context"));
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.build_args.insert("BAD-NAME".into(), "x".into());
        assert_eq!(message(validate(r).unwrap_err()).0, "invalid_build_arg");
        for bad in ["x".repeat(MAX_SUBMITTER_CHARS + 1), "ci\nbot".into()] {
            let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
            r.submitter = Some(bad);
            assert_eq!(message(validate(r).unwrap_err()).0, "invalid_submitter");
        }
    }

    #[test]
    fn credentials_only_for_where_the_job_pushes() {
        let basic = |p: &str| RegistryCredential::Basic {
            username: "ci".into(),
            password: archfarm_protocol::Secret::new(p),
        };
        let mut r = req(&["amd64"], &["r.lan:5000/team/app:1"]);
        r.cache_to = vec!["cache.lan/team/cache".into()];
        let job = validate(r).unwrap();
        let sent = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, p)| (k.to_string(), basic(p)))
                .collect::<BTreeMap<_, _>>()
        };
        let ok = check_credentials(
            sent(&[("https://R.lan:5000/v2/", "hunter2"), ("cache.lan", "c")]),
            &job,
        )
        .unwrap();
        assert_eq!(ok[0].0, "cache.lan");
        assert_eq!(ok[1].0, "r.lan:5000");
        for (pairs, needle) in [
            (
                vec![("ghcr.io", "hunter2")],
                "neither pushes to nor names as a cache",
            ),
            (
                vec![("r.lan:5000", "hunter2"), ("http://r.lan:5000", "hunter2")],
                "two credentials",
            ),
            (vec![("r lan", "hunter2")], "not a registry"),
        ] {
            let ApiError::BadRequest { code, message } =
                check_credentials(sent(&pairs), &job).unwrap_err()
            else {
                panic!("not a 400")
            };
            assert_eq!(code, "invalid_registry_credential");
            assert!(
                message.contains(needle) && !message.contains("hunter2"),
                "{message}"
            );
        }
        let big = "x".repeat(MAX_REGISTRY_SECRET_BYTES + 1);
        assert!(check_credentials(sent(&[("r.lan:5000", big.as_str())]), &job).is_err());
    }

    #[test]
    fn tags_may_name_several_repositories_and_the_first_is_built() {
        let job = validate(req(
            &["amd64"],
            &[
                "b.lan/x/app:1",
                "a.lan/team/app",
                "b.lan/x/app:1",
                "b.lan/y/app:1",
            ],
        ))
        .unwrap();
        assert_eq!(
            job.tags,
            ["b.lan/x/app:1", "a.lan/team/app:latest", "b.lan/y/app:1"]
        );
        assert_eq!(
            (job.registry.as_str(), job.repository.as_str()),
            ("b.lan", "x/app")
        );
        let names: Vec<String> = crate::stitch::destinations(&job.tags)
            .unwrap()
            .iter()
            .map(|d| d.name())
            .collect();
        assert_eq!(names, ["b.lan/x/app", "a.lan/team/app", "b.lan/y/app"]);
    }

    #[test]
    fn secret_build_args_must_be_build_args() {
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.build_args.insert("TOKEN".into(), "t".into());
        r.secret_build_args = vec!["TOKEN".into(), "TOKEN".into()];
        assert_eq!(validate(r.clone()).unwrap().secret_build_args, ["TOKEN"]);
        r.secret_build_args.push("OTHER".into());
        let (code, m) = message(validate(r).unwrap_err());
        assert_eq!(code, "invalid_build_arg");
        assert!(
            m.contains("'OTHER' is not among the build arguments"),
            "{m}"
        );
    }

    #[test]
    fn secrets_are_checked_without_quoting_their_values() {
        let secret = |id: &str, value: &str| archfarm_protocol::BuildSecret {
            id: id.into(),
            value: archfarm_protocol::Secret::new(value),
        };
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.secrets = vec![secret("tok", "v1"), secret("other", "")];
        assert_eq!(validate(r.clone()).unwrap().secrets, r.secrets);
        for (bad, needle) in [
            (vec![secret("a/b", "v")], "A-Z a-z 0-9 _ - ."),
            (vec![secret("t", "v"), secret("t", "w")], "given twice"),
            (
                vec![secret("big", &"s".repeat(500 * 1024 + 1))],
                "at most 512000 (500 KiB)",
            ),
        ] {
            r.secrets = bad;
            let (code, m) = message(validate(r.clone()).unwrap_err());
            assert_eq!(code, "invalid_secret");
            assert!(m.contains(needle) && !m.contains("sss"), "{m}");
        }
    }

    #[test]
    fn the_submitter_is_kept_trimmed_and_blank_means_none() {
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.submitter = Some("  alice@laptop ".into());
        assert_eq!(
            validate(r).unwrap().submitter.as_deref(),
            Some("alice@laptop")
        );
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.submitter = Some(" ".into());
        assert_eq!(validate(r).unwrap().submitter, None);
    }

    #[test]
    fn the_network_is_default_or_one_the_agents_know() {
        let r = req(&["amd64"], &["localhost:5000/a:1"]);
        assert_eq!(validate(r).unwrap().network, None);
        for (raw, want) in [
            ("default", None),
            ("host", Some(archfarm_protocol::Network::Host)),
            ("none", Some(archfarm_protocol::Network::None)),
            ("private", Some(archfarm_protocol::Network::Private)),
        ] {
            let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
            r.network = Some(raw.into());
            assert_eq!(validate(r).unwrap().network, want, "{raw}");
        }
        let mut r = req(&["amd64"], &["localhost:5000/a:1"]);
        r.network = Some("bridge".into());
        let (code, m) = message(validate(r).unwrap_err());
        assert_eq!(code, "invalid_network");
        assert!(
            m.contains("'bridge'")
                && m.contains("default")
                && m.contains("none")
                && m.contains("private"),
            "{m}"
        );
    }

    #[test]
    fn caches_parse_dedupe_and_take_the_farm_default() {
        use clap::Parser;
        let mut r = req(&["linux/amd64", "linux/arm64"], &["r.lan/team/app:1"]);
        r.cache_to = vec![
            "type=registry,ref=r.lan/team/cache,mode=max".into(),
            "type=registry,ref=r.lan/team/cache,mode=max".into(),
        ];
        r.cache_from = vec!["r.lan/team/cache".into()];
        let job = validate(r).unwrap();
        assert_eq!(job.cache.to.len(), 1, "duplicates are dropped");
        assert_eq!(job.cache.from[0].repository, "team/cache");

        let mut bad = req(&["linux/amd64"], &["r.lan/team/app:1"]);
        bad.cache_to = vec!["type=gha".into()];
        let ApiError::BadRequest { code, message } = validate(bad).unwrap_err() else {
            panic!("not a 400")
        };
        assert_eq!(code, "invalid_cache");
        assert!(
            message.starts_with("--cache-to: invalid cache 'type=gha'"),
            "{message}"
        );

        // A job naming no cache gets the farm's default, below its own repository.
        let config =
            crate::config::Config::try_parse_from(["c", "--default-cache", "r.lan/archfarm-cache"])
                .unwrap();
        let anyone = Caller {
            scope: archfarm_protocol::tokens::Scope::Admin,
            token: None,
            repositories: vec![],
        };
        let mut job = validate(req(&["linux/arm64"], &["r.lan/team/app:1"])).unwrap();
        settle_caches(&mut job, &config, &anyone).unwrap();
        assert_eq!(
            job.cache.to[0].for_platform(&"linux/arm64".parse().unwrap()),
            "r.lan/archfarm-cache/r.lan/team/app/linux-arm64"
        );
        assert_eq!(job.cache.from, job.cache.to);

        // A limited token may use caches only where it may push.
        let limited = Caller {
            scope: archfarm_protocol::tokens::Scope::Submit,
            token: Some("ci".into()),
            repositories: vec![
                archfarm_protocol::repository_pattern::RepositoryPattern::parse("r.lan/team/**")
                    .unwrap(),
            ],
        };
        let mut other = req(&["linux/arm64"], &["r.lan/team/app:1"]);
        other.cache_from = vec!["r.lan/other-team/cache".into()];
        let mut other = validate(other).unwrap();
        let e = settle_caches(&mut other, &config, &limited).unwrap_err();
        assert!(
            matches!(&e, ApiError::Forbidden { code: "repository_not_allowed", message }
                if message.contains("r.lan/other-team/cache/linux-arm64")),
            "{e:?}"
        );
        let mut own = validate(req(&["linux/arm64"], &["r.lan/team/app:1"])).unwrap();
        own.cache.to = vec![CacheRef::parse("r.lan/team/cache").unwrap()];
        settle_caches(&mut own, &config, &limited).unwrap();
        // The farm's default needs no pattern of the token: it is below the job's own target.
        let mut defaulted = validate(req(&["linux/arm64"], &["r.lan/team/app:1"])).unwrap();
        settle_caches(&mut defaulted, &config, &limited).unwrap();
        assert_eq!(
            defaulted.cache.from[0].for_platform(&"linux/arm64".parse().unwrap()),
            "r.lan/archfarm-cache/r.lan/team/app/linux-arm64"
        );
    }
}
