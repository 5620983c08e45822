//! The `archfarm-agent` binary, registered with a [`Coordinator`].

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use archfarm_protocol::api::AgentState;
use rustix::process::Signal;

use crate::coordinator::Coordinator;
use crate::process::{bin_path, clean_env, processes_of, wait_until, Daemon, ProcessInfo, Scratch};

/// How long an agent may take to show up in `GET /api/v1/agents`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--name`.
    pub name: String,
    /// `--capacity`.
    pub capacity: u32,
    /// `--platform` values; empty means the agent detects its native platform.
    pub platforms: Vec<String>,
    /// `--emulate` (`auto`, `none` or a list); None leaves the agent's default.
    pub emulate: Option<String>,
    /// A join token other than the coordinator's (to test rejection).
    pub join_token: Option<String>,
    /// The URL the agent reaches the coordinator at (a proxy in front of it); None: its own.
    pub via: Option<String>,
    /// `--work-dir`; None puts it in the agent's scratch directory.
    pub work_dir: Option<PathBuf>,
    /// Further flags.
    pub extra_args: Vec<String>,
}

impl AgentOptions {
    /// An agent called `name` with capacity 1 and the agent's defaults otherwise.
    pub fn new(name: &str) -> AgentOptions {
        AgentOptions {
            name: name.to_string(),
            capacity: 1,
            platforms: Vec::new(),
            emulate: None,
            join_token: None,
            via: None,
            work_dir: None,
            extra_args: Vec::new(),
        }
    }

    /// Reaches the coordinator at `url` (a proxy in front of it).
    pub fn via(mut self, url: &str) -> Self {
        self.via = Some(url.to_string());
        self
    }

    /// Sets `--work-dir` (e.g. a small file system the test mounted).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Adds a `--platform` (declared native).
    pub fn platform(mut self, platform: &str) -> Self {
        self.platforms.push(platform.to_string());
        self
    }

    /// Sets `--emulate`.
    pub fn emulate(mut self, emulate: &str) -> Self {
        self.emulate = Some(emulate.to_string());
        self
    }

    /// Sets `--capacity`.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Adds one more command-line argument (e.g. `--ca-cert`, then its file).
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.extra_args
            .push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Presents `token` instead of the coordinator's join token.
    pub fn join_token(mut self, token: &str) -> Self {
        self.join_token = Some(token.to_string());
        self
    }
}

/// A running agent with its work dir (buildah storage, contexts) in a scratch directory.
#[derive(Debug)]
pub struct Agent {
    // Field order is drop order: stop the agent and its builds before deleting its storage.
    daemon: Daemon,
    name: String,
    /// What it was started with, so a restart is the same agent (name, work dir, flags).
    opts: AgentOptions,
    /// Coordinator URL and join token it was started with.
    coordinator: (String, String),
    dir: Scratch,
}

impl Agent {
    /// Starts an agent and waits until the coordinator lists it as online.
    pub fn start(coordinator: &Coordinator, opts: AgentOptions) -> Agent {
        let mut agent = Self::spawn(coordinator, opts);
        agent.wait_online(coordinator);
        agent
    }

    /// Starts an agent without waiting for it to register.
    pub fn spawn(coordinator: &Coordinator, opts: AgentOptions) -> Agent {
        let dir = Scratch::new(&format!("agent-{}", opts.name));
        let token = opts
            .join_token
            .clone()
            .unwrap_or_else(|| coordinator.join_token().to_string());
        let url = opts
            .via
            .clone()
            .unwrap_or_else(|| coordinator.url().to_string());
        let target = (url, token);
        let daemon = spawn_daemon(&opts, &target, &dir);
        Agent {
            daemon,
            name: opts.name.clone(),
            opts,
            coordinator: target,
            dir,
        }
    }

    /// Waits until the coordinator lists this agent as online.
    pub fn wait_online(&mut self, coordinator: &Coordinator) {
        let name = self.name.clone();
        wait_until(
            REGISTER_TIMEOUT,
            &format!("agent {name} to register"),
            || {
                self.daemon.assert_running();
                coordinator
                    .agents()
                    .iter()
                    .any(|a| a.name == name && a.state == AgentState::Online)
            },
        );
    }

    /// SIGKILLs the agent's whole process group (the agent and the buildah it runs), as when its
    /// machine dies, and reaps it.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts the agent again after [`Agent::kill`] (or [`Agent::stop`]): same name, flags and work
    /// dir, so the same installation id. Does not wait for it to register.
    pub fn restart(&mut self) {
        self.daemon.kill();
        self.daemon = spawn_daemon(&self.opts, &self.coordinator, &self.dir);
    }

    /// Stops the agent: SIGTERM to its process group, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// SIGSTOPs the agent's process group: it stays alive but silent, like a machine that hangs.
    pub fn freeze(&mut self) {
        self.daemon.signal(Signal::STOP);
    }

    /// SIGCONTs a frozen agent.
    pub fn thaw(&mut self) {
        self.daemon.signal(Signal::CONT);
    }

    /// True while the agent process runs (it may be frozen).
    pub fn is_running(&mut self) -> bool {
        self.daemon.exited().is_none()
    }

    /// The agent's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The `--work-dir` (buildah storage under `storage/`, builds under `builds/`).
    pub fn work_dir(&self) -> PathBuf {
        self.opts
            .work_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("work"))
    }

    /// Processes working for this agent other than the agent itself: its descendants, its process
    /// group, and anything whose command line, root or cwd is under its work dir (buildah and the
    /// RUN step it chroots into), including orphans a killed agent left behind.
    pub fn build_processes(&self) -> Vec<ProcessInfo> {
        processes_of(self.daemon.pid(), &self.work_dir())
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for the agent to exit by itself; panics if it keeps running.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.daemon.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "agent {} still running after {timeout:?}; its log:\n{}",
                self.name,
                self.daemon.log_tail(40)
            )
        })
    }

    /// Everything the agent wrote so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }
}

/// Starts the agent binary for `opts` against `(url, join token)` with its work dir in `dir`; the
/// log is appended to, so a restarted agent's log follows its previous life.
fn spawn_daemon(opts: &AgentOptions, target: &(String, String), dir: &Scratch) -> Daemon {
    let mut cmd = Command::new(bin_path("archfarm-agent"));
    cmd.arg("--coordinator")
        .arg(&target.0)
        .arg("--join-token")
        .arg(&target.1)
        .arg("--name")
        .arg(&opts.name)
        .arg("--work-dir")
        .arg(opts.work_dir.clone().unwrap_or_else(|| dir.join("work")))
        .arg("--capacity")
        .arg(opts.capacity.to_string());
    for platform in &opts.platforms {
        cmd.arg("--platform").arg(platform);
    }
    if let Some(emulate) = &opts.emulate {
        cmd.arg("--emulate").arg(emulate);
    }
    cmd.args(&opts.extra_args);
    clean_env(&mut cmd);
    Daemon::spawn(
        &format!("archfarm-agent {}", opts.name),
        cmd,
        dir.join("agent.log"),
    )
}
