//! Running a Docker credential helper (`docker-credential-NAME get`) named by `--registry-auth`'s
//! `credsStore` or `credHelpers`: no shell, the server name on stdin, a time limit, and nothing of
//! its output logged but what the helper protocol makes its error message (its stderr may hold
//! anything, a token included, so only its size is told).
//!
//! A helper is third-party code: it gets none of the coordinator's own `ARCHFARM_*` variables
//! (the credential key, the database URL and its password, tokens), and it runs in a process
//! group of its own so that whatever it starts dies with it when it is given up on.

use std::process::Stdio;
use std::time::Duration;

use archfarm_protocol::registry_auth::{
    helper_program, helper_server_url, parse_helper_answer, HelperAnswer,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a helper may take: long enough for one that asks a cloud API (ECR's, GCP's), short
/// enough that a lease answer held open meanwhile does not outlive the agent's poll.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(20);

/// Most bytes of a helper's stdout read (a credential is a few KiB at most).
const MAX_ANSWER: u64 = 1024 * 1024;

/// Runs helper `name` for `registry`; the error is one line naming the program, never a secret.
pub async fn get(name: &str, registry: &str) -> Result<HelperAnswer, String> {
    get_within(name, registry, HELPER_TIMEOUT).await
}

/// The environment variables a helper must not see: the coordinator's own (`ARCHFARM_*`).
/// PATH, HOME and cloud SDKs' variables (AWS_*, GOOGLE_*, ...) stay: helpers need them.
pub fn withheld_env() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.as_encoded_bytes().starts_with(b"ARCHFARM_"))
        .collect()
}

/// Kills a helper's whole process group when dropped: on a timeout, a cancelled lookup, or
/// after the helper exited (a grandchild it left behind could hold a secret or a pipe).
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let group = self
            .0
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(g) = group {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
    }
}

/// [`get`] with a time limit of `timeout`.
pub async fn get_within(
    name: &str,
    registry: &str,
    timeout: Duration,
) -> Result<HelperAnswer, String> {
    let program = helper_program(name);
    let fail = |why: String| format!("credential helper {program} for {registry}: {why}");
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in withheld_env() {
        command.env_remove(key);
    }
    let mut child = command.spawn().map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "not found in PATH (is it installed?)".into(),
            _ => format!("cannot start it: {e}"),
        })
    })?;
    let _group = GroupKill(child.id());
    let server = helper_server_url(registry);
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped").take(MAX_ANSWER);
    let mut stderr = child.stderr.take().expect("piped").take(MAX_ANSWER);
    let run = async {
        // A helper that exits without reading its stdin is its own business.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (read_out, read_err, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        read_out.map_err(|e| format!("reading its answer: {e}"))?;
        let _ = read_err;
        let status = status.map_err(|e| format!("waiting for it: {e}"))?;
        Ok::<_, String>((status, out, err.len()))
    };
    let (status, out, stderr_len) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| fail(format!("no answer within {}s", timeout.as_secs())))?
        .map_err(fail)?;
    parse_helper_answer(status.success(), &out).map_err(|why| {
        let noted = if stderr_len > 0 {
            format!(
                " ({}; its stderr, {stderr_len} bytes, is not shown: it may hold a secret)",
                status
            )
        } else {
            format!(" ({status})")
        };
        fail(format!("{why}{noted}"))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Writes `docker-credential-NAME` into `dir` running `script`.
    fn helper(dir: &std::path::Path, name: &str, script: &str) {
        let path = dir.join(helper_program(name));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn runs_helpers_without_a_shell_and_keeps_their_secrets_out_of_errors() {
        let dir = tempfile::tempdir().unwrap();
        // The test's PATH is the process's: add the directory for these helpers only by name.
        helper(
            dir.path(),
            "ok",
            r#"read server; printf '{"ServerURL":"%s","Username":"ci","Secret":"pw-for-%s"}' "$server" "$server""#,
        );
        helper(
            dir.path(),
            "broken",
            "echo 'hunter2 leaked' >&2; echo 'bad thing happened'; exit 3",
        );
        helper(
            dir.path(),
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Child processes inherit the environment; set PATH for this test process.
        std::env::set_var("PATH", &path);
        match get("ok", "docker.io").await.unwrap() {
            HelperAnswer::Found(archfarm_protocol::RegistryCredential::Basic {
                username,
                password,
            }) => {
                assert_eq!(username, "ci");
                assert_eq!(password.expose(), "pw-for-https://index.docker.io/v1/");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(get("none", "r.io").await.unwrap(), HelperAnswer::NotFound);
        let e = get("broken", "r.io").await.unwrap_err();
        assert!(
            e.contains("docker-credential-broken for r.io: it failed: bad thing happened")
                && e.contains("stderr, 15 bytes, is not shown")
                && !e.contains("hunter2"),
            "{e}"
        );
        let e = get("missing-helper", "r.io").await.unwrap_err();
        assert!(
            e.contains("docker-credential-missing-helper for r.io: not found in PATH"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn helpers_get_none_of_the_coordinators_variables() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("env");
        helper(
            dir.path(),
            "afenvdump",
            &format!(
                "env > {}; echo '{{\"Username\":\"u\",\"Secret\":\"s\"}}'",
                seen.display()
            ),
        );
        std::env::set_var("ARCHFARM_DATABASE", "postgres://u:dbpass@db/af");
        std::env::set_var("ARCHFARM_JOB_CREDENTIAL_KEY", "k3y");
        std::env::set_var("AWS_REGION", "eu-west-1");
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", &path);
        get("afenvdump", "r.io").await.unwrap();
        let env = std::fs::read_to_string(&seen).unwrap();
        assert!(!env.lines().any(|l| l.starts_with("ARCHFARM_")), "{env}");
        assert!(
            env.contains("AWS_REGION=eu-west-1") && env.contains("PATH="),
            "{env}"
        );
    }

    #[tokio::test]
    async fn a_helper_given_up_on_takes_what_it_started_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The grandchild keeps stdout open, so the answer never ends.
        helper(
            dir.path(),
            "afhang",
            &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        );
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", &path);
        let e = get_within("afhang", "r.io", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within 1s"), "{e}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting for whoever reaps orphans here.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let alive = std::fs::read_to_string(&stat)
                .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the helper's child still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
