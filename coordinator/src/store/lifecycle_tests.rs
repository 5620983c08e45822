use archfarm_protocol::api::{BuildMode, BuildState, JobState};
use uuid::Uuid;

use super::*;
use crate::store::{insert_test_job, test_store, Backend, LeaseCheck, Registered};

const JOB_STATES: [JobState; 6] = [
    JobState::Queued,
    JobState::Building,
    JobState::Stitching,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];
const BUILD_STATES: [BuildState; 5] = [
    BuildState::Queued,
    BuildState::Building,
    BuildState::Succeeded,
    BuildState::Failed,
    BuildState::Cancelled,
];

#[test]
fn the_job_table_has_exactly_these_edges() {
    use JobState::*;
    let edges = [
        (Queued, Building),
        (Queued, Stitching),
        (Building, Stitching),
        (Stitching, Succeeded),
        (Queued, Failed),
        (Building, Failed),
        (Stitching, Failed),
        (Queued, Cancelled),
        (Building, Cancelled),
        (Stitching, Cancelled),
    ];
    for from in JOB_STATES {
        for to in JOB_STATES {
            assert_eq!(
                job_allowed(from, to),
                edges.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
        if from.is_terminal() {
            assert!(JOB_STATES.iter().all(|&to| !job_allowed(from, to)));
        }
    }
    // Every move follows the table, and every edge of the table is some move's.
    for mv in JOB_MOVES {
        for &from in mv.from {
            assert!(job_allowed(from, mv.to), "move {from} -> {}", mv.to);
        }
    }
    for (from, to) in edges {
        assert!(
            JOB_MOVES
                .iter()
                .any(|m| m.to == to && m.from.contains(&from)),
            "no move makes {from} -> {to}"
        );
    }
}

#[test]
fn the_build_table_has_exactly_these_edges() {
    use BuildState::*;
    let edges = [
        (Queued, Building),
        (Building, Succeeded),
        (Queued, Failed),
        (Building, Failed),
        (Building, Queued),
        (Queued, Cancelled),
        (Building, Cancelled),
    ];
    for from in BUILD_STATES {
        for to in BUILD_STATES {
            assert_eq!(
                build_allowed(from, to),
                edges.contains(&(from, to)),
                "{from:?} -> {to:?}"
            );
        }
    }
    for terminal in [Succeeded, Failed, Cancelled] {
        assert!(BUILD_STATES.iter().all(|&to| !build_allowed(terminal, to)));
    }
    for mv in BUILD_MOVES {
        for &from in mv.from {
            assert!(build_allowed(from, mv.to), "move {from:?} -> {:?}", mv.to);
        }
    }
    for (from, to) in edges {
        assert!(
            BUILD_MOVES
                .iter()
                .any(|m| m.to == to && m.from.contains(&from)),
            "no move makes {from:?} -> {to:?}"
        );
    }
}

#[test]
fn a_guard_names_the_from_states() {
    assert_eq!(
        CANCEL_BUILD.guard("b.state"),
        "b.state IN ('queued', 'building')"
    );
    assert_eq!(SUCCEED_JOB.guard("state"), "state IN ('stitching')");
}

#[tokio::test]
async fn an_ended_job_cannot_be_moved_on() {
    let (store, _db) = test_store().await;
    let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
    assert!(store
        .end_job(job, JobState::Failed, "x")
        .await
        .unwrap()
        .is_some());
    assert!(!store.move_job(job, START_JOB).await.unwrap());
    assert!(!store.move_job(job, STITCH_JOB).await.unwrap());
    assert!(store.cancel_job(job, "y").await.unwrap().is_none());
    let row = store.get_job(job).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.error.as_deref()),
        (JobState::Failed, Some("x"))
    );
}

fn claim(
    store: &Store,
    build: Uuid,
    agent: Uuid,
    token: Uuid,
) -> impl std::future::Future<Output = bool> {
    let store = store.clone();
    async move {
        store
            .claim_build(
                build,
                agent,
                "late",
                BuildMode::Native,
                token,
                i64::MAX,
                "test",
                "replica-b",
            )
            .await
            .unwrap()
    }
}

