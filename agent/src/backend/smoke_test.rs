//! The job's smoke test (`archfarm build --smoke-test`): its command run in the image just built,
//! after the binary check and before the push, on this agent and in the sandbox of the build's
//! `RUN` steps.
//!
//! A working container of the built image (`buildah from`, in the build's cgroup, so its memory,
//! CPU and process limits hold) runs the command with `buildah run` and the isolation and network
//! the steps had (the runtime shim hardens it as it hardens a step, see
//! [`super::runtime_shim`]); on an emulated platform the kernel runs its binaries through the
//! QEMU binfmt_misc handler, as it ran the steps'. The image's `ENTRYPOINT` comes first, then the
//! command, as `docker run IMAGE CMD ARGS` does; its user, working directory and environment
//! apply. The output goes to the build log, each line marked [`PREFIX`]. The container is removed
//! however the test ends; one that outlived its time limit or a cancellation is killed first.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use archfarm_protocol::duration::format_duration;
use archfarm_protocol::smoke_test::{join, SmokeTest};
use archfarm_protocol::{Network, Platform};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::isolation::Isolation;
use super::process::{run_logged_except, run_quiet};
use super::{BackendError, LogSink};
use crate::push::LayoutImage;

/// Put before each line the smoke test printed, in the build log.
pub const PREFIX: &str = "[smoke-test] ";

/// Why a smoke test failed its platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// It ran and exited with a code other than 0.
    #[error(
        "smoke test `{command}` exited with code {code} on {platform}{}",
        last_line.as_deref().map(|l| format!("; its last line: {l}")).unwrap_or_default()
    )]
    Exited {
        /// The command as given (without the image's entrypoint).
        command: String,
        /// The platform whose image it ran in.
        platform: Platform,
        /// Its exit code.
        code: i32,
        /// The last non-empty line it printed, if any.
        last_line: Option<String>,
    },
    /// Its program could not be started (not found, not executable).
    #[error("smoke test `{command}` could not start on {platform}: {why}")]
    NotStarted {
        /// The command as given.
        command: String,
        /// The platform whose image it ran in.
        platform: Platform,
        /// The runtime's reason, e.g. `exec: "app": executable file not found in $PATH`.
        why: String,
    },
    /// It ran past its time limit and was stopped.
    #[error(
        "smoke test `{command}` did not finish within {} on {platform} and was stopped",
        format_duration(*limit)
    )]
    TimedOut {
        /// The command as given.
        command: String,
        /// The platform whose image it ran in.
        platform: Platform,
        /// The job's time limit.
        limit: Duration,
    },
    /// buildah could not make or run its container (not the command's doing).
    #[error("smoke test `{command}` could not be run on {platform}: {why}")]
    NotRun {
        /// The command as given.
        command: String,
        /// The platform whose image it ran in.
        platform: Platform,
        /// What buildah said.
        why: String,
    },
}

/// Where the smoke test runs: the build's own sandbox.
pub struct Sandbox<'a> {
    /// `buildah` with the build's storage options.
    pub buildah: &'a (dyn Fn() -> Command + Sync),
    /// The isolation of the build's `RUN` steps.
    pub isolation: &'a Isolation,
    /// Their network.
    pub network: Network,
    /// The build's cgroup (`--cgroup-parent`), when its limits are a cgroup.
    pub cgroup_parent: Option<String>,
    /// The build's directory: buildah keeps the container's bundle under `tmp` in it, where
    /// [`Isolation::reap`] finds a container left running.
    pub build_dir: &'a Path,
    /// The build's `TMPDIR`.
    pub tmp: &'a Path,
}

