//! A real OCI registry: Debian's `docker-registry` (the CNCF distribution server) on a free port.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::process::{clean_env, free_port, Daemon, Scratch};

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `docker-registry serve` process with its storage in a scratch directory; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    // Field order is drop order: stop the process before deleting its storage.
    daemon: Daemon,
    host: String,
    /// The config file naming the port and storage, kept so a restart serves the same content.
    config: PathBuf,
    http: reqwest::blocking::Client,
    dir: Scratch,
}

#[derive(Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        let dir = Scratch::new("registry");
        let http = crate::http_client();
        for attempt in 1..=3 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let config = dir.join(format!("config-{port}.yml"));
            // delete.enabled lets tests (and the stitcher, if it wants) remove manifests.
            let yaml = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {host}\n",
                dir.join("data").display()
            );
            fs::write(&config, yaml).expect("write registry config");
            match spawn_ready(&host, &config, &dir, &http) {
                Ok(daemon) => {
                    return Registry {
                        daemon,
                        host,
                        config,
                        http,
                        dir,
                    }
                }
                // Someone took the port between free_port() and the bind: try another one.
                Err(mut daemon) => {
                    if attempt < 3 && daemon.log().contains("address already in use") {
                        continue;
                    }
                    daemon.assert_running();
                }
            }
        }
        unreachable!("the registry either started or panicked")
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Stops the registry (SIGTERM, then SIGKILL after a grace period); its storage stays.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// SIGKILLs the registry; its storage stays.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// True while `GET /v2/` answers.
    pub fn is_up(&self) -> bool {
        self.http
            .get(format!("http://{}/v2/", self.host))
            .send()
            .is_ok()
    }

    /// Starts the registry again on the same port and storage after [`Registry::stop`] or
    /// [`Registry::kill`], and waits until it answers. Retries while the port is still busy.
    pub fn start_again(&mut self) {
        self.daemon.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match spawn_ready(&self.host, &self.config, &self.dir, &self.http) {
                Ok(daemon) => {
                    self.daemon = daemon;
                    return;
                }
                Err(mut daemon) => {
                    let busy = daemon.log_tail(20).contains("address already in use");
                    if !busy || Instant::now() >= deadline {
                        daemon.assert_running();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The registry's tags for `repo` (`GET /v2/REPO/tags/list`); empty when the repository is unknown.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let url = format!("http://{}/v2/{repo}/tags/list", self.host);
        let resp = self.http.get(&url).send().expect("GET tags/list");
        if resp.status() == 404 {
            return Vec::new();
        }
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        let list: TagList = resp.json().expect("tags/list JSON");
        let mut tags = list.tags.unwrap_or_default();
        tags.sort();
        tags
    }

    /// The `Content-Type` the registry serves a manifest with, accepting index and manifest types.
    pub fn manifest_content_type(&self, repo: &str, reference: &str) -> Option<String> {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host);
        let resp = self
            .http
            .head(&url)
            .header("Accept", crate::oci::ACCEPT_MANIFESTS)
            .send()
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The last lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    /// Everything the registry logged (one line per request it answered, among others).
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// Starts `docker-registry serve CONFIG` and waits until `GET /v2/` answers 200; the daemon is
/// returned as the error when it exits first (its log says why).
fn spawn_ready(
    host: &str,
    config: &std::path::Path,
    dir: &Scratch,
    http: &reqwest::blocking::Client,
) -> Result<Daemon, Daemon> {
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(config);
    clean_env(&mut cmd);
    let daemon = Daemon::spawn("docker-registry", cmd, dir.join("registry.log"));
    daemon.ready_at(
        &format!("http://{host}/v2/"),
        "the registry",
        READY_TIMEOUT,
        http,
    )
}

/// Starts `docker-registry` for a test registry of another kind (TLS, token auth) in `dir`, on a
/// free loopback port, with the configuration `config(host)` writes for that address, and waits
/// until `GET {scheme}://host/v2/` answers 401 (it wants credentials). A port taken meanwhile by
/// another process is tried again with another. `what` names it in a timeout.
pub(crate) fn serve_locked_registry(
    dir: &crate::process::Scratch,
    scheme: &str,
    http: &reqwest::blocking::Client,
    what: &str,
    config: impl Fn(&str) -> String,
) -> (crate::process::Daemon, String) {
    use crate::process::{clean_env, free_port, wait_until, Daemon};
    for attempt in 1..=3 {
        let host = format!("127.0.0.1:{}", free_port());
        let file = dir.join("config.yml");
        std::fs::write(&file, config(&host)).expect("write registry config");
        let mut cmd = std::process::Command::new("docker-registry");
        cmd.arg("serve").arg(&file);
        clean_env(&mut cmd);
        let mut daemon = Daemon::spawn("docker-registry", cmd, dir.join("registry.log"));
        let url = format!("{scheme}://{host}/v2/");
        let mut exited = false;
        wait_until(READY_TIMEOUT, &format!("{what} at {url}"), || {
            if daemon.exited().is_some() {
                exited = true;
                return true;
            }
            http.get(&url).send().is_ok_and(|r| r.status() == 401)
        });
        if !exited {
            return (daemon, host);
        }
        if attempt < 3 && daemon.log().contains("address already in use") {
            continue;
        }
        daemon.assert_running();
    }
    unreachable!("the registry either started or panicked")
}
