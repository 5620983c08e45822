//! Build secrets end to end (issue 15, item 4): `archfarm build --secret id=tok,src=FILE` and
//! `--secret id=envtok,env=VAR` through a real coordinator, two real agents (amd64, and arm64
//! under QEMU) and buildah, into a real registry. `RUN --mount=type=secret` steps prove they read
//! the values (by their SHA-256) and `cat` them to show the log is redacted; then each value is
//! looked for, and must be absent, in every blob of the pushed index (read back with skopeo,
//! layers decompressed), every image's file system (umoci), the build logs and job JSON read
//! through the API, /metrics, every process's log and output, every table of the database after
//! the job ended, the coordinator's data directory (the SQLite file and its write-ahead log) and
//! the agents' work directories (their buildah storage included).

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use archfarm_e2e::checks::arm64_agent;
use archfarm_e2e::oci::skopeo;
use archfarm_e2e::{
    files_containing, preflight, Agent, AgentOptions, BackgroundCli, BuildContext, Coordinator,
    Database, ImageFs, Registry, Scratch,
};
use archfarm_protocol::api::{Job, JobState};
use reqwest::Method;
use sha2::{Digest as _, Sha256};

/// The variable the env= secret is read from.
const ENV_VAR: &str = "ARCHFARM_E2E_BUILD_SECRET";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// `GET PATH` from the coordinator as text, asserting 200.
fn get_text(coordinator: &Coordinator, path: &str) -> String {
    let resp = coordinator
        .request(Method::GET, path)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().expect("body")
}

/// The hello example's base, then steps that check each secret against its SHA-256 (so the
/// Dockerfile, which lands in the image's history, never holds a value) and print it.
fn dockerfile(file_sha: &str, env_sha: &str) -> String {
    format!(
        "FROM scratch\n\
         ARG TARGETARCH\n\
         COPY rootfs/${{TARGETARCH}}/ /\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         RUN --mount=type=secret,id=tok test \"$(sha256sum /run/secrets/tok | cut -c1-64)\" = \"{file_sha}\" \
             && echo secret-ok-file && echo \"cat says: $(cat /run/secrets/tok)\" \
             && sha256sum /run/secrets/tok | cut -c1-64 > /tok.sha256\n\
         RUN --mount=type=secret,id=envtok test \"$(sha256sum /run/secrets/envtok | cut -c1-64)\" = \"{env_sha}\" \
             && echo secret-ok-env && echo \"cat says: $(cat /run/secrets/envtok)\"\n\
         RUN --mount=type=secret,id=nope test ! -e /run/secrets/nope && echo unknown-id-not-mounted\n"
    )
}

/// `archfarm build ARGS` with the env= secret's variable set.
fn build(coordinator: &Coordinator, env_value: &str, args: &[&str]) -> std::process::Output {
    BackgroundCli::spawn_with_env(
        coordinator.url(),
        None,
        args,
        &[(ENV_VAR.to_string(), env_value.to_string())],
    )
    .wait(Duration::from_secs(600))
}

/// Every blob of the index at `image` (all platforms), copied out with skopeo; gzip'd layers
/// decompressed. Returns (what, bytes) per blob.
fn all_blobs(image: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Scratch::new("secret-blobs");
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{image}"),
        &format!("oci:{}:img", dir.join("oci").display()),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let mut blobs = Vec::new();
    let blob_dir = dir.join("oci/blobs/sha256");
    for entry in std::fs::read_dir(&blob_dir).expect("blobs") {
        let path = entry.expect("blob").path();
        let raw = std::fs::read(&path).expect("read blob");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if raw.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .expect("gunzip layer");
            blobs.push((format!("layer {name} (decompressed)"), plain));
        }
        blobs.push((format!("blob {name}"), raw));
    }
    blobs
}

