//! A real registry behind TLS (a certificate from a [`TestCa`] made for the test)
//! that demands a password (a bcrypt htpasswd file made with `htpasswd -B`, from apache2-utils).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{clean_env, Daemon, Scratch};
use crate::registry::serve_locked_registry;
use crate::tls::{https_client, CertFiles, TestCa};

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
        let CertFiles { cert, key, .. } = ca.server("registry");
        let http = https_client(&ca.ca_path());
        let (daemon, host) =
            serve_locked_registry(&dir, "https", &http, "the TLS registry", |host| {
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     auth:\n  htpasswd:\n    realm: archfarm-test\n    path: {}\n\
                     http:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\n",
                    dir.join("data").display(),
                    dir.join("htpasswd").display(),
                    cert.display(),
                    key.display(),
                )
            });
        SecureRegistry {
            daemon,
            host,
            user: user.to_string(),
            password,
            dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The password it accepts.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Accepts `password` from now on, and no longer the old one: the htpasswd file is replaced
    /// (written beside it, then renamed over it). docker-registry 2.8 reads the file again when
    /// its modification time changes, before it checks the next request (seen here: the old
    /// password is refused and the new one taken at once, without a restart).
    pub fn set_password(&mut self, password: &str) {
        let htpasswd = run("htpasswd", &["-Bbn", &self.user, password], self.dir.path());
        let next = self.dir.join("htpasswd.next");
        fs::write(&next, htpasswd).expect("write htpasswd");
        fs::rename(&next, self.dir.join("htpasswd")).expect("replace htpasswd");
        self.password = password.to_string();
    }

    /// The user it accepts.
    pub fn user(&self) -> &str {
        &self.user
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
