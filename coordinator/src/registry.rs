//! What the coordinator needs to speak to registries: the credentials of `--registry-auth` and the
//! extra root CA of `--registry-ca-cert`, read once at start.
//!
//! Credentials stay in memory: they are never written to the database, never logged (only the
//! registry names are), and each lease carries only the one for its job's registry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use archfarm_protocol::registry_auth::count_pem_certificates;
use archfarm_protocol::registry_hosts::RegistryHosts;
use archfarm_protocol::{RegistryAuths, RegistryCredential};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::config::Config;

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
    /// Clients made so far, by registry and protocol, shared by every stitch.
    clients: Clients,
}

/// Made clients, reused: each new one reads and parses the system's root certificates (about
/// a tenth of the coordinator's CPU when every stitch made its own, per archfarm-bench's profile)
/// and opens new connections.
#[derive(Clone, Default)]
struct Clients(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, bool), Client>>>);

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
        })
    }

    /// Logs what was loaded: registry names and credential kinds, nothing secret; warns about
    /// credentials that would cross the network in clear (a registry listed as insecure).
    pub fn log_summary(&self, config: &Config) {
        for helper in &self.auths.ignored_helpers {
            tracing::warn!(
                key = %helper,
                "--registry-auth: credential helpers are not supported; only the \"auths\" entries are used"
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

    /// The credential for `registry`, as oci-client takes it; anonymous when there is none.
    pub fn oci_auth(&self, registry: &str) -> Result<RegistryAuth, String> {
        oci_auth(self.auths.get(registry), registry)
    }

    /// A client for `registry`, over plain HTTP when `insecure`, trusting the extra CA; made
    /// once per registry and protocol, then shared.
    pub fn client_for(&self, registry: &str, insecure: bool) -> Client {
        let mut clients = self.clients.0.lock().expect("registry clients lock");
        clients
            .entry((registry.to_string(), insecure))
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
        assert_eq!(
            access.oci_auth("r.io").unwrap(),
            RegistryAuth::Basic("u".into(), "hunter2".into())
        );
        assert_eq!(
            access.oci_auth("other.io").unwrap(),
            RegistryAuth::Anonymous
        );
        assert!(access
            .oci_auth("cloud.io")
            .unwrap_err()
            .contains("identity token"));
        assert!(!format!("{access:?}").contains("hunter2"));
    }
}
