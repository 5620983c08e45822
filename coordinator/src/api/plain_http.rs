//! Credentials and secrets never go to an agent over a plain-HTTP connection from another host.
//!
//! Without `--tls-cert` the coordinator speaks plain HTTP, and a lease carrying a registry
//! credential, build secrets or secret build arguments would cross the network readable by
//! anyone on the path. Such a lease is refused unless the agent's connection comes from loopback
//! (nothing leaves the machine) or the operator said, with `--insecure-credentials-over-http`,
//! that something else encrypts the connection (a TLS-terminating proxy, a service mesh).
//!
//! The agent's own token, which registration hands back, is not covered: it travels the same
//! connection as the join token the agent presented to get it, so refusing it would protect
//! nothing the join token did not already expose, and would stop every remote agent from working.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use archfarm_protocol::api::Lease;

use crate::config::Config;
use crate::scheduler::Claimed;
use crate::tls::Peer;
use crate::AppState;

/// The address a request's connection comes from, when the server recorded it (it always does
/// in [`crate::run`]; a router driven without connection info gives `None`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<ConnectInfo<Peer>>()
                .map(|ConnectInfo(peer)| peer.addr),
        ))
    }
}

/// What a lease would carry that must not cross a plain-HTTP connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The registry whose credential the lease would carry, if the coordinator has one for it.
    pub credential_for: Option<String>,
    /// The ids of the job's build secrets (ids are shown in the job; values never are).
    pub secret_ids: Vec<String>,
    /// The names of the job's secret build arguments.
    pub secret_build_args: Vec<String>,
    /// What the lease's pull credentials are for (`registry` or `registry/repository`).
    pub pull_credentials_for: Vec<String>,
}

impl Carried {
    /// What `lease` carries that must not cross a plain-HTTP connection.
    pub fn by(lease: &Lease) -> Carried {
        Carried {
            credential_for: lease
                .registry_auth
                .is_some()
                .then(|| lease.registry.clone()),
            secret_ids: lease.secrets.iter().map(|s| s.id.clone()).collect(),
            secret_build_args: lease.secret_build_args.clone(),
            pull_credentials_for: lease
                .pull
                .credentials
                .iter()
                .map(|c| c.scope.clone())
                .collect(),
        }
    }

    /// Whether there is anything to protect.
    pub fn is_empty(&self) -> bool {
        self.credential_for.is_none()
            && self.secret_ids.is_empty()
            && self.secret_build_args.is_empty()
            && self.pull_credentials_for.is_empty()
    }

    /// What is carried, in words: `the registry credential for R, the build secrets a, b`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(registry) = &self.credential_for {
            parts.push(format!("the registry credential for {registry}"));
        }
        if !self.pull_credentials_for.is_empty() {
            parts.push(format!(
                "the pull credentials for {}",
                self.pull_credentials_for.join(", ")
            ));
        }
        if !self.secret_ids.is_empty() {
            parts.push(format!("the build secrets {}", self.secret_ids.join(", ")));
        }
        if !self.secret_build_args.is_empty() {
            parts.push(format!(
                "the secret build arguments {}",
                self.secret_build_args.join(", ")
            ));
        }
        parts.join(" and ")
    }
}

/// Whether `ip` is a loopback address, an IPv4 one mapped into IPv6 (`::ffff:127.0.0.1`, what a
/// dual-stack listener sees) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Why a lease carrying `carried` must not go to agent `agent` over its connection from `peer`,
/// or `None` when it may. `peer` is `None` when the connection's address is unknown (a router
/// driven without connection info), which is refused like a remote one: this guard fails closed.
pub fn refusal(
    config: &Config,
    agent: &str,
    peer: Option<SocketAddr>,
    carried: &Carried,
) -> Option<String> {
    if carried.is_empty() || may_carry_secrets(config, peer) {
        return None;
    }
    let from = peer_in_words(peer);
    Some(format!(
        "the coordinator serves plain HTTP and agent {agent} connects from {from}: refused to send {} \
         over that connection; serve TLS (--tls-cert and --tls-key, and give agents an https:// URL), \
         or start the coordinator with --insecure-credentials-over-http if a proxy or service mesh \
         encrypts the connection",
        carried.describe()
    ))
}

