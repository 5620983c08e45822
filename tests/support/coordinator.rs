//! The `archfarm-coordinator` binary on a free port, its HTTP API, and the `archfarm` CLI pointed at it.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use archfarm_protocol::api::{Agent, AgentList, Job, JobList};
use reqwest::blocking::RequestBuilder;
use serde::de::DeserializeOwned;

use crate::process::{bin_path, clean_env, free_port, wait_until, Daemon, Scratch};

/// How long the coordinator may take to answer `/healthz` (it migrates its database first).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a CLI call may take; builds under QEMU on two cores are slow.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How to start a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// `--join-token`.
    pub join_token: String,
    /// `--api-token`, when the API should require one.
    pub api_token: Option<String>,
    /// Further flags.
    pub extra_args: Vec<String>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            join_token: format!("join-{}", uuid::Uuid::new_v4().simple()),
            api_token: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running coordinator with its data in a scratch directory (SQLite by default); stopped on drop.
#[derive(Debug)]
pub struct Coordinator {
    // Field order is drop order: stop the process before deleting its data.
    daemon: Daemon,
    url: String,
    opts: CoordinatorOptions,
    http: reqwest::blocking::Client,
    dir: Scratch,
}

impl Coordinator {
    /// Starts a coordinator with a random join token and no API token.
    pub fn start() -> Coordinator {
        Self::start_with(CoordinatorOptions::default())
    }

    /// Starts a coordinator and waits until `GET /healthz` answers 200.
    pub fn start_with(opts: CoordinatorOptions) -> Coordinator {
        let dir = Scratch::new("coordinator");
        let http = crate::http_client();
        let data_dir = dir.join("data");
        for attempt in 1..=3 {
            let listen = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(bin_path("archfarm-coordinator"));
            cmd.arg("--listen")
                .arg(&listen)
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--join-token")
                .arg(&opts.join_token);
            if let Some(token) = &opts.api_token {
                cmd.arg("--api-token").arg(token);
            }
            cmd.args(&opts.extra_args);
            clean_env(&mut cmd);
            let mut daemon =
                Daemon::spawn("archfarm-coordinator", cmd, dir.join("coordinator.log"));
            let url = format!("http://{listen}");
            let health = format!("{url}/healthz");
            let mut exited = false;
            wait_until(
                READY_TIMEOUT,
                &format!("the coordinator at {health}"),
                || {
                    if daemon.exited().is_some() {
                        exited = true;
                        return true;
                    }
                    http.get(&health)
                        .send()
                        .map(|r| r.status() == 200)
                        .unwrap_or(false)
                },
            );
            if !exited {
                return Coordinator {
                    daemon,
                    url,
                    opts,
                    http,
                    dir,
                };
            }
            // Someone took the port between free_port() and the bind: try another one.
            let log = daemon.log().to_lowercase();
            if attempt < 3 && log.contains("address already in use") {
                continue;
            }
            daemon.assert_running();
        }
        unreachable!("the coordinator either started or panicked")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The join token agents must present.
    pub fn join_token(&self) -> &str {
        &self.opts.join_token
    }

    /// The `--data-dir` given to the coordinator.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The last lines of the coordinator's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    /// Panics with the log tail if the coordinator has died.
    pub fn assert_running(&mut self) {
        self.daemon.assert_running();
    }

    /// A request to `PATH` (e.g. `/api/v1/jobs`) carrying the API token, if there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.url));
        match &self.opts.api_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// `GET PATH`, asserting 200, parsed as JSON.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> T {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: unexpected body ({e}): {body}"))
    }

    /// Every job (`GET /api/v1/jobs`), newest first.
    pub fn jobs(&self) -> Vec<Job> {
        self.get_json::<JobList>("/api/v1/jobs?limit=100").jobs
    }

    /// The only job this coordinator has; panics when there are none or several.
    pub fn only_job(&self) -> Job {
        let mut jobs = self.jobs();
        assert_eq!(jobs.len(), 1, "expected exactly one job, got {jobs:#?}");
        jobs.remove(0)
    }

    /// One job (`GET /api/v1/jobs/{id}`).
    pub fn job(&self, id: uuid::Uuid) -> Job {
        self.get_json(&format!("/api/v1/jobs/{id}"))
    }

    /// Every registered agent (`GET /api/v1/agents`).
    pub fn agents(&self) -> Vec<Agent> {
        self.get_json::<AgentList>("/api/v1/agents").agents
    }

    /// Runs `archfarm ARGS` against this coordinator with [`CLI_TIMEOUT`].
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, CLI_TIMEOUT)
    }

    /// Runs `archfarm ARGS` against this coordinator; panics if it runs longer than `timeout`.
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        run_cli(&self.url, self.opts.api_token.as_deref(), args, timeout)
    }
}

/// Runs the `archfarm` CLI with `ARCHFARM_COORDINATOR=url` (and `ARCHFARM_TOKEN`), no stdin.
///
/// Output goes to files rather than pipes so a chatty build cannot block on a full pipe while we
/// wait with a deadline. It is echoed to the test's own output, which the harness shows on failure.
pub fn run_cli(url: &str, token: Option<&str>, args: &[&str], timeout: Duration) -> Output {
    let dir = Scratch::new("cli");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new(bin_path("archfarm"));
    cmd.args(args);
    clean_env(&mut cmd);
    cmd.env("ARCHFARM_COORDINATOR", url)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    if let Some(token) = token {
        cmd.env("ARCHFARM_TOKEN", token);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start archfarm: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait archfarm") {
            break Some(status);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    eprintln!(
        "$ archfarm {}\n--- stdout ---\n{}--- stderr ---\n{}--- {} ---",
        args.join(" "),
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
        status.map_or_else(|| "timed out".to_string(), |s| s.to_string())
    );
    let Some(status) = status else {
        panic!(
            "archfarm {} did not finish within {timeout:?}",
            args.join(" ")
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}