/// Every row of every table, as text (PostgreSQL: `pg_dump --data-only`).
fn dump_database(db: &Database) -> String {
    match db {
        Database::Sqlite(_) => {
            let tables = db.query("SELECT name FROM sqlite_master WHERE type = 'table'");
            let mut dump = String::new();
            for table in tables.lines().filter(|t| !t.is_empty()) {
                dump.push_str(&format!("== {table}\n"));
                dump.push_str(&db.query(&format!("SELECT * FROM \"{table}\"")));
            }
            dump
        }
        Database::Postgres { url, .. } => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", url])
                .output()
                .expect("run pg_dump");
            assert!(out.status.success(), "pg_dump: {}", text(&out.stderr));
            text(&out.stdout)
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn build_secrets_reach_run_steps_and_nothing_else() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let amd64 = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let arm64 = Agent::start(&coordinator, arm64_agent("arm64"));

    let file_value = format!("file-secret-{}", uuid::Uuid::new_v4().simple());
    let env_value = format!("env-secret-{}", uuid::Uuid::new_v4().simple());
    let values = [file_value.as_str(), env_value.as_str()];
    let sources = Scratch::new("secret-sources");
    let secret_file = sources.join("tok.txt");
    // With a trailing newline, as `echo "$TOKEN" > file` leaves it: the lines are what is hidden.
    let file_contents = format!("{file_value}\n");
    std::fs::write(&secret_file, &file_contents).unwrap();

    // 1. Two platforms, both secrets, a step naming an id that was not given.
    let context = BuildContext::hello();
    context.write(
        "Dockerfile",
        &dockerfile(&sha256_hex(&file_contents), &sha256_hex(&env_value)),
    );
    let tag = format!("{}/secrets:1", registry.host());
    let out = build(
        &coordinator,
        &env_value,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "--secret",
            &format!("id=envtok,env={ENV_VAR}"),
            &context.arg(),
        ],
    );
    assert!(out.status.success(), "build failed: {}", text(&out.stderr));
    let mut outputs = vec![
        ("the CLI's stdout".to_string(), text(&out.stdout)),
        ("the CLI's stderr".to_string(), text(&out.stderr)),
    ];
    let job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags[0] == tag)
        .expect("the job");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.secrets, ["tok", "envtok"], "the job shows the ids");

    // The steps read both values, on both platforms; the logs show them masked.
    for b in &job.builds {
        let log = coordinator.build_log(b.id);
        for needle in [
            "secret-ok-file",
            "secret-ok-env",
            "cat says: [redacted]",
            "unknown-id-not-mounted",
        ] {
            assert!(
                log.contains(needle),
                "{}: no {needle:?} in\n{log}",
                b.platform
            );
        }
        let masked: Vec<&str> = log.lines().filter(|l| l.contains("cat says")).collect();
        println!("{} log: {masked:?}", b.platform);
        outputs.push((format!("build log {}", b.platform), log));
    }

    // 2. The pushed index: every blob of every platform, layers decompressed.
    let blobs = all_blobs(&tag);
    let layers = blobs
        .iter()
        .filter(|(w, _)| w.contains("decompressed"))
        .count();
    assert!(layers >= 2, "every platform's layers were read: {layers}");
    for (what, bytes) in &blobs {
        for v in values {
            assert!(!contains(bytes, v), "a secret is in the image: {what}");
        }
    }
    println!(
        "image: {} blobs read back ({layers} layers decompressed); neither value in any",
        blobs.len()
    );
    // Each platform's file system: the step ran with the value (its hash is kept), and nothing
    // under /run/secrets or elsewhere holds it.
    for b in &job.builds {
        let digest = b.digest.as_deref().expect("pushed");
        let image = ImageFs::unpack(&format!("{}/secrets@{digest}", registry.host()));
        assert_eq!(image.read("/tok.sha256"), sha256_hex(&file_contents));
        let secrets_dir = image.root().join("run/secrets");
        let left: Vec<String> = std::fs::read_dir(&secrets_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in &left {
            let len = std::fs::metadata(secrets_dir.join(name)).unwrap().len();
            assert_eq!(
                len, 0,
                "/run/secrets/{name} in the {} image has data",
                b.platform
            );
        }
        for v in values {
            let found = files_containing(image.root(), v);
            assert!(
                found.is_empty(),
                "{} image holds a value in {found:?}",
                b.platform
            );
        }
        println!(
            "{} image: /tok.sha256 matches, /run/secrets holds {left:?} (empty)",
            b.platform
        );
    }

    // 3. An id the Dockerfile requires but the job did not give: buildah's own refusal. (Without
    //    required=true, buildah runs the step with no file there, as step 1's last RUN shows.)
    let failing = BuildContext::hello();
    failing.write(
        "Dockerfile",
        "FROM scratch\nCOPY rootfs/amd64/ /\n\
         RUN --mount=type=secret,id=nope,required=true [\"/bin/busybox\", \"true\"]\n",
    );
    let out = build(
        &coordinator,
        &env_value,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            &format!("{}/secrets:required", registry.host()),
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            &failing.arg(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    outputs.push(("the failing CLI's stderr".into(), text(&out.stderr)));
    let failed: Job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags[0].ends_with("/secrets:required"))
        .expect("the failed job");
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.contains("secret required but no secret with id nope found"),
        "{error}"
    );
    println!("required unknown id: {error}");
    outputs.push((
        "the failed build's log".into(),
        coordinator.build_log(failed.builds[0].id),
    ));

    // 4. A live job's value is in the database (which shows the search below can find it), and
    //    cancelling the job removes it: no agent builds s390x, so the job waits.
    let waiting = coordinator.submit(&[
        "--platform",
        "linux/s390x",
        "--emulation",
        "never",
        "-t",
        &format!("{}/secrets:waiting", registry.host()),
        "--secret",
        &format!("id=tok,src={}", secret_file.display()),
        &failing.arg(),
    ]);
    let db = coordinator.database();
    assert_eq!(db.count("SELECT COUNT(*) FROM job_secrets"), 1);
    let live = coordinator.stored_containing(&file_value);
    assert!(!live.is_empty(), "the live job's value is stored");
    println!("while job {waiting} waits, its value is stored in {live:?}");
    let out = coordinator.cli(&["cancel", &waiting.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(coordinator.job(waiting).state, JobState::Cancelled);

    // 5. Nowhere else: the API, metrics, the processes' logs.
    outputs.push((
        "GET /api/v1/jobs".into(),
        get_text(&coordinator, "/api/v1/jobs?limit=100"),
    ));
    for id in [job.id, failed.id, waiting] {
        let json = get_text(&coordinator, &format!("/api/v1/jobs/{id}"));
        outputs.push((format!("job {id} JSON"), json));
    }
    outputs.push(("/metrics".into(), get_text(&coordinator, "/metrics")));
    outputs.push((
        "the dashboard".into(),
        get_text(&coordinator, &format!("/jobs/{}", job.id)),
    ));
    outputs.push(("the coordinator's log".into(), coordinator.log()));
    outputs.push(("the amd64 agent's log".into(), amd64.log()));
    outputs.push(("the arm64 agent's log".into(), arm64.log()));
    for (what, content) in &outputs {
        for v in values {
            assert!(!content.contains(v), "a secret value is in {what}");
        }
    }
    println!(
        "absent from {} logs, outputs and API answers",
        outputs.len()
    );

    // 6. The database once the jobs ended: no rows left, no value in any table, and no value in
    //    the data directory's files (the SQLite file and its write-ahead log, byte for byte).
    assert_eq!(db.count("SELECT COUNT(*) FROM job_secrets"), 0);
    let dump = dump_database(db);
    assert!(dump.contains("secrets:1"), "the dump has the jobs");
    for v in values {
        assert!(!dump.contains(v), "a secret value is in the database");
        let stored = coordinator.stored_containing(v);
        assert!(stored.is_empty(), "a secret value is stored in {stored:?}");
    }
    let ids = db.query("SELECT secret_ids FROM jobs ORDER BY created_at");
    let shown = get_text(&coordinator, &format!("/api/v1/jobs/{}", job.id));
    assert!(shown.contains(r#""secrets":["tok","envtok"]"#), "{shown}");
    println!(
        "database: {} bytes dumped, job_secrets empty, jobs.secret_ids = {:?}",
        dump.len(),
        ids.lines().collect::<Vec<_>>()
    );

    // 7. The agents kept nothing: secret files and buildah's copies are gone.
    for agent in [&amd64, &arm64] {
        for v in values {
            let left = files_containing(&agent.work_dir(), v);
            assert!(left.is_empty(), "{} left a value in {left:?}", agent.name());
        }
    }
    assert!(
        Path::new(&secret_file).exists(),
        "the CLI only read the source"
    );
}