/// Whether a connection from `peer` may carry credentials and secrets: TLS, a loopback peer, or
/// the operator's word that something else encrypts it (`--insecure-credentials-over-http`).
fn may_carry_secrets(config: &Config, peer: Option<SocketAddr>) -> bool {
    config.tls_enabled()
        || config.insecure_credentials_over_http
        || peer.is_some_and(|p| is_loopback(p.ip()))
}

fn peer_in_words(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "an unknown address".to_string(), |p| p.ip().to_string())
}

/// What a job submission holds that must not cross a plain-HTTP connection, in words; empty
/// when nothing.
pub fn submitted_secrets(req: &archfarm_protocol::api::JobRequest) -> Vec<String> {
    let mut out = Vec::new();
    if !req.registry_credentials.is_empty() {
        let names: Vec<&str> = req
            .registry_credentials
            .keys()
            .map(String::as_str)
            .collect();
        out.push(format!("registry credentials for {}", names.join(", ")));
    }
    if !req.secrets.is_empty() {
        out.push("build secrets".to_string());
    }
    if !req.secret_build_args.is_empty() {
        out.push("secret build arguments".to_string());
    }
    out
}

/// Why a job submission holding `what` (from [`submitted_secrets`]) that came over a connection
/// from `peer` is refused, or `None` when it is not: the rule leases follow, for the way in. The
/// request has crossed the network already; refusing it keeps the pipeline from relying on a
/// channel that exposes its secrets at every run, and says so.
pub fn submission_refusal(
    config: &Config,
    peer: Option<SocketAddr>,
    what: &[String],
) -> Option<String> {
    if what.is_empty() || may_carry_secrets(config, peer) {
        return None;
    }
    Some(format!(
        "the coordinator serves plain HTTP and this job, from {}, carries {}: refused, as they \
         crossed the network unencrypted (consider them exposed); use an https:// coordinator URL \
         (serve TLS with --tls-cert and --tls-key), or start the coordinator with \
         --insecure-credentials-over-http if a proxy or service mesh encrypts the connection",
        peer_in_words(peer),
        what.join(" and ")
    ))
}

/// Fails the build of a lease that was refused for `reason` (from [`refusal`]), so its job ends
/// with the reason instead of waiting for an agent that could take it safely: the same agent would
/// only claim it again. An optional platform's failure becomes a warning, as any failure does.
pub async fn fail_refused(
    state: &AppState,
    claimed: &Claimed,
    lease: &Lease,
    agent: &str,
    peer: Option<SocketAddr>,
    reason: &str,
) -> crate::store::StoreResult<()> {
    tracing::warn!(
        build.id = %lease.build_id,
        job.id = %lease.job_id,
        platform = %lease.platform,
        agent,
        peer = %peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        "lease refused: it carries credentials or secrets and the agent connects over plain HTTP from another host"
    );
    if !crate::lifecycle::Ends::of(state)
        .build_failed(
            claimed.build_id,
            &lease.platform,
            Some(claimed.mode),
            claimed.token,
            reason,
        )
        .await?
    {
        // Taken back meanwhile (the job was cancelled): nothing left to fail.
        return Ok(());
    }
    // The outcome is recorded: a log that cannot be written must not undo it.
    if let Err(e) = state
        .logs
        .append(lease.build_id, &[format!("[archfarm] failed: {reason}")])
        .await
    {
        tracing::warn!(build.id = %lease.build_id, error = %e, "could not append to the build log");
    }
    crate::progress::advance(state, lease.job_id).await
}

