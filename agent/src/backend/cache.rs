//! The cache options of one `buildah build`: the agent's own layers (`--layers`, always), the
//! registry caches the lease names, `--no-cache` and `--pull`.
//!
//! A registry cache only ever speeds a build up. buildah 1.28 takes one `--cache-from` and one
//! `--cache-to`, ignores a cache it cannot read (it runs the step instead), but fails the whole
//! build when it cannot write one; and it retries a registry it cannot reach at every step. So
//! before the build each cache registry is checked for an answer within [`REACH_TIMEOUT`] (the
//! first that answers is used), and a build that fails writing its cache runs again without
//! `--cache-to`, reusing from the agent's layers every step it had finished.

use std::ffi::OsString;
use std::time::Duration;

use archfarm_protocol::cache::LeaseCache;
use tokio::net::TcpStream;

use super::BackendError;

/// How long a cache registry has to accept a connection before the build goes on without it.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// The registry caches one build uses, and what the build log should say about the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachePlan {
    /// The repository `--cache-from` reads, if any.
    pub from: Option<String>,
    /// The repository `--cache-to` writes, if any.
    pub to: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`: pull base images again (`--pull=always`).
    pub pull: bool,
    /// Lines for the build log: caches left out, and why.
    pub notes: Vec<String>,
}

impl CachePlan {
    /// Picks, for each direction, the first of the lease's caches whose registry `reachable`
    /// says answers; the rest are noted.
    pub async fn choose<F, Fut>(cache: &LeaseCache, reachable: F) -> CachePlan
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut notes = Vec::new();
        let from = pick(&cache.from, "--cache-from", &reachable, &mut notes).await;
        let to = pick(&cache.to, "--cache-to", &reachable, &mut notes).await;
        CachePlan {
            from,
            to,
            no_cache: cache.no_cache,
            pull: cache.pull,
            notes,
        }
    }

    /// The `buildah build` options this plan stands for.
    pub fn build_args(&self) -> Vec<OsString> {
        // Layers persist in the agent's store between builds: the local cache.
        let mut a: Vec<OsString> = vec!["--layers".into()];
        if self.no_cache {
            a.push("--no-cache".into());
        }
        if self.pull {
            a.push("--pull=always".into());
        }
        if let Some(from) = &self.from {
            a.extend(["--cache-from".into(), from.into()]);
        }
        if let Some(to) = &self.to {
            a.extend(["--cache-to".into(), to.into()]);
        }
        a
    }

    /// The same plan without `--cache-to`, for the run after a failed cache write.
    pub fn without_cache_to(&self) -> CachePlan {
        CachePlan {
            to: None,
            notes: Vec::new(),
            ..self.clone()
        }
    }
}

/// The first of `list` whose registry answers; the others go to `notes` with the reason.
async fn pick<F, Fut>(
    list: &[String],
    flag: &str,
    reachable: &F,
    notes: &mut Vec<String>,
) -> Option<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut chosen: Option<String> = None;
    for repo in list {
        if let Some(first) = &chosen {
            notes.push(format!(
                "{flag} {repo} is not used: buildah 1.28 takes one {flag}, and {first} comes first"
            ));
            continue;
        }
        match reachable(registry_of(repo).to_string()).await {
            Ok(()) => chosen = Some(repo.clone()),
            Err(why) => notes.push(format!(
                "{flag} {repo} is not used: its registry {why}; the build goes on without it"
            )),
        }
    }
    chosen
}

/// Whether `buildah build` failed only because it could not write its `--cache-to`.
pub fn is_cache_write_failure(e: &BackendError) -> bool {
    matches!(e, BackendError::Failed { command, last_line: Some(line), .. }
        if command == "buildah build" && line.contains("failed pushing cache to"))
}

/// The registry `host[:port]` of a `REGISTRY/REPOSITORY` string.
fn registry_of(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

/// Whether `registry` (`host[:port]`) accepts a TCP connection within [`REACH_TIMEOUT`]; the
/// port defaults to 80 for a registry spoken to over plain HTTP, else 443. Cheap, and enough to
/// spare a build buildah's retries against a registry that is down; one that answers but refuses
/// is handled by buildah (reads) and by the second run (writes).
pub async fn tcp_reachable(registry: String, plain_http: bool) -> Result<(), String> {
    let has_port = registry
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !registry.ends_with(']');
    let addr = match (has_port, plain_http) {
        (true, _) => registry.clone(),
        (false, true) => format!("{registry}:80"),
        (false, false) => format!("{registry}:443"),
    };
    match tokio::time::timeout(REACH_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{registry} cannot be reached ({e})")),
        Err(_) => Err(format!(
            "{registry} did not answer within {}s",
            REACH_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(from: &[&str], to: &[&str]) -> LeaseCache {
        LeaseCache {
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            no_cache: false,
            pull: false,
        }
    }

    fn strings(a: Vec<OsString>) -> String {
        a.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[tokio::test]
    async fn the_first_reachable_cache_is_used_and_the_rest_noted() {
        let l = lease(
            &[
                "down.example/c/linux-amd64",
                "up.example/c/linux-amd64",
                "up.example/d/linux-amd64",
            ],
            &["up.example/c/linux-amd64"],
        );
        let plan = CachePlan::choose(&l, |host| async move {
            if host == "down.example" {
                Err("down.example cannot be reached (refused)".to_string())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(plan.from.as_deref(), Some("up.example/c/linux-amd64"));
        assert_eq!(plan.to.as_deref(), Some("up.example/c/linux-amd64"));
        assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
        assert!(
            plan.notes[0].contains("down.example cannot be reached"),
            "{:?}",
            plan.notes
        );
        assert!(
            plan.notes[1].contains("takes one --cache-from"),
            "{:?}",
            plan.notes
        );
        assert_eq!(
            strings(plan.build_args()),
            "--layers --cache-from up.example/c/linux-amd64 --cache-to up.example/c/linux-amd64"
        );
        assert_eq!(
            strings(plan.without_cache_to().build_args()),
            "--layers --cache-from up.example/c/linux-amd64"
        );
    }

    #[tokio::test]
    async fn switches_map_to_buildah_options() {
        let mut l = lease(&[], &[]);
        l.no_cache = true;
        l.pull = true;
        let plan = CachePlan::choose(&l, |_| async { Ok(()) }).await;
        assert_eq!(
            strings(plan.build_args()),
            "--layers --no-cache --pull=always"
        );
        assert!(plan.notes.is_empty());
    }

    #[test]
    fn only_a_failed_cache_write_is_retried() {
        let cache = BackendError::Failed {
            command: "buildah build".into(),
            status: "exit status 125".into(),
            last_line: Some(
                "Error: failed pushing cache to {{{\"127.0.0.1:1\" \"cache/y\"} \"66\"}}: writing blob".into(),
            ),
        };
        assert!(is_cache_write_failure(&cache));
        let step = BackendError::Failed {
            command: "buildah build".into(),
            status: "exit status 1".into(),
            last_line: Some("error building at STEP \"RUN false\": exit status 1".into()),
        };
        assert!(!is_cache_write_failure(&step));
    }

    #[tokio::test]
    async fn reachability_is_checked_with_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(tcp_reachable(format!("127.0.0.1:{port}"), false)
            .await
            .is_ok());
        drop(listener);
        let e = tcp_reachable(format!("127.0.0.1:{port}"), false)
            .await
            .unwrap_err();
        assert!(e.contains("cannot be reached"), "{e}");
    }
}
