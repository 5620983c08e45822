//! What the coordinator needs to speak to registries: the credentials of `--registry-auth` (its
//! `auths` entries, read once at start, and the credential helpers its `credsStore`/`credHelpers`
//! name, run when a credential is needed) and the extra root CA of `--registry-ca-cert`.
//!
//! [`RegistryAccess::credential`] is the one lookup: a job's own credential (sent with the job,
//! see [`crate::job_credentials`]) first, else the coordinator's. The coordinator's stay in
//! memory: never written to the database, never logged (only the registry names are), and each
//! lease carries only the ones for its job's registries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use archfarm_protocol::registry_auth::{count_pem_certificates, CredentialSource, HelperAnswer};
use archfarm_protocol::registry_hosts::RegistryHosts;
use archfarm_protocol::{RegistryAuths, RegistryCredential, Secret};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::job_credentials::JobCredentials;

/// How long a credential helper's answer is reused for leases and stitching. The agent's
/// refresh right before its push, and a refusal while stitching, run the helper again whatever
/// its age, so a rotated password or an expired token is replaced where it is used; this bound
/// only limits how stale what a lease carries for pulls and caches can be.
pub const HELPER_CACHE_TTL: Duration = Duration::from_secs(60);

/// Most registry clients kept; past it they are all dropped and made again as needed (one per
/// registry and credential, so jobs' own credentials would otherwise add up).
const MAX_CLIENTS: usize = 256;

/// Where a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The job's own, sent with its submission.
    Job,
    /// An `auths` entry of `--registry-auth`.
    Configured,
    /// A credential helper of `--registry-auth`.
    Helper,
}

impl Origin {
    /// For logs: `job`, `configured` or `helper`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Job => "job",
            Origin::Configured => "configured",
            Origin::Helper => "helper",
        }
    }
}

/// A credential and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The credential.
    pub credential: RegistryCredential,
    /// Its origin.
    pub origin: Origin,
}

/// How old a credential helper's answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Up to [`HELPER_CACHE_TTL`].
    Cached,
    /// Run the helper again: only an answer from a run that started after the ask is taken (one
    /// another caller started while this one waited), and runs start at most once per
    /// [`HELPER_MIN_INTERVAL`].
    Anew,
}

/// Registry credentials and trust, as configured.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// Credentials by registry; empty when `--registry-auth` is not given.
    pub auths: RegistryAuths,
    /// PEM bytes of `--registry-ca-cert`, trusted on top of the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// `--registry-redirect-host`: hosts besides a registry itself that it may send requests
    /// on to (redirects, its token realm, upload locations).
    pub redirect_hosts: Vec<String>,
    /// Clients made so far, by registry, protocol and credential, shared by every stitch.
    clients: Clients,
    /// Credential helpers' answers, by registry.
    helpers: HelperCache,
}

/// Made clients, reused: each new one reads and parses the system's root certificates (about
/// a tenth of the coordinator's CPU when every stitch made its own, per archfarm-bench's profile)
/// and opens new connections. Keyed by a fingerprint of the credential too: an oci-client
/// `Client` keeps the first credential it is given for a registry and the tokens it got with
/// it, so one client per credential keeps a job's own credential (and its tokens) to that job,
/// and a rotated password from meeting the old one's cached tokens.
/// A registry, whether it is spoken to over plain HTTP, and a credential's fingerprint.
type ClientKey = (String, bool, String);

#[derive(Clone, Default)]
struct Clients(Arc<std::sync::Mutex<HashMap<ClientKey, Client>>>);

/// How long a helper's failure (or its "no credential") is reused by lookups that take a cached
/// answer: a failing or hanging helper is then run once per this interval, not once per lookup.
pub const HELPER_FAILURE_TTL: Duration = Duration::from_secs(10);