/// Logs once at start what this guard will do on a coordinator listening on `addr`: nothing to
/// say with TLS or on loopback; otherwise a warning either way, because with the flag credentials
/// cross the network as the proxy in front leaves them.
pub fn log_at_start(config: &Config, addr: SocketAddr) {
    if config.tls_enabled() || is_loopback(addr.ip()) {
        return;
    }
    if config.insecure_credentials_over_http {
        tracing::warn!(
            %addr,
            "serving plain HTTP beyond loopback with --insecure-credentials-over-http: registry \
             credentials and build secrets go to agents on other hosts unencrypted unless a proxy \
             or service mesh encrypts the connection"
        );
    } else {
        tracing::warn!(
            %addr,
            "serving plain HTTP beyond loopback: builds whose lease would carry a registry \
             credential or build secrets fail on agents connecting from other hosts; serve TLS \
             (--tls-cert, --tls-key) or pass --insecure-credentials-over-http if a proxy or \
             service mesh encrypts the connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("c").chain(args.iter().copied())).unwrap()
    }

    fn carried() -> Carried {
        Carried {
            credential_for: Some("reg.example:5000".into()),
            secret_ids: vec!["npmrc".into(), "token".into()],
            secret_build_args: vec!["PASS".into()],
            pull_credentials_for: vec![],
        }
    }

    #[test]
    fn loopback_includes_mapped_v4_and_v6() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.5", "::ffff:10.0.0.5", "fd00::2", "0.0.0.0", "::"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_remote_plain_http_with_something_to_protect_is_refused() {
        let remote: SocketAddr = "10.0.0.5:41000".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.1]:41000".parse().unwrap();
        let plain = config(&[]);
        let e = refusal(&plain, "pi4", Some(remote), &carried()).unwrap();
        assert_eq!(
            e,
            "the coordinator serves plain HTTP and agent pi4 connects from 10.0.0.5: refused to send \
             the registry credential for reg.example:5000 and the build secrets npmrc, token and the \
             secret build arguments PASS over that connection; serve TLS (--tls-cert and --tls-key, \
             and give agents an https:// URL), or start the coordinator with \
             --insecure-credentials-over-http if a proxy or service mesh encrypts the connection"
        );
        assert!(refusal(&plain, "pi4", None, &carried())
            .unwrap()
            .contains("connects from an unknown address"));
        assert_eq!(refusal(&plain, "pi4", Some(local), &carried()), None);
        assert_eq!(
            refusal(&plain, "pi4", Some(remote), &Carried::default()),
            None
        );
        let allowed = config(&["--insecure-credentials-over-http"]);
        assert_eq!(refusal(&allowed, "pi4", Some(remote), &carried()), None);
        let tls = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!(refusal(&tls, "pi4", Some(remote), &carried()), None);
        let pulls_only = Carried {
            pull_credentials_for: vec!["base.example/team/base".into()],
            ..Carried::default()
        };
        let e = refusal(&plain, "pi4", Some(remote), &pulls_only).unwrap();
        assert!(
            e.contains("refused to send the pull credentials for base.example/team/base over"),
            "{e}"
        );
    }

    #[test]
    fn a_job_with_secrets_over_remote_plain_http_is_refused() {
        let req: archfarm_protocol::api::JobRequest = serde_json::from_value(serde_json::json!({
            "context": format!("sha256:{}", "0".repeat(64)),
            "platforms": ["linux/amd64"],
            "tags": ["reg.example/app:1"],
            "registry_credentials": {"reg.example": {"username": "ci", "password": "pw"}},
            "secrets": [{"id": "npmrc", "value": "t0k"}],
        }))
        .unwrap();
        let what = submitted_secrets(&req);
        assert_eq!(
            what,
            ["registry credentials for reg.example", "build secrets"]
        );
        let remote: SocketAddr = "10.0.0.5:41000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        let plain = config(&[]);
        let e = submission_refusal(&plain, Some(remote), &what).unwrap();
        assert!(
            e.contains(
                "from 10.0.0.5, carries registry credentials for reg.example and build secrets"
            ) && e.contains("https://")
                && e.contains("--insecure-credentials-over-http")
                && !e.contains("pw"),
            "{e}"
        );
        assert!(
            submission_refusal(&plain, None, &what).is_some(),
            "fails closed"
        );
        assert_eq!(submission_refusal(&plain, Some(local), &what), None);
        assert_eq!(submission_refusal(&plain, Some(remote), &[]), None);
        let allowed = config(&["--insecure-credentials-over-http"]);
        assert_eq!(submission_refusal(&allowed, Some(remote), &what), None);
        let tls = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!(submission_refusal(&tls, Some(remote), &what), None);
    }
}
