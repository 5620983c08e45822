//! HTTPS for the coordinator (`--tls-cert`, `--tls-key`, `--client-ca`).
//!
//! * [`TlsListener`] (in `listener.rs`) is an [`axum::serve::Listener`] over the plain
//!   [`tokio::net::TcpListener`] that [`crate::run`] is given: every TLS handshake runs in its own
//!   task, so a slow or silent client never holds up the others, and finished streams reach
//!   `axum::serve` through a channel.
//! * [`CertResolver`] holds the certificate rustls presents; [`watch`] (in `reload.rs`) replaces it
//!   on SIGHUP or when the files change, without a restart. A replacement that cannot be used (bad
//!   PEM, a key that does not fit) is logged and the certificate in use stays.
//! * [`Peer`] is the connection info handlers see: the client's address and whether it presented a
//!   client certificate that the `--client-ca` verifier accepted.

mod listener;
mod reload;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};

pub use listener::{Peer, TlsListener};
pub use reload::{watch, RELOAD_POLL};

/// Why the TLS set-up or a certificate reload failed. Messages name the file and what was wrong
/// with it, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `--tls-cert`, `--tls-key` and `--client-ca` were combined in a way that cannot work.
    #[error("{0}")]
    Config(String),
    /// A file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file (`certificate`, `private key`, `client CA`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of the expected kind.
    #[error("the {what} {path} is not usable: {detail}; a PEM file with {expected} is expected")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the parser said.
        detail: String,
        /// The PEM sections accepted.
        expected: &'static str,
    },
    /// The key cannot be used with the certificate (it belongs to another one, or its kind is not
    /// supported).
    #[error("the private key {key} cannot be used with the certificate {cert}: {detail}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// The client CA file holds certificates rustls cannot use as trust anchors.
    #[error("the client CA {path} cannot be used to verify client certificates: {detail}")]
    ClientCa {
        /// Its path.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

/// The TLS files the coordinator was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; none: no client certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The TLS files from the three flags: `None` for plain HTTP, an error when the flags do not go
    /// together (a certificate without its key, or a client CA without TLS).
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.map(Path::to_path_buf),
            })),
            (None, None) if client_ca.is_some() => Err(TlsError::Config(
                "--client-ca needs TLS: client certificates are only asked for over HTTPS; \
                 also pass --tls-cert FILE and --tls-key FILE"
                    .into(),
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Config(
                "--tls-cert needs --tls-key: pass both (PEM files) to serve HTTPS, or neither for plain HTTP".into(),
            )),
            (None, Some(_)) => Err(TlsError::Config(
                "--tls-key needs --tls-cert: pass both (PEM files) to serve HTTPS, or neither for plain HTTP".into(),
            )),
        }
    }
}

/// The rustls provider every part of the coordinator's TLS uses (the one reqwest already brings).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A PEM parser's complaint in words (its own message shows bytes as numbers).
fn pem_detail(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no `-----END …-----` line".into(),
        pem::Error::IllegalSectionStart { .. } => "a `-----BEGIN …-----` line is malformed".into(),
        pem::Error::Base64Decode(_) => "a section's body is not valid base64".into(),
        other => other.to_string(),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; an error when there is none.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail,
        expected: "`-----BEGIN CERTIFICATE-----` sections",
    };
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_detail(&e)))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        detail: match e {
            pem::Error::NoItemsFound => "no private key found".into(),
            other => pem_detail(&other),
        },
        expected: "a `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section",
    })
}

/// Loads a certificate chain and its key, checking that the key belongs to the certificate.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("certificate", cert)?;
    let der = private_key(key)?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| TlsError::Key {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    })
}

/// `sha256:HEX` of a certificate's DER bytes, to tell certificates apart in logs.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// The certificate rustls presents, replaceable while the coordinator runs.
#[derive(Debug)]
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    failed_reloads: AtomicU64,
}

impl CertResolver {
    /// Loads the certificate and key; an error names the file and the problem.
    pub fn load(cert: &Path, key: &Path) -> Result<CertResolver, TlsError> {
        let provider = provider();
        let loaded = load_certified_key(cert, key, &provider)?;
        Ok(CertResolver {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(loaded)),
            failed_reloads: AtomicU64::new(0),
        })
    }

    /// Reads the files again and, when they are usable, presents the new certificate from the next
    /// handshake on. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load_certified_key(&self.cert_path, &self.key_path, &self.provider)
            .inspect_err(|_| {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
            })?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(())
    }

    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many reloads have failed since the start (each kept the certificate in use).
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// The fingerprint of the leaf certificate presented now.
    pub fn current_fingerprint(&self) -> String {
        self.current()
            .cert
            .first()
            .map(fingerprint)
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The coordinator's TLS: the rustls configuration and the resolver [`watch`] reloads.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The server configuration handshakes run with.
    pub config: Arc<ServerConfig>,
    /// The certificate presented, replaceable.
    pub resolver: Arc<CertResolver>,
}

impl Tls {
    /// Loads the certificate, key and client CA. With a client CA, clients are asked for a
    /// certificate and one that does not chain to the CA fails the handshake; clients without one
    /// (the CLI, browsers) still connect, and [`Peer::client_cert`] tells the two apart.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let resolver = Arc::new(CertResolver::load(&files.cert, &files.key)?);
        let provider = resolver.provider.clone();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("no usable TLS versions: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let ca_error = |detail: String| TlsError::ClientCa {
                    path: path.clone(),
                    detail,
                };
                let mut roots = RootCertStore::empty();
                for cert in certificates("client CA", path)? {
                    roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| ca_error(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // axum::serve speaks HTTP/1.1 here (the http2 feature is off).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            resolver,
        })
    }
}
