//! A real registry behind TLS (a certificate from a CA made for the test with the `openssl` CLI)
//! that demands a password (a bcrypt htpasswd file made with `htpasswd -B`, from apache2-utils).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{clean_env, free_port, wait_until, Daemon, Scratch};

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a command, panicking with its stderr when it fails.
fn run(program: &str, args: &[&str], cwd: &Path) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(cwd);
    clean_env(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup.sh): {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A certificate authority made for one test: its certificate signs the registries' certificates.
#[derive(Debug)]
pub struct TestCa {
    dir: Scratch,
}

impl TestCa {
    /// A new CA (EC P-256, valid two days).
    pub fn new() -> TestCa {
        let dir = Scratch::new("ca");
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=archfarm test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        );
        // skopeo and buildah take a directory of *.crt files.
        fs::create_dir(dir.join("certs.d")).expect("create certs.d");
        fs::copy(dir.join("ca.pem"), dir.join("certs.d/ca.crt")).expect("copy ca.crt");
        TestCa { dir }
    }

    /// The CA certificate (PEM), for `--registry-ca-cert`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A directory holding the CA as `ca.crt`, for `skopeo --cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// Issues a server certificate for 127.0.0.1 and localhost into `dir` (`NAME.pem`, `NAME.key`).
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (key, csr, pem) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.pem")),
        );
        let ext = dir.join(format!("{name}.ext"));
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        let s = |p: &Path| p.display().to_string();
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
                "-subj",
                "/CN=127.0.0.1",
            ],
            dir,
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&self.cert()),
                "-CAkey",
                &s(&self.dir.join("ca.key")),
                "-CAcreateserial",
                "-out",
                &s(&pem),
                "-days",
                "2",
                "-extfile",
                &s(&ext),
            ],
            self.dir.path(),
        );
        (pem, key)
    }

    /// A client for HTTPS services whose certificates this CA signed.
    pub fn http_client(&self) -> reqwest::blocking::Client {
        let pem = fs::read(self.cert()).expect("read CA");
        reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .build()
            .expect("build an HTTPS client")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// `docker-registry serve` over TLS with htpasswd authentication; stopped on drop.
#[derive(Debug)]
pub struct SecureRegistry {
    // Field order is drop order: stop the process before deleting its storage.
    daemon: Daemon,
    host: String,
    user: String,
    password: String,
    dir: Scratch,
}

impl SecureRegistry {
    /// Starts a registry on 127.0.0.1 with a certificate from `ca`, accepting `user` with a new
    /// random password, and waits until `GET /v2/` answers (401: it wants the password).
    pub fn start(ca: &TestCa, user: &str) -> SecureRegistry {
        let dir = Scratch::new("secure-registry");
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let htpasswd = run("htpasswd", &["-Bbn", user, &password], dir.path());
        fs::write(dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        let (cert, key) = ca.issue(dir.path(), "registry");
        let http = ca.http_client();
        for attempt in 1..=3 {
            let host = format!("127.0.0.1:{}", free_port());
            let config = dir.join("config.yml");
            let yaml = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 auth:\n  htpasswd:\n    realm: archfarm-test\n    path: {}\n\
                 http:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("data").display(),
                dir.join("htpasswd").display(),
                cert.display(),
                key.display(),
            );
            fs::write(&config, yaml).expect("write registry config");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config);
            clean_env(&mut cmd);
            let mut daemon = Daemon::spawn("docker-registry", cmd, dir.join("registry.log"));
            let url = format!("https://{host}/v2/");
            let mut exited = false;
            wait_until(READY_TIMEOUT, &format!("the TLS registry at {url}"), || {
                if daemon.exited().is_some() {
                    exited = true;
                    return true;
                }
                http.get(&url).send().is_ok_and(|r| r.status() == 401)
            });
            if !exited {
                return SecureRegistry {
                    daemon,
                    host,
                    user: user.to_string(),
                    password,
                    dir,
                };
            }
            if attempt < 3 && daemon.log().contains("address already in use") {
                continue;
            }
            daemon.assert_running();
        }
        unreachable!("the registry either started or panicked")
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The password it accepts.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `USER:PASSWORD`, for `skopeo --creds`.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// Writes a Docker `config.json` with this registry's credential under a URL key
    /// (`https://HOST/v2/`), as `docker login` writes some, and returns its path.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(self.creds());
        let path = dir.join("config.json");
        let json = serde_json::json!({
            "auths": { format!("https://{}/v2/", self.host): { "auth": auth } }
        });
        fs::write(&path, json.to_string()).expect("write config.json");
        path
    }

    /// Everything the registry logged.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
