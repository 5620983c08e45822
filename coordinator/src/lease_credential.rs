//! The registry credential a lease carries: scoped to the job's repository where the registry
//! can scope one.
//!
//! The coordinator's credential (`--registry-auth`) is an account's user name and password. Handed
//! to an agent as is, a build that read it could push wherever that account may. A registry with
//! a token service (its `/v2/` answers with a `Bearer` challenge: Docker Hub, Harbor, GitLab,
//! distribution in token mode) can be asked for a token for one repository, so the coordinator
//! asks it for `repository:REPO:pull,push` with its own credential and hands the agent that
//! token instead. A registry that answers `Basic` (htpasswd) cannot scope a password: the lease
//! carries the password, as before. Stitching keeps using the credential itself.
//!
//! The credential is the job's own when it sent one (see [`crate::job_credentials`]), else the
//! coordinator's: an `auths` entry, or a credential helper's answer, which is asked again when
//! its token service refuses it.

use std::time::Duration;

use archfarm_protocol::RegistryCredential;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use uuid::Uuid;

use crate::job_credentials::JobCredentials;
use crate::registry::{Fresh, Origin, RegistryAccess};
use crate::AppState;

/// How long the lease answer may wait for the registry and its token service: the agent's long
/// poll is held open meanwhile.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why no scoped token could be had. The message is sanitised: it reaches the build's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "could not get a token for repository {repository} from {registry}'s token service: {message}"
)]
pub struct ScopedTokenError {
    /// The job's registry.
    pub registry: String,
    /// The job's repository.
    pub repository: String,
    /// What went wrong, one bounded line.
    pub message: String,
}

/// The scope asked for: what an agent needs to push the build's image and read it back.
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// The credential for a lease of a build that pushes to `registry`/`repository`, from the
/// coordinator's `auths` entry for it (see [`scope`]).
pub async fn scoped(
    access: &RegistryAccess,
    registry: &str,
    repository: &str,
    insecure: bool,
) -> Result<Option<RegistryCredential>, ScopedTokenError> {
    match access.auths.get(registry) {
        None => Ok(None),
        Some(c) => scope(access, c, registry, repository, insecure)
            .await
            .map(Some),
    }
}

/// What a lease carries for `credential`: a bearer token for `repository` when the registry
/// hands out tokens and the credential is a user name and password; otherwise the credential
/// itself (a password a `Basic` registry cannot scope, or a token to send as is).
pub async fn scope(
    access: &RegistryAccess,
    credential: &RegistryCredential,
    registry: &str,
    repository: &str,
    insecure: bool,
) -> Result<RegistryCredential, ScopedTokenError> {
    let RegistryCredential::Basic { username, password } = credential else {
        return Ok(credential.clone());
    };
    let err = |message: String| ScopedTokenError {
        registry: registry.to_string(),
        repository: repository.to_string(),
        message,
    };
    let basic = RegistryAuth::Basic(username.clone(), password.expose().to_string());
    // A client of this credential's own: oci-client keeps the tokens it gets per client.
    let client = access.client_with(registry, insecure, &basic);
    // The tag is never sent: oci-client scopes the token by the reference's repository.
    let reference = Reference::with_tag(registry.into(), repository.into(), "latest".into());
    // oci-client asks `/v2/` for the challenge, checks the realm's host (the registry's own or
    // `--registry-redirect-host`), and requests `repository:REPO:pull,push` with the password.
    let asked = client.auth(&reference, &basic, RegistryOperation::Push);
    match tokio::time::timeout(TOKEN_TIMEOUT, asked).await {
        Ok(Ok(Some(token))) => Ok(RegistryCredential::RegistryToken(
            archfarm_protocol::Secret::new(token),
        )),
        // No Bearer challenge: a Basic registry (or an open one) takes the password itself.
        Ok(Ok(None)) => Ok(credential.clone()),
        Ok(Err(e)) => Err(err(crate::stitch::registry_message(&e))),
        Err(_) => Err(err(format!(
            "no answer within {}s",
            TOKEN_TIMEOUT.as_secs()
        ))),
    }
}

/// [`scope`] for a build's lease, or for its push when the agent asks again (`fresh` is then
/// [`Fresh::Anew`]: a credential helper is asked again right before the push), with the job's
/// own credential when it sent one. Without a token the answer carries no credential at all,
/// never the password; the build's log says why, followed by `then` (what happens instead).
pub async fn for_lease(
    state: &AppState,
    build_id: Uuid,
    job: &JobCredentials,
    registry: &str,
    repository: &str,
    then: &str,
    fresh: Fresh,
) -> Option<RegistryCredential> {
    let insecure = state.config.is_insecure(registry);
    let mut fresh = fresh;
    let outcome = loop {
        let resolved = match state.registry.credential(job, registry, fresh).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            // Only the coordinator's own credentials come from helpers.
            Err(message) => break Err((message, Origin::Helper)),
        };
        match scope(
            &state.registry,
            &resolved.credential,
            registry,
            repository,
            insecure,
        )
        .await
        {
            Ok(c) => break Ok((c, resolved.origin)),
            // The token service refused a helper's answer: it may have rotated since.
            Err(_) if resolved.origin == Origin::Helper && fresh == Fresh::Cached => {
                fresh = Fresh::Anew;
            }
            Err(e) => break Err((e.to_string(), resolved.origin)),
        }
    };
    match outcome {
        Ok((credential, origin)) => {
            tracing::info!(
                build.id = %build_id,
                registry,
                repository,
                kind = credential.kind(),
                origin = origin.as_str(),
                "registry credential for the lease"
            );
            Some(credential)
        }
        Err((e, origin)) => {
            tracing::warn!(build.id = %build_id, registry, origin = origin.as_str(), error = %e, "no registry credential for the lease");
            let line = format!(
                "[archfarm] {}; {then}",
                for_the_tenant(registry, &e, origin)
            );
            if let Err(log_err) = state.logs.append(build_id, &[line]).await {
                tracing::warn!(build.id = %build_id, error = %log_err, "could not append to the build log");
            }
            None
        }
    }
}

/// What a build's log says about a credential that could not be had: the reason itself when it
/// was the job's own credential (the tenant's business), a generic line when it was the farm's
/// (its helper's name and output, its account's refusals are the operator's; the coordinator's
/// log has them).
pub fn for_the_tenant(registry: &str, error: &str, origin: Origin) -> String {
    match origin {
        Origin::Job => error.to_string(),
        Origin::Configured | Origin::Helper => format!(
            "the farm's credential for {registry} is unavailable; the coordinator's log says why"
        ),
    }
}

#[cfg(test)]
#[path = "lease_credential_tests.rs"]
mod tests;
