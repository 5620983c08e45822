//! The `archfarm-coordinator` binary on a free port, its HTTP API, and the `archfarm` CLI pointed at it.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use archfarm_protocol::api::{Agent, AgentList, Job, JobList};
use reqwest::blocking::RequestBuilder;
use serde::de::DeserializeOwned;

use crate::database::Database;
use crate::process::{bin_path, clean_env, free_port, Daemon, Scratch};
use crate::tls::CoordinatorTls;

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
    /// Serve HTTPS: `url()` is `https://…`, and the harness's own client and the CLI it runs
    /// trust the CA. None: plain HTTP.
    pub tls: Option<CoordinatorTls>,
    /// A database to share with other coordinators (replicas). None: a PostgreSQL database of its
    /// own when `ARCHFARM_TEST_POSTGRES` is set, else SQLite in its data directory.
    pub database: Option<Arc<Database>>,
    /// Further environment variables (e.g. a `PATH` with a credential helper in it).
    pub env: Vec<(String, String)>,
}

impl CoordinatorOptions {
    /// Leases that lapse quickly: `--heartbeat-secs 1 --missed-heartbeats 3`, so a dead agent's
    /// build is requeued about three seconds after its last heartbeat.
    pub fn fast_leases() -> CoordinatorOptions {
        CoordinatorOptions::default()
            .arg("--heartbeat-secs")
            .arg("1")
            .arg("--missed-heartbeats")
            .arg("3")
    }

    /// Adds one more command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// Sets one more environment variable of the coordinator's process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Uses `database` (shared with the other coordinators given it).
    pub fn database(mut self, database: Arc<Database>) -> Self {
        self.database = Some(database);
        self
    }

    /// Serves HTTPS with `tls`.
    pub fn tls(mut self, tls: CoordinatorTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `https` or `http`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The harness's client for this coordinator: trusting its CA over HTTPS.
    fn http_client(&self) -> reqwest::blocking::Client {
        match &self.tls {
            Some(tls) => crate::tls::https_client(&tls.ca),
            None => crate::http_client(),
        }
    }

    /// Environment for the CLI the harness runs against it: `ARCHFARM_CA_CERT` over HTTPS.
    fn cli_env(&self) -> Vec<(String, String)> {
        match &self.tls {
            Some(tls) => vec![("ARCHFARM_CA_CERT".to_string(), tls.ca.display().to_string())],
            None => Vec::new(),
        }
    }
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            join_token: format!("join-{}", uuid::Uuid::new_v4().simple()),
            api_token: None,
            extra_args: Vec::new(),
            tls: None,
            database: None,
            env: Vec::new(),
        }
    }
}

/// A running coordinator with its data in a scratch directory (SQLite by default); stopped on drop.
#[derive(Debug)]
pub struct Coordinator {
    // Field order is drop order: stop the process before deleting its data.
    daemon: Daemon,
    database: Arc<Database>,
    url: String,
    /// `127.0.0.1:PORT`, kept so a restart binds the same port.
    listen: String,
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
    pub fn start_with(mut opts: CoordinatorOptions) -> Coordinator {
        let dir = Scratch::new("coordinator");
        let http = opts.http_client();
        let database = opts
            .database
            .clone()
            .or_else(|| Database::from_env().map(Arc::new))
            .unwrap_or_else(|| Arc::new(Database::Sqlite(dir.join("data").join("archfarm.db"))));
        // Kept in the options so a restart uses the same database.
        opts.database = Some(database.clone());
        for attempt in 1..=3 {
            let listen = format!("127.0.0.1:{}", free_port());
            match spawn_ready(&listen, &opts, &dir, &http) {
                Ok(daemon) => {
                    return Coordinator {
                        daemon,
                        database,
                        url: format!("{}://{listen}", opts.scheme()),
                        listen,
                        opts,
                        http,
                        dir,
                    }
                }
                // Someone took the port between free_port() and the bind: try another one.
                Err(mut daemon) => {
                    if attempt < 3
                        && daemon
                            .log()
                            .to_lowercase()
                            .contains("address already in use")
                    {
                        continue;
                    }
                    daemon.assert_running();
                }
            }
        }
        unreachable!("the coordinator either started or panicked")
    }