/// The least time between two starts of a registry's helper for fresh answers: an agent asking
/// again and again makes it wait, not run the helper again and again.
pub const HELPER_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Most registries with a helper answer kept (with `credsStore`, every registry a tenant names in
/// a FROM line would otherwise get one for good).
const MAX_HELPER_SLOTS: usize = 256;

/// A helper run's outcome, when it started and when it ended.
struct HelperRun {
    result: Result<Option<RegistryCredential>, String>,
    started: Instant,
    ended: Instant,
}

/// One registry's helper answer and the lock that makes concurrent askers wait for one run.
#[derive(Default)]
struct HelperSlot {
    fetch: tokio::sync::Mutex<()>,
    answer: std::sync::Mutex<Option<HelperRun>>,
}

impl HelperSlot {
    /// The last run's outcome if it serves an ask made at `asked` for `fresh`: a cached one while
    /// young enough (failures for less long); a fresh one only from a run that started at or
    /// after the ask, so that it read the helper's secret as it is since the refusal.
    fn usable(
        &self,
        fresh: Fresh,
        asked: Instant,
    ) -> Option<Result<Option<RegistryCredential>, String>> {
        let answer = self.answer.lock().expect("helper slot lock");
        let run = answer.as_ref()?;
        let ok = match fresh {
            Fresh::Cached => {
                let ttl = match run.result {
                    Ok(Some(_)) => HELPER_CACHE_TTL,
                    Ok(None) | Err(_) => HELPER_FAILURE_TTL,
                };
                run.ended.elapsed() < ttl
            }
            Fresh::Anew => run.started >= asked,
        };
        ok.then(|| run.result.clone())
    }

    /// When the last run started.
    fn last_start(&self) -> Option<Instant> {
        let answer = self.answer.lock().expect("helper slot lock");
        answer.as_ref().map(|r| r.started)
    }
}

#[derive(Clone, Default)]
struct HelperCache(Arc<std::sync::Mutex<HashMap<String, Arc<HelperSlot>>>>);

impl std::fmt::Debug for HelperCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "HelperCache({n})")
    }
}

impl HelperCache {
    fn slot(&self, registry: &str) -> Arc<HelperSlot> {
        let mut slots = self.0.lock().expect("helper cache lock");
        if slots.len() >= MAX_HELPER_SLOTS && !slots.contains_key(registry) {
            slots.clear();
        }
        slots.entry(registry.to_string()).or_default().clone()
    }

    /// The helper's answer for `registry`, run as `fresh` asks.
    async fn get(
        &self,
        helper: &str,
        registry: &str,
        fresh: Fresh,
    ) -> Result<Option<RegistryCredential>, String> {
        self.get_with(registry, fresh, || {
            crate::cred_helper::get(helper, registry)
        })
        .await
    }

    /// [`HelperCache::get`] with the helper's run in `run`.
    async fn get_with<F, Fut>(
        &self,
        registry: &str,
        fresh: Fresh,
        run: F,
    ) -> Result<Option<RegistryCredential>, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<HelperAnswer, String>>,
    {
        let slot = self.slot(registry);
        let asked = Instant::now();
        // A cached answer needs no lock: a lookup never waits behind a helper run it can do without.
        if let Some(answer) = slot.usable(fresh, asked) {
            return answer;
        }
        let _running = slot.fetch.lock().await;
        if let Some(answer) = slot.usable(fresh, asked) {
            return answer;
        }
        if fresh == Fresh::Anew {
            if let Some(last) = slot.last_start() {
                let wait = HELPER_MIN_INTERVAL.saturating_sub(last.elapsed());
                tokio::time::sleep(wait).await;
            }
        }
        let started = Instant::now();
        let result = run().await.map(|answer| match answer {
            HelperAnswer::Found(c) => Some(c),
            HelperAnswer::NotFound => None,
        });
        match &result {
            Ok(found) => {
                tracing::info!(registry, found = found.is_some(), "credential helper asked")
            }
            Err(e) => tracing::warn!(registry, error = %e, "credential helper failed"),
        }
        *slot.answer.lock().expect("helper slot lock") = Some(HelperRun {
            result: result.clone(),
            started,
            ended: Instant::now(),
        });
        result
    }

    /// The answer held for `registry`, whatever its age; never runs the helper.
    fn held(&self, registry: &str) -> Option<RegistryCredential> {
        let slot = self.0.lock().ok()?.get(registry)?.clone();
        let answer = slot.answer.lock().ok()?;
        answer.as_ref()?.result.clone().ok()?
    }
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "Clients({n})")
    }
}

