//! Tests of the change tracker and log line splitting.

use super::*;
use serde_json::{json, Value};

/// A job as the coordinator would send it: amd64 building on pi-4, s390x queued and waiting.
pub(crate) fn sample_job_json() -> Value {
    json!({
        "id": "6f1e2d3c-0000-4000-8000-000000000001",
        "state": "building",
        "tags": ["localhost:5000/app:1"],
        "platforms": ["linux/amd64", "linux/s390x"],
        "index_digest": null,
        "index_media_type": null,
        "error": null,
        "context": format!("sha256:{}", "c".repeat(64)),
        "dockerfile": "Dockerfile",
        "build_args": {},
        "target": null,
        "emulation": "fallback",
        "optional_platforms": [],
        "timeout_secs": 7200,
        "warnings": [],
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:01Z",
        "finished_at": null,
        "builds": [
            build_json("00000000-0000-4000-8000-0000000000a1", "linux/amd64", "building", Some("pi-4"), 1),
            with(
                build_json("00000000-0000-4000-8000-0000000000a2", "linux/s390x", "queued", None, 0),
                json!({"waiting": "no online agent builds linux/s390x natively or under emulation"}),
            ),
        ],
    })
}

fn build_json(id: &str, platform: &str, state: &str, agent: Option<&str>, attempts: i64) -> Value {
    json!({
        "id": id,
        "platform": platform,
        "state": state,
        "agent": agent,
        "mode": agent.map(|_| "native"),
        "digest": null,
        "media_type": null,
        "size": null,
        "attempts": attempts,
        "error": null,
        "waiting": null,
        "optional": false,
        "decision": null,
        "created_at": "2024-05-01T10:00:00Z",
        "started_at": null,
        "finished_at": null,
    })
}

/// The job state most tracker tests run in.
const B: JobState = JobState::Building;

fn build(v: Value) -> Build {
    serde_json::from_value(v).unwrap()
}