    /// SIGKILLs the coordinator (no chance to clean up, as on a power cut) and reaps it.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts the coordinator again on the same port, data directory, database and flags, after
    /// [`Coordinator::kill`], and waits until it is healthy. Retries while the port is still busy.
    pub fn start_again(&mut self) {
        self.daemon.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match spawn_ready(&self.listen, &self.opts, &self.dir, &self.http) {
                Ok(daemon) => {
                    self.daemon = daemon;
                    return;
                }
                Err(mut daemon) => {
                    let busy = daemon
                        .log_tail(20)
                        .to_lowercase()
                        .contains("address already in use");
                    if !busy || Instant::now() >= deadline {
                        daemon.assert_running();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// [`Coordinator::start_again`] under another `--replica-name`, as a Kubernetes pod that
    /// was replaced comes back under a new name.
    pub fn start_again_as(&mut self, replica_name: &str) {
        let args = &mut self.opts.extra_args;
        match args.iter().position(|a| a == "--replica-name") {
            Some(i) if i + 1 < args.len() => args[i + 1] = replica_name.to_string(),
            _ => args.extend(["--replica-name".to_string(), replica_name.to_string()]),
        }
        self.start_again();
    }

    /// The coordinator's process id (e.g. to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`CoordinatorOptions::tls`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on (a build step reaching it on the host's loopback needs it).
    pub fn port(&self) -> u16 {
        self.url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the coordinator URL has a port")
    }

    /// The join token agents must present.
    pub fn join_token(&self) -> &str {
        &self.opts.join_token
    }

    /// The `--data-dir` given to the coordinator.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The coordinator's database, to read back with `psql` or `sqlite3`.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The same database, for a second coordinator to share ([`CoordinatorOptions::database`]).
    pub fn shared_database(&self) -> Arc<Database> {
        self.database.clone()
    }

    /// The files of the data directory and the places in the database holding `needle`.
    pub fn stored_containing(&self, needle: &str) -> Vec<String> {
        let mut found = crate::files_containing(&self.data_dir(), needle);
        found.extend(self.database.containing(needle));
        found
    }

    /// The last lines of the coordinator's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    /// Everything the coordinator has logged.
    pub fn log(&self) -> String {
        self.daemon.log()
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

    /// A build's log so far (`GET /api/v1/builds/{id}/log`); empty when it cannot be read.
    pub fn build_log(&self, build: uuid::Uuid) -> String {
        self.request(
            reqwest::Method::GET,
            &format!("/api/v1/builds/{build}/log?offset=0"),
        )
        .send()
        .ok()
        .filter(|r| r.status().is_success())
        .and_then(|r| r.text().ok())
        .unwrap_or_default()
    }

    /// One job, or None when the coordinator does not answer (e.g. while it restarts).
    pub fn try_job(&self, id: uuid::Uuid) -> Option<Job> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"))
            .send()
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.text().ok()?;
        Some(
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET /api/v1/jobs/{id}: not a Job ({e}): {body}")),
        )
    }

    /// Polls a job until `done` holds for it, returning that snapshot; panics with the last one
    /// seen after `timeout`.
    pub fn wait_job(
        &self,
        id: uuid::Uuid,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Job) -> bool,
    ) -> Job {
        let mut last: Option<Job> = None;
        let start = Instant::now();
        loop {
            if let Some(job) = self.try_job(id) {
                if done(&job) {
                    return job;
                }
                last = Some(job);
            }
            if start.elapsed() >= timeout {
                panic!("timed out after {timeout:?} waiting for job {id}: {what}; last seen: {last:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls a job until it is succeeded, failed or cancelled.
    pub fn wait_terminal(&self, id: uuid::Uuid, timeout: Duration) -> Job {
        self.wait_job(id, timeout, "a terminal state", |j| j.state.is_terminal())
    }

    /// `archfarm build --detach ARGS`: submits a job and returns its id (stdout's last line).
    pub fn submit(&self, args: &[&str]) -> uuid::Uuid {
        let mut all = vec!["build", "--detach"];
        all.extend_from_slice(args);
        let out = self.cli_timeout(&all, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "archfarm {} failed: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = crate::last_line(&out.stdout);
        line.parse().unwrap_or_else(|e| {
            panic!("archfarm build --detach printed {line:?}, not a job id ({e})")
        })
    }

    /// Starts `archfarm ARGS` against this coordinator in the background.
    pub fn cli_background(&self, args: &[&str]) -> BackgroundCli {
        BackgroundCli::spawn_with_env(
            &self.url,
            self.opts.api_token.as_deref(),
            args,
            &self.opts.cli_env(),
        )
    }

    /// Runs `archfarm ARGS` against this coordinator with [`CLI_TIMEOUT`].
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, CLI_TIMEOUT)
    }

    /// Runs `archfarm ARGS` against this coordinator; panics if it runs longer than `timeout`.
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.cli_background(args).wait(timeout)
    }

    /// The TLS files it serves with, if it serves HTTPS.
    pub fn tls(&self) -> Option<&CoordinatorTls> {
        self.opts.tls.as_ref()
    }

    /// Sends `signal` to the coordinator (e.g. SIGHUP to reload its certificate).
    pub fn signal(&mut self, signal: rustix::process::Signal) {
        self.daemon.signal(signal);
    }
}

/// Starts the coordinator binary on `listen` and waits for `/healthz`; the daemon is returned as the
/// error when it exits first (its log says why).
fn spawn_ready(
    listen: &str,
    opts: &CoordinatorOptions,
    dir: &Scratch,
    http: &reqwest::blocking::Client,
) -> Result<Daemon, Daemon> {
    let mut cmd = Command::new(bin_path("archfarm-coordinator"));
    cmd.arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--join-token")
        .arg(&opts.join_token);
    if let Some(db) = opts.database.as_ref().filter(|d| d.is_postgres()) {
        cmd.arg("--database").arg(db.url());
    }
    if let Some(token) = &opts.api_token {
        cmd.arg("--api-token").arg(token);
    }
    if let Some(tls) = &opts.tls {
        cmd.arg("--tls-cert").arg(&tls.cert);
        cmd.arg("--tls-key").arg(&tls.key);
        if let Some(ca) = &tls.client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
    }
    cmd.args(&opts.extra_args);
    clean_env(&mut cmd);
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    let daemon = Daemon::spawn("archfarm-coordinator", cmd, dir.join("coordinator.log"));
    daemon.ready_at(
        &format!("{}://{listen}/healthz", opts.scheme()),
        "the coordinator",
        READY_TIMEOUT,
        http,
    )
}

/// Runs the `archfarm` CLI with `ARCHFARM_COORDINATOR=url` (and `ARCHFARM_TOKEN`), no stdin.
///
/// Output goes to files rather than pipes so a chatty build cannot block on a full pipe while we
/// wait with a deadline. It is echoed to the test's own output, which the harness shows on failure.
pub fn run_cli(url: &str, token: Option<&str>, args: &[&str], timeout: Duration) -> Output {
    BackgroundCli::spawn(url, token, args).wait(timeout)
}

/// An `archfarm` CLI run in the background (e.g. following a job while the test kills things);
/// killed on drop if still running.
#[derive(Debug)]
pub struct BackgroundCli {
    child: Option<Child>,
    args: Vec<String>,
    dir: Scratch,
}

impl BackgroundCli {
    /// Starts `archfarm ARGS` with `ARCHFARM_COORDINATOR=url` (and `ARCHFARM_TOKEN`), no stdin.
    pub fn spawn(url: &str, token: Option<&str>, args: &[&str]) -> BackgroundCli {
        Self::spawn_with_env(url, token, args, &[])
    }

    /// [`BackgroundCli::spawn`] with further environment variables (e.g. `ARCHFARM_CA_CERT`).
    pub fn spawn_with_env(
        url: &str,
        token: Option<&str>,
        args: &[&str],
        env: &[(String, String)],
    ) -> BackgroundCli {
        let dir = Scratch::new("cli");
        let mut cmd = Command::new(bin_path("archfarm"));
        cmd.args(args);
        clean_env(&mut cmd);
        cmd.env("ARCHFARM_COORDINATOR", url)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout")).expect("create stdout file"))
            .stderr(File::create(dir.join("stderr")).expect("create stderr file"));
        if let Some(token) = token {
            cmd.env("ARCHFARM_TOKEN", token);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start archfarm: {e}"));
        BackgroundCli {
            child: Some(child),
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
        }
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("stderr")).unwrap_or_default())
            .into_owned()
    }

    /// Waits for it to exit and returns its output (echoed to the test's output); panics if it
    /// runs longer than `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("not waited for yet");
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
        let stdout = std::fs::read(self.dir.join("stdout")).unwrap_or_default();
        let stderr = std::fs::read(self.dir.join("stderr")).unwrap_or_default();
        let args = self.args.join(" ");
        eprintln!(
            "$ archfarm {args}\n--- stdout ---\n{}--- stderr ---\n{}--- {} ---",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr),
            status.map_or_else(|| "timed out".to_string(), |s| s.to_string())
        );
        let Some(status) = status else {
            panic!("archfarm {args} did not finish within {timeout:?}");
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for BackgroundCli {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