/// Cancel against claim: ending a job while an agent's claim of its queued build commits in the
/// middle. On PostgreSQL the claim commits between the job's update and its builds'; the old
/// code cancelled running and queued builds in two statements, and a claim landing between them
/// left a build running for the cancelled job. SQLite runs one writer at a time, so there the
/// claim lands before or after the whole end, and both orders are checked.
#[tokio::test]
async fn a_claim_racing_with_the_end_of_its_job_is_cancelled_or_refused() {
    let (store, _db) = test_store().await;
    let job = insert_test_job(&store, "app", &["linux/amd64", "linux/arm64"]).await;
    let builds = store.builds_of_job(job).await.unwrap();
    let (first, late) = (builds[0].id, builds[1].id);
    let (t0, t1) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(claim(&store, first, Uuid::new_v4(), t0).await);
    assert!(store.move_job(job, START_JOB).await.unwrap());
    let claimed_inside = store.backend() == Backend::Postgres;
    if claimed_inside {
        let landed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = landed.clone();
        let racing = claim(&store, late, Uuid::new_v4(), t1);
        store.hooks.at("end_job: job row ended", async move {
            flag.store(racing.await, std::sync::atomic::Ordering::SeqCst);
        });
        let stopped = store
            .end_job(job, JobState::Cancelled, "cancelled by user")
            .await
            .unwrap()
            .expect("this call ended it");
        assert!(store.hooks.ran("end_job: job row ended"));
        assert!(
            landed.load(std::sync::atomic::Ordering::SeqCst),
            "the claim committed while the job was ending"
        );
        assert_eq!(stopped.running.len(), 2, "both running builds were stopped");
    } else {
        let stopped = store
            .end_job(job, JobState::Cancelled, "cancelled by user")
            .await
            .unwrap()
            .expect("this call ended it");
        assert_eq!(stopped.running.len(), 1);
        assert!(
            !claim(&store, late, Uuid::new_v4(), t1).await,
            "claimed after the end"
        );
    }
    for b in store.builds_of_job(job).await.unwrap() {
        assert_eq!(
            b.state,
            BuildState::Cancelled,
            "{} of an ended job",
            b.platform
        );
    }
    assert_eq!(
        store.renew_lease(first, t0, i64::MAX).await.unwrap(),
        LeaseCheck::Cancelled
    );
    if claimed_inside {
        assert_eq!(
            store.renew_lease(late, t1, i64::MAX).await.unwrap(),
            LeaseCheck::Cancelled,
            "the late claim's holder is told to stop"
        );
    }
}

/// A queued build of a job that ended without cancelling it (a job ended by a path from before
/// this check, or by hand) is not leased: the claim reads the job's state in its own statement.
#[tokio::test]
async fn a_build_of_an_ended_job_is_not_claimed() {
    let (store, _db) = test_store().await;
    let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
    let build = store.builds_of_job(job).await.unwrap()[0].id;
    sqlx::query("UPDATE jobs SET state = 'failed' WHERE id = $1")
        .bind(job.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    assert!(!claim(&store, build, Uuid::new_v4(), Uuid::new_v4()).await);
    assert_eq!(
        store.get_build(build).await.unwrap().unwrap().state,
        BuildState::Queued
    );
}

/// The claim checks the agent's free capacity and drain in the same statement: the scheduler's
/// look at the agent may be stale (another claim, a drain) by the time it claims.
#[tokio::test]
async fn a_full_or_draining_agent_claims_nothing() {
    let (store, _db) = test_store().await;
    let amd: Vec<archfarm_protocol::Platform> = vec!["linux/amd64".parse().unwrap()];
    let Registered::Ok { id: agent, .. } = store
        .upsert_agent(
            "a",
            "a",
            &amd,
            &[],
            1,
            None,
            None,
            false,
            0,
            &Default::default(),
        )
        .await
        .unwrap()
    else {
        panic!("not registered")
    };
    let one = insert_test_job(&store, "app", &["linux/amd64"]).await;
    let two = insert_test_job(&store, "app", &["linux/amd64"]).await;
    let b1 = store.builds_of_job(one).await.unwrap()[0].id;
    let b2 = store.builds_of_job(two).await.unwrap()[0].id;
    assert!(claim(&store, b1, agent, Uuid::new_v4()).await);
    assert!(
        !claim(&store, b2, agent, Uuid::new_v4()).await,
        "capacity 1, two builds"
    );
    store.end_job(one, JobState::Cancelled, "x").await.unwrap();
    assert!(store.set_draining(agent).await.unwrap());
    assert!(
        !claim(&store, b2, agent, Uuid::new_v4()).await,
        "a draining agent"
    );
}

/// Lost updates: two warnings added at once both stay. The second is added between the first
/// caller's read of the list and its write (the old read-modify-write then wrote the list it
/// had read, plus its own, over the other).
#[tokio::test]
async fn warnings_added_at_the_same_time_are_both_kept() {
    let (store, _db) = test_store().await;
    let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
    let other = store.clone();
    store.hooks.at("add_job_warning: list read", async move {
        other.add_job_warning(job, "second").await.unwrap();
    });
    store.add_job_warning(job, "first").await.unwrap();
    assert!(store.hooks.ran("add_job_warning: list read"));
    let mut warnings = store.get_job(job).await.unwrap().unwrap().warnings;
    warnings.sort();
    assert_eq!(warnings, ["first", "second"]);
    // Adding one again changes nothing.
    store.add_job_warning(job, "first").await.unwrap();
    assert_eq!(store.get_job(job).await.unwrap().unwrap().warnings.len(), 2);
}
