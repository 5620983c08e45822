//! The command line, declared with clap's derive API.
//!
//! Only syntax lives here; what the values mean (platform names, references, paths) is checked in
//! [`crate::validate`] so the messages can name the problem and what is accepted.

use std::path::PathBuf;
use std::time::Duration;

use archfarm_protocol::api::EmulationPolicy;
use archfarm_protocol::duration::parse_duration;
use archfarm_protocol::tokens::Scope;
pub use archfarm_protocol::Secret;
use archfarm_protocol::{CacheRef, Network};
use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

/// Exit codes, shared by `--help` and the code that picks them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (for `build`: the image index was pushed; its digest is the last line of stdout)
  1    the job failed or was cancelled, or the coordinator could not be reached or failed (5xx);
       for `cancel`: a coordinator from before cancelling while stitching refused (job_stitching)
  2    bad usage or input, refused before anything was sent (unknown platform, malformed reference,
       missing context or Dockerfile, unknown agent name for `agents drain`, a platform the job
       does not build for `logs`) or refused by the coordinator (4xx: bad request, bad token,
       unknown job, context too large), or a TLS certificate problem (the coordinator's certificate
       is not trusted: pass --ca-cert FILE)
  130  interrupted (Ctrl-C) while following a job; the job keeps running on the coordinator";

/// Default coordinator URL when neither `--coordinator` nor `ARCHFARM_COORDINATOR` is given.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:8080";

/// `archfarm`: build multi-arch container images on an archfarm farm.
#[derive(Debug, Parser)]
#[command(
    name = "archfarm",
    version,
    about = "Build multi-arch container images on an archfarm build farm",
    long_about = format!(
        "Build multi-arch container images on an archfarm build farm.\n\n\
         `archfarm build` packs the context (honouring .dockerignore), uploads it once, asks the \
         coordinator for one image on several platforms, follows the per-platform builds on native \
         (or emulated) agents and prints the digest of the pushed image index.\n\n{EXIT_CODES_HELP}"
    )
)]
pub struct Cli {
    /// Where to reach the coordinator and how to authenticate.
    #[command(flatten)]
    pub conn: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Coordinator URL.
    #[arg(
        long,
        global = true,
        env = "ARCHFARM_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL"
    )]
    pub coordinator: String,
    /// API token sent as a Bearer token (when the coordinator has --api-token).
    #[arg(
        long,
        global = true,
        env = "ARCHFARM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,
    /// PEM CA certificate(s) to trust for an HTTPS coordinator, on top of the system's roots
    /// (e.g. a self-signed farm CA). Default: none (the system's roots only).
    #[arg(long, global = true, env = "ARCHFARM_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// The subcommands.
// Parsed once per process: the size of the `build` variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image for several platforms and push it as one image index.
    #[command(long_about = format!(
        "Build an image for several platforms and push it as one image index under every tag.\n\n\
         The context directory is packed (honouring .dockerignore; the Dockerfile and .dockerignore \
         are always sent), uploaded unless the coordinator already has it, and built once per \
         platform. Progress goes to stderr; stdout gets only the result: the index digest \
         (`sha256:...`) as its last line, or the job id with --detach.\n\n{EXIT_CODES_HELP}"
    ))]
    Build(BuildArgs),
    /// List recent jobs, newest first.
    Jobs {
        /// How many jobs to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show one job: its state and each platform's build.
    Job {
        /// Job id.
        id: Uuid,
        /// Print the coordinator's JSON for the job instead of a summary.
        #[arg(long, conflicts_with = "provenance")]
        json: bool,
        /// Print the provenance pushed with the job's index: a JSON list of in-toto statements,
        /// one per platform, as the coordinator stored them when it pushed them.
        #[arg(long)]
        provenance: bool,
    },
    /// List the build agents, or drain, revoke or forget one (`archfarm agents drain NAME`).
    Agents(AgentsArgs),
    /// Cancel a job; builds in progress are told to stop, and a job whose image index is being
    /// pushed moves no further tag (tags already moved stay). A job that already ended is left as
    /// it is (exit 0).
    Cancel {
        /// Job id.
        id: Uuid,
    },
    /// Print a job's build logs on stdout, or follow them until the job ends.
    #[command(long_about = LOGS_HELP)]
    Logs(LogsArgs),
    /// Create, list and revoke join tokens (for agents) and API tokens (admin scope).
    Tokens(TokensArgs),
    /// What the coordinator does on its own (admin): `archfarm admin retention`.
    Admin(AdminArgs),
}

