//! A real registry behind TLS (a certificate from a [`TestCa`] made for the test)
//! that demands a password (a bcrypt htpasswd file made with `htpasswd -B`, from apache2-utils).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{clean_env, free_port, wait_until, Daemon, Scratch};
use crate::tls::{https_client, CertFiles, TestCa};

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
