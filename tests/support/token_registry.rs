//! A real registry that wants bearer tokens: Debian's `docker-registry` with `auth: token`,
//! trusting the [`TokenServer`] beside it, as Docker Hub, Harbor or GitLab's registry do. Plain
//! HTTP on loopback, so the realm (another port) is another host to archfarm's host check and
//! must be listed with `--registry-redirect-host`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::process::{Daemon, Scratch};
use crate::registry::serve_locked_registry;
use crate::token_server::{Issued, TokenServer, ISSUER, SERVICE};

/// `docker-registry serve` in token mode with its token service; both stopped on drop.
#[derive(Debug)]
pub struct TokenRegistry {
    // Field order is drop order: stop the process before deleting its storage.
    daemon: Daemon,
    tokens: TokenServer,
    host: String,
    user: String,
    password: String,
    dir: Scratch,
}

impl TokenRegistry {
    /// Starts the token service for `user` with a new random password and a registry trusting
    /// it, and waits until the registry answers `GET /v2/` with its Bearer challenge (401).
    pub fn start(user: &str) -> TokenRegistry {
        let dir = Scratch::new("token-registry");
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let tokens = TokenServer::start(user, &password);
        let bundle = dir.join("token-cert.pem");
        fs::write(&bundle, tokens.cert_pem()).expect("write the token certificate");
        let http = crate::http_client();
        let (daemon, host) = serve_locked_registry(
            &dir,
            "http",
            &http,
            "the token registry",
            |host| {
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n\
                     http:\n  addr: {host}\n",
                    dir.join("data").display(),
                    tokens.realm(),
                    bundle.display(),
                )
            },
        );
        TokenRegistry {
            daemon,
            tokens,
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

    /// The token service's `127.0.0.1:PORT`, for `--registry-redirect-host`.
    pub fn token_host(&self) -> String {
        self.tokens.host()
    }

    /// The realm URL the registry's challenge names.
    pub fn realm(&self) -> String {
        self.tokens.realm()
    }

    /// The password it accepts.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `USER:PASSWORD`, for `skopeo --creds`.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// Every token the service issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.tokens.issued()
    }

    /// Makes the token service's next `n` tokens expired when issued.
    pub fn issue_expired(&self, n: usize) {
        self.tokens.issue_expired(n);
    }

    /// Writes a Docker `config.json` with this registry's user name and password and returns
    /// its path.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(self.creds());
        let path = dir.join("config.json");
        let json = serde_json::json!({ "auths": { self.host.clone(): { "auth": auth } } });
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