/// `archfarm admin retention`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// What to show.
    #[command(subcommand)]
    pub action: AdminAction,
}

/// `archfarm admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// Show the retention setting (--retention), the last sweep's time and what it deleted,
    /// and the totals since the answering coordinator started.
    Retention {
        /// Print the coordinator's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// `archfarm tokens create|list|revoke`.
#[derive(Debug, Clone, Args)]
pub struct TokensArgs {
    /// What to do with tokens.
    #[command(subcommand)]
    pub action: TokensAction,
}

/// `archfarm tokens` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TokensAction {
    /// Create a token and print it on stdout, once: the coordinator keeps only its hash.
    #[command(long_about = TOKENS_CREATE_HELP)]
    Create(CreateTokenArgs),
    /// List tokens (never the tokens themselves): id, kind, scope, name, state, uses, expiry.
    List {
        /// Print the coordinator's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once; agents already registered with a join token keep working.
    Revoke {
        /// The token's id, as `archfarm tokens list` shows it.
        id: Uuid,
    },
}

/// `archfarm tokens create --help`.
const TOKENS_CREATE_HELP: &str = "\
Create a token and print it on stdout, once: the coordinator keeps only its hash.

Join tokens (--join) let agents register (`archfarm-agent --join-token`); --uses limits how many \
agents, --expires how long. API tokens (--scope) let CI and people call the API: read (jobs, \
agents, logs, the dashboard, /metrics), submit (read + upload contexts, submit and cancel jobs) \
or admin (submit + tokens and agents). Join tokens start with afj_, API tokens with afu_, agent \
tokens with afa_, so secret scanners can find leaked ones.

A submit token may be limited to repositories with --repository REGISTRY/REPOSITORY (repeatable): its jobs may push only where a pattern matches, and it may cancel only such jobs. The registry is matched exactly (but for case); in the repository, * matches within one path component and ** across components.

Examples:
  archfarm tokens create --join --uses 1 --expires 1h --name pi-4
  archfarm tokens create --scope submit --name gitlab-ci
  archfarm tokens create --scope submit --repository 'registry.example.com/team-a/**' --name team-a
  TOKEN=$(archfarm tokens create --scope read --expires 30d)";

/// `archfarm tokens create` options.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["join", "scope"])))]
pub struct CreateTokenArgs {
    /// A join token, which lets agents register.
    #[arg(long)]
    pub join: bool,
    /// An API token with this scope: read, submit or admin.
    #[arg(long, value_name = "SCOPE", value_parser = parse_scope)]
    pub scope: Option<Scope>,
    /// A label for listings (A-Z a-z 0-9 - _ . @, up to 64) [default: join or api].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Stop accepting it after DURATION (e.g. 1h, 30d) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
    pub expires: Option<Duration>,
    /// For join tokens: how many agents may register with it [default: any number].
    #[arg(long, value_name = "N", requires = "join", value_parser = clap::value_parser!(u64).range(1..))]
    pub uses: Option<u64>,
    /// For submit tokens: a REGISTRY/REPOSITORY pattern its jobs may push to (repeatable; `*`
    /// within one path component, `**` across) [default: anywhere].
    #[arg(long = "repository", value_name = "PATTERN", requires = "scope", value_parser = parse_pattern)]
    pub repositories: Vec<String>,
    /// Print the coordinator's JSON (with the token) instead of the token alone.
    #[arg(long)]
    pub json: bool,
}

/// `--repository`: checked here so a typo is refused before anything is sent.
fn parse_pattern(value: &str) -> Result<String, String> {
    archfarm_protocol::repository_pattern::RepositoryPattern::parse(value).map(|p| p.to_string())
}

/// `--expires`: a duration of at least one second.
fn parse_expiry(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("a token must live more than 0s; give e.g. 1h or 30d".into());
    }
    Ok(d)
}

