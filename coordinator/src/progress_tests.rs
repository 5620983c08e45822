use std::sync::Arc;

use archfarm_protocol::api::BuildMode;

use super::*;
use crate::metrics::Metrics;
use crate::store::{insert_test_job, test_store, LeaseCheck};

/// A job for a required amd64 and an optional arm64, its amd64 build pushed; the arm64 build.
async fn amd64_done_arm64_optional(store: &Store) -> (Uuid, BuildRow) {
    let job = insert_test_job(store, "app", &["linux/amd64", "linux/arm64"]).await;
    sqlx::query("UPDATE builds SET optional = 1 WHERE job_id = $1 AND platform = 'linux/arm64'")
        .bind(job.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    let builds = store.builds_of_job(job).await.unwrap();
    let token = Uuid::new_v4();
    assert!(claim(store, builds[0].id, token).await);
    assert!(store.move_job(job, lifecycle::START_JOB).await.unwrap());
    assert!(store
        .complete_build(builds[0].id, token, "sha256:a", "m", 1)
        .await
        .unwrap());
    (job, builds[1].clone())
}

async fn claim(store: &Store, build: Uuid, token: Uuid) -> bool {
    store
        .claim_build(
            build,
            Uuid::new_v4(),
            "pi",
            BuildMode::Native,
            token,
            i64::MAX,
            "test",
            "r",
        )
        .await
        .unwrap()
}

/// A scheduler in contact with the database, so it may judge who is online (a lease length of
/// contact is needed first: here the lease length is zero).
async fn scheduler(store: &Store, metrics: &Arc<Metrics>) -> Scheduler {
    let scheduler = Scheduler::new(
        store.clone(),
        metrics.clone(),
        Duration::ZERO,
        Duration::from_secs(60),
        3,
    );
    scheduler.check_contact().await;
    assert!(scheduler.may_judge_leases());
    scheduler
}

/// Optional skip against claim: `advance` finds no online agent for the queued optional arm64
/// build and decides to leave it out, but an agent (registered elsewhere a moment ago) claims it
/// before the skip. The old code stitched anyway: the index lacked arm64 without a warning, and
/// the build later "succeeded" with a digest in no index. Now the job waits for that build.
#[tokio::test]
async fn an_optional_build_claimed_while_being_left_out_is_waited_for() {
    let (store, _db) = test_store().await;
    let metrics = Arc::new(Metrics::new());
    let scheduler = scheduler(&store, &metrics).await;
    let (job, arm64) = amd64_done_arm64_optional(&store).await;
    let token = Uuid::new_v4();
    let racing = store.clone();
    store.hooks.at("skip_build", async move {
        assert!(claim(&racing, arm64.id, token).await, "the agent's claim");
    });
    let ends = Ends::new(&store, &metrics, None);
    let began = settle(&store, &scheduler, ends, job).await.unwrap();
    assert!(
        store.hooks.ran("skip_build"),
        "the claim ran before the skip"
    );
    assert_eq!(began, None, "stitching began while an optional build ran");
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Building);
    assert!(row.warnings.is_empty(), "{:?}", row.warnings);
    // The build finishes: now the job stitches, with both platforms and no warning.
    assert!(store
        .complete_build(arm64.id, token, "sha256:b", "m", 1)
        .await
        .unwrap());
    assert!(settle(&store, &scheduler, ends, job)
        .await
        .unwrap()
        .is_some());
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Stitching);
    assert!(row.warnings.is_empty(), "{:?}", row.warnings);
}

/// Without a racing claim, an optional build nobody can take is left out with a warning.
#[tokio::test]
async fn an_optional_build_nobody_can_take_is_left_out_with_a_warning() {
    let (store, _db) = test_store().await;
    let metrics = Arc::new(Metrics::new());
    let scheduler = scheduler(&store, &metrics).await;
    let (job, arm64) = amd64_done_arm64_optional(&store).await;
    let ends = Ends::new(&store, &metrics, None);
    assert!(settle(&store, &scheduler, ends, job)
        .await
        .unwrap()
        .is_some());
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Stitching);
    assert_eq!(
        row.warnings,
        ["optional platform linux/arm64 left out of the index: no online agent can build linux/arm64"]
    );
    let build = store.get_build(arm64.id).await.unwrap().unwrap();
    assert_eq!(build.state, BuildState::Cancelled);
}

/// Moves every job's start `hours` back, past a 2-hour time limit.
async fn age(store: &Store, hours: i64) {
    sqlx::query("UPDATE jobs SET created_at = created_at - $1")
        .bind(hours * 3_600_000)
        .execute(store.pool())
        .await
        .unwrap();
}

/// An optional build still running when the time limit comes, every required image pushed: the
/// job is stitched without it (it is stopped and the job says why), not failed.
#[tokio::test]
async fn a_hung_optional_build_is_left_out_at_the_time_limit() {
    let (store, _db) = test_store().await;
    let metrics = Arc::new(Metrics::new());
    let scheduler = scheduler(&store, &metrics).await;
    let (job, arm64) = amd64_done_arm64_optional(&store).await;
    let token = Uuid::new_v4();
    assert!(claim(&store, arm64.id, token).await);
    let ends = Ends::new(&store, &metrics, None);
    // Within the limit it is waited for.
    assert!(expire(&store, &scheduler, ends).await.unwrap().is_empty());
    assert_eq!(
        store.get_job(job).await.unwrap().unwrap().state,
        JobState::Building
    );
    age(&store, 3).await;
    let began = expire(&store, &scheduler, ends).await.unwrap();
    assert_eq!(began.len(), 1);
    assert_eq!(began[0].0, job);
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Stitching, "error: {:?}", row.error);
    assert_eq!(
        row.warnings,
        ["optional platform linux/arm64 left out of the index: it did not finish within the job's time limit (2h)"]
    );
    assert_eq!(
        store.renew_lease(arm64.id, token, i64::MAX).await.unwrap(),
        LeaseCheck::Cancelled,
        "its agent is told to stop"
    );
    // Its late report is refused.
    assert!(!store
        .complete_build(arm64.id, token, "sha256:b", "m", 1)
        .await
        .unwrap());
}

/// A required build still running at the time limit fails the job, as before.
#[tokio::test]
async fn a_required_build_unfinished_at_the_time_limit_fails_the_job() {
    let (store, _db) = test_store().await;
    let metrics = Arc::new(Metrics::new());
    let scheduler = scheduler(&store, &metrics).await;
    let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
    let build = store.builds_of_job(job).await.unwrap()[0].id;
    let token = Uuid::new_v4();
    assert!(claim(&store, build, token).await);
    age(&store, 3).await;
    let ends = Ends::new(&store, &metrics, None);
    assert!(expire(&store, &scheduler, ends).await.unwrap().is_empty());
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.error.as_deref()),
        (JobState::Failed, Some("timed out after 2h"))
    );
    assert_eq!(
        store.renew_lease(build, token, i64::MAX).await.unwrap(),
        LeaseCheck::Cancelled
    );
}