/// Runs `test` in the image `image_name` (the build's local name for `image`, the OCI layout
/// about to be pushed) for `platform`. `Ok` when it exited 0.
pub async fn run(
    sandbox: &Sandbox<'_>,
    test: &SmokeTest,
    platform: &Platform,
    (image_name, image): (&str, &LayoutImage),
    container: &str,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), BackendError> {
    let entrypoint = entrypoint(image)?;
    let command = test.display();
    let limit = Duration::from_secs(test.timeout_secs);
    let argv: Vec<String> = entrypoint.iter().chain(&test.command).cloned().collect();
    log.note(format!(
        "smoke test: running {}{} in the {platform} image (time limit {})",
        join(&argv),
        if entrypoint.is_empty() {
            String::new()
        } else {
            format!(" (the image's ENTRYPOINT {} first)", join(&entrypoint))
        },
        format_duration(limit)
    ))
    .await;
    let not_run = |why: String| Failure::NotRun {
        command: command.clone(),
        platform: platform.clone(),
        why,
    };

    let mut from = (sandbox.buildah)();
    from.args(["from", "--pull=never", "--quiet", "--name", container])
        .args(["--platform", &platform.to_string()]);
    if let Some(parent) = &sandbox.cgroup_parent {
        from.args(["--cgroup-parent", parent]);
    }
    from.arg(image_name).env("TMPDIR", sandbox.tmp);
    if let Err(e) = run_quiet(from, "buildah from").await {
        // A half-made container may exist under the name.
        remove(sandbox, container).await;
        return Err(Box::new(not_run(format!("cannot make its container: {e}"))).into());
    }

    let mut exec = (sandbox.buildah)();
    exec.arg("run")
        .args(sandbox.isolation.build_args(sandbox.network))
        .arg(container)
        .arg("--")
        .args(&argv)
        .env("TMPDIR", sandbox.tmp);
    let output = Output::default();
    let keep = |line: &str| output.keep(line);
    // Stopped by the caller's cancellation, or by the time limit.
    let stop = cancel.child_token();
    let started = Instant::now();
    let output_log = log.prefixed(PREFIX);
    let running = run_logged_except(exec, "buildah run", &output_log, &stop, &keep);
    tokio::pin!(running);
    let ran = tokio::select! {
        r = &mut running => r,
        // Past the limit: stopped as a cancellation stops it (its process group terminated).
        () = tokio::time::sleep(limit) => {
            stop.cancel();
            running.await
        }
    };
    let timed_out = stop.is_cancelled() && !cancel.is_cancelled();
    if ran.is_err() {
        // runc's container is not in buildah's process group: a killed `buildah run` leaves it.
        sandbox.isolation.reap(Some(sandbox.build_dir)).await;
    }
    remove(sandbox, container).await;
    let secs = started.elapsed().as_secs_f64();

    let failure = match ran {
        Ok(()) => {
            log.note(format!(
                "smoke test passed on {platform}: exit code 0 after {secs:.1}s"
            ))
            .await;
            return Ok(());
        }
        Err(BackendError::Cancelled) if timed_out => Failure::TimedOut {
            command,
            platform: platform.clone(),
            limit,
        },
        Err(BackendError::Cancelled) => return Err(BackendError::Cancelled),
        Err(BackendError::Failed {
            status, last_line, ..
        }) => output.judge(command, platform, &status, last_line),
        Err(e) => not_run(e.to_string()),
    };
    log.note(format!("{failure} (after {secs:.1}s)")).await;
    Err(Box::new(failure).into())
}

/// Removes the working container `name`; a failure is logged (the next start clears it).
async fn remove(sandbox: &Sandbox<'_>, name: &str) {
    let mut rm = (sandbox.buildah)();
    rm.args(["rm", name]);
    if let Err(e) = run_quiet(rm, "buildah rm").await {
        let gone = matches!(&e, BackendError::Failed { last_line: Some(l), .. } if l.contains("not known") || l.contains("no container with name"));
        if !gone {
            tracing::warn!(container = name, error = %e, "could not remove the smoke test's container");
        }
    }
}

/// The image's `ENTRYPOINT`, from the config about to be pushed (the last blob of the layout).
fn entrypoint(image: &LayoutImage) -> Result<Vec<String>, BackendError> {
    let config = image
        .blobs
        .last()
        .expect("a layout image has its config as last blob");
    let bytes = std::fs::read(&config.path).map_err(|source| BackendError::Io {
        action: "cannot read the image config",
        path: config.path.clone(),
        source,
    })?;
    entrypoint_of(&bytes).map_err(|e| {
        BackendError::Invalid(format!(
            "the image config {} is unreadable: {e}",
            config.digest
        ))
    })
}

/// `config.Entrypoint` of an image config (OCI or Docker's; absent or null: none).
fn entrypoint_of(config: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(default)]
        config: Option<Config>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "Entrypoint", default)]
        entrypoint: Option<Vec<String>>,
    }
    let image: Image = serde_json::from_slice(config)?;
    Ok(image.config.and_then(|c| c.entrypoint).unwrap_or_default())
}

/// What `buildah run` printed that is its own, not the command's: noted, never logged as the
/// smoke test's output.
#[derive(Debug, Default)]
struct Output(Mutex<Noted>);

#[derive(Debug, Default)]
struct Noted {
    /// `exit status N` of buildah's `while running runtime` line: the command ran and exited N.
    exit: Option<i32>,
    /// The runtime's reason the command did not start.
    not_started: Option<String>,
    /// The last non-empty line of the command's own output.
    last: Option<String>,
}

impl Output {
    /// Whether `line` is the command's output; buildah's lines about it are noted instead.
    fn keep(&self, line: &str) -> bool {
        let mut noted = self.0.lock().expect("not poisoned");
        if let Some(status) = line.strip_prefix("Error: while running runtime: exit status ") {
            noted.exit = status.trim().parse().ok();
            false
        } else if let Some(rest) = line.strip_prefix("error running container: ") {
            noted.not_started = Some(start_failure(rest));
            false
        } else if line.starts_with(": exit status ") {
            // The end of buildah's `error running container` message, on a line of its own.
            false
        } else {
            if !line.trim().is_empty() {
                noted.last = Some(line.trim().to_string());
            }
            true
        }
    }

