//! TLS towards the coordinator: an extra CA to trust (`--ca-cert`), a client certificate
//! (`--client-cert`, `--client-key`) for a coordinator with `--client-ca`, and telling a
//! certificate failure (a configuration problem) apart from an outage.

use std::path::{Path, PathBuf};

use reqwest::ClientBuilder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS files an agent was started with; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificate(s) trusted for the coordinator, on top of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Every certificate in a PEM file, or an error naming the file.
fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate: a PEM file with `-----BEGIN CERTIFICATE-----` \
             sections is expected",
            path.display()
        ));
    }
    Ok(certs)
}

impl ClientTls {
    /// Adds the CA and the client certificate to a reqwest client. Files that cannot be read, are
    /// not PEM, or a key that does not belong to the certificate are refused here, at the start,
    /// with a message naming the file.
    pub fn apply(&self, mut builder: ClientBuilder) -> Result<ClientBuilder, String> {
        if let Some(path) = &self.ca_cert {
            let roots = certificates("CA certificate (--ca-cert)", path)?
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the CA certificate {} is not usable: {e}", path.display()))?;
            builder = builder.tls_certs_merge(roots);
        }
        if let Some((cert, key)) = &self.identity {
            let chain = certificates("client certificate (--client-cert)", cert)?;
            let key_pem = read("client key (--client-key)", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                format!(
                    "the client key {} holds no usable private key ({e}): a PEM file with a \
                     `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section \
                     is expected",
                    key.display()
                )
            })?;
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
                format!(
                    "the client key {} cannot be used with the client certificate {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
            let mut both = read("client certificate (--client-cert)", cert)?;
            both.push(b'\n');
            both.extend_from_slice(&key_pem);
            let identity = reqwest::Identity::from_pem(&both).map_err(|e| {
                format!(
                    "the client certificate {} is not usable: {e}",
                    cert.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

/// What is wrong when `err` failed on a TLS certificate (the coordinator's is not trusted, or the
/// coordinator refused this agent's), worded for people; `None` for any other failure.
pub fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError, Error};
    let mut cur = Some(err);
    while let Some(e) = cur {
        // io::Error's `source()` skips the error it wraps, which is where rustls puts its own.
        let tls = e.downcast_ref::<Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Error>())
        });
        match tls {
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => return Some(
                "the coordinator's TLS certificate is not trusted (it is not signed by a known \
                     CA)"
                .into(),
            ),
            Some(Error::InvalidCertificate(c)) => {
                return Some(format!(
                    "the coordinator's TLS certificate is not accepted ({c})"
                ))
            }
            Some(Error::AlertReceived(
                alert @ (A::BadCertificate
                | A::UnknownCA
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate),
            )) => {
                return Some(format!(
                    "the coordinator refused this agent's client certificate ({alert:?})"
                ))
            }
            _ => {}
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_certificate_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let msg = certificate_problem(&io).expect("found");
        assert!(msg.contains("not trusted"), "{msg}");
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        assert!(certificate_problem(&alert)
            .unwrap()
            .contains("client certificate"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem(&refused), None);
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let tls = ClientTls {
            ca_cert: Some(junk.clone()),
            identity: None,
        };
        let e = tls.apply(reqwest::Client::builder()).unwrap_err();
        assert!(e.contains("junk.pem holds no certificate"), "{e}");
        let tls = ClientTls {
            ca_cert: Some(dir.path().join("missing.pem")),
            identity: None,
        };
        let e = tls.apply(reqwest::Client::builder()).unwrap_err();
        assert!(
            e.contains("cannot read the CA certificate (--ca-cert)"),
            "{e}"
        );
        let tls = ClientTls {
            ca_cert: None,
            identity: Some((junk.clone(), junk)),
        };
        let e = tls.apply(reqwest::Client::builder()).unwrap_err();
        assert!(e.contains("client certificate (--client-cert)"), "{e}");
    }
}
