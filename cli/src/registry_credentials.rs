//! The pipeline's own registry credentials, sent with the job as buildx forwards the client's
//! to its builder: read from the docker config as Docker reads it (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`; `credHelpers`, then `credsStore`, then `auths`), for the
//! registries the job pushes to (its tags' and its caches'), and for no other.
//!
//! A credential helper is run without a shell (`docker-credential-NAME get`, the server name on
//! stdin, a time limit). One that is missing or fails stops the build before anything is
//! uploaded, as `docker push` stops with "error getting credentials": the pipeline's config says
//! a credential is needed, and a build that went on without it would fail at the push, later and
//! less clearly. `--registry-credentials none` builds without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use archfarm_protocol::registry_auth::{
    helper_program, helper_server_url, parse_helper_answer, CredentialSource, HelperAnswer,
};
use archfarm_protocol::{RegistryAuths, RegistryCredential};
use clap::ValueEnum;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::validate::UsageError;

/// How long a credential helper may take (one that asks a cloud API is slow, not minutes slow).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// `--registry-credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// Send the pipeline's credentials for the registries the job pushes to, from its docker
    /// config (as buildx forwards them to its builder).
    #[default]
    Auto,
    /// Send none: the farm's own credentials (the coordinator's --registry-auth) are used.
    None,
}

/// Whether `coordinator` is a plain `http://` URL to another host: what is sent to it crosses
/// the network readable by anyone on the path. Loopback (`localhost`, `127.0.0.0/8`, `::1`) stays
/// on the machine.
pub fn plain_http_to_another_host(coordinator: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(coordinator) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    !loopback
}

/// What may go to `coordinator` with a job: the registry credentials mode to use (`auto`
/// becomes `none` over plain HTTP to another host, with the warning to print) or, when the job
/// names secrets (`secrets`, in words) that would cross such a connection, the error that stops
/// the build. `opted_in` is `--insecure-credentials-over-http`.
pub fn over_plain_http(
    coordinator: &str,
    opted_in: bool,
    mode: Mode,
    secrets: &[String],
) -> Result<(Mode, Option<String>), UsageError> {
    if opted_in || !plain_http_to_another_host(coordinator) {
        return Ok((mode, None));
    }
    let fix = "use an https:// coordinator URL (--coordinator or ARCHFARM_COORDINATOR), or pass \
               --insecure-credentials-over-http if a proxy or service mesh encrypts the connection";
    if !secrets.is_empty() {
        return Err(UsageError(format!(
            "the coordinator {coordinator} is plain HTTP on another host: {} would cross the \
             network unencrypted; {fix}",
            secrets.join(" and ")
        )));
    }
    let warning = (mode == Mode::Auto).then(|| {
        format!(
            "registry credentials: none sent, the farm's own are used: the coordinator \
             {coordinator} is plain HTTP on another host, where they would cross the network \
             unencrypted; {fix}"
        )
    });
    Ok((Mode::None, warning))
}

/// What was found for the job.
#[derive(Debug, Default)]
pub struct Found {
    /// The credentials to send, by registry.
    pub credentials: BTreeMap<String, RegistryCredential>,
    /// The docker config read, when there was one.
    pub file: Option<PathBuf>,
    /// Registries skipped, with why (names and reasons only).
    pub notes: Vec<String>,
}

/// The docker config Docker reads: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn config_path(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    let home = env("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".docker").join("config.json"))
}