impl RegistryAccess {
    /// Reads `--registry-auth` and `--registry-ca-cert`; a missing or malformed file is an error
    /// naming it (and the entry), never quoting a secret.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let auths = match &config.registry_auth {
            None => RegistryAuths::default(),
            Some(path) => load_auths(path)?,
        };
        let ca_cert = match &config.registry_ca_cert {
            None => None,
            Some(path) => Some(load_ca(path)?),
        };
        Ok(RegistryAccess {
            auths,
            ca_cert,
            redirect_hosts: config.registry_redirect_hosts.clone(),
            clients: Clients::default(),
            helpers: HelperCache::default(),
        })
    }

    /// Logs what was loaded: registry names and credential kinds, nothing secret; warns about
    /// credentials that would cross the network in clear (a registry listed as insecure).
    pub fn log_summary(&self, config: &Config) {
        if let Some(store) = self.auths.creds_store() {
            tracing::info!(
                helper = %archfarm_protocol::registry_auth::helper_program(store),
                "registry credentials of registries credHelpers does not name come from credsStore's helper"
            );
        }
        for (registry, helper) in self.auths.cred_helpers() {
            tracing::info!(
                registry,
                helper = %archfarm_protocol::registry_auth::helper_program(helper),
                "registry credential from a credential helper"
            );
        }
        for registry in self.auths.registries() {
            let kind = self.auths.get(registry).map_or("", |c| c.kind());
            tracing::info!(registry, kind, "registry credential loaded");
            if config.insecure_registries.iter().any(|r| r == registry) {
                tracing::warn!(
                    registry,
                    "this registry is spoken to over plain HTTP (--insecure-registry): its \
                     credential crosses the network unencrypted"
                );
            }
            if kind == "identity token" {
                tracing::warn!(
                    registry,
                    "an identity token is passed to buildah for base images, but stitching and \
                     pushes cannot exchange it for an access token; use username/password"
                );
            }
        }
    }

    /// The credential for `registry` in the work of a job: the job's own (`job`) when it sent
    /// one, else the coordinator's (`--registry-auth`: its helper's answer, as `fresh` asks, or
    /// its `auths` entry); None when there is none. The error is a helper's failure, in words.
    pub async fn credential(
        &self,
        job: &JobCredentials,
        registry: &str,
        fresh: Fresh,
    ) -> Result<Option<Resolved>, String> {
        if let Some(c) = job.get(registry) {
            return Ok(Some(Resolved {
                credential: c.clone(),
                origin: Origin::Job,
            }));
        }
        match self.auths.source(registry).map_err(|e| e.to_string())? {
            CredentialSource::None => Ok(None),
            CredentialSource::Entry(c) => Ok(Some(Resolved {
                credential: c.clone(),
                origin: Origin::Configured,
            })),
            CredentialSource::Helper(helper) => Ok(self
                .helpers
                .get(helper, registry, fresh)
                .await?
                .map(|credential| Resolved {
                    credential,
                    origin: Origin::Helper,
                })),
        }
    }

    /// Whether the credential [`RegistryAccess::credential`] gives for `registry` comes from a
    /// helper, so that asking it again after a refusal may give another.
    pub fn from_helper(&self, job: &JobCredentials, registry: &str) -> bool {
        job.get(registry).is_none()
            && matches!(self.auths.source(registry), Ok(CredentialSource::Helper(_)))
    }

    /// The credential for `registry` in the work of a job (see [`RegistryAccess::credential`]),
    /// as oci-client takes it; anonymous when there is none. Stitching asks through this.
    pub async fn oci_auth(
        &self,
        job: &JobCredentials,
        registry: &str,
        fresh: Fresh,
    ) -> Result<RegistryAuth, String> {
        let resolved = self.credential(job, registry, fresh).await?;
        oci_auth(resolved.as_ref().map(|r| &r.credential), registry)
    }

    /// Every secret string of the coordinator's credentials for `registry` as last seen (an
    /// `auths` entry, a helper's held answer), for redaction; never runs a helper.
    pub fn secrets_for(&self, registry: &str) -> Vec<Secret> {
        let configured = self.auths.get(registry).cloned();
        let held = archfarm_protocol::registry_auth::normalise_registry(registry)
            .ok()
            .and_then(|r| {
                self.helpers
                    .held(&r)
                    .or_else(|| self.helpers.held(registry))
            });
        configured
            .into_iter()
            .chain(held)
            .flat_map(|c| c.secrets())
            .collect()
    }

    /// A client for `registry` without credentials (see [`RegistryAccess::client_with`]).
    pub fn client_for(&self, registry: &str, insecure: bool) -> Client {
        self.client_with(registry, insecure, &RegistryAuth::Anonymous)
    }

    /// A client for `registry`, over plain HTTP when `insecure`, trusting the extra CA, for use
    /// with `auth`; made once per registry, protocol and credential, then shared.
    pub fn client_with(&self, registry: &str, insecure: bool, auth: &RegistryAuth) -> Client {
        let mut clients = self.clients.0.lock().expect("registry clients lock");
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients
            .entry((registry.to_string(), insecure, fingerprint(auth)))
            .or_insert_with(|| self.new_client(registry, insecure))
            .clone()
    }

    fn new_client(&self, registry: &str, insecure: bool) -> Client {
        let protocol = if insecure {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = self
            .ca_cert
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect();
        // Redirects, token realms and upload locations stay on the registry's own host (or a
        // listed one): the registry is the submitter's choice, the coordinator's network is not.
        let hosts = RegistryHosts::new(registry, &self.redirect_hosts);
        // A registry that stops answering must not hold a job in stitching forever.
        Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            extra_root_certificates,
            host_check: Some(Arc::new(move |url| hosts.check(url))),
            // Copies to a job's other repositories go up in parts ECR takes (see the constant).
            push_chunk_size: Some(archfarm_protocol::limits::UPLOAD_CHUNK_BYTES),
            ..Default::default()
        })
    }
}

