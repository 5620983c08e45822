//! Tests of the live view's rows and redraws.

use super::*;
use archfarm_protocol::api::{BuildMode, JobState};
use archfarm_protocol::Platform;

fn at(hms: &str) -> DateTime<Utc> {
    format!("2024-05-01T{hms}Z").parse().unwrap()
}

fn build(platform: &str, state: BuildState) -> Build {
    Build {
        id: Uuid::new_v4(),
        platform: Platform::parse(platform).unwrap(),
        state,
        agent: None,
        mode: None,
        digest: None,
        media_type: None,
        size: None,
        attempts: 0,
        error: None,
        waiting: None,
        optional: false,
        decision: None,
        created_at: at("10:00:00"),
        started_at: None,
        finished_at: None,
    }
}

fn leased(mut b: Build, agent: &str, mode: BuildMode, started: &str) -> Build {
    b.agent = Some(agent.into());
    b.mode = Some(mode);
    b.attempts = 1;
    b.started_at = Some(at(started));
    b
}

/// amd64 building natively, s390x emulated, arm64 waiting, riscv64 failed 30 s after it started.
fn job() -> (Job, HashMap<Uuid, String>) {
    let mut job: Job = serde_json::from_value(crate::follow::tests::sample_job_json()).unwrap();
    let amd = leased(
        build("amd64", BuildState::Building),
        "pi-4",
        BuildMode::Native,
        "10:00:02",
    );
    let s390x = leased(
        build("s390x", BuildState::Building),
        "qemu-1",
        BuildMode::Emulated,
        "10:00:30",
    );
    let mut arm = build("arm64", BuildState::Queued);
    arm.waiting = Some("no native agent online".into());
    let mut riscv = leased(
        build("riscv64", BuildState::Failed),
        "board-7",
        BuildMode::Native,
        "10:00:10",
    );
    riscv.finished_at = Some(at("10:00:40"));
    riscv.error = Some("buildah exited with status 1".into());
    let last = HashMap::from([
        (amd.id, "STEP 2/2: COPY . /".to_string()),
        (s390x.id, "\x1b[31mcompiling\tfoo\x1b[0m".to_string()),
        // An earlier attempt's line: while it waits, the reason shows instead.
        (arm.id, "STEP 1/2: FROM scratch".to_string()),
    ]);
    job.builds = vec![amd, s390x, arm, riscv];
    (job, last)
}

#[test]
fn one_row_per_platform_in_columns() {
    let (job, last) = job();
    assert_eq!(
        rows(&job, &last, at("10:01:05"), 200),
        [
            "job 6f1e2d3c-0000-4000-8000-000000000001  building  1m05s",
            "linux/amd64    building  pi-4     native    1m03s  STEP 2/2: COPY . /",
            "linux/s390x    building  qemu-1   emulated    35s  compiling foo",
            "linux/arm64    queued    -                  1m05s  waiting: no native agent online",
            "linux/riscv64  failed    board-7  native      30s  buildah exited with status 1",
        ]
    );
}

#[test]
fn an_ended_build_and_job_stop_their_clocks() {
    let (mut job, last) = job();
    let later = rows(&job, &last, at("11:00:00"), 200);
    assert!(later[4].contains(" 30s  buildah exited"), "{}", later[4]);
    assert!(later[1].contains("native    59m58s  STEP"), "{}", later[1]);
    assert!(later[3].contains(" 1h00m  waiting:"), "{}", later[3]);
    job.state = JobState::Failed;
    job.finished_at = Some(at("10:02:00"));
    let r = rows(&job, &last, at("11:00:00"), 200);
    assert_eq!(
        r[0],
        "job 6f1e2d3c-0000-4000-8000-000000000001  failed  2m00s"
    );
}

#[test]
fn rows_are_cut_to_the_width() {
    let (job, last) = job();
    let r = rows(&job, &last, at("10:01:05"), 40);
    assert_eq!(r[0], "job 6f1e2d3c-0000-4000-8000-00000000000…");
    assert_eq!(r[1], "linux/amd64    building  pi-4     nativ…");
    for row in &r {
        assert_eq!(display_width(row), 40, "{row:?}");
    }
    let r = rows(&job, &last, at("10:01:05"), 60);
    assert_eq!(
        r[3],
        "linux/arm64    queued    -                  1m05s  waiting:…"
    );
    assert!(r.iter().all(|row| display_width(row) <= 60), "{r:#?}");
    // A short row is left alone.
    assert_eq!(
        r[0],
        "job 6f1e2d3c-0000-4000-8000-000000000001  building  1m05s"
    );
}

