//! A certificate authority made by the test (rcgen), the certificates it issues as PEM files, and
//! HTTP clients that trust it: what a farm with a self-signed CA looks like.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::process::Scratch;

/// A test CA with its certificate in `ca.pem`; certificates it issues land next to it.
pub struct TestCa {
    dir: Scratch,
    name: String,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A certificate and its key as PEM files, and the certificate's DER bytes.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The certificate's DER bytes, to compare with what a server presents.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA called `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        let dir = Scratch::new(&format!("ca-{name}"));
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        TestCa {
            dir,
            name: name.to_string(),
            ca,
        }
    }

    /// The CA certificate (PEM), what `--ca-cert`, `--client-ca` and `--registry-ca-cert` take.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A directory holding the CA as `ca.crt`, for `skopeo --cert-dir` (and buildah's).
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.join("certs.d");
        std::fs::create_dir_all(&dir).expect("create certs.d");
        std::fs::copy(self.ca_path(), dir.join("ca.crt")).expect("copy ca.crt");
        dir
    }

    /// A server certificate for `127.0.0.1` and `localhost`, in `FILE.crt` / `FILE.key`.
    pub fn server(&self, file: &str) -> CertFiles {
        self.issue(file, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for `--client-cert` / `--client-key`), in `FILE.crt` / `FILE.key`.
    pub fn client(&self, file: &str) -> CertFiles {
        self.issue(file, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, file: &str, usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }
}

/// What a coordinator serves HTTPS with (see [`crate::CoordinatorOptions::tls`]).
#[derive(Debug, Clone)]
pub struct CoordinatorTls {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    /// The CA that signed `cert`: the harness's own clients (and the CLI it runs) trust it.
    pub ca: PathBuf,
    /// `--client-ca`, when agents must present a client certificate.
    pub client_ca: Option<PathBuf>,
}

impl CoordinatorTls {
    /// Serves `server` (issued by `ca`), with no client certificates.
    pub fn new(ca: &TestCa, server: &CertFiles) -> CoordinatorTls {
        CoordinatorTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            ca: ca.ca_path(),
            client_ca: None,
        }
    }

    /// Also asks agents for a client certificate signed by `client_ca`.
    pub fn with_client_ca(mut self, client_ca: &Path) -> CoordinatorTls {
        self.client_ca = Some(client_ca.to_path_buf());
        self
    }
}

/// Like [`crate::http_client`], trusting only the CA in `ca` (PEM), and recording each
/// connection's TLS details (see [`served_certificate`]).
pub fn https_client(ca: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
    let root = reqwest::Certificate::from_pem(&pem).expect("a PEM CA certificate");
    reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .tls_info(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build an HTTPS client")
}

/// The DER bytes of the certificate the server at `url` presents to a new connection, or the
/// error when the request fails.
pub fn served_certificate(ca: &Path, url: &str) -> Result<Vec<u8>, String> {
    // A new client is a new connection, so a reloaded certificate shows.
    let resp = https_client(ca)
        .get(url)
        .send()
        .map_err(|e| format!("GET {url}: {e}"))?;
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("GET {url}: no TLS details on the response"))
}
