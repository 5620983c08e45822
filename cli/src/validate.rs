//! Local checks of `archfarm build`'s inputs, done before any network call.
//!
//! Every refusal is a [`UsageError`] whose message names the problem and what is accepted, so a CI
//! engineer can fix the pipeline without reading the coordinator's logs.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use archfarm_protocol::api::{EmulationPolicy, MAX_SUBMITTER_CHARS};
use archfarm_protocol::smoke_test::{SmokeTest, DEFAULT_TIMEOUT_SECS};
use archfarm_protocol::{platform, ImageRef, Platform};

use crate::args::{BuildArgs, Progress};

/// A command-line value that was refused; exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `archfarm build`'s inputs, checked and normalised.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// Normalised platforms, in the order given, without duplicates.
    pub platforms: Vec<Platform>,
    /// Normalised optional platforms, in the order given, none of them also in `platforms`.
    pub optional_platforms: Vec<Platform>,
    /// References to push the index under, as given (`:latest` added when there is no tag).
    pub tags: Vec<String>,
    /// The context directory as given.
    pub context: PathBuf,
    /// Dockerfile path inside the context, `/`-separated, without `.` or `..`.
    pub dockerfile: String,
    /// Build arguments; a later `--build-arg` for the same name wins, as with docker.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Emulation policy.
    pub emulation: EmulationPolicy,
    /// The network the steps ask for; `None` leaves it to the agent.
    pub network: Option<archfarm_protocol::Network>,
    /// Time limit of the job; the coordinator's default when unset.
    pub timeout: Option<Duration>,
    /// Progress mode.
    pub progress: Progress,
    /// Whether to return right after submitting.
    pub detach: bool,
    /// Who submits, as shown on the dashboard.
    pub submitter: Option<String>,
    /// Names of build arguments whose values are secret; each is a key of `build_args`.
    pub secret_build_args: Vec<String>,
    /// Build secrets with their values read (their `Debug` hides the values).
    pub secrets: Vec<archfarm_protocol::BuildSecret>,
    /// `--cache-to` registry caches.
    pub cache_to: Vec<archfarm_protocol::CacheRef>,
    /// `--cache-from` registry caches.
    pub cache_from: Vec<archfarm_protocol::CacheRef>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`.
    pub pull: bool,
    /// `--iidfile`: where to write the index digest.
    pub iidfile: Option<PathBuf>,
    /// `--metadata-file`: where to write the build's metadata.
    pub metadata_file: Option<PathBuf>,
    /// `--label` values, as given (checked).
    pub labels: Vec<String>,
    /// `--annotation` values, as given (checked).
    pub annotations: Vec<String>,
    /// `--allow-foreign-binary` globs, as given (checked).
    pub allow_foreign_binary: Vec<String>,
    /// Where the provenance goes (`--provenance`, `--attest`, `--attest-to`).
    pub attest_to: archfarm_protocol::provenance::AttestTo,
    /// `--smoke-test`, split into words, with its time limit (checked).
    pub smoke_test: Option<SmokeTest>,
}

impl BuildPlan {
    /// Checks `args`; `env` looks up variables for bare `--build-arg NAME`.
    pub fn from_args(
        args: &BuildArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, UsageError> {
        if args.load {
            return Err(UsageError(
                "--load is not supported: the image is built on the farm's agents, not on this \
                 machine; it is pushed to the registry (as with --push), so pull it from there"
                    .into(),
            ));
        }
        if let Some(spec) = &args.output {
            return Err(UsageError(format!(
                "--output {spec} is not supported: the farm's agents always push the image to \
                 the registry of its -t tags (buildx's --push, or --output type=registry) and never \
                 send an image back to this machine"
            )));
        }
        let meta = archfarm_protocol::image_meta::ImageMeta::parse(&args.labels, &args.annotations)
            .map_err(UsageError)?;
        let attest_to = attest_to(args)?;
        archfarm_protocol::foreign_binary::AllowedPaths::parse(&args.allow_foreign_binary)
            .map_err(UsageError)?;
        let smoke_test = smoke_test(args)?;
        let platforms = parse_platforms(&args.platforms)?;
        let optional_platforms = parse_optional_platforms(&args.optional_platforms, &platforms)?;
        let tags = parse_tags(&args.tags)?;
        let build_args = parse_build_args(&args.build_args, &env)?;
        let secret_build_args = check_secret_build_args(&args.secret_build_args, &build_args)?;
        let target = match args.target.as_deref() {
            Some(t) if t.trim().is_empty() => {
                return Err(UsageError(
                    "--target is empty; give the name of a stage of the Dockerfile".into(),
                ))
            }
            t => t.map(str::to_string),
        };
        check_context_dir(&args.context)?;
        let dockerfile = match &args.file {
            Some(f) => dockerfile_in_context(&args.context, f, true)?,
            None => dockerfile_in_context(&args.context, Path::new("Dockerfile"), false)?,
        };
        let secrets = crate::secrets::load(&args.secrets, &env)?;
        // The checkout's source and revision go on the index unless the job says otherwise.
        let mut annotations = args.annotations.clone();
        annotations.extend(crate::git::index_annotations(&args.context, &meta, &env));
        Ok(BuildPlan {
            attest_to,
            smoke_test,
            iidfile: args.iidfile.clone(),
            labels: args.labels.clone(),
            annotations,
            allow_foreign_binary: args.allow_foreign_binary.clone(),
            metadata_file: args.metadata_file.clone(),
            cache_to: args.cache_to.clone(),
            cache_from: args.cache_from.clone(),
            no_cache: args.no_cache,
            pull: args.pull,
            secrets,
            platforms,
            optional_platforms,
            tags,
            context: args.context.clone(),
            dockerfile,
            build_args,
            target,
            emulation: args.emulation,
            network: args.network.0,
            timeout: args.timeout,
            progress: if args.quiet {
                Progress::Quiet
            } else {
                args.progress
            },
            detach: args.detach,
            submitter: match args.submitter.as_deref().map(str::trim) {
                Some(s) if !s.is_empty() => Some(check_submitter(s)?),
                _ => default_submitter(&env, local_host_name),
            },
            secret_build_args,
        })
    }
}

/// `--submitter`: what the coordinator accepts, checked before anything is uploaded.
fn check_submitter(s: &str) -> Result<String, UsageError> {
    if s.chars().count() > MAX_SUBMITTER_CHARS || s.chars().any(char::is_control) {
        return Err(UsageError(format!(
            "--submitter must be at most {MAX_SUBMITTER_CHARS} printable characters, e.g. ci-bot or alice@laptop"
        )));
    }
    Ok(s.to_string())
}

/// The CI system's user when a known CI variable names one, else `USER@HOST`; cleaned to what
/// the coordinator accepts, since a display-only field must never fail a build.
pub fn default_submitter(
    env: impl Fn(&str) -> Option<String>,
    host: impl Fn() -> Option<String>,
) -> Option<String> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let raw = [
        "GITHUB_ACTOR",
        "GITLAB_USER_LOGIN",
        "BUILDKITE_BUILD_CREATOR",
    ]
    .iter()
    .find_map(|k| set(k))
    .or_else(|| {
        let user = set("USER").or_else(|| set("LOGNAME"))?;
        Some(match host() {
            Some(h) => format!("{user}@{h}"),
            None => user,
        })
    })?;
    let clean: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SUBMITTER_CHARS)
        .collect();
    Some(clean.trim().to_string()).filter(|s| !s.is_empty())
}

/// This machine's host name, from the kernel.
fn local_host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Parses every `--platform` value (each may be a comma list) into one list without duplicates.
pub fn parse_platforms(values: &[String]) -> Result<Vec<Platform>, UsageError> {
    let mut out: Vec<Platform> = Vec::new();
    for v in values {
        for p in platform::parse_list(v).map_err(|e| UsageError(e.to_string()))? {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err(UsageError(format!(
            "no platform given; pass --platform with one or more of: {}",
            platform::ACCEPTED.join(", ")
        )));
    }
    Ok(out)
}

/// Parses every `--optional-platform` value like `--platform` (an empty list is fine); a platform
/// may not be both required and optional.
pub fn parse_optional_platforms(
    values: &[String],
    required: &[Platform],
) -> Result<Vec<Platform>, UsageError> {
    let mut out: Vec<Platform> = Vec::new();
    for v in values {
        let list =
            platform::parse_list(v).map_err(|e| UsageError(format!("--optional-platform: {e}")))?;
        for p in list {
            if required.contains(&p) {
                return Err(UsageError(format!(
                    "platform {p} is both required (--platform) and optional (--optional-platform); \
                     give it once: with --platform if the job must fail without it, with \
                     --optional-platform if the image may be pushed without it"
                )));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Parses the `-t` references: each must parse and carry no digest. They may name several
/// repositories and registries, as buildx's do: each gets the same index.
pub fn parse_tags(values: &[String]) -> Result<Vec<String>, UsageError> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let r = ImageRef::parse(v).map_err(|e| UsageError(format!("-t: {e}")))?;
        if r.digest.is_some() {
            return Err(UsageError(format!(
                "-t '{v}' has a digest; the image index is pushed under tags, so give REGISTRY/REPOSITORY:TAG"
            )));
        }
        // Docker's default tag, made explicit so the coordinator never has to guess.
        let tag = if r.tag.is_none() {
            format!("{v}:latest")
        } else {
            v.clone()
        };
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// `--secret-build-arg NAME`: each must name a build argument that has a value.
pub fn check_secret_build_args(
    names: &[String],
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<String>, UsageError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !build_args.contains_key(name) {
            return Err(UsageError(format!(
                "--secret-build-arg {name}: there is no build argument {name}; give its value \
                 with --build-arg {name}=VALUE (or --build-arg {name} with {name} set in the \
                 environment)"
            )));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// Parses `NAME=VALUE` or `NAME` (value from `env`, left out when unset, like docker).
pub fn parse_build_args(
    values: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, UsageError> {
    let mut out = BTreeMap::new();
    for v in values {
        let (name, value) = match v.split_once('=') {
            Some((n, val)) => (n, Some(val.to_string())),
            None => (v.as_str(), None),
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UsageError(format!(
                "invalid --build-arg '{v}': the name must be non-empty without spaces; \
                 expected NAME=VALUE, or NAME to take the value from the environment"
            )));
        }
        let value = match value {
            Some(val) => val,
            None => match env(name) {
                Some(val) => val,
                // docker leaves an unset bare name out, so the Dockerfile's default applies.
                None => continue,
            },
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// The context must be an existing directory.
pub fn check_context_dir(context: &Path) -> Result<(), UsageError> {
    match std::fs::metadata(context) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UsageError(format!(
            "context '{}' is not a directory; give the directory to build from",
            context.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError(format!(
            "context directory '{}' does not exist",
            context.display()
        ))),
        Err(e) => Err(UsageError(format!(
            "context directory '{}' cannot be read: {e}",
            context.display()
        ))),
    }
}

/// Resolves `-f` against the context: it must name a regular file inside it. Returns the
/// `/`-separated path inside the context. With `explicit` (the user gave `-f`), a relative path that
/// fails that way is also tried relative to the current directory, as docker reads it.
pub fn dockerfile_in_context(
    context: &Path,
    file: &Path,
    explicit: bool,
) -> Result<String, UsageError> {
    let canon_ctx = context.canonicalize().map_err(|e| {
        UsageError(format!(
            "context directory '{}' cannot be read: {e}",
            context.display()
        ))
    })?;
    let check = |relative: &Path| inside_context(context, &canon_ctx, file, relative);
    let first = if file.is_absolute() {
        let canon = file.canonicalize().map_err(|_| not_found(context, file))?;
        match canon.strip_prefix(&canon_ctx) {
            Ok(rel) => check(rel),
            Err(_) => Err(outside(context, file)),
        }
    } else {
        check(file)
    };
    match first {
        Err(e) if explicit && file.is_relative() => {
            // docker reads -f relative to the current directory; accept that reading when it
            // lands inside the context, and otherwise report the context-relative problem.
            let docker_style = file
                .canonicalize()
                .ok()
                .and_then(|c| c.strip_prefix(&canon_ctx).ok().map(Path::to_path_buf));
            docker_style.and_then(|rel| check(&rel).ok()).ok_or(e)
        }
        other => other,
    }
}

/// Checks a path relative to the context: no climbing out, exists, stays inside through
/// symlinks, is a regular file. Returns it `/`-separated.
fn inside_context(
    context: &Path,
    canon_ctx: &Path,
    file: &Path,
    relative: &Path,
) -> Result<String, UsageError> {
    // Lexical normalisation first: `..` that climbs above the context is refused even if a
    // symlink would bring it back, as the archive could not hold it.
    let mut parts: Vec<String> = Vec::new();
    for c in relative.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(outside(context, file));
                }
            }
            Component::Normal(n) => parts.push(
                n.to_str()
                    .ok_or_else(|| {
                        UsageError(format!(
                            "Dockerfile path '{}' is not valid UTF-8",
                            file.display()
                        ))
                    })?
                    .to_string(),
            ),
            Component::RootDir | Component::Prefix(_) => return Err(outside(context, file)),
        }
    }
    if parts.is_empty() {
        return Err(UsageError(format!(
            "Dockerfile '{}' names the context directory itself; -f must name a file",
            file.display()
        )));
    }
    let joined = parts.join("/");
    // A symlink may still point outside: the agent would not find its target in the archive.
    let canon = canon_ctx
        .join(&joined)
        .canonicalize()
        .map_err(|_| not_found(context, file))?;
    if !canon.starts_with(canon_ctx) {
        return Err(outside(context, file));
    }
    if !canon.is_file() {
        return Err(UsageError(format!(
            "Dockerfile '{}' in the context directory '{}' is not a regular file",
            joined,
            context.display()
        )));
    }
    Ok(joined)
}

fn outside(context: &Path, file: &Path) -> UsageError {
    UsageError(format!(
        "Dockerfile '{}' is outside the context directory '{}'; -f must name a file inside the context (relative to it)",
        file.display(),
        context.display()
    ))
}

fn not_found(context: &Path, file: &Path) -> UsageError {
    UsageError(format!(
        "Dockerfile '{}' not found in the context directory '{}' (-f is relative to the context; default 'Dockerfile')",
        file.display(),
        context.display()
    ))
}

/// Checks the coordinator URL: `http://` or `https://` with a host.
pub fn check_coordinator_url(url: &str) -> Result<(), UsageError> {
    let bad = |why: String| {
        UsageError(format!(
            "invalid coordinator URL '{url}': {why}; expected http://HOST:PORT or https://HOST (--coordinator or ARCHFARM_COORDINATOR)"
        ))
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme '{}' is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().unwrap_or("").is_empty() {
        return Err(bad("the host is missing".into()));
    }
    Ok(())
}

/// `--smoke-test` split into words, with `--smoke-test-timeout` (which needs it).
fn smoke_test(args: &BuildArgs) -> Result<Option<SmokeTest>, UsageError> {
    match (&args.smoke_test, args.smoke_test_timeout) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(UsageError(
            "--smoke-test-timeout needs --smoke-test, the command it limits".into(),
        )),
        (Some(line), timeout) => {
            let secs = timeout.map_or(DEFAULT_TIMEOUT_SECS, |t| t.as_secs());
            SmokeTest::parse(line, secs).map(Some).map_err(UsageError)
        }
    }
}