/// `--scope`, with [`Scope`]'s own message for a bad value.
fn parse_scope(value: &str) -> Result<Scope, String> {
    value.parse()
}

/// `archfarm logs --help`.
const LOGS_HELP: &str = "\
Print a job's build logs on stdout.

With --platform, only that platform's log, exactly as the build wrote it. Without it, every \
build's log; when the job has more than one build, each line starts with `[PLATFORM AGENT] ` \
(`[linux/arm64 pi-4] STEP 2/5: RUN make`), the builds one after another, or with --follow \
interleaved as their lines arrive. Only whole lines are printed.

Examples:
  archfarm logs 6f1e2d3c-5b7a-4c1d-9e8f-0a1b2c3d4e5f                     every build's log so far
  archfarm logs 6f1e2d3c-5b7a-4c1d-9e8f-0a1b2c3d4e5f --platform aarch64  only linux/arm64's log
  archfarm logs 6f1e2d3c-5b7a-4c1d-9e8f-0a1b2c3d4e5f --follow            until the job ends
  ID=$(archfarm build --detach --platform amd64,arm64 -t registry.example.com/app:1 .)
  archfarm logs \"$ID\" --follow --platform arm64

Exit codes:
  0    the logs were printed; with --follow, the job ended and every log was read to its end.
       This says nothing about how the job ended: `archfarm job ID` (or `archfarm build`'s own
       exit code) tells that
  1    the coordinator could not be reached or failed (5xx), or stayed unreachable while following
  2    bad usage: an unknown platform name, a platform the job does not build, or a request the
       coordinator refused (4xx: unknown job, bad token)
  130  stopped by Ctrl-C while following (as shells report it); the job keeps running";

/// `archfarm logs JOB [--platform P] [--follow]`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Job id.
    pub id: Uuid,
    /// Only this platform's log, unprefixed (any accepted spelling: aarch64, x86_64, arm64/v8...).
    #[arg(long, value_name = "P")]
    pub platform: Option<String>,
    /// Keep printing new lines until the job has ended and every log was read to its end.
    #[arg(short, long)]
    pub follow: bool,
}

/// `archfarm agents [drain NAME]`.
#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    /// What to do with the agents; without one, list them.
    #[command(subcommand)]
    pub action: Option<AgentsAction>,
}

/// `archfarm agents` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentsAction {
    /// Let an agent finish its running builds, take no new ones, then leave the farm (admin).
    Drain {
        /// The agent's name, as `archfarm agents` lists it.
        name: String,
    },
    /// Cut an agent off at once (admin): its token stops working, its builds go back to the
    /// queue, and it cannot register again under its name until it is forgotten.
    Revoke {
        /// The agent's name, as `archfarm agents` lists it.
        name: String,
    },
    /// Forget a revoked or offline agent (admin), freeing its name for a new registration.
    Forget {
        /// The agent's name, as `archfarm agents` lists it.
        name: String,
    },
}

