//! The real build-and-push path: a context archive unpacked by the agent, built by buildah (vfs,
//! chroot isolation), written to an OCI layout and pushed by digest to a real registry (Debian's
//! `docker-registry`, the CNCF distribution server), then read back with `skopeo`, which does not
//! trust archfarm's word for anything.
//!
//! Needs `buildah`, `docker-registry` and `skopeo` on PATH and enough privilege for buildah's chroot
//! isolation (root, or a user namespace); the project's test script installs the packages.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archfarm_agent::backend::buildah::Buildah;
use archfarm_agent::backend::isolation::{Isolation, Network};
use archfarm_agent::backend::storage::{scope, DriverChoice, Storage};
use archfarm_agent::backend::{Backend, BackendError, BuildSpec, LogSink};
use archfarm_agent::backoff::Backoff;
use archfarm_agent::context::{self, Limits};
use archfarm_agent::push;
use archfarm_protocol::{Digest, Platform};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not on PATH: install the Debian package `{package}` (apt-get install {package}) to run this test"
    );
}

/// A `docker-registry` on a free port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    async fn start() -> Registry {
        Registry::start_on(free_port(), "").await
    }

    /// A registry on `port`; `storage_extra` goes into the config's `storage:` section.
    async fn start_on(port: u16, storage_extra: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{storage_extra}http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        // Poll the API root instead of sleeping a guessed time.
        let url = format!("http://{}/v2/", reg.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return reg;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gzip'd tar of `files` (path, contents), as the CLI would upload it.
fn pack(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

struct Fixture {
    work: tempfile::TempDir,
    buildah: Buildah,
    storage: Storage,
}

impl Fixture {
    async fn new() -> Fixture {
        let work = tempfile::tempdir().unwrap();
        let storage = work.path().join("storage");
        let isolation = Isolation::oci(
            &storage,
            Path::new("runc"),
            Path::new(env!("CARGO_BIN_EXE_archfarm-agent")),
        )
        .expect("runc installed");
        let store = Storage::open(
            Path::new("buildah"),
            &storage,
            DriverChoice::Auto,
            None,
            None,
        )
        .await
        .expect("storage usable");
        let buildah = Buildah::new(store.clone(), isolation);
        buildah.prepare().await.expect("buildah usable");
        Fixture {
            work,
            buildah,
            storage: store,
        }
    }

    /// Unpacks `files` as the agent does and returns the spec of a build of them.
    fn spec(&self, files: &[(&str, &str)], platform: &str, registry: &str) -> BuildSpec {
        let build_id = Uuid::new_v4();
        let build_dir = self.work.path().join("builds").join(build_id.to_string());
        let archive = self.work.path().join(format!("{build_id}.tar.gz"));
        std::fs::write(&archive, pack(files)).unwrap();
        let context_dir = build_dir.join("context");
        context::unpack(&archive, &context_dir, &Limits::default()).unwrap();
        BuildSpec {
            build_id,
            platform: Platform::parse(platform).unwrap(),
            build_dir,
            context_dir,
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::from([(
                "GREETING".to_string(),
                "hello from archfarm".to_string(),
            )]),
            target: None,
            registry: registry.to_string(),
            repository: "team/app".into(),
            insecure_registry: true,
            registry_auth: None,
            refresh_auth: None,
            secrets: vec![],
            network: Network::Host,
            pull: Default::default(),
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            smoke_test: None,
        }
    }

    /// The names of the images in the store of `spec`'s push target.
    fn local_images(&self, spec: &BuildSpec) -> String {
        let scope = self
            .work
            .path()
            .join("storage/scopes")
            .join(scope::dir_name(&Buildah::scope_name(spec)));
        let out = Command::new("buildah")
            .arg("--root")
            .arg(scope.join("root"))
            .arg("--runroot")
            .arg(scope.join("runroot"))
            .args(["--storage-driver", self.storage.driver().as_str()])
            .args(["images", "--format", "{{.Name}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Runs a build and returns its result and the log lines it produced.
async fn build(
    fx: &Fixture,
    spec: &BuildSpec,
) -> (
    Result<archfarm_agent::backend::PushedImage, BackendError>,
    Vec<String>,
) {
    let (log, mut rx) = LogSink::channel(10_000);
    let r = fx.buildah.build(spec, log, CancellationToken::new()).await;
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    (r, lines)
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const DOCKERFILE: &str = "FROM scratch\nARG TARGETPLATFORM\nARG GREETING\nCOPY hello.txt /hello.txt\nLABEL org.example.platform=$TARGETPLATFORM org.example.greeting=\"$GREETING\"\n";

#[tokio::test]
async fn builds_and_pushes_by_digest_to_a_real_registry() {
    require("buildah", "buildah");
    require("docker-registry", "docker-registry");
    require("skopeo", "skopeo");
    let reg = Registry::start().await;
    let fx = Fixture::new().await;
    let files = [("Dockerfile", DOCKERFILE), ("hello.txt", "hello\n")];

    for platform in ["linux/arm64", "linux/s390x"] {
        let spec = fx.spec(&files, platform, &reg.addr);
        let (r, lines) = build(&fx, &spec).await;
        let img = r.unwrap_or_else(|e| panic!("{platform}: {e}\n{}", lines.join("\n")));
        assert!(
            lines.iter().any(|l| l.contains("COPY hello.txt")),
            "buildah output streamed: {lines:?}"
        );

        // skopeo, not archfarm, says what the registry holds under that digest.
        let reference = format!("docker://{}/team/app@{}", reg.addr, img.digest);
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &reference]);
        assert_eq!(
            Digest::from_sha256_bytes(&Sha256::digest(&raw)),
            img.digest,
            "{platform}: digest of the served bytes"
        );
        assert_eq!(raw.len() as u64, img.size);
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(img.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(manifest["mediaType"], img.media_type);

        let config: serde_json::Value = serde_json::from_slice(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--config",
            &reference,
        ]))
        .unwrap();
        let p = Platform::parse(platform).unwrap();
        assert_eq!(config["architecture"], p.architecture(), "{platform}");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Labels"]["org.example.platform"], platform);
        assert_eq!(
            config["config"]["Labels"]["org.example.greeting"], "hello from archfarm",
            "build args passed"
        );

        // No tag was left behind, and the local image is gone.
        // distribution answers 404 for a repository without tags, 200 with an empty list otherwise.
        let resp = reqwest::get(format!("http://{}/v2/team/app/tags/list", reg.addr))
            .await
            .unwrap();
        if resp.status().is_success() {
            let tags: serde_json::Value = resp.json().await.unwrap();
            assert!(
                tags["tags"].as_array().is_none_or(|t| t.is_empty()),
                "tags: {tags}"
            );
        } else {
            assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
        }
        assert!(
            !fx.local_images(&spec).contains(&spec.build_id.to_string()),
            "local image removed"
        );

        // Pushing the same layout again uploads nothing new and lands on the same digest.
        let layout = push::read_layout(&Buildah::layout_dir(&spec)).unwrap();
        let (log, mut rx) = LogSink::channel(100);
        let target = push::Target {
            registry: reg.addr.clone(),
            repository: "team/app".into(),
            insecure: true,
            auth: None,
            ca_cert: None,
            redirect_hosts: Vec::new(),
        };
        let again = push::push(&layout, &target, &log).await.unwrap();
        assert_eq!(again, img);
        drop(log);
        let mut notes = Vec::new();
        while let Some(l) = rx.recv().await {
            notes.push(l);
        }
        assert!(
            notes.iter().all(|l| !l.contains("uploading blob")),
            "{notes:?}"
        );
        assert_eq!(
            notes
                .iter()
                .filter(|l| l.contains("already in the registry"))
                .count(),
            2,
            "{notes:?}"
        );
    }
}

#[tokio::test]
async fn a_failing_build_reports_buildahs_last_error_line() {
    require("buildah", "buildah");
    let fx = Fixture::new().await;
    let spec = fx.spec(
        &[("Dockerfile", "FROM scratch\nCOPY missing.txt /\n")],
        "linux/amd64",
        "127.0.0.1:1",
    );
    let (r, lines) = build(&fx, &spec).await;
    let e = r.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("buildah build exited with status "),
        "{msg}"
    );
    assert!(
        msg.contains("missing.txt"),
        "the last stderr line names the problem: {msg}"
    );
    assert!(lines.iter().any(|l| l.contains("missing.txt")), "{lines:?}");
    assert!(!fx.local_images(&spec).contains(&spec.build_id.to_string()));
}

#[tokio::test]
async fn an_unreachable_registry_fails_the_push_clearly_after_retrying() {
    require("buildah", "buildah");
    let mut fx = Fixture::new().await;
    // A short retry budget keeps the test quick; the agent's default is two minutes.
    fx.buildah = fx.buildah.clone().with_push_retry(push::Retry {
        budget: Duration::from_secs(2),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(500)),
    });
    let port = free_port();
    let spec = fx.spec(
        &[("Dockerfile", DOCKERFILE), ("hello.txt", "hi\n")],
        "linux/amd64",
        &format!("127.0.0.1:{port}"),
    );
    let (r, lines) = build(&fx, &spec).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("registry 127.0.0.1:{port}: ")),
        "{msg}"
    );
    assert!(msg.contains("cannot connect: "), "{msg}");
    assert!(msg.contains("gave up after "), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    let retries: Vec<&String> = lines.iter().filter(|l| l.contains("retrying in")).collect();
    assert!(
        retries.len() >= 2,
        "each retry is in the build log: {lines:?}"
    );
    assert!(!fx.local_images(&spec).contains(&spec.build_id.to_string()));
}

/// The registry is down when the push begins and comes up about three seconds later: the push
/// retries and lands, and skopeo finds the image under the reported digest.
#[tokio::test]
async fn a_push_waits_for_a_registry_that_comes_up_late() {
    require("buildah", "buildah");
    require("docker-registry", "docker-registry");
    require("skopeo", "skopeo");
    let fx = Fixture::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let spec = fx.spec(
        &[("Dockerfile", DOCKERFILE), ("hello.txt", "late\n")],
        "linux/amd64",
        &addr,
    );
    let (log, mut rx) = LogSink::channel(10_000);
    let (began_tx, began_rx) = tokio::sync::oneshot::channel::<Instant>();
    let collector = tokio::spawn(async move {
        let mut began = Some(began_tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            if l.starts_with("[archfarm-agent] pushing ") {
                if let Some(tx) = began.take() {
                    let _ = tx.send(Instant::now());
                }
            }
            lines.push(l);
        }
        lines
    });
    let late_registry = async {
        // No push (the build failed first): nothing to start.
        let began = began_rx.await.ok()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Some((began, Registry::start_on(port, "").await))
    };
    let (r, late) = tokio::join!(
        fx.buildah.build(&spec, log, CancellationToken::new()),
        late_registry
    );
    let lines = collector.await.unwrap();
    let img = r.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    let (began, reg) = late.expect("the push began");
    assert!(began.elapsed() >= Duration::from_secs(3));
    let retries: Vec<&String> = lines.iter().filter(|l| l.contains("retrying in")).collect();
    assert!(!retries.is_empty(), "{lines:?}");
    assert!(
        retries
            .iter()
            .all(|l| l.contains(&format!("registry {addr}: ")) && l.contains("cannot connect")),
        "{retries:?}"
    );
    let reference = format!("docker://{}/team/app@{}", reg.addr, img.digest);
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &reference]);
    assert_eq!(Digest::from_sha256_bytes(&Sha256::digest(&raw)), img.digest);
}