/// A key for a credential in the map of clients: a hash, so the map holds no password.
fn fingerprint(auth: &RegistryAuth) -> String {
    let text = match auth {
        RegistryAuth::Anonymous => return String::new(),
        RegistryAuth::Basic(u, p) => format!("basic\0{u}\0{p}"),
        RegistryAuth::Bearer(t) => format!("bearer\0{t}"),
    };
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// oci-client's form of a credential. Identity tokens (OAuth2 refresh tokens) are refused:
/// oci-client cannot exchange them for an access token.
pub fn oci_auth(
    credential: Option<&RegistryCredential>,
    registry: &str,
) -> Result<RegistryAuth, String> {
    Ok(match credential {
        None => RegistryAuth::Anonymous,
        Some(RegistryCredential::Basic { username, password }) => {
            RegistryAuth::Basic(username.clone(), password.expose().to_string())
        }
        Some(RegistryCredential::RegistryToken(t)) => RegistryAuth::Bearer(t.expose().to_string()),
        Some(RegistryCredential::IdentityToken(_)) => {
            return Err(format!(
                "the credential for {registry} is an identity token, which archfarm cannot use to \
                 read or push manifests; give a username and password (or access token) instead"
            ))
        }
    })
}

fn load_auths(path: &Path) -> anyhow::Result<RegistryAuths> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --registry-auth file {}", path.display()))?;
    Ok(RegistryAuths::parse(&path.display().to_string(), &text)?)
}

