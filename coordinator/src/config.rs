//! Coordinator configuration: flags with `ARCHFARM_*` environment equivalents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use archfarm_protocol::pull::RegistryMirror;
pub use archfarm_protocol::Secret;

/// Everything the coordinator can be told at start.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "archfarm-coordinator",
    version,
    about = "The archfarm coordinator: API, scheduler and index stitching"
)]
pub struct Config {
    /// Address to listen on. Default: 127.0.0.1:8080.
    #[arg(long, env = "ARCHFARM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for context archives, build logs and the default SQLite database. Default: ./archfarm-data.
    #[arg(long, env = "ARCHFARM_DATA_DIR", default_value = "archfarm-data")]
    pub data_dir: PathBuf,

    /// Database URL, `sqlite://PATH` or `postgres://...`. Default: SQLite file `archfarm.db` in the data dir.
    /// Several coordinators may share one PostgreSQL database; an SQLite file serves one.
    #[arg(long, env = "ARCHFARM_DATABASE", hide_env_values = true)]
    pub database: Option<Secret>,

    /// Name of this coordinator among those sharing the database, recorded with every lease it
    /// grants and every stitch it does; unique per replica (a Kubernetes pod name). Default: the
    /// host name.
    #[arg(long, env = "ARCHFARM_REPLICA_NAME", default_value_t = default_replica_name(),
          value_parser = parse_replica_name)]
    pub replica_name: String,

    /// Token agents must present to register. Default: none, and then any agent that reaches the
    /// coordinator may register (a warning is logged).
    #[arg(long, env = "ARCHFARM_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<Secret>,

    /// Bearer token CI clients must send. Default: none (the API is open to whoever reaches it).
    #[arg(long, env = "ARCHFARM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// Registry (HOST[:PORT]) spoken to over plain HTTP; repeatable. Registries on loopback are plain
    /// HTTP without being listed, as Docker does. Default: none.
    #[arg(
        long = "insecure-registry",
        env = "ARCHFARM_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,

    /// Registries (HOST[:PORT]) jobs may push to; repeatable. A job tagged for another registry is
    /// refused with 400 `registry_not_allowed`. Default: none, and then jobs may push anywhere.
    #[arg(
        long = "allowed-registry",
        env = "ARCHFARM_ALLOWED_REGISTRY",
        value_delimiter = ',',
        value_parser = archfarm_protocol::repository_pattern::parse_registry
    )]
    pub allowed_registries: Vec<String>,

    /// Hosts (HOST[:PORT]) other than a registry itself that the registry may redirect to or name
    /// as its token service (the `realm` of its `WWW-Authenticate`), e.g. a CDN serving blobs;
    /// repeatable. Anything else is refused before a request goes there. Default: none (only the
    /// registry's own host).
    #[arg(
        long = "registry-redirect-host",
        env = "ARCHFARM_REGISTRY_REDIRECT_HOST",
        value_delimiter = ','
    )]
    pub registry_redirect_hosts: Vec<String>,

    /// Registry cache location (`REGISTRY/PATH`, buildx's `type=registry,ref=` form also
    /// accepted) for jobs that name no `--cache-to`/`--cache-from`: each such job writes and reads
    /// `REGISTRY/PATH/<its repository>/<os>-<arch>`, so fresh agents start from what any agent
    /// built before. Default: none (such jobs use only the building agent's own layers).
    #[arg(long, env = "ARCHFARM_DEFAULT_CACHE", value_parser = archfarm_protocol::CacheRef::parse)]
    pub default_cache: Option<archfarm_protocol::CacheRef>,

    /// Largest context archive accepted, in bytes. Default: 536870912 (512 MiB).
    #[arg(long, env = "ARCHFARM_MAX_CONTEXT_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_context_bytes: u64,

    /// Longest time a lease request is held open waiting for work, in seconds. Default: 25.
    #[arg(long, env = "ARCHFARM_LEASE_WAIT_SECS", default_value_t = 25)]
    pub lease_wait_secs: u64,

    /// How often agents heartbeat a running build, in seconds. Default: 5.
    #[arg(long, env = "ARCHFARM_HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,

    /// Heartbeats an agent may miss before its lease lapses and the build is requeued. Default: 3.
    #[arg(long, env = "ARCHFARM_MISSED_HEARTBEATS", default_value_t = 3)]
    pub missed_heartbeats: u64,

    /// Times a build may be leased before it fails the job. Default: 3.
    #[arg(long, env = "ARCHFARM_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i64,

    /// How long stitching keeps retrying a registry that is down or answering 5xx/429, in seconds;
    /// the job waits in `stitching` meanwhile. Default: 600.
    #[arg(long, env = "ARCHFARM_STITCH_RETRY_SECS", default_value_t = 600)]
    pub stitch_retry_secs: u64,

    /// The most a job may spend in `stitching`, in seconds, counted from when it entered it
    /// (a replica taking the stitching over does not restart it): after it the job fails with
    /// "stitching did not finish within …" and moves no further tag. Default: 1800 (30 minutes).
    #[arg(long, env = "ARCHFARM_STITCH_TIMEOUT_SECS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stitch_timeout_secs: u64,

    /// Seconds without a call after which an agent counts as offline. Default: 60.
    #[arg(long, env = "ARCHFARM_AGENT_OFFLINE_SECS", default_value_t = 60)]
    pub agent_offline_secs: u64,

    /// How long a queued build is held for the agent that last built its repository and platform
    /// within a day (its layer cache is warm), when that agent is online and could take it,
    /// before other agents may take it, in seconds; 0 turns the preference off. A warm emulating
    /// agent never holds a build back from a native one. Default: 30.
    #[arg(long, env = "ARCHFARM_WARM_AGENT_WAIT_SECS",
          default_value_t = crate::scheduler::DEFAULT_WARM_AGENT_WAIT_SECS)]
    pub warm_agent_wait_secs: u64,

    /// Largest build log kept per build, in bytes; past it the log ends with a truncation marker.
    /// Default: 67108864 (64 MiB).
    #[arg(long, env = "ARCHFARM_MAX_LOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_log_bytes: u64,

    /// How long ended jobs (succeeded, failed, cancelled) are kept with their builds, leases and
    /// logs, and context archives no job names after their last use, e.g. `30d`, `12h`; `0` or
    /// `off` keeps everything. Live jobs and what they need are never deleted. Default: 30d.
    #[arg(long, env = "ARCHFARM_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub retention: Retention,

    /// How often the retention sweep runs, in seconds. Default: 300.
    #[arg(long, env = "ARCHFARM_RETENTION_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_interval_secs: u64,

    /// Largest size of the context cache in the data directory (`DATA_DIR/contexts`), in bytes:
    /// past it, the least recently used archives no live job needs are deleted (the database
    /// keeps them). Default: 8589934592 (8 GiB), below the Helm chart's 10 GiB `emptyDir`.
    #[arg(long, env = "ARCHFARM_CONTEXT_CACHE_MAX_BYTES", default_value_t = 8 << 30)]
    pub context_cache_max_bytes: u64,

    /// With `--api-token` set, let anyone who reaches the coordinator read without a token: the
    /// dashboard, jobs, agents, logs, event streams and `/metrics`. Default: off (a `read` token or
    /// the dashboard's sign-in is needed).
    #[arg(long, env = "ARCHFARM_PUBLIC_READ")]
    pub public_read: bool,

    /// Serve without `--api-token` on an address other than loopback, where anyone who reaches it
    /// may submit builds (and register agents when there is no `--join-token`). Default: off, and
    /// then the coordinator refuses to start that way.
    #[arg(long, env = "ARCHFARM_INSECURE_OPEN")]
    pub insecure_open: bool,

    /// Hand registry credentials, build secrets and secret build arguments to agents over plain
    /// HTTP from other hosts: say so when a TLS-terminating proxy or a service mesh encrypts the
    /// connection. Without it, and without `--tls-cert`, such a build fails on an agent whose
    /// connection does not come from loopback, naming this flag. Default: off.
    #[arg(long, env = "ARCHFARM_INSECURE_CREDENTIALS_OVER_HTTP")]
    pub insecure_credentials_over_http: bool,

    /// Docker `config.json` with registry credentials (`{"auths": {"HOST[:PORT]": {"auth":
    /// "BASE64(user:password)"}}}`, or helpers in `credsStore`/`credHelpers`, run when needed),
    /// read at start; used for stitching and handed to the agent of each build for that job's
    /// registry only, unless the job sent its own. Default: none (registries are used anonymously).
    #[arg(long, env = "ARCHFARM_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,

    /// Key the registry credentials jobs send (`archfarm build`, from the pipeline's docker
    /// config) are sealed with in the database (AES-256-GCM): any secret of at least 32
    /// characters, the same on every replica sharing the database. Default: a key made at first
    /// start in the data dir (`job-credential.key`), which serves one coordinator only.
    #[arg(long, env = "ARCHFARM_JOB_CREDENTIAL_KEY", hide_env_values = true)]
    pub job_credential_key: Option<Secret>,

    /// File holding `--job-credential-key` (mode 0600; refused when its group or others may
    /// read it): better than the flag, whose value any local user can read in the process list.
    /// Default: none.
    #[arg(
        long,
        env = "ARCHFARM_JOB_CREDENTIAL_KEY_FILE",
        conflicts_with = "job_credential_key"
    )]
    pub job_credential_key_file: Option<PathBuf>,

    /// PEM file of extra root CA certificates trusted for registries spoken to over TLS, on top
    /// of the system's (e.g. a registry with a self-signed certificate). Default: none.
    #[arg(long, env = "ARCHFARM_REGISTRY_CA_CERT")]
    pub registry_ca_cert: Option<PathBuf>,

    /// Registry mirror for base images, `PREFIX=LOCATION` (e.g. `docker.io=mirror.local:5000` or
    /// `docker.io=harbor.local/dockerhub-proxy`); repeatable. Every agent pulls images under
    /// PREFIX from LOCATION first and from the origin when the mirror fails; a mirror whose host
    /// is insecure (`--insecure-registry`, loopback) is spoken to over plain HTTP. Default: none.
    #[arg(
        long = "registry-mirror",
        env = "ARCHFARM_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<RegistryMirror>,

    /// Registry (HOST[:PORT]) always spoken to over HTTPS, even on loopback (which is otherwise
    /// plain HTTP); repeatable. Agents follow the coordinator's choice. Default: none.
    #[arg(
        long = "secure-registry",
        env = "ARCHFARM_SECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub secure_registries: Vec<String>,

    /// PEM certificate chain (leaf first) to serve HTTPS with; needs `--tls-key`. Reloaded on SIGHUP
    /// and when the file changes. Default: none (plain HTTP).
    #[arg(
        long,
        env = "ARCHFARM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1). Default: none (plain HTTP).
    #[arg(
        long,
        env = "ARCHFARM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) agents' client certificates must chain to; with it, agent calls without
    /// a verified client certificate are refused (401 `client_certificate_required`) while the CLI
    /// and browsers connect without one. Needs `--tls-cert`. Default: none (no client certificates).
    #[arg(
        long,
        env = "ARCHFARM_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,

    /// The URL agents and CLIs reach this coordinator at (behind a load balancer, its URL),
    /// named as the builder's id in the provenance of every image it stitches. Default:
    /// `http(s)://REPLICA-NAME:PORT` from `--replica-name` and `--listen`.
    #[arg(long, env = "ARCHFARM_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
}