/// A refusal that retrying cannot fix (here a read-only registry: 405 to the upload) fails the push
/// at once, with the reason on one line.
#[tokio::test]
async fn a_permanent_refusal_fails_the_push_at_once() {
    require("buildah", "buildah");
    require("docker-registry", "docker-registry");
    let reg = Registry::start_on(
        free_port(),
        "  maintenance:\n    readonly:\n      enabled: true\n",
    )
    .await;
    let fx = Fixture::new().await;
    let spec = fx.spec(
        &[("Dockerfile", DOCKERFILE), ("hello.txt", "ro\n")],
        "linux/amd64",
        &reg.addr,
    );
    let (r, lines) = build(&fx, &spec).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("registry {}: uploading blob sha256:", reg.addr)),
        "{msg}"
    );
    assert!(
        msg.contains("the registry does not accept pushes here (405 Method Not Allowed"),
        "{msg}"
    );
    assert!(!msg.contains("gave up"), "{msg}");
    assert!(
        lines.iter().all(|l| !l.contains("retrying in")),
        "no retries: {lines:?}"
    );
}

/// Command lines of the running processes, as text.
fn processes() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            if !raw.is_empty() {
                out.push(String::from_utf8_lossy(&raw).replace('\0', " "));
            }
        }
    }
    out
}