/// The registries `registries` (distinct, normalised) need, from the docker config.
pub async fn collect(
    mode: Mode,
    registries: &[String],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Found, UsageError> {
    let mut found = Found::default();
    if mode == Mode::None {
        return Ok(found);
    }
    let Some(path) = config_path(env) else {
        return Ok(found);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => {
            return Err(UsageError(format!(
            "cannot read the docker config {}: {e}; fix it, or pass --registry-credentials none",
            path.display()
        )))
        }
    };
    let file = path.display().to_string();
    let auths = RegistryAuths::parse_lenient(&file, &text)
        .map_err(|e| UsageError(format!("{e}; fix it, or pass --registry-credentials none")))?;
    found.file = Some(path);
    for registry in registries {
        let source = auths.source(registry).map_err(|e| {
            UsageError(format!(
                "{e}; fix the entry, or pass --registry-credentials none"
            ))
        })?;
        let credential = match source {
            CredentialSource::None => continue,
            CredentialSource::Entry(c) => c.clone(),
            CredentialSource::Helper(name) => match run_helper(name, registry).await {
                Ok(HelperAnswer::Found(c)) => c,
                Ok(HelperAnswer::NotFound) => {
                    found.notes.push(format!(
                        "{registry}: {} holds no credential for it",
                        helper_program(name)
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(UsageError(format!(
                        "{e}; fix the helper, or pass --registry-credentials none to build \
                         with the farm's own credentials"
                    )))
                }
            },
        };
        if let RegistryCredential::IdentityToken(_) = credential {
            found.notes.push(format!(
                "{registry}: the docker config holds an identity token (an OAuth2 refresh \
                 token), which archfarm cannot push with; not sent"
            ));
            continue;
        }
        found.credentials.insert(registry.clone(), credential);
    }
    Ok(found)
}

/// Kills a helper's whole process group when dropped, so that what it started does not outlive
/// a timeout (and keep its pipe, or a secret, around).
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

/// Runs `docker-credential-NAME get` for `registry`; the error names the program, never a
/// secret, and never shows its stderr (helpers log what they like there).
async fn run_helper(name: &str, registry: &str) -> Result<HelperAnswer, String> {
    run_helper_within(name, registry, HELPER_TIMEOUT).await
}

/// [`run_helper`] with a time limit of `timeout`. The helper gets none of archfarm's own
/// variables (`ARCHFARM_TOKEN` and the like): it is the helper's business, not the farm's.
async fn run_helper_within(
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
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"ARCHFARM_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "not found in PATH (is it installed?)".into(),
            _ => format!("cannot start it: {e}"),
        })
    })?;
    let _group = GroupKill(child.id());
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped").take(1024 * 1024);
    let server = helper_server_url(registry);
    let run = async {
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let mut out = Vec::new();
        let (read, status) = tokio::join!(stdout.read_to_end(&mut out), child.wait());
        read.map_err(|e| format!("reading its answer: {e}"))?;
        let status = status.map_err(|e| format!("waiting for it: {e}"))?;
        Ok::<_, String>((status, out))
    };
    let (status, out) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| fail(format!("no answer within {}s", timeout.as_secs())))?
        .map_err(fail)?;
    parse_helper_answer(status.success(), &out).map_err(|why| fail(format!("{why} ({status})")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_config_is_where_docker_looks() {
        let env = env_of(vec![("HOME", "/home/ci".into())]);
        assert_eq!(
            config_path(&env),
            Some(PathBuf::from("/home/ci/.docker/config.json"))
        );
        let env = env_of(vec![
            ("HOME", "/home/ci".into()),
            ("DOCKER_CONFIG", "/etc/d".into()),
        ]);
        assert_eq!(config_path(&env), Some(PathBuf::from("/etc/d/config.json")));
        assert_eq!(config_path(&env_of(vec![])), None);
    }

    #[tokio::test]
    async fn entries_and_helpers_for_the_jobs_registries_only() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-afclitest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread s\ncase \"$s\" in\n  helped.io) printf '{\"Username\":\"h\",\"Secret\":\"hs\"}' ;;\n  empty.io) echo 'credentials not found in native keychain'; exit 1 ;;\n  *) echo 'boom hunter2' >&2; echo 'cannot reach the vault'; exit 2 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"https://r.io/v2/": {"auth": "Y2k6cHc="}, "other.io": {"auth": "bzpw"},
                          "cloud.io": {"identitytoken": "refresh"}},
                "credHelpers": {"helped.io": "afclitest", "empty.io": "afclitest", "broken.io": "afclitest"}}"#,
        )
        .unwrap();
        let env = env_of(vec![("DOCKER_CONFIG", dir.path().display().to_string())]);
        let wanted: Vec<String> = ["r.io", "helped.io", "empty.io", "cloud.io", "none.io"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let found = collect(Mode::Auto, &wanted, &env).await.unwrap();
        assert_eq!(
            found.credentials.keys().collect::<Vec<_>>(),
            ["helped.io", "r.io"],
            "other.io is not the job's; the identity token and the empty helper are skipped"
        );
        assert_eq!(found.notes.len(), 2, "{:?}", found.notes);
        assert!(found
            .notes
            .iter()
            .any(|n| n.starts_with("empty.io: docker-credential-afclitest holds no")));
        assert!(found
            .notes
            .iter()
            .any(|n| n.starts_with("cloud.io: the docker config holds an identity token")));
        let e = collect(Mode::Auto, &["broken.io".to_string()], &env)
            .await
            .unwrap_err()
            .0;
        assert!(
            e.contains(
                "docker-credential-afclitest for broken.io: it failed: cannot reach the vault"
            ) && e.contains("--registry-credentials none")
                && !e.contains("hunter2"),
            "{e}"
        );
        assert!(collect(Mode::None, &wanted, &env)
            .await
            .unwrap()
            .credentials
            .is_empty());
        // No docker config at all: nothing, and no complaint.
        let nowhere = env_of(vec![(
            "DOCKER_CONFIG",
            dir.path().join("none").display().to_string(),
        )]);
        let found = collect(Mode::Auto, &wanted, &nowhere).await.unwrap();
        assert!(found.credentials.is_empty() && found.file.is_none());
    }

    #[test]
    fn nothing_secret_goes_to_a_plain_http_coordinator_on_another_host() {
        for local in [
            "http://localhost:8080",
            "http://127.0.0.1:8080/",
            "http://[::1]:8080",
            "https://farm.example",
        ] {
            assert!(!plain_http_to_another_host(local), "{local}");
            assert_eq!(
                over_plain_http(local, false, Mode::Auto, &["build secrets".into()]).unwrap(),
                (Mode::Auto, None)
            );
        }
        for remote in [
            "http://farm.example:8080",
            "http://10.0.0.5/",
            "http://[fd00::1]:1",
        ] {
            assert!(plain_http_to_another_host(remote), "{remote}");
        }
        let remote = "http://farm.example:8080";
        let (mode, warning) = over_plain_http(remote, false, Mode::Auto, &[]).unwrap();
        let warning = warning.unwrap();
        assert_eq!(mode, Mode::None);
        assert!(
            warning.contains("none sent") && warning.contains("https://"),
            "{warning}"
        );
        assert_eq!(
            over_plain_http(remote, false, Mode::None, &[]).unwrap(),
            (Mode::None, None)
        );
        let e = over_plain_http(remote, false, Mode::Auto, &["build secrets npmrc".into()])
            .unwrap_err();
        assert!(
            e.0.contains("build secrets npmrc would cross the network unencrypted")
                && e.0.contains("--insecure-credentials-over-http"),
            "{}",
            e.0
        );
        assert_eq!(
            over_plain_http(remote, true, Mode::Auto, &["build secrets".into()]).unwrap(),
            (Mode::Auto, None)
        );
    }

    #[tokio::test]
    async fn helpers_get_no_archfarm_variable_and_die_with_what_they_started() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("env");
        let pid_file = dir.path().join("pid");
        let write = |name: &str, body: String| {
            let p = dir.path().join(helper_program(name));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write(
            "afclienv",
            format!(
                "env > {}; printf '{{\"Username\":\"u\",\"Secret\":\"s\"}}'",
                seen.display()
            ),
        );
        write(
            "afclihang",
            format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        );
        std::env::set_var("ARCHFARM_TOKEN", "api-t0ken");
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", &path);
        run_helper("afclienv", "r.io").await.unwrap();
        let env = std::fs::read_to_string(&seen).unwrap();
        assert!(!env.contains("ARCHFARM_"), "{env}");
        assert!(env.contains("PATH="), "{env}");
        let e = run_helper_within("afclihang", "r.io", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within 1s"), "{e}");
        let stat = format!(
            "/proc/{}/stat",
            std::fs::read_to_string(&pid_file).unwrap().trim()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for whoever reaps orphans here.
        while std::fs::read_to_string(&stat)
            .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
            .unwrap_or(false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the helper's child still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