/// `--retention`: how long ended jobs and unused contexts are kept; `None` keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// `--retention`: a duration (`30d`, `12h`, `90m`), or `0`/`off` for none.
fn parse_retention(raw: &str) -> Result<Retention, String> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") || raw == "0" {
        return Ok(Retention(None));
    }
    let d = archfarm_protocol::duration::parse_duration(raw)?;
    Ok(Retention((!d.is_zero()).then_some(d)))
}

/// This machine's host name, or `coordinator` when it has none.
pub fn default_replica_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "coordinator".to_string())
}

/// A replica name: 1 to 253 printable characters without spaces (a host or pod name fits).
fn parse_replica_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 253 || raw.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{raw}' is not a replica name: use 1 to 253 characters without spaces, e.g. the pod or host name"
        ));
    }
    Ok(raw.to_string())
}

impl Config {
    /// Whether API calls need a token: they do once `--api-token` (the admin's) is set.
    pub fn auth_enabled(&self) -> bool {
        self.api_token.is_some()
    }

    /// Whether jobs may push to `registry`: any may when `--allowed-registry` is not given.
    pub fn registry_allowed(&self, registry: &str) -> bool {
        let key = archfarm_protocol::repository_pattern::registry_key(registry);
        self.allowed_registries.is_empty() || self.allowed_registries.contains(&key)
    }

