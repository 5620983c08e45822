//! Retention, in process on both databases: a coordinator started with `--retention 1d` deletes,
//! in its first sweep, the jobs that ended two days ago with their builds, leases and logs, and
//! the contexts nobody used since; live jobs of any age, what they need, and recent jobs and
//! uploads stay. Ages are set by moving the stored timestamps back, never by waiting.

mod common;

use archfarm_protocol::api::{Job, JobState};
use archfarm_protocol::retention::RetentionStatus;
use common::Coordinator;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row as _;

const TWO_DAYS_MS: i64 = 48 * 3600 * 1000;

fn body(ctx: &str, platform: &str, tag: u32) -> Value {
    json!({"context": ctx, "platforms": [platform], "tags": [format!("localhost:5000/app:{tag}")],
           "timeout_secs": 7 * 24 * 3600})
}

async fn cancel(c: &Coordinator, job: &Job) {
    let res = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", job.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn status_of(c: &Coordinator, path: &str) -> StatusCode {
    c.http.get(c.url(path)).send().await.unwrap().status()
}

async fn head_context(c: &Coordinator, digest: &str) -> StatusCode {
    let res = c.http.head(c.url(&format!("/contexts/{digest}")));
    res.send().await.unwrap().status()
}

async fn count(store: &archfarm_coordinator::store::Store, sql: &str, id: &str) -> i64 {
    sqlx::query(sql)
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get::<i64, _>(0)
}

#[tokio::test]
async fn the_first_sweep_deletes_old_ended_jobs_and_unused_contexts_and_nothing_live() {
    // Retention off while the jobs are made: nothing may be swept before they are aged.
    let c = Coordinator::start(&["--retention", "off", "--heartbeat-secs", "3600"]).await;
    let old_ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let live_ctx = c.upload(&[("Dockerfile", "FROM scratch\n# live\n")]).await;
    let lone_old = c.upload(&[("Dockerfile", "FROM scratch\n# lone\n")]).await;
    let lone_new = c.upload(&[("Dockerfile", "FROM scratch\n# new\n")]).await;
    let recent_ctx = c
        .upload(&[("Dockerfile", "FROM scratch\n# recent\n")])
        .await;

    // Ended two days ago: one failed after a lease and a log, one cancelled.
    let s390x = c.register("s390x", &["linux/s390x"], &[]).await;
    let failed = c.submit(body(&old_ctx, "linux/s390x", 1)).await;
    let lease = c.lease(&s390x).await.expect("the s390x build is leased");
    let logged = json!({"lease_token": lease.lease_token, "lines": ["step 1"]});
    let res = c.report(&s390x, lease.build_id, "log", logged).await;
    assert_eq!(res.status(), StatusCode::OK);
    let failure = json!({"lease_token": lease.lease_token, "error": "RUN exited 3"});
    let res = c.report(&s390x, lease.build_id, "fail", failure).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cancelled = c.submit(body(&old_ctx, "linux/amd64", 2)).await;
    cancel(&c, &cancelled).await;
    // Live and two days old: one queued (no amd64 agent), one building.
    let queued = c.submit(body(&live_ctx, "linux/amd64", 3)).await;
    let arm64 = c.register("arm64", &["linux/arm64"], &[]).await;
    let building = c.submit(body(&live_ctx, "linux/arm64", 4)).await;
    let running = c.lease(&arm64).await.expect("the arm64 build is leased");
    // Ended just now.
    let recent = c.submit(body(&recent_ctx, "linux/amd64", 5)).await;
    cancel(&c, &recent).await;

    let store = c.store().await;
    sqlx::query(
        "UPDATE jobs SET created_at = created_at - $1, updated_at = updated_at - $1, \
         finished_at = finished_at - $1 WHERE id <> $2",
    )
    .bind(TWO_DAYS_MS)
    .bind(recent.id.to_string())
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "UPDATE contexts SET created_at = created_at - $1, last_used_at = last_used_at - $1 \
         WHERE digest <> $2 AND digest <> $3",
    )
    .bind(TWO_DAYS_MS)
    .bind(&lone_new)
    .bind(&recent_ctx)
    .execute(store.pool())
    .await
    .unwrap();
    store.pool().close().await;

    let database = c.stop_keeping_database().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = Coordinator::start_on(
        listener,
        database,
        Some("join-secret"),
        &["--retention", "1d", "--heartbeat-secs", "3600"],
    )
    .await;
    // The first sweep runs at start; wait for it to be recorded (polling, as for readiness).
    let status: RetentionStatus = loop {
        let s: RetentionStatus = c
            .http
            .get(c.url("/admin/retention"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s.sweeps >= 1 {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status.retention_secs, Some(24 * 3600));
    assert!(status.last_sweep_at.is_some());
    let last = |kind: &str| status.last.get(kind).copied().unwrap_or(0);
    assert_eq!(
        (
            last("jobs"),
            last("builds"),
            last("leases"),
            last("contexts")
        ),
        (2, 2, 1, 2),
        "{status:?}"
    );
    assert!(
        last("log_chunks") >= 1 && last("context_chunks") >= 2,
        "{status:?}"
    );
    assert_eq!(status.total, status.last);

    // What an independent client reads back.
    for gone in [failed.id, cancelled.id] {
        assert_eq!(
            status_of(&c, &format!("/jobs/{gone}")).await,
            StatusCode::NOT_FOUND
        );
    }
    let log = format!("/builds/{}/log", lease.build_id);
    assert_eq!(status_of(&c, &log).await, StatusCode::NOT_FOUND);
    for (live, state) in [
        (queued.id, JobState::Queued),
        (building.id, JobState::Building),
    ] {
        assert_eq!(c.job(live).await.state, state, "a live job is untouched");
    }
    assert_eq!(c.job(recent.id).await.state, JobState::Cancelled);
    for gone in [&old_ctx, &lone_old] {
        assert_eq!(head_context(&c, gone).await, StatusCode::NOT_FOUND);
    }
    for kept in [&live_ctx, &lone_new, &recent_ctx] {
        assert_eq!(head_context(&c, kept).await, StatusCode::OK);
    }
    let store = c.store().await;
    for gone in [&old_ctx, &lone_old] {
        let sql = "SELECT COUNT(*) FROM context_chunks WHERE digest = $1";
        assert_eq!(count(&store, sql, gone).await, 0, "the pieces went too");
    }
    let leases = "SELECT COUNT(*) FROM leases WHERE build_id = $1";
    assert_eq!(count(&store, leases, &lease.build_id.to_string()).await, 0);
    let running_id = running.build_id.to_string();
    assert_eq!(count(&store, leases, &running_id).await, 1);
    store.pool().close().await;

    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("archfarm_retention_deleted_total{kind=\"jobs\"} 2"),
        "{metrics}"
    );
    c.stop().await;
}