    /// The failure of a `buildah run` that exited with `status` (`status N`).
    fn judge(
        &self,
        command: String,
        platform: &Platform,
        status: &str,
        buildah_last: Option<String>,
    ) -> Failure {
        let platform = platform.clone();
        let noted = std::mem::take(&mut *self.0.lock().expect("not poisoned"));
        match (noted.not_started, noted.exit) {
            (Some(why), _) => Failure::NotStarted {
                command,
                platform,
                why,
            },
            (None, Some(code)) => Failure::Exited {
                command,
                platform,
                code,
                last_line: noted.last,
            },
            (None, None) => Failure::NotRun {
                command,
                platform,
                why: format!(
                    "buildah run exited with {status}{}",
                    buildah_last.map(|l| format!(": {l}")).unwrap_or_default()
                ),
            },
        }
    }
}

/// The reason in buildah's `error running container: from RUNTIME creating container for
/// [ARGV]: time=… level=error msg="runc create failed: unable to start container process: exec:
/// \"app\": executable file not found in $PATH"`: what follows the last `: ` before `exec:` or,
/// failing that, runc's message, else the whole text.
fn start_failure(rest: &str) -> String {
    let msg = match rest.find("msg=\"") {
        Some(i) => {
            let m = &rest[i + 5..];
            m.strip_suffix('"').unwrap_or(m).replace("\\\"", "\"")
        }
        None => rest.to_string(),
    };
    let msg = msg.trim_end_matches('"').to_string();
    match msg.find("exec: ") {
        Some(i) => msg[i..].to_string(),
        None => msg
            .strip_prefix("runc create failed: ")
            .unwrap_or(&msg)
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm64() -> Platform {
        Platform::parse("linux/arm64").unwrap()
    }

    #[test]
    fn the_entrypoint_comes_from_the_config() {
        let oci = br#"{"architecture":"arm64","os":"linux","config":{"Entrypoint":["/app","--serve"],"Cmd":["x"]}}"#;
        assert_eq!(entrypoint_of(oci).unwrap(), ["/app", "--serve"]);
        assert!(entrypoint_of(br#"{"config":{"Cmd":["sh"]}}"#)
            .unwrap()
            .is_empty());
        assert!(entrypoint_of(br#"{"config":{"Entrypoint":null}}"#)
            .unwrap()
            .is_empty());
        assert!(entrypoint_of(br#"{"architecture":"amd64"}"#)
            .unwrap()
            .is_empty());
        assert!(entrypoint_of(b"not json").is_err());
    }

    #[test]
    fn buildahs_own_lines_are_told_from_the_commands() {
        let out = Output::default();
        assert!(out.keep("aarch64"));
        assert!(out.keep("smoke-ok"));
        assert!(out.keep(""));
        assert!(!out.keep("Error: while running runtime: exit status 3"));
        let f = out.judge(
            "sh -c 'exit 3'".into(),
            &arm64(),
            "status 3",
            Some("Error: while running runtime: exit status 3".into()),
        );
        assert_eq!(
            f.to_string(),
            "smoke test `sh -c 'exit 3'` exited with code 3 on linux/arm64; its last line: \
             smoke-ok"
        );
        assert!(matches!(f, Failure::Exited { code: 3, .. }));

        // buildah 1.28's words for a program that is not there.
        let out = Output::default();
        let line = "error running container: from /w/storage/runtime/archfarm-oci-runtime \
             creating container for [nosuchcmd]: time=\"2026-12-05T18:38:13Z\" level=error \
             msg=\"runc create failed: unable to start container process: exec: \\\"nosuchcmd\\\": \
             executable file not found in $PATH\"";
        assert!(!out.keep(line));
        assert!(!out.keep(": exit status 1"));
        assert!(!out.keep("Error: while running runtime: exit status 1"));
        let f = out.judge("nosuchcmd".into(), &arm64(), "status 1", None);
        assert_eq!(
            f.to_string(),
            "smoke test `nosuchcmd` could not start on linux/arm64: exec: \"nosuchcmd\": \
             executable file not found in $PATH"
        );

        // buildah failing on its own says nothing about the command's exit.
        let out = Output::default();
        assert!(out.keep("Error: reading build container \"x\": container not known"));
        let f = out.judge(
            "true".into(),
            &arm64(),
            "status 125",
            Some("Error: reading build container \"x\": container not known".into()),
        );
        assert_eq!(
            f.to_string(),
            "smoke test `true` could not be run on linux/arm64: buildah run exited with status \
             125: Error: reading build container \"x\": container not known"
        );
    }

    #[test]
    fn failures_name_the_command_the_platform_and_what_happened() {
        let t = Failure::TimedOut {
            command: "sleep 600".into(),
            platform: arm64(),
            limit: Duration::from_secs(90),
        };
        assert_eq!(
            t.to_string(),
            "smoke test `sleep 600` did not finish within 1m30s on linux/arm64 and was stopped"
        );
        let e = Failure::Exited {
            command: "false".into(),
            platform: Platform::parse("linux/amd64").unwrap(),
            code: 1,
            last_line: None,
        };
        assert_eq!(
            e.to_string(),
            "smoke test `false` exited with code 1 on linux/amd64"
        );
        assert_eq!(
            start_failure("weird text without a message"),
            "weird text without a message"
        );
    }
}
