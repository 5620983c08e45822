//! The `archfarm-agent` binary, registered with a [`Coordinator`].

use std::process::{Command, ExitStatus};
use std::time::Duration;

use archfarm_protocol::api::AgentState;

use crate::coordinator::Coordinator;
use crate::process::{bin_path, clean_env, wait_until, Daemon, Scratch};

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
            extra_args: Vec::new(),
        }
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
    _dir: Scratch,
}

impl Agent {
    /// Starts an agent and waits until the coordinator lists it as online.
    pub fn start(coordinator: &Coordinator, opts: AgentOptions) -> Agent {
        let mut agent = Self::spawn(coordinator, opts);
        let name = agent.name.clone();
        wait_until(
            REGISTER_TIMEOUT,
            &format!("agent {name} to register"),
            || {
                agent.daemon.assert_running();
                coordinator
                    .agents()
                    .iter()
                    .any(|a| a.name == name && a.state == AgentState::Online)
            },
        );
        agent
    }

    /// Starts an agent without waiting for it to register.
    pub fn spawn(coordinator: &Coordinator, opts: AgentOptions) -> Agent {
        let dir = Scratch::new(&format!("agent-{}", opts.name));
        let token = opts
            .join_token
            .as_deref()
            .unwrap_or(coordinator.join_token());
        let mut cmd = Command::new(bin_path("archfarm-agent"));
        cmd.arg("--coordinator")
            .arg(coordinator.url())
            .arg("--join-token")
            .arg(token)
            .arg("--name")
            .arg(&opts.name)
            .arg("--work-dir")
            .arg(dir.join("work"))
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
        let daemon = Daemon::spawn(
            &format!("archfarm-agent {}", opts.name),
            cmd,
            dir.join("agent.log"),
        );
        Agent {
            daemon,
            name: opts.name,
            _dir: dir,
        }
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
}