/// `archfarm build` options, named like `docker buildx build`'s.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Platforms to build, comma separated and/or repeated (e.g. linux/amd64,linux/arm64).
    #[arg(long = "platform", required = true, value_name = "P[,P...]")]
    pub platforms: Vec<String>,
    /// Platforms built when possible: one that fails or that no agent can take is left out of the
    /// index with a warning instead of failing the job. Comma separated and/or repeated.
    #[arg(long = "optional-platform", value_name = "P[,P...]")]
    pub optional_platforms: Vec<String>,
    /// Reference to push the image index under (REGISTRY/REPOSITORY:TAG); repeat for more tags,
    /// in any repositories and registries (each gets the same index).
    #[arg(short = 't', long = "tag", required = true, value_name = "REF")]
    pub tags: Vec<String>,
    /// Dockerfile path, relative to the context directory [default: Dockerfile].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Build-time variable NAME=VALUE; a bare NAME takes its value from the environment.
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// Target stage of a multi-stage Dockerfile.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// When a platform may be built under QEMU emulation: `fallback` (when no native agent can
    /// take it, or when the recorded build times say emulating finishes first), `never` (wait for a
    /// native agent), or `prefer-native=DURATION` (wait at most DURATION, e.g. 10m, for a native
    /// agent, then emulate).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "fallback",
        value_parser = parse_emulation
    )]
    pub emulation: EmulationPolicy,
    /// The network of the `RUN` steps, as buildx's `--network`: `default` (the building agent's
    /// own), `host` (the agent host's network), `none` (loopback only: nothing outside the step,
    /// cloud metadata endpoints included) or `private` (a namespace behind NAT). Only agents that
    /// allow it (`archfarm agents`, ALLOWS) take the job's builds.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "default",
        value_parser = parse_network
    )]
    pub network: NetworkChoice,
    /// Fail the job as timed out when it has not finished after DURATION (e.g. 90m, 1h30m, 3600)
    /// [default: the coordinator's, 2h].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    /// Submit the job, print its id and exit without following it.
    #[arg(long)]
    pub detach: bool,
    /// Who submits the job, shown on the dashboard [default: the CI user from GITHUB_ACTOR,
    /// GITLAB_USER_LOGIN or BUILDKITE_BUILD_CREATOR, else USER@HOST].
    #[arg(long, env = "ARCHFARM_SUBMITTER", value_name = "NAME")]
    pub submitter: Option<String>,
    /// Treat the value of build argument NAME (given with --build-arg) as secret: the job shows it
    /// as [redacted] and build logs have it replaced by [redacted]; repeatable. Like any build
    /// argument it still reaches the image's history, so it is no way to keep a secret out of it.
    #[arg(long = "secret-build-arg", value_name = "NAME")]
    pub secret_build_args: Vec<String>,
    /// A build secret for `RUN --mount=type=secret,id=ID` steps, as buildx takes it:
    /// id=ID,src=FILE or id=ID,env=VAR (also type=file|env, env=VAR alone, id=ID alone); repeatable.
    /// The value is read now, goes to the agents building this job only, and is never in the
    /// image, a log, the job or the coordinator's database once the job has ended.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// Export each platform's build cache to a registry, as buildx takes it:
    /// type=registry,ref=REGISTRY/REPO[:TAG][,mode=max] (or REGISTRY/REPO[:TAG] alone);
    /// repeatable. Each platform's cache goes to a repository of its own below REPO
    /// (REPO/TAG-linux-arm64), so none overwrites another. A cache that cannot be written slows
    /// the build, never fails it [default: the coordinator's --default-cache, when neither
    /// --cache-to nor --cache-from is given].
    #[arg(long = "cache-to", value_name = "type=registry,ref=REF", value_parser = parse_cache)]
    pub cache_to: Vec<CacheRef>,
    /// Reuse build steps from a registry cache written by --cache-to (same syntax; repeatable,
    /// the first that answers is used).
    #[arg(long = "cache-from", value_name = "type=registry,ref=REF", value_parser = parse_cache)]
    pub cache_from: Vec<CacheRef>,
    /// Run every step again: reuse nothing from the agents' layers or --cache-from
    /// (--cache-to is still written).
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Pull every base image again, even when the agent already has it.
    #[arg(long)]
    pub pull: bool,
    /// Push the image (as buildx's `--push`): accepted for compatibility; the farm's agents
    /// always push, by digest, and the index goes under every `-t`.
    #[arg(long)]
    pub push: bool,
    /// Refused: the image is built on the farm's agents, not on this machine, so there is no
    /// local image store to load it into (pull it after the build instead).
    #[arg(long, hide = true)]
    pub load: bool,
    /// Refused: the farm pushes to a registry; `type=registry` is `--push`, and local outputs
    /// (`type=docker`, `type=local`, `type=tar`, `type=oci`) cannot reach this machine.
    #[arg(long, short = 'o', value_name = "SPEC", hide = true)]
    pub output: Option<String>,
    /// Write the pushed index's digest to FILE (as buildx's `--iidfile`), once it is pushed.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write the build's metadata as JSON to FILE (as buildx's `--metadata-file`):
    /// `containerimage.digest`, `containerimage.descriptor`, `image.name`, plus `archfarm.job`
    /// and `archfarm.platforms` (each platform's manifest digest, agent and mode).
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// A label for each platform's image config, KEY=VALUE (repeatable; a later one for the same
    /// key wins).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// An annotation, as buildx takes it: `index:KEY=VALUE` for the image index (where GHCR reads
    /// a multi-arch image's description), `manifest:KEY=VALUE` or `KEY=VALUE` for each
    /// platform's manifest (repeatable).
    #[arg(long = "annotation", value_name = "[index:|manifest:]KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Let ELF files at paths matching GLOB be for another architecture (repeatable). Every
    /// other executable and shared object in each platform's image must be for that platform,
    /// or the platform fails naming the file. GLOB is an absolute path in the image; * and ?
    /// match within a path component, ** any number of them: '/usr/bin/qemu-*-static',
    /// '/usr/aarch64-linux-gnu/**'.
    #[arg(long = "allow-foreign-binary", value_name = "GLOB")]
    pub allow_foreign_binary: Vec<String>,
    /// Run CMD ARGS… in each platform's built image before it is pushed: on the agent that
    /// built it (natively, or under QEMU where it emulated), in the sandbox of its RUN steps
    /// (same runtime, network, limits). As `docker run IMAGE CMD ARGS`: the image's ENTRYPOINT,
    /// user, working directory and environment apply, CMD ARGS replace its CMD. Split into
    /// words as a shell does ('…', "…", \), but no shell runs it: nothing expands, and pipes or
    /// lists need one, e.g. --smoke-test 'sh -c "myapp --version | grep 1.2"'; with an
    /// ENTRYPOINT, --smoke-test --version. Its output goes to the build log; a non-zero exit
    /// fails that platform (an optional one is left out).
    #[arg(
        long = "smoke-test",
        value_name = "'CMD ARGS…'",
        allow_hyphen_values = true
    )]
    pub smoke_test: Option<String>,
    /// How long the smoke test may run on each platform before it is stopped and fails it
    /// (e.g. 30s, 10m; at most 1h) [default: 5m].
    #[arg(long = "smoke-test-timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub smoke_test_timeout: Option<Duration>,
    /// Provenance, as buildx takes it: `true` (the default: one SLSA provenance attestation
    /// per platform, naming the agent and its hardware), `false`, or `mode=min|max` (the same
    /// statement either way).
    #[arg(long, value_name = "true|false|mode=min|max")]
    pub provenance: Option<String>,
    /// An attestation, as buildx takes it: `type=provenance[,mode=min|max][,disabled=true]`
    /// (repeatable; SBOMs are not made).
    #[arg(long = "attest", value_name = "type=provenance[,…]")]
    pub attest: Vec<String>,
    /// Where the provenance goes: `index` (the default: inside the image index, as buildx
    /// stores it, where `docker buildx imagetools inspect` finds it) or `referrers` (OCI 1.1
    /// referrers of each platform's manifest, for tools that trip over extra index entries).
    #[arg(long = "attest-to", value_name = "index|referrers")]
    pub attest_to: Option<String>,
    /// Print only the result and errors (as `--progress quiet`).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Whether to send the pipeline's own registry credentials with the job, as buildx forwards
    /// the client's to its builder: `auto` sends, for the registries the job pushes to (its
    /// tags' and its caches'), what the docker config holds (`$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`; `auths`, `credsStore`, `credHelpers`), used for this job only;
    /// `none` sends nothing, and the farm's own credentials are used.
    #[arg(
        long = "registry-credentials",
        value_enum,
        default_value = "auto",
        env = "ARCHFARM_REGISTRY_CREDENTIALS",
        value_name = "auto|none"
    )]
    pub registry_credentials: crate::registry_credentials::Mode,
    /// Send registry credentials, `--secret`s and `--secret-build-arg`s to a coordinator whose
    /// URL is plain `http://` on another host: say so when a TLS-terminating proxy or a service
    /// mesh encrypts the connection (the coordinator's flag of the same name says the same).
    /// Without it such a build sends no registry credentials (with a warning) and refuses to
    /// send secrets. Default: off.
    #[arg(long, env = "ARCHFARM_INSECURE_CREDENTIALS_OVER_HTTP")]
    pub insecure_credentials_over_http: bool,
    /// Context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `--cache-to`/`--cache-from`, with the protocol's message naming the accepted forms.