fn load_ca(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --registry-ca-cert file {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    count_pem_certificates(&text).map_err(|problem| {
        anyhow::anyhow!(
            "--registry-ca-cert file {}: {problem}; expected PEM CA certificates",
            path.display()
        )
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("c").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn missing_and_broken_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = RegistryAccess::load(&config(&["--registry-auth", missing.to_str().unwrap()]))
            .unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("--registry-auth file {}", missing.display())),
            "{e:#}"
        );
        let broken = dir.path().join("config.json");
        std::fs::write(&broken, r#"{"auths": {"r.io": {"password": "hunter2"}}}"#).unwrap();
        let e = RegistryAccess::load(&config(&["--registry-auth", broken.to_str().unwrap()]))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("config.json, entry 'r.io'"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let e = RegistryAccess::load(&config(&["--registry-ca-cert", ca.to_str().unwrap()]))
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("ca.pem: no PEM certificate"),
            "{e:#}"
        );
    }

    #[test]
    fn credentials_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths": {"https://r.io": {"username": "u", "password": "hunter2"},
                          "cloud.io": {"identitytoken": "refresh"}}}"#,
        )
        .unwrap();
        let access =
            RegistryAccess::load(&config(&["--registry-auth", file.to_str().unwrap()])).unwrap();
        let none = JobCredentials::none();
        let auth = |r: &'static str| {
            let access = access.clone();
            let none = none.clone();
            async move { access.oci_auth(&none, r, Fresh::Cached).await }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(
                auth("r.io").await.unwrap(),
                RegistryAuth::Basic("u".into(), "hunter2".into())
            );
            assert_eq!(auth("other.io").await.unwrap(), RegistryAuth::Anonymous);
            assert!(auth("cloud.io")
                .await
                .unwrap_err()
                .contains("identity token"));
        });
        assert!(!format!("{access:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_jobs_own_credential_wins_and_helpers_are_cached_until_asked_anew() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // A helper that hands out what its file holds, and counts its runs.
        let secret = dir.path().join("secret");
        let runs = dir.path().join("runs");
        std::fs::write(&secret, "first").unwrap();
        let program = dir.path().join("docker-credential-afunittest");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\necho run >> {}\nprintf '{{\"Username\":\"ci\",\"Secret\":\"%s\"}}' \"$(cat {})\"\n",
                runs.display(),
                secret.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"credHelpers": {"helped.io": "afunittest"}, "auths": {"r.io": {"username": "u", "password": "own"}}}"#,
        )
        .unwrap();
        let access =
            RegistryAccess::load(&config(&["--registry-auth", file.to_str().unwrap()])).unwrap();
        let none = JobCredentials::none();
        let password = |r: Option<Resolved>| match r.map(|r| (r.origin, r.credential)) {
            Some((origin, RegistryCredential::Basic { password, .. })) => {
                (origin, password.expose().to_string())
            }
            other => panic!("{other:?}"),
        };
        let got = access
            .credential(&none, "helped.io", Fresh::Cached)
            .await
            .unwrap();
        assert_eq!(password(got), (Origin::Helper, "first".to_string()));
        std::fs::write(&secret, "second").unwrap();
        let got = access
            .credential(&none, "helped.io", Fresh::Cached)
            .await
            .unwrap();
        assert_eq!(password(got), (Origin::Helper, "first".into()), "cached");
        assert_eq!(access.secrets_for("helped.io")[0].expose(), "first");
        let got = access
            .credential(&none, "helped.io", Fresh::Anew)
            .await
            .unwrap();
        assert_eq!(
            password(got),
            (Origin::Helper, "second".into()),
            "asked again"
        );
        assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
        assert!(access.from_helper(&none, "helped.io") && !access.from_helper(&none, "r.io"));
        // A job's own credential comes first, for its registry only.
        let key = crate::job_credentials::CredentialKey::load(None, dir.path()).unwrap();
        let job = uuid::Uuid::new_v4();
        let mine = RegistryCredential::Basic {
            username: "pipeline".into(),
            password: Secret::new("theirs"),
        };
        let sealed = [key.seal(job, "r.io", &mine)];
        let own = JobCredentials::open(&key, job, &sealed).unwrap();
        let got = access
            .credential(&own, "r.io", Fresh::Cached)
            .await
            .unwrap();
        assert_eq!(password(got), (Origin::Job, "theirs".into()));
        let got = access
            .credential(&none, "r.io", Fresh::Cached)
            .await
            .unwrap();
        assert_eq!(password(got), (Origin::Configured, "own".into()));
        // One client per credential: oci-client keeps the first credential a client is given.
        let a = RegistryAuth::Basic("u".into(), "one".into());
        let b = RegistryAuth::Basic("u".into(), "two".into());
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert!(!fingerprint(&a).contains("one"));
    }

    /// A fake helper: counts its runs, answers `secret`'s value as it was when it started, and
    /// takes `delay` to do so.
    #[derive(Clone)]
    struct Fake {
        runs: Arc<std::sync::atomic::AtomicUsize>,
        secret: Arc<std::sync::Mutex<Result<String, String>>>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                runs: Arc::default(),
                secret: Arc::new(std::sync::Mutex::new(Err("unset".into()))),
            }
        }
    }

    impl Fake {
        fn set(&self, secret: Result<&str, &str>) {
            *self.secret.lock().unwrap() = secret.map(str::to_string).map_err(str::to_string);
        }
        fn runs(&self) -> usize {
            self.runs.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn run(
            &self,
            delay: Duration,
        ) -> impl FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<HelperAnswer, String>> + Send>,
        > {
            let me = self.clone();
            move || {
                me.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let read = me.secret.lock().unwrap().clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    read.map(|p| {
                        HelperAnswer::Found(RegistryCredential::Basic {
                            username: "ci".into(),
                            password: Secret::new(p),
                        })
                    })
                })
            }
        }
    }

    fn pw(r: Result<Option<RegistryCredential>, String>) -> String {
        match r {
            Ok(Some(RegistryCredential::Basic { password, .. })) => password.expose().to_string(),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fresh_answer_comes_from_a_run_started_after_the_ask() {
        let cache = HelperCache::default();
        let fake = Fake::default();
        fake.set(Ok("old"));
        // A slow run reads the old secret, then the registry refuses it and the secret rotates.
        let slow = {
            let (cache, run) = (cache.clone(), fake.run(Duration::from_millis(400)));
            tokio::spawn(async move { cache.get_with("r.io", Fresh::Cached, run).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.set(Ok("new"));
        let begun = Instant::now();
        let got = cache
            .get_with("r.io", Fresh::Anew, fake.run(Duration::ZERO))
            .await;
        assert_eq!(
            pw(got),
            "new",
            "the run that started before the ask is not fresh"
        );
        assert_eq!(pw(slow.await.unwrap()), "old");
        assert_eq!(fake.runs(), 2);
        // At most one start per interval, however often a fresh answer is asked for.
        assert!(begun.elapsed() >= HELPER_MIN_INTERVAL - Duration::from_millis(150));
        let many: Vec<_> = (0..5)
            .map(|_| {
                let (cache, run) = (cache.clone(), fake.run(Duration::from_millis(50)));
                tokio::spawn(async move { cache.get_with("r.io", Fresh::Anew, run).await })
            })
            .collect();
        for m in many {
            assert_eq!(pw(m.await.unwrap()), "new");
        }
        assert_eq!(fake.runs(), 3, "five asks at once share one run");
    }

    #[tokio::test]
    async fn cached_answers_never_wait_and_failures_are_kept_briefly() {
        let cache = HelperCache::default();
        let fake = Fake::default();
        fake.set(Ok("pw"));
        assert_eq!(
            pw(cache
                .get_with("r.io", Fresh::Cached, fake.run(Duration::ZERO))
                .await),
            "pw"
        );
        // A fresh fetch that hangs holds the lock; a cached lookup meanwhile answers at once.
        let hanging = {
            let (cache, run) = (cache.clone(), fake.run(Duration::from_secs(30)));
            tokio::spawn(async move { cache.get_with("r.io", Fresh::Anew, run).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = tokio::time::timeout(
            Duration::from_secs(1),
            cache.get_with("r.io", Fresh::Cached, fake.run(Duration::ZERO)),
        )
        .await
        .expect("a cached answer does not wait behind a running helper");
        assert_eq!(pw(got), "pw");
        hanging.abort();
        // A failing helper runs once, not once per lookup.
        fake.set(Err("the vault is down"));
        let before = fake.runs();
        for _ in 0..10 {
            let e = cache
                .get_with("down.io", Fresh::Cached, fake.run(Duration::ZERO))
                .await
                .unwrap_err();
            assert_eq!(e, "the vault is down");
        }
        assert_eq!(fake.runs(), before + 1);
        // The slots are bounded: a tenant's every FROM registry does not stay for good.
        for i in 0..(MAX_HELPER_SLOTS + 10) {
            let _ = cache
                .get_with(&format!("r{i}.io"), Fresh::Cached, fake.run(Duration::ZERO))
                .await;
        }
        assert!(cache.0.lock().unwrap().len() <= MAX_HELPER_SLOTS);
    }
}
