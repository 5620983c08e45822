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

/// A PEM parser's complaint in words (its own message shows bytes as numbers).
fn pem_detail(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a section has no `-----END …-----` line".into(),
        Error::IllegalSectionStart { .. } => "a `-----BEGIN …-----` line is malformed".into(),
        Error::Base64Decode(_) => "a section's body is not valid base64".into(),
        other => other.to_string(),
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Every certificate in a PEM file, or an error naming the file.
fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "the {what} {} is not valid PEM: {}",
                path.display(),
                pem_detail(&e)
            )
        })?;
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
                    "the client key {} holds no usable private key ({}): a PEM file with a \
                     `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section \
                     is expected",
                    key.display(),
                    pem_detail(&e)
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

/// What to do when the coordinator's certificate is not accepted.
const TRUST_HINT: &str = "pass --ca-cert FILE (or ARCHFARM_CA_CERT) with the CA that signed the \
    coordinator's certificate";
/// What to do when the coordinator's certificate is from a known CA but wrong in itself.
const CERT_HINT: &str = "check that --coordinator names a host the certificate is for, and that \
    the certificate is current";
/// What to do when the coordinator refuses the agent's client certificate.
const CLIENT_CERT_HINT: &str = "pass --client-cert FILE and --client-key FILE with a certificate \
    signed by the coordinator's --client-ca";

/// What is wrong when `err` failed on a TLS certificate (the coordinator's is not trusted, or the
/// coordinator refused this agent's), worded for people, and what to do about it; `None` for any
/// other failure.
pub fn certificate_problem(
    err: &(dyn std::error::Error + 'static),
) -> Option<(String, &'static str)> {
    use rustls::{AlertDescription as A, CertificateError, Error};
    let mut cur = Some(err);
    while let Some(e) = cur {
        match e.downcast_ref::<Error>() {
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                let problem = "the coordinator's TLS certificate is not trusted (it is not signed \
                               by a known CA)";
                return Some((problem.into(), TRUST_HINT));
            }
            Some(Error::InvalidCertificate(c)) => {
                let problem = format!("the coordinator's TLS certificate is not accepted ({c})");
                return Some((problem, CERT_HINT));
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
                let problem =
                    format!("the coordinator refused this agent's client certificate ({alert:?})");
                return Some((problem, CLIENT_CERT_HINT));
            }
            _ => {}
        }
        // io::Error's `source()` skips the error it wraps (rustls puts its own there, sometimes
        // inside a second io::Error): step into it instead.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_certificate_errors_are_found_inside_io_errors() {
        // As reqwest hands it over: an io::Error inside an io::Error.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let (msg, hint) = certificate_problem(&io).expect("found");
        assert!(msg.contains("not trusted"), "{msg}");
        assert!(hint.contains("--ca-cert"), "{hint}");
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        let (msg, hint) = certificate_problem(&alert).unwrap();
        assert!(msg.contains("client certificate"), "{msg}");
        assert!(hint.contains("--client-cert"), "{hint}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem(&refused), None);
    }

    #[test]
    fn a_client_key_must_belong_to_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let issue = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let (c, k) = (
                dir.path().join(format!("{name}.crt")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (a_cert, a_key) = issue("a");
        let (_, b_key) = issue("b");
        let good = ClientTls {
            ca_cert: None,
            identity: Some((a_cert.clone(), a_key)),
        };
        assert!(good.apply(reqwest::Client::builder()).is_ok());
        let mismatched = ClientTls {
            ca_cert: Some(a_cert.clone()),
            identity: Some((a_cert, b_key)),
        };
        let e = mismatched.apply(reqwest::Client::builder()).unwrap_err();
        assert!(
            e.contains("b.key cannot be used with the client certificate"),
            "{e}"
        );
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