fn parse_cache(value: &str) -> Result<CacheRef, String> {
    CacheRef::parse(value).map_err(|e| e.to_string())
}

/// `--emulation`, with [`EmulationPolicy`]'s own message for a bad value.
fn parse_emulation(value: &str) -> Result<EmulationPolicy, String> {
    value.parse()
}

/// What `--network` asks for: `None` is `default`, the building agent's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkChoice(pub Option<Network>);

/// `--network`, with the protocol's message naming the accepted values.
fn parse_network(value: &str) -> Result<NetworkChoice, String> {
    archfarm_protocol::network::parse_job_network(value).map(NetworkChoice)
}

/// `--timeout`: a duration of at least one second.
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("a job needs more than 0s; give e.g. 30m or 2h".into());
    }
    Ok(d)
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// `tty` when stderr is a terminal (and TERM is not `dumb`), `plain` otherwise.
    Auto,
    /// One live row per platform (state, agent, native or emulated, elapsed time, last log
    /// line), redrawn in place with ANSI escapes.
    Tty,
    /// One line per state change, plus the build logs prefixed with platform and agent.
    Plain,
    /// Nothing but the result (and errors).
    Quiet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("archfarm").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_flags_like_buildx() {
        let cli = parse(&[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--platform",
            "s390x",
            "-t",
            "localhost:5000/app:1",
            "--tag",
            "localhost:5000/app:latest",
            "-f",
            "docker/Dockerfile",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B",
            "--target",
            "final",
            "--emulation",
            "never",
            "--progress",
            "plain",
            "--detach",
            "--coordinator",
            "http://farm:8080",
            "ctx",
        ])
        .unwrap();
        assert_eq!(cli.conn.coordinator, "http://farm:8080");
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.platforms, ["linux/amd64,linux/arm64", "s390x"]);
        assert_eq!(b.tags.len(), 2);
        assert_eq!(b.build_args, ["A=1", "B"]);
        assert_eq!(b.emulation, EmulationPolicy::Never);
        assert_eq!(b.network, NetworkChoice(None));
        assert!(b.optional_platforms.is_empty());
        assert_eq!(b.timeout, None);
        assert_eq!(b.progress, Progress::Plain);
        assert!(b.detach);
        assert_eq!(b.context, PathBuf::from("ctx"));
        assert_eq!(b.file, Some(PathBuf::from("docker/Dockerfile")));
    }

    #[test]
    fn emulation_timeout_and_optional_platforms() {
        let cli = parse(&[
            "build",
            "--platform",
            "amd64",
            "--optional-platform",
            "s390x,riscv64",
            "--optional-platform",
            "ppc64le",
            "--emulation",
            "prefer-native=10m",
            "--timeout",
            "1h30m",
            "-t",
            "a:1",
            ".",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(
            b.emulation,
            EmulationPolicy::PreferNative(Duration::from_secs(600))
        );
        assert_eq!(b.timeout, Some(Duration::from_secs(5400)));
        assert_eq!(b.optional_platforms, ["s390x,riscv64", "ppc64le"]);
        let base = ["build", "--platform", "amd64", "-t", "a:1"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            a.push(".");
            parse(&a)
        };
        let Command::Build(b) = with(&[]).unwrap().command else {
            panic!("not build")
        };
        assert_eq!(b.emulation, EmulationPolicy::Fallback);
        for bad in [
            &["--emulation", "always"][..],
            &["--emulation", "prefer-native=soon"],
            &["--emulation", "prefer-native"],
            &["--timeout", "0"],
            &["--timeout", "2 days"],
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let e = with(&["--emulation", "always"]).unwrap_err().to_string();
        assert!(e.contains("unknown emulation policy 'always'"), "{e}");
        assert!(e.contains("prefer-native=DURATION"), "{e}");
        let e = with(&["--timeout", "0s"]).unwrap_err().to_string();
        assert!(e.contains("more than 0s"), "{e}");
    }

    #[test]
    fn network_is_default_or_one_the_agents_know() {
        let with = |extra: &[&str]| {
            let mut a = vec!["build", "--platform", "amd64", "-t", "a:1"];
            a.extend_from_slice(extra);
            a.push(".");
            parse(&a).map(|cli| match cli.command {
                Command::Build(b) => b.network,
                _ => panic!("not build"),
            })
        };
        assert_eq!(with(&[]).unwrap(), NetworkChoice(None));
        assert_eq!(
            with(&["--network", "default"]).unwrap(),
            NetworkChoice(None)
        );
        assert_eq!(
            with(&["--network", "none"]).unwrap(),
            NetworkChoice(Some(Network::None))
        );
        assert_eq!(
            with(&["--network=host"]).unwrap(),
            NetworkChoice(Some(Network::Host))
        );
        let e = with(&["--network", "bridge"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("'bridge'")
                && e.contains("default")
                && e.contains("host")
                && e.contains("none")
                && e.contains("private"),
            "{e}"
        );
    }

    #[test]
    fn agents_lists_or_drains() {
        let Command::Agents(a) = parse(&["agents"]).unwrap().command else {
            panic!("not agents")
        };
        assert!(a.action.is_none());
        let cli = parse(&["agents", "drain", "pi-4", "--coordinator", "http://x:1"]).unwrap();
        assert_eq!(cli.conn.coordinator, "http://x:1");
        let Command::Agents(a) = cli.command else {
            panic!("not agents")
        };
        let Some(AgentsAction::Drain { name }) = a.action else {
            panic!("not drain")
        };
        assert_eq!(name, "pi-4");
        assert!(parse(&["agents", "drain"]).is_err(), "name required");
        assert!(parse(&["agents", "evict", "pi-4"]).is_err());
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        assert!(
            parse(&["build", "-t", "x:1", "ctx"]).is_err(),
            "platform required"
        );
        assert!(
            parse(&["build", "--platform", "amd64", "ctx"]).is_err(),
            "tag required"
        );
        assert!(parse(&["job", "not-a-uuid"]).is_err());
        assert!(parse(&["jobs", "--limit", "0"]).is_err());
        let e = parse(&[
            "build",
            "--platform",
            "amd64",
            "-t",
            "a:1",
            "--progress",
            "fancy",
            ".",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["logs"]).is_err(), "job id required");
        assert!(parse(&["logs", "not-a-uuid"]).is_err());
    }

    #[test]
    fn progress_styles() {
        let progress_of = |value: &str| {
            let args = [
                "build",
                "--platform",
                "amd64",
                "-t",
                "a:1",
                "--progress",
                value,
                ".",
            ];
            let Command::Build(b) = parse(&args).unwrap().command else {
                panic!("not build")
            };
            b.progress
        };
        for (value, want) in [
            ("auto", Progress::Auto),
            ("tty", Progress::Tty),
            ("plain", Progress::Plain),
            ("quiet", Progress::Quiet),
        ] {
            assert_eq!(progress_of(value), want);
        }
    }

    #[test]
    fn logs_args() {
        let id = "6f1e2d3c-0000-4000-8000-000000000001";
        let Command::Logs(l) = parse(&["logs", id]).unwrap().command else {
            panic!("not logs")
        };
        assert_eq!(l.id.to_string(), id);
        assert_eq!((l.platform, l.follow), (None, false));
        let Command::Logs(l) = parse(&["logs", id, "--platform", "aarch64", "-f"])
            .unwrap()
            .command
        else {
            panic!("not logs")
        };
        assert_eq!(l.platform.as_deref(), Some("aarch64"));
        assert!(l.follow);
        let help = Cli::command()
            .find_subcommand_mut("logs")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("Examples:"), "{help}");
        assert!(help.contains("--platform aarch64"), "{help}");
        assert!(help.contains("every log was read to its end"), "{help}");
    }

    #[test]
    fn token_never_in_debug() {
        let cli = parse(&["--token", "hunter2", "agents"]).unwrap();
        assert_eq!(cli.conn.token.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{cli:?}").contains("hunter2"));
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("130"), "{help}");
    }
}
