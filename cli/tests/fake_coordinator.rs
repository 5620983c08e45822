//! `archfarm build` and friends as processes against a scripted in-process coordinator that speaks
//! the wire contract: upload once, submit, follow states and logs, print the digest or the failure
//! report. The real coordinator is exercised by the workspace's end-to-end tests; this pins the
//! CLI's side.

mod fake;

use std::process::{Command, Output};

use archfarm_protocol::api::{AgentState, EmulationPolicy, JobState};
use fake::{cancel, start, Scenario, Shared, AMD64, AMD64_LAST_LINE, INDEX, SKIPPED_WARNING};
use uuid::Uuid;

fn sample_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    dir
}

async fn run(url: &str, extra: &[&str], ctx: &std::path::Path) -> Output {
    run_platforms(url, &["--platform", "linux/amd64,s390x"], extra, ctx).await
}

async fn run_platforms(
    url: &str,
    platforms: &[&str],
    extra: &[&str],
    ctx: &std::path::Path,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
    cmd.args(["build", "--coordinator", url])
        .args(platforms)
        .args([
            "-t",
            "localhost:5000/team/app:1",
            "-t",
            "localhost:5000/team/app:latest",
        ])
        .args(extra)
        .arg(ctx)
        .env_remove("ARCHFARM_COORDINATOR")
        .env_remove("ARCHFARM_TOKEN")
        .env("FROM_ENV", "env-value");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_prints_the_index_digest_last() {
    let (url, state) = start(Scenario::Succeed, Some("tok")).await;
    let ctx = sample_context();
    let out = run(
        &url,
        &[
            "--token",
            "tok",
            "--build-arg",
            "A=1",
            "--build-arg",
            "FROM_ENV",
            "--progress",
            "plain",
        ],
        ctx.path(),
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stdout.lines().last(), Some(INDEX), "stdout: {stdout}");
    assert!(stderr.contains("context: 2 entries"), "{stderr}");
    assert!(stderr.contains(" uploaded"), "{stderr}");
    for want in [
        "[linux/amd64] building on box-1 (native)",
        "[linux/amd64 box-1] STEP 1/2: FROM scratch",
        "[linux/amd64 box-1] STEP 2/2: COPY . /",
        "[linux/s390x qemu-1] s390x line 25\n",
        "[linux/s390x] waiting: no agent with this platform is online",
        "[linux/s390x] building on qemu-1 (emulated)",
        &format!("[linux/amd64] succeeded {AMD64}"),
        &format!(
            "[index] pushed {INDEX} to localhost:5000/team/app:1, localhost:5000/team/app:latest"
        ),
    ] {
        assert!(stderr.contains(want), "want {want:?} in stderr:\n{stderr}");
    }
    assert_eq!(stderr.matches("waiting:").count(), 1, "{stderr}");
    assert!(
        !stderr.contains("[linux/amd64] STEP"),
        "log lines name the agent: {stderr}"
    );
    assert!(!stderr.contains('\x1b'), "plain has no escapes: {stderr}");
    assert!(
        !stderr.contains("tok\n") && !stderr.contains("Bearer"),
        "{stderr}"
    );
    {
        let f = state.lock().unwrap();
        assert_eq!(f.puts, 1);
        let req = f.request.as_ref().unwrap();
        assert_eq!(req.platforms, ["linux/amd64", "linux/s390x"]);
        assert_eq!(req.dockerfile, "Dockerfile");
        assert_eq!(req.build_args.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            req.build_args.get("FROM_ENV").map(String::as_str),
            Some("env-value")
        );
        // The uploaded archive holds the context.
        let bytes = f.contexts.values().next().unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["Dockerfile", "hello.txt"]);
    }

    // Same tree again: the upload is skipped; detached, only the job id is on stdout.
    let out = run(&url, &["--token", "tok", "--detach"], ctx.path()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("context: already on the coordinator"),
        "{stderr}"
    );
    assert_eq!(state.lock().unwrap().puts, 1);
    let id: Uuid = stdout.trim().parse().expect("stdout is the job id");
    assert_eq!(state.lock().unwrap().job.as_ref().unwrap().id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reports_the_build_and_its_log_tail() {
    let (url, _state) = start(Scenario::FailS390x, None).await;
    let ctx = sample_context();
    let out = run(&url, &["--progress", "quiet"], ctx.path()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("failed: the build for linux/s390x failed")
            && stderr.starts_with("error: job "),
        "{stderr}"
    );
    assert!(
        stderr.contains("platform linux/s390x failed: buildah exited with status 1"),
        "{stderr}"
    );
    assert!(stderr.contains("  | s390x line 25"), "{stderr}");
    assert!(stderr.contains("  | s390x line 6\n"), "{stderr}");
    assert!(
        !stderr.contains("s390x line 5\n"),
        "only the last 20 lines: {stderr}"
    );
    assert!(
        !stderr.contains("building on"),
        "quiet shows no progress: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_errors_carry_its_message() {
    let (url, _state) = start(Scenario::Succeed, Some("right")).await;
    let ctx = sample_context();
    let out = run(&url, &["--token", "wrong"], ctx.path()).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("--token or ARCHFARM_TOKEN"), "{stderr}");

    let (url, _state) = start(Scenario::Succeed, None).await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
    cmd.args([
        "build",
        "--coordinator",
        &url,
        "--platform",
        "amd64",
        "-t",
        "forbidden.io/app:1",
    ])
    .arg(ctx.path())
    .env_remove("ARCHFARM_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "error: registry 'forbidden' is not allowed here (invalid_reference, HTTP 400)"
        ),
        "{stderr}"
    );
}

/// Waits (polling the fake's state, never a blind sleep) until the CLI has polled the job.
async fn until_followed(state: &Shared) {
    for _ in 0..200 {
        if state.lock().unwrap().polls >= 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the CLI never polled the job");
}

/// Waits for the child at most a minute, killing it rather than hanging the test suite.
async fn wait_bounded(mut child: std::process::Child) -> Output {
    use std::io::Read as _;
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            child
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut stderr)
                .unwrap();
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    panic!("archfarm did not exit within a minute");
}

fn spawn_build(url: &str, ctx: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_archfarm"))
        .args(["build", "--coordinator", url, "--platform", "amd64,s390x"])
        .args(["-t", "localhost:5000/team/app:1"])
        .arg(ctx)
        .env_remove("ARCHFARM_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_the_job_running_and_exits_130() {
    let (url, state) = start(Scenario::Hang, None).await;
    let ctx = sample_context();
    let child = spawn_build(&url, ctx.path());
    until_followed(&state).await;
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let out = wait_bounded(child).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let id = state.lock().unwrap().job.as_ref().unwrap().id;
    assert!(
        stderr.contains(&format!("job {id} keeps running on the coordinator")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("archfarm cancel {id}")),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_followed_exits_1() {
    let (url, state) = start(Scenario::Hang, None).await;
    let ctx = sample_context();
    let child = spawn_build(&url, ctx.path());
    until_followed(&state).await;
    cancel(state.lock().unwrap().job.as_mut().unwrap());
    let out = wait_bounded(child).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was cancelled: cancelled by ci-bot"),
        "{stderr}"
    );
    assert!(stderr.contains("[linux/amd64] cancelled"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "auto is plain when stderr is not a terminal: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_job_agents_cancel() {
    let (url, state) = start(Scenario::Hang, None).await;
    let ctx = sample_context();
    let out = run(&url, &["--detach", "--progress", "quiet"], ctx.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let cli = |args: Vec<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
        cmd.args(&args)
            .env("ARCHFARM_COORDINATOR", &url)
            .env_remove("ARCHFARM_TOKEN");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = cli(args(&["job", &id])).await.unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("state      building"), "{stdout}");
    assert!(
        stdout.contains("linux/amd64  building  box-1  native"),
        "{stdout}"
    );
    assert!(
        stdout.contains("linux/s390x: waiting: no agent with this platform is online"),
        "{stdout}"
    );

    let out = cli(args(&["jobs", "--limit", "5"])).await.unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert!(
        stdout.contains(&id) && stdout.contains("linux/amd64,linux/s390x"),
        "{stdout}"
    );

    let out = cli(args(&["agents"])).await.unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("pi-4  online  linux/arm64  linux/s390x  1/2"),
        "{stdout}"
    );

    let out = cli(args(&["cancel", &id])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("job {id} cancelled\n"));

    let out = cli(args(&["job", &id, "--json"])).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["id"], id.as_str());

    let out = cli(args(&["job", &Uuid::new_v4().to_string()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such job (not_found, HTTP 404)"));
    drop(state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_ended_or_stitching_job() {
    let (url, state) = start(Scenario::Hang, None).await;
    let ctx = sample_context();
    let out = run(&url, &["--detach", "--progress", "quiet"], ctx.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let cancel = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
        cmd.args(["cancel", &id])
            .env("ARCHFARM_COORDINATOR", &url)
            .env_remove("ARCHFARM_TOKEN");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let set_state = |s: JobState| state.lock().unwrap().job.as_mut().unwrap().state = s;

    // The index is being pushed: nothing was wrong with the request, but nothing was cancelled.
    set_state(JobState::Stitching);
    let out = cancel().await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(
        stderr.contains(&format!(
            "job {id} is pushing its image index and can no longer be cancelled"
        )),
        "{stderr}"
    );

    // It ended on its own: the answer is the job as it is, and that is a success.
    set_state(JobState::Succeeded);
    let out = cancel().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("job {id} had already ended: succeeded\n")
    );
    assert_eq!(
        state.lock().unwrap().job.as_ref().unwrap().state,
        JobState::Succeeded,
        "an ended job is left as it is"
    );

    set_state(JobState::Failed);
    let out = cancel().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("job {id} had already ended: failed\n")
    );
}

/// Runs `archfarm ARGS` against `url`.
async fn archfarm(url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
    cmd.args(args)
        .env("ARCHFARM_COORDINATOR", url)
        .env_remove("ARCHFARM_TOKEN");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_optional_platform_warns_and_still_prints_the_digest() {
    let (url, state) = start(Scenario::OptionalSkipped, None).await;
    let ctx = sample_context();
    let out = run_platforms(
        &url,
        &["--platform", "linux/amd64", "--optional-platform", "s390x"],
        &[
            "--emulation",
            "prefer-native=10m",
            "--timeout",
            "1h30m",
            "--progress",
            "plain",
        ],
        ctx.path(),
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stdout, format!("{INDEX}\n"), "only the digest on stdout");
    for want in [
        "(optional: linux/s390x) -> localhost:5000/team/app:1",
        "[linux/s390x] queued (optional)",
        "[linux/amd64] building on box-1 (native): box-1 builds linux/amd64 natively and had a free slot",
        "[linux/amd64] attempt 1 on box-1 ended: box-1 missed 3 heartbeats",
        "[linux/amd64] building on box-2 (native) (attempt 2): box-2 builds linux/amd64 natively",
        "[linux/s390x] skipped (optional): no online agent can build linux/s390x",
        &format!("[linux/amd64] succeeded {AMD64}"),
    ] {
        assert!(stderr.contains(want), "want {want:?} in stderr:\n{stderr}");
    }
    // The warning comes once, as the last thing on stderr (after the index was pushed).
    let warning = format!("warning: {SKIPPED_WARNING}");
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(warning.as_str()), "{stderr}");
    assert_eq!(
        stderr.matches("box-1 builds linux/amd64 natively").count(),
        1,
        "a decision is shown once: {stderr}"
    );
    let id = {
        let f = state.lock().unwrap();
        let req = f.request.as_ref().unwrap();
        assert_eq!(req.platforms, ["linux/amd64"]);
        assert_eq!(req.optional_platforms, ["linux/s390x"]);
        assert_eq!(req.timeout_secs, Some(5400));
        assert_eq!(
            req.emulation,
            EmulationPolicy::PreferNative(std::time::Duration::from_secs(600))
        );
        f.job.as_ref().unwrap().id.to_string()
    };

    // `archfarm job ID` shows the optional platform, the warning, decisions and attempts.
    let out = archfarm(&url, &["job", &id]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for want in [
        "platforms  linux/amd64\n",
        "optional   linux/s390x\n",
        "emulation  prefer-native=10m\n",
        "timeout    1h30m\n",
        &format!("warning    {SKIPPED_WARNING}\n"),
        &format!("linux/amd64  succeeded  box-2  native  2         {AMD64}"),
        "linux/amd64: decision: box-2 builds linux/amd64 natively and had a free slot\n",
        "linux/s390x: skipped (optional): no online agent can build linux/s390x\n",
    ] {
        assert!(stdout.contains(want), "want {want:?} in:\n{stdout}");
    }

    // Quiet: no progress, but the warning still shows.
    let (url, _state) = start(Scenario::OptionalSkipped, None).await;
    let out = run_platforms(
        &url,
        &["--platform", "amd64", "--optional-platform", "s390x"],
        &["--progress", "quiet"],
        ctx.path(),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, format!("{warning}\n"));
    assert_eq!(text(&out.stdout), format!("{INDEX}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_drain_by_name() {
    let (url, state) = start(Scenario::Hang, Some("tok")).await;
    let out = archfarm(&url, &["agents", "drain", "pi-4", "--token", "tok"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        text(&out.stdout),
        "agent pi-4 is draining: it finishes its 1 running build and then leaves\n"
    );
    {
        let f = state.lock().unwrap();
        let pi = f.agents.iter().find(|a| a.name == "pi-4").unwrap();
        assert_eq!(f.drained, [pi.id], "drained by its id");
        assert_eq!(pi.state, AgentState::Draining);
    }
    let out = archfarm(&url, &["agents", "--token", "tok"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("pi-4  draining  linux/arm64  linux/s390x  1/2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("nuc   online    linux/amd64  -"),
        "{stdout}"
    );

    let out = archfarm(&url, &["agents", "drain", "nuc", "--token", "tok"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("agent nuc is draining: it has no running builds"),
        "{}",
        text(&out.stdout)
    );

    // An unknown name is refused with the names there are, and nothing is drained.
    let out = archfarm(&url, &["agents", "drain", "pi-5", "--token", "tok"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: no agent named 'pi-5'; the agents are: pi-4, nuc\n"
    );
    assert!(text(&out.stdout).is_empty());
    assert_eq!(state.lock().unwrap().drained.len(), 2);

    // A wrong token is the coordinator's 401, with the hint.
    let out = archfarm(&url, &["agents", "drain", "pi-4", "--token", "bad"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--token or ARCHFARM_TOKEN"), "{stderr}");
}

/// The rows of every frame `--progress tty` drew, in order: each line that clears itself
/// (`ESC[2K`), without the escapes before its text.
fn frame_rows(stderr: &str) -> Vec<&str> {
    stderr
        .split('\n')
        .filter_map(|l| l.rsplit_once("\x1b[2K").map(|(_, row)| row))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_progress_redraws_one_row_per_platform() {
    let (url, state) = start(Scenario::Succeed, None).await;
    let ctx = sample_context();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archfarm"));
    cmd.args(["build", "--coordinator", &url, "--platform", "amd64,s390x"])
        .args(["-t", "localhost:5000/team/app:1", "--progress", "tty"])
        .arg(ctx.path())
        .env_remove("ARCHFARM_TOKEN")
        // stderr is a pipe here, so the width comes from COLUMNS.
        .env("COLUMNS", "70");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr:?}");
    assert_eq!(stdout, format!("{INDEX}\n"), "only the digest on stdout");
    let id = state.lock().unwrap().job.as_ref().unwrap().id;

    // Header + two platforms: each redraw moves up three lines and clears each before writing.
    assert!(stderr.contains("\x1b[3A\r\x1b[2K"), "{stderr:?}");
    let rows = frame_rows(&stderr);
    assert!(rows.len() >= 6, "at least two frames: {rows:#?}");
    for row in &rows {
        assert!(
            row.chars().count() <= 69,
            "a row wider than 70 - 1: {row:?}"
        );
    }
    let waiting = rows
        .iter()
        .find(|r| r.starts_with("linux/s390x") && r.contains("waiting: no agent"))
        .unwrap_or_else(|| panic!("no frame showed s390x waiting: {rows:#?}"));
    assert!(
        waiting.contains(" queued ") && waiting.ends_with('…'),
        "cut to the width: {waiting:?}"
    );

    let last = &rows[rows.len() - 3..];
    assert!(
        last[0].starts_with(&format!("job {id}  succeeded  ")),
        "{last:#?}"
    );
    let amd = last[1];
    assert!(
        amd.starts_with("linux/amd64  succeeded  box-1   native  "),
        "{amd:?}"
    );
    assert!(amd.ends_with(&format!("  {AMD64_LAST_LINE}")), "{amd:?}");
    let s390x = last[2];
    assert!(
        s390x.starts_with("linux/s390x  succeeded  qemu-1  emulated  "),
        "{s390x:?}"
    );
    assert!(s390x.ends_with("  s390x line 25"), "{s390x:?}");

    // Under the final frame: what plain mode ends with, and no plain progress lines before it.
    let after = stderr.rsplit_once("s390x line 25\n").unwrap().1;
    assert_eq!(
        after,
        format!("[index] pushed {INDEX} to localhost:5000/team/app:1\n")
    );
    assert!(!stderr.contains("building on box-1"), "{stderr:?}");
    assert!(
        stderr.starts_with("context: packing "),
        "the context lines still print: {stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_progress_of_a_failed_job_ends_with_the_failure_report() {
    let (url, _state) = start(Scenario::FailS390x, None).await;
    let ctx = sample_context();
    let out = run(&url, &["--progress", "tty"], ctx.path()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr:?}");
    assert!(stdout.is_empty(), "{stdout}");
    let rows = frame_rows(&stderr);
    let last = &rows[rows.len() - 3..];
    assert!(last[0].contains("  failed  "), "{last:#?}");
    assert!(
        last[2].starts_with("linux/s390x  failed     qemu-1  emulated  "),
        "{last:#?}"
    );
    let after = stderr.rsplit_once(last[2]).unwrap().1;
    assert!(after.starts_with("\nerror: job "), "{after:?}");
    assert!(
        after.contains("platform linux/s390x failed: buildah exited with status 1\n"),
        "{after:?}"
    );
    assert!(after.ends_with("  | s390x line 25\n"), "{after:?}");
}

/// The fake's linux/amd64 log, one line per entry.
fn amd64_log() -> Vec<String> {
    ["STEP 1/2: FROM scratch", "STEP 2/2: COPY . /", "COMMIT"]
        .into_iter()
        .chain([AMD64_LAST_LINE])
        .map(str::to_string)
        .collect()
}

/// The fake's linux/s390x log.
fn s390x_log() -> Vec<String> {
    (1..=25).map(|i| format!("s390x line {i}")).collect()
}

fn lines(prefix: &str, lines: &[String]) -> String {
    lines.iter().map(|l| format!("{prefix}{l}\n")).collect()
}

/// Submits a `scenario` job detached; returns the fake, its URL and the job id.
async fn detached(scenario: Scenario) -> (String, Shared, String) {
    let (url, state) = start(scenario, None).await;
    let ctx = sample_context();
    let out = run(&url, &["--detach", "--progress", "quiet"], ctx.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    (url, state, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_one_platform_or_all() {
    let (url, state, id) = detached(Scenario::Succeed).await;
    // Let the job run to its end, as `archfarm job` polls would.
    for _ in 0..5 {
        assert_eq!(archfarm(&url, &["job", &id]).await.status.code(), Some(0));
    }
    assert_eq!(
        state.lock().unwrap().job.as_ref().unwrap().state,
        JobState::Succeeded
    );

    let out = archfarm(&url, &["logs", &id, "--platform", "x86_64"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), lines("", &amd64_log()), "unprefixed");
    let out = archfarm(&url, &["logs", &id, "--platform", "linux/s390x"]).await;
    assert_eq!(text(&out.stdout), lines("", &s390x_log()));

    // Every build, one after another, each line naming platform and agent.
    let out = archfarm(&url, &["logs", &id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        lines("[linux/amd64 box-1] ", &amd64_log()) + &lines("[linux/s390x qemu-1] ", &s390x_log())
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_refuses_platforms_and_jobs_it_cannot_show() {
    let (url, state, id) = detached(Scenario::Succeed).await;
    let out = archfarm(&url, &["logs", &id, "--platform", "aarch64"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: job {id} has no build for linux/arm64; its platforms are: linux/amd64, linux/s390x\n"
        )
    );
    assert!(text(&out.stdout).is_empty());

    // A name no platform has is refused before anything is asked.
    let polls = state.lock().unwrap().polls;
    let out = archfarm(&url, &["logs", &id, "--platform", "sparc64"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --platform: unknown platform 'sparc64'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("linux/riscv64"),
        "lists what is accepted: {stderr}"
    );
    assert_eq!(state.lock().unwrap().polls, polls, "no request was made");

    let out = archfarm(&url, &["logs", &Uuid::new_v4().to_string(), "--follow"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: no such job (not_found, HTTP 404)\n"
    );
    assert!(text(&out.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_until_the_job_ends() {
    let (url, state, id) = detached(Scenario::Succeed).await;
    let out = archfarm(&url, &["logs", &id, "--follow"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let amd = amd64_log();
    // As the lines arrived: amd64's last line came after all of s390x's. "STEP 2/2: COPY" was
    // an unfinished line at the first read, and is printed once, whole.
    assert_eq!(
        text(&out.stdout),
        lines("[linux/amd64 box-1] ", &amd[..3])
            + &lines("[linux/s390x qemu-1] ", &s390x_log())
            + &lines("[linux/amd64 box-1] ", &amd[3..])
    );
    {
        let f = state.lock().unwrap();
        assert_eq!(f.job.as_ref().unwrap().state, JobState::Succeeded);
        assert!(f.polls >= 4, "followed to the end: {} polls", f.polls);
    }

    // A job that fails is followed to its end too: exit 0 means the logs were printed.
    let (url, state, id) = detached(Scenario::FailS390x).await;
    let out = archfarm(&url, &["logs", &id, "-f", "--platform", "s390x"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), lines("", &s390x_log()));
    assert_eq!(
        state.lock().unwrap().job.as_ref().unwrap().state,
        JobState::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_iidfile_and_metadata_file_as_buildx_writes_them() {
    let (url, _state) = start(Scenario::Succeed, Some("tok")).await;
    let ctx = sample_context();
    let out_dir = tempfile::tempdir().unwrap();
    let iid = out_dir.path().join("iid");
    let meta = out_dir.path().join("metadata.json");
    let out = run(
        &url,
        &[
            "--token",
            "tok",
            "--push",
            "-q",
            "--iidfile",
            iid.to_str().unwrap(),
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
        ctx.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{INDEX}\n"));
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), INDEX);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], INDEX);
    assert_eq!(m["containerimage.descriptor"]["digest"], INDEX);
    assert_eq!(
        m["image.name"],
        "localhost:5000/team/app:1,localhost:5000/team/app:latest"
    );
    assert!(m["archfarm.job"].is_string(), "{m}");
    assert!(
        m["archfarm.platforms"]["linux/amd64"]["digest"].is_string(),
        "{m}"
    );
}