/// A cancelled build (a cancelled job, a lost lease) stops at once: the RUN step's process dies
/// within a second or two, and buildah itself soon after.
#[tokio::test]
async fn cancelling_a_build_kills_buildah_and_its_run_step() {
    require("buildah", "buildah");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let busybox = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../examples/hello/rootfs/{arch}/bin/busybox"));
    assert!(
        busybox.is_file(),
        "{} is missing: run scripts/setup.sh",
        busybox.display()
    );
    let fx = Fixture::new().await;
    // A sleep no other process on the machine has.
    let secs = 10_000 + std::process::id() % 50_000;
    let marker = format!("/bin/busybox sleep {secs}");
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"{secs}\"]\n"
    );
    let spec = fx.spec(&[("Dockerfile", &dockerfile)], "linux/amd64", "127.0.0.1:1");
    std::fs::copy(&busybox, spec.context_dir.join("busybox")).unwrap();
    let storage = fx.work.path().join("storage").display().to_string();

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let m = marker.clone();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !processes().iter().any(|p| p.contains(&m)) {
            if Instant::now() > deadline {
                // Stop the build anyway, so the test fails instead of hanging.
                trigger.cancel();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cancelled = Instant::now();
        trigger.cancel();
        while processes().iter().any(|p| p.contains(&m)) {
            assert!(
                cancelled.elapsed() < Duration::from_secs(30),
                "the RUN step survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some((cancelled, cancelled.elapsed()))
    });
    let (log, mut rx) = LogSink::channel(10_000);
    let r = fx.buildah.build(&spec, log, cancel).await;
    let returned = Instant::now();
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    assert!(
        matches!(r, Err(BackendError::Cancelled)),
        "{r:?}\n{}",
        lines.join("\n")
    );
    let (cancelled, run_step_gone) = watcher
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the RUN step never started:\n{}", lines.join("\n")));
    assert!(
        run_step_gone < Duration::from_secs(2),
        "the RUN step took {run_step_gone:?} to die"
    );
    let stopped = returned - cancelled;
    eprintln!("run step gone after {run_step_gone:?}, build returned after {stopped:?}");
    assert!(
        stopped < Duration::from_secs(5),
        "buildah took {stopped:?} to stop"
    );
    assert!(
        !processes()
            .iter()
            .any(|p| p.contains("buildah") && p.contains(&storage)),
        "a buildah process of this build is still running"
    );
}
