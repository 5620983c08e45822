//! Several coordinators on one PostgreSQL database. Each replica serves any agent and any client;
//! what they share lives in the database (jobs, builds, leases, contexts, logs). This module is the
//! one thing they also need between them: a nudge, so that an agent long-polling replica A learns
//! of a job submitted to replica B at once rather than at its next look. PostgreSQL's
//! `LISTEN`/`NOTIFY` carries it; on SQLite (one coordinator) there is nobody to tell.

use std::time::Duration;

use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::store::{Backend, Store, StoreResult};
use crate::AppState;

/// The notification channel replicas announce new work on.
pub const WORK_CHANNEL: &str = "archfarm_work";

/// Longest pause before the listener connects again after losing the database.
const MAX_RECONNECT: Duration = Duration::from_secs(10);

/// Tells every replica listening on the database that there may be work (payload: who says so).
pub async fn announce_work(store: &Store, instance: Uuid) -> StoreResult<()> {
    if store.backend() != Backend::Postgres {
        return Ok(());
    }
    // As text: sqlx's Any driver reads every result column, and has no type for `void`.
    sqlx::query("SELECT pg_notify($1, $2)::text AS sent")
        .bind(WORK_CHANNEL)
        .bind(instance.to_string())
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Background task: wakes this replica's long-polling agents and live views whenever another
/// replica announces work, until shutdown. A lost connection is made again with backoff; since
/// notices sent meanwhile are gone, everyone here is woken once it is back.
pub async fn listen(state: AppState, url: String) {
    let mut delay = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(WORK_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot listen for other replicas' work; retrying");
                    tokio::select! {
                        _ = state.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RECONNECT);
                    continue;
                }
            },
        };
        tracing::info!(channel = WORK_CHANNEL, "listening for other replicas' work");
        delay = Duration::from_millis(200);
        wake(&state);
        let own = state.scheduler.instance().to_string();
        loop {
            let next = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(notice)) if notice.payload() == own => {}
                Ok(Some(_)) => wake(&state),
                // The connection dropped; `try_recv` connects again on the next call.
                Ok(None) => {
                    tracing::warn!("lost the database connection that listens for other replicas; reconnecting");
                    wake(&state);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other replicas failed; reconnecting");
                    break;
                }
            }
        }
    }
}

fn wake(state: &AppState) {
    state.scheduler.wake_local();
    state.changes.notify();
}