/// Where the provenance goes: buildx's `--provenance` and `--attest type=provenance` turn it on
/// or off (on by default, as buildx does when it pushes); `--attest-to` says where.
fn attest_to(args: &BuildArgs) -> Result<archfarm_protocol::provenance::AttestTo, UsageError> {
    use archfarm_protocol::provenance::{parse_attest_flag, parse_provenance_flag, AttestTo};
    let mut on = true;
    if let Some(p) = &args.provenance {
        on = parse_provenance_flag(p).map_err(|e| UsageError(format!("--provenance: {e}")))?;
    }
    for a in &args.attest {
        if let Some(wanted) = parse_attest_flag(a).map_err(UsageError)? {
            on = wanted;
        }
    }
    let to = match args.attest_to.as_deref() {
        None => AttestTo::Index,
        Some(raw) => raw
            .parse()
            .map_err(|e| UsageError(format!("--attest-to: {e}")))?,
    };
    Ok(if on { to } else { AttestTo::None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submitter_defaults_to_the_ci_user_then_user_at_host() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let host = || Some("build-7".to_string());
        assert_eq!(
            default_submitter(
                env(&[("GITLAB_USER_LOGIN", "alice"), ("USER", "root")]),
                host
            ),
            Some("alice".into())
        );
        assert_eq!(
            default_submitter(env(&[("GITHUB_ACTOR", " "), ("USER", "root")]), host),
            Some("root@build-7".into()),
            "a blank CI variable is skipped"
        );
        assert_eq!(
            default_submitter(env(&[("LOGNAME", "bob")]), || None),
            Some("bob".into())
        );
        assert_eq!(default_submitter(env(&[]), host), None);
        let long: &'static str = Box::leak("é".repeat(300).into_boxed_str());
        let vars: &'static [(&'static str, &'static str)] =
            Box::leak(Box::new([("GITHUB_ACTOR", long)]));
        let cleaned = default_submitter(env(vars), host).unwrap();
        assert_eq!(
            cleaned.chars().count(),
            MAX_SUBMITTER_CHARS,
            "cut to what the coordinator takes"
        );
        assert_eq!(
            default_submitter(env(&[("GITHUB_ACTOR", "bot\u{7}\n")]), host),
            Some("bot".into()),
            "control characters dropped"
        );
        assert!(check_submitter("a\tb").is_err());
        assert!(check_submitter(&"x".repeat(MAX_SUBMITTER_CHARS + 1)).is_err());
        assert_eq!(check_submitter("alice@laptop").unwrap(), "alice@laptop");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn platforms_merge_and_explain() {
        let p = parse_platforms(&strings(&["linux/amd64,aarch64", "arm64/v8", "s390x"])).unwrap();
        let s: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["linux/amd64", "linux/arm64", "linux/s390x"]);
        let e = parse_platforms(&strings(&["linux/amd64,linux/sparc"])).unwrap_err();
        assert!(e.0.contains("unknown platform 'linux/sparc'"), "{e}");
        assert!(e.0.contains("accepted: linux/amd64"), "{e}");
        let e = parse_platforms(&strings(&[","])).unwrap_err();
        assert!(e.0.contains("no platform given"), "{e}");
    }

    #[test]
    fn optional_platforms_apart_from_required_ones() {
        let required = parse_platforms(&strings(&["amd64,arm64"])).unwrap();
        assert!(parse_optional_platforms(&[], &required).unwrap().is_empty());
        let o =
            parse_optional_platforms(&strings(&["s390x,linux/s390x", "armhf"]), &required).unwrap();
        let s: Vec<String> = o.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["linux/s390x", "linux/arm/v7"]);
        let e = parse_optional_platforms(&strings(&["s390x", "aarch64"]), &required).unwrap_err();
        assert!(
            e.0.starts_with("platform linux/arm64 is both required (--platform) and optional"),
            "{e}"
        );
        let e = parse_optional_platforms(&strings(&["sparc"]), &required).unwrap_err();
        assert!(
            e.0.starts_with("--optional-platform: unknown platform 'sparc'"),
            "{e}"
        );
        assert!(e.0.contains("accepted: linux/amd64"), "{e}");
    }

    #[test]
    fn tags_in_any_repositories() {
        let t = parse_tags(&strings(&["localhost:5000/app:1", "localhost:5000/app"])).unwrap();
        assert_eq!(t, ["localhost:5000/app:1", "localhost:5000/app:latest"]);
        let t = parse_tags(&strings(&[
            "localhost:5000/app:1",
            "localhost:5000/other:1",
            "ghcr.io/team/app",
        ]))
        .unwrap();
        assert_eq!(
            t,
            [
                "localhost:5000/app:1",
                "localhost:5000/other:1",
                "ghcr.io/team/app:latest"
            ]
        );
        let e = parse_tags(&strings(&["localhost:5000/App:1"])).unwrap_err();
        assert!(e.0.contains("must be lowercase"), "{e}");
        assert!(e.0.contains("expected [REGISTRY"), "{e}");
        let d = format!("localhost:5000/app@sha256:{}", "a".repeat(64));
        let e = parse_tags(&[d]).unwrap_err();
        assert!(e.0.contains("has a digest"), "{e}");
    }

    #[test]
    fn secret_build_args_need_a_value() {
        let args = parse_build_args(&strings(&["TOKEN=t", "EMPTY="]), |_| None).unwrap();
        assert_eq!(
            check_secret_build_args(&strings(&["TOKEN", "EMPTY", "TOKEN"]), &args).unwrap(),
            ["TOKEN", "EMPTY"]
        );
        let e = check_secret_build_args(&strings(&["UNSET"]), &args).unwrap_err();
        assert!(
            e.0.starts_with("--secret-build-arg UNSET: there is no build argument UNSET"),
            "{e}"
        );
    }

    #[test]
    fn build_args_like_docker() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "env-value".to_string());
        let a = parse_build_args(
            &strings(&["A=1", "B=x=y", "EMPTY=", "FROM_ENV", "UNSET", "A=2"]),
            env,
        )
        .unwrap();
        let got: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("A", "2"),
                ("B", "x=y"),
                ("EMPTY", ""),
                ("FROM_ENV", "env-value")
            ]
        );
        for bad in ["=1", "", "A B=1"] {
            let e = parse_build_args(&strings(&[bad]), env).unwrap_err();
            assert!(e.0.contains("expected NAME=VALUE"), "{bad}: {e}");
        }
    }

    #[test]
    fn context_and_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let e = check_context_dir(&ctx).unwrap_err();
        assert_eq!(
            e.0,
            format!("context directory '{}' does not exist", ctx.display())
        );
        std::fs::create_dir_all(ctx.join("docker")).unwrap();
        std::fs::write(ctx.join("docker/Dockerfile.prod"), "FROM scratch\n").unwrap();
        std::fs::write(dir.path().join("Outside"), "FROM scratch\n").unwrap();
        check_context_dir(&ctx).unwrap();

        let e = dockerfile_in_context(&ctx, Path::new("Dockerfile"), false).unwrap_err();
        assert!(
            e.0.contains("Dockerfile 'Dockerfile' not found in the context"),
            "{e}"
        );
        let ok = dockerfile_in_context(&ctx, Path::new("./docker/../docker/Dockerfile.prod"), true);
        assert_eq!(ok.unwrap(), "docker/Dockerfile.prod");
        let abs = ctx.join("docker/Dockerfile.prod");
        assert_eq!(
            dockerfile_in_context(&ctx, &abs, true).unwrap(),
            "docker/Dockerfile.prod"
        );
        let e = dockerfile_in_context(&ctx, Path::new("../Outside"), true).unwrap_err();
        assert!(e.0.contains("is outside the context directory"), "{e}");
        let e = dockerfile_in_context(&ctx, &dir.path().join("Outside"), true).unwrap_err();
        assert!(e.0.contains("is outside the context directory"), "{e}");
        std::os::unix::fs::symlink("../Outside", ctx.join("Linked")).unwrap();
        let e = dockerfile_in_context(&ctx, Path::new("Linked"), true).unwrap_err();
        assert!(e.0.contains("is outside the context directory"), "{e}");
        // docker's way, relative to the current directory, when that is inside the context.
        let from_cwd = ctx.join("docker/Dockerfile.prod");
        let cwd_relative = pathdiff(&from_cwd);
        assert_eq!(
            dockerfile_in_context(&ctx, &cwd_relative, true).unwrap(),
            "docker/Dockerfile.prod"
        );
        let e = dockerfile_in_context(&ctx, Path::new("docker"), true).unwrap_err();
        assert!(e.0.contains("is not a regular file"), "{e}");

        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = check_context_dir(&dir.path().join("file")).unwrap_err();
        assert!(e.0.contains("is not a directory"), "{e}");
    }

    /// `path` relative to the current directory, spelled with `..` as needed.
    fn pathdiff(path: &Path) -> PathBuf {
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        let path = path.canonicalize().unwrap();
        let common = cwd
            .components()
            .zip(path.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut out = PathBuf::new();
        for _ in cwd.components().skip(common) {
            out.push("..");
        }
        for c in path.components().skip(common) {
            out.push(c);
        }
        out
    }

    #[test]
    fn coordinator_urls() {
        check_coordinator_url("http://127.0.0.1:8080").unwrap();
        check_coordinator_url("https://farm.example.com/archfarm/").unwrap();
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", "not a url"] {
            let e = check_coordinator_url(bad).unwrap_err();
            assert!(e.0.contains("expected http://HOST:PORT"), "{bad}: {e}");
        }
    }
}