fn with(mut v: Value, changes: Value) -> Value {
    for (k, val) in changes.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

#[test]
fn one_line_per_change() {
    let id = "00000000-0000-4000-8000-0000000000b1";
    let queued = build_json(id, "linux/arm64", "queued", None, 0);
    let mut t = Tracker::default();
    assert_eq!(
        t.build_lines(B, &build(queued.clone())).0,
        ["[linux/arm64] queued"]
    );
    assert!(t.build_lines(B, &build(queued.clone())).0.is_empty());

    let waiting = with(queued.clone(), json!({"waiting": "no native agent online"}));
    assert_eq!(
        t.build_lines(B, &build(waiting.clone())).0,
        ["[linux/arm64] waiting: no native agent online"]
    );
    assert!(
        t.build_lines(B, &build(waiting)).0.is_empty(),
        "waiting text printed once"
    );

    let running = build_json(id, "linux/arm64", "building", Some("pi-4"), 1);
    assert_eq!(
        t.build_lines(B, &build(running.clone())).0,
        ["[linux/arm64] building on pi-4 (native)"]
    );
    assert_eq!(t.build_lines(B, &build(running)), (vec![], vec![]));

    let requeued = build_json(id, "linux/arm64", "queued", None, 1);
    assert_eq!(
        t.build_lines(B, &build(requeued)).0,
        ["[linux/arm64] back in the queue: attempt 1 on pi-4 ended"]
    );
    let again = with(
        build_json(id, "linux/arm64", "building", Some("qemu-box"), 2),
        json!({"mode": "emulated"}),
    );
    assert_eq!(
        t.build_lines(B, &build(again)).0,
        ["[linux/arm64] building on qemu-box (emulated) (attempt 2)"]
    );
    let done = with(
        build_json(id, "linux/arm64", "succeeded", Some("qemu-box"), 2),
        json!({"mode": "emulated", "digest": "sha256:abc"}),
    );
    let (pre, post) = t.build_lines(B, &build(done.clone()));
    assert!(pre.is_empty());
    assert_eq!(post, ["[linux/arm64] succeeded sha256:abc"]);
    assert_eq!(t.build_lines(B, &build(done)), (vec![], vec![]));
}

#[test]
fn skipped_states_still_show_the_agent() {
    let id = "00000000-0000-4000-8000-0000000000c1";
    let mut t = Tracker::default();
    t.build_lines(B, &build(build_json(id, "linux/s390x", "queued", None, 0)));
    let failed = with(
        build_json(id, "linux/s390x", "failed", Some("z15"), 1),
        json!({"error": "buildah exited with status 1"}),
    );
    let (pre, post) = t.build_lines(B, &build(failed));
    assert_eq!(pre, ["[linux/s390x] building on z15 (native)"]);
    assert_eq!(post, ["[linux/s390x] failed: buildah exited with status 1"]);
}

#[test]
fn decisions_attempts_and_optional_builds() {
    let id = "00000000-0000-4000-8000-0000000000d1";
    let mut t = Tracker::default();
    let queued = with(
        build_json(id, "linux/arm64", "queued", None, 0),
        json!({"optional": true}),
    );
    assert_eq!(
        t.build_lines(B, &build(queued)).0,
        ["[linux/arm64] queued (optional)"]
    );
    let decided = with(
        build_json(id, "linux/arm64", "building", Some("pi-4"), 1),
        json!({"optional": true, "decision": "native agent pi-4 had a free slot"}),
    );
    assert_eq!(
        t.build_lines(B, &build(decided.clone())).0,
        ["[linux/arm64] building on pi-4 (native): native agent pi-4 had a free slot"]
    );
    assert_eq!(
        t.build_lines(B, &build(decided)),
        (vec![], vec![]),
        "the decision is shown once"
    );
    // Lost and leased again between two polls: the end of the old attempt, then the new one.
    let moved = with(
        build_json(id, "linux/arm64", "building", Some("pi-5"), 2),
        json!({"optional": true, "error": "pi-4 missed 3 heartbeats", "decision": "pi-5 is native"}),
    );
    assert_eq!(
        t.build_lines(B, &build(moved)).0,
        [
            "[linux/arm64] attempt 1 on pi-4 ended: pi-4 missed 3 heartbeats",
            "[linux/arm64] building on pi-5 (native) (attempt 2): pi-5 is native",
        ]
    );
    let requeued = with(
        build_json(id, "linux/arm64", "queued", Some("pi-5"), 2),
        json!({"optional": true, "error": "pi-5 missed 3 heartbeats"}),
    );
    assert_eq!(
        t.build_lines(B, &build(requeued)).0,
        ["[linux/arm64] back in the queue: attempt 2 on pi-5 ended: pi-5 missed 3 heartbeats"]
    );
    let skipped = with(
        build_json(id, "linux/arm64", "cancelled", None, 2),
        json!({"optional": true, "error": "no agent took it within the native wait"}),
    );
    let (pre, post) = t.build_lines(B, &build(skipped));
    assert!(pre.is_empty(), "{pre:?}");
    assert_eq!(
        post,
        ["[linux/arm64] skipped (optional): no agent took it within the native wait"]
    );

    // The same build in a job a user cancelled is just cancelled.
    let mut t = Tracker::default();
    let cancelled = with(
        build_json(id, "linux/s390x", "cancelled", None, 0),
        json!({"optional": true, "error": "cancelled by ci-bot"}),
    );
    assert_eq!(
        t.build_lines(JobState::Cancelled, &build(cancelled)).1,
        ["[linux/s390x] cancelled: cancelled by ci-bot"]
    );
    let mut t = Tracker::default();
    let failed = with(
        build_json(id, "linux/s390x", "failed", Some("z15"), 1),
        json!({"optional": true, "error": "buildah exited with status 1"}),
    );
    assert_eq!(
        t.build_lines(JobState::Succeeded, &build(failed)).1,
        ["[linux/s390x] failed (optional): buildah exited with status 1"]
    );
}

#[test]
fn job_lines() {
    let mut job: Job = serde_json::from_value(sample_job_json()).unwrap();
    let mut t = Tracker::default();
    assert!(t.job_lines(&job).is_empty());
    job.state = JobState::Stitching;
    assert_eq!(t.job_lines(&job).len(), 1);
    assert!(t.job_lines(&job).is_empty());
    job.state = JobState::Succeeded;
    job.index_digest = Some("sha256:feed".into());
    assert_eq!(
        t.job_lines(&job),
        ["[index] pushed sha256:feed to localhost:5000/app:1"]
    );
}

#[test]
fn plain_log_lines_name_platform_and_agent() {
    let mut job: Job = serde_json::from_value(sample_job_json()).unwrap();
    let mut v = PlainView::default();
    let logs = vec![vec!["STEP 1/2: FROM scratch".to_string()], vec![]];
    assert_eq!(
        v.lines(&job, &logs),
        [
            "[linux/amd64] building on pi-4 (native)",
            "[linux/amd64 pi-4] STEP 1/2: FROM scratch",
            "[linux/s390x] queued",
            "[linux/s390x] waiting: no online agent builds linux/s390x natively or under emulation",
        ]
    );
    // A build running on an agent the coordinator has not named yet: the platform alone.
    job.builds[1].state = BuildState::Building;
    let logs = vec![vec![], vec!["s390x line 1".to_string()]];
    assert_eq!(
        v.lines(&job, &logs),
        [
            "[linux/s390x] building on an agent",
            "[linux/s390x] s390x line 1"
        ]
    );
    assert!(!QuietView.wants_log(&job.builds[0]), "quiet reads no logs");
}

#[test]
fn tails() {
    let log: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    let t = log_tail(log.as_bytes(), TAIL_LINES);
    assert!(
        t.starts_with("  last 20 lines of its log:\n  | line 11\n"),
        "{t}"
    );
    assert!(t.ends_with("  | line 30\n"), "{t}");
    assert_eq!(log_tail(b"", 20), "  (its log is empty)\n");
    assert_eq!(log_tail(b"one", 20), "  last line of its log:\n  | one\n");
}