    /// Whether agents need a join token to register: the static `--join-token`, or one created
    /// with `archfarm tokens create --join`, which needs an admin, so `--api-token` too.
    pub fn join_required(&self) -> bool {
        self.join_token.is_some() || self.api_token.is_some()
    }

    /// Refuses a start that would leave the API open to the network (see `--insecure-open`).
    pub fn check_exposure(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        if self.auth_enabled() || self.insecure_open || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve on {addr} without --api-token: anyone who can reach that address could submit builds{}. \
             Set --api-token (ARCHFARM_API_TOKEN) and --join-token, listen on 127.0.0.1, or pass --insecure-open to accept it",
            if self.join_token.is_none() { " and register agents" } else { "" }
        ))
    }

    /// The database URL to use, defaulting to SQLite in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("archfarm.db").display()
            ),
        }
    }

    /// The TLS files, `None` for plain HTTP; an error when the TLS flags do not go together.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, crate::tls::TlsError> {
        crate::tls::TlsFiles::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.client_ca.as_deref(),
        )
    }

    /// Who the provenance names as having built the images this coordinator stitches.
    pub fn builder(&self) -> crate::provenance::Builder {
        let id = self.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls_enabled() { "https" } else { "http" };
            format!("{scheme}://{}:{}", self.replica_name, self.listen.port())
        });
        crate::provenance::Builder { id }
    }

    /// Whether the coordinator serves HTTPS (so cookies get the `Secure` flag).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// How long a lease lives without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1) * self.missed_heartbeats.max(1))
    }

    /// The farm's registry mirrors, each marked insecure as its host is.
    pub fn mirrors(&self) -> Vec<RegistryMirror> {
        self.registry_mirrors
            .iter()
            .map(|m| RegistryMirror {
                insecure: self.is_insecure(m.host()),
                ..m.clone()
            })
            .collect()
    }

    /// Whether pushes to and pulls from `registry` use plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = archfarm_protocol::reference::host_of(registry);
        if self
            .secure_registries
            .iter()
            .any(|r| r == registry || r == host)
        {
            return false;
        }
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback
            || self
                .insecure_registries
                .iter()
                .any(|r| r == registry || r == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("archfarm-coordinator").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_and_insecure_registries() {
        let c = parse(&[
            "--data-dir",
            "/tmp/x",
            "--insecure-registry",
            "reg.lan:5000,other",
        ]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite:///tmp/x/archfarm.db?mode=rwc");
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("127.0.0.1:41000"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(c.is_insecure("reg.lan:5000"));
        assert!(c.is_insecure("other:443"));
        assert!(!c.is_insecure("registry.example.com"));
        assert_eq!(c.lease_ttl(), Duration::from_secs(15));
        assert_eq!(c.warm_agent_wait_secs, 30);
        assert_eq!(
            c.retention,
            Retention(Some(Duration::from_secs(30 * 24 * 3600)))
        );
        assert_eq!(c.context_cache_max_bytes, 8 << 30);
        assert_eq!(parse(&["--retention", "off"]).retention, Retention(None));
        assert_eq!(parse(&["--retention", "0"]).retention, Retention(None));
        assert_eq!(
            parse(&["--retention", "12h"]).retention,
            Retention(Some(Duration::from_secs(12 * 3600)))
        );
        assert!(Config::try_parse_from(["c", "--retention", "soon"]).is_err());
        let c = parse(&["--secure-registry", "127.0.0.1:5443"]);
        assert!(
            !c.is_insecure("127.0.0.1:5443"),
            "listed: TLS even on loopback"
        );
        assert!(c.is_insecure("127.0.0.1:5000"));
    }

    #[test]
    fn mirrors_are_insecure_as_their_hosts_are() {
        let c = parse(&[
            "--registry-mirror",
            "docker.io=127.0.0.1:5000,ghcr.io=harbor.lan/ghcr",
            "--registry-mirror",
            "quay.io=mirror.lan:5000",
            "--insecure-registry",
            "mirror.lan:5000",
        ]);
        let shown: Vec<(String, bool)> = c
            .mirrors()
            .iter()
            .map(|m| (m.to_string(), m.insecure))
            .collect();
        assert_eq!(
            shown,
            [
                ("docker.io=127.0.0.1:5000".to_string(), true),
                ("ghcr.io=harbor.lan/ghcr".to_string(), false),
                ("quay.io=mirror.lan:5000".to_string(), true),
            ]
        );
        let e = Config::try_parse_from(["c", "--registry-mirror", "docker.io"]).unwrap_err();
        assert!(e.to_string().contains("PREFIX=LOCATION"), "{e}");
    }

    #[test]
    fn allowed_registries_are_compared_as_registries() {
        let any = parse(&[]);
        assert!(any.registry_allowed("anything.example.com"));
        let c = parse(&[
            "--allowed-registry",
            "Reg.LAN:5000,index.docker.io",
            "--allowed-registry",
            "ghcr.io",
        ]);
        assert_eq!(
            c.allowed_registries,
            ["reg.lan:5000", "docker.io", "ghcr.io"]
        );
        assert!(c.registry_allowed("reg.lan:5000") && c.registry_allowed("REG.lan:5000"));
        assert!(c.registry_allowed("docker.io") && c.registry_allowed("registry-1.docker.io"));
        assert!(!c.registry_allowed("reg.lan:5001") && !c.registry_allowed("reg.lan"));
        let e = Config::try_parse_from(["c", "--allowed-registry", "reg.lan/team"]).unwrap_err();
        assert!(e.to_string().contains("give HOST[:PORT]"), "{e}");
    }

    #[test]
    fn an_open_api_is_refused_beyond_loopback() {
        let wide: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let open = parse(&[]);
        assert!(open.check_exposure(local).is_ok());
        let e = open.check_exposure(wide).unwrap_err();
        assert!(
            e.contains("--api-token")
                && e.contains("register agents")
                && e.contains("--insecure-open"),
            "{e}"
        );
        assert!(parse(&["--insecure-open"]).check_exposure(wide).is_ok());
        let closed = parse(&["--api-token", "t"]);
        assert!(closed.check_exposure(wide).is_ok());
        assert!(closed.auth_enabled() && closed.join_required());
        assert!(parse(&["--join-token", "j"]).join_required());
        assert!(!open.join_required() && !open.auth_enabled());
    }

    #[test]
    fn tls_flags_go_together() {
        let err = |args: &[&str]| {
            Config::try_parse_from(
                std::iter::once("archfarm-coordinator").chain(args.iter().copied()),
            )
            .unwrap_err()
        };
        // At parsing, as a usage error (exit 2) naming the missing flag.
        let e = err(&["--tls-cert", "c.pem"]);
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--tls-key"), "{e}");
        let e = err(&["--tls-key", "k.pem"]);
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        let e = err(&["--client-ca", "ca.pem"]);
        assert!(e.to_string().contains("--tls-cert"), "{e}");

        let plain = parse(&[]);
        assert_eq!(plain.tls_files().unwrap(), None);
        assert!(!plain.tls_enabled());
        let tls = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
        ]);
        let files = tls.tls_files().unwrap().unwrap();
        assert_eq!(files.cert, PathBuf::from("c.pem"));
        assert_eq!(files.key, PathBuf::from("k.pem"));
        assert_eq!(files.client_ca, Some(PathBuf::from("ca.pem")));
        assert!(tls.tls_enabled());

        // And again for a Config built some other way than from flags (as run() checks it).
        let mut c = parse(&[]);
        c.tls_cert = Some("c.pem".into());
        let e = c.tls_files().unwrap_err().to_string();
        assert!(e.contains("--tls-cert needs --tls-key"), "{e}");
        let mut c = parse(&[]);
        c.client_ca = Some("ca.pem".into());
        let e = c.tls_files().unwrap_err().to_string();
        assert!(e.contains("--client-ca needs TLS"), "{e}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = parse(&[
            "--join-token",
            "hunter2",
            "--api-token",
            "s3cret",
            "--database",
            "postgres://u:pw@h/db",
        ]);
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("s3cret") && !dbg.contains("pw@"),
            "{dbg}"
        );
        assert_eq!(c.database_url(), "postgres://u:pw@h/db");
    }
}