#[test]
fn wide_and_multibyte_characters_are_cut_whole() {
    // A wide character that would only half fit is left out whole.
    assert_eq!(fit("ab构建镜像", 4), "ab…");
    assert_eq!(fit("ab构建镜像", 5), "ab构…");
    assert_eq!(fit("ab构建镜像", 6), "ab构…");
    assert_eq!(display_width("ab构…"), 5);
    assert_eq!(fit("ééééé", 3), "éé…");
    assert_eq!(fit("ééééé", 5), "ééééé");
    assert_eq!(fit("e\u{301}e\u{301}e\u{301}x", 3), "e\u{301}e\u{301}…");
    assert_eq!(fit("abc", 0), "");
    assert_eq!(fit("abc", 1), "…");

    let (mut job, mut last) = job();
    last.insert(job.builds[0].id, "編譯中：第一步完成🎉 ok".into());
    job.builds.truncate(1);
    let r = rows(&job, &last, at("10:01:05"), 60);
    assert_eq!(
        r[1],
        "linux/amd64  building  pi-4  native  1m03s  編譯中：第一步…"
    );
    assert_eq!(display_width(&r[1]), 59, "the next wide char would pass 60");
}

#[test]
fn elapsed_times() {
    let s = |secs| format_elapsed(chrono::Duration::seconds(secs));
    assert_eq!(s(0), "0s");
    assert_eq!(s(59), "59s");
    assert_eq!(s(60), "1m00s");
    assert_eq!(s(187), "3m07s");
    assert_eq!(s(3599), "59m59s");
    assert_eq!(s(3600), "1h00m");
    assert_eq!(s(25 * 3600 + 61), "25h01m");
    assert_eq!(s(-5), "0s", "a coordinator clock ahead of ours");
}

#[test]
fn log_lines_lose_escapes_and_control_characters() {
    assert_eq!(sanitize("\x1b[1;32mok\x1b[0m\tdone\r"), "ok done");
    assert_eq!(
        sanitize("\x1b]8;;http://x\x1b\\link\x1b]8;;\x07 text\x07"),
        "link text"
    );
    assert_eq!(sanitize("naïve 構建"), "naïve 構建");
}

#[test]
fn width_comes_from_the_terminal_then_columns() {
    assert_eq!(width_from(Some(120), Some("100")), 120);
    assert_eq!(width_from(None, Some("100")), 100);
    assert_eq!(width_from(Some(0), Some(" 72 ")), 72);
    assert_eq!(width_from(None, Some("wide")), 80);
    assert_eq!(width_from(None, Some("0")), 80);
    assert_eq!(width_from(None, None), 80);
}

#[test]
fn frames_replace_each_other_in_place() {
    let mut s = Screen::default();
    let t0 = Instant::now();
    let frame = |rows: &[&str]| rows.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.redraw(frame(&["job", "a 1s"]), t0, false).unwrap(),
        "\r\x1b[2Kjob\n\r\x1b[2Ka 1s\n"
    );
    assert_eq!(
        s.redraw(frame(&["job", "a 1s"]), t0 + REDRAW_EVERY, false),
        None
    );
    // Too soon after the last one: left to the next tick, unless it is the last frame.
    let soon = t0 + Duration::from_millis(50);
    assert_eq!(s.redraw(frame(&["job", "a 2s"]), soon, false), None);
    assert_eq!(
        s.redraw(frame(&["job", "a 2s"]), soon, true).unwrap(),
        "\x1b[2A\r\x1b[2Kjob\n\r\x1b[2Ka 2s\n"
    );
    let later = soon + REDRAW_EVERY;
    assert_eq!(
        s.redraw(frame(&["job"]), later, false).unwrap(),
        "\x1b[2A\r\x1b[2Kjob\n\x1b[J"
    );
    assert_eq!(s.erase(), "\x1b[1A\r\x1b[J");
    assert_eq!(s.erase(), "");
    assert_eq!(
        s.redraw(frame(&["job"]), later, true).unwrap(),
        "\r\x1b[2Kjob\n",
        "after erasing, the same rows are drawn again"
    );
}
