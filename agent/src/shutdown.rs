//! Stopping the agent: the first SIGTERM (or SIGINT) drains, a second one abandons.
//!
//! Draining means: take no new builds (an in-flight long poll is dropped), tell the coordinator
//! (`POST /agents/{id}/drain`, best effort), let the running builds finish and report however long
//! they take, then deregister and exit 0. A 409 `draining` answer to a lease call (an operator ran
//! `archfarm agents drain NAME`) starts the same drain.
//!
//! Abandoning means: kill the running builds' process groups, report nothing, do not deregister, and
//! exit 1. The coordinator notices through the lapsing leases and requeues those builds for another
//! agent, exactly as if the machine had died.

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How the agent stopped, when it stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every running build finished and reported (or none was running); the agent deregistered.
    Drained,
    /// A second signal killed this many running builds without reporting them; their leases lapse
    /// and the coordinator gives the builds to another agent.
    Abandoned {
        /// How many builds were killed.
        builds: usize,
    },
}

impl Stopped {
    /// The process exit code: 0 after a drain, 1 when builds were abandoned (work was lost, which a
    /// supervisor or script may want to know).
    pub fn exit_code(self) -> u8 {
        match self {
            Stopped::Drained => 0,
            Stopped::Abandoned { .. } => 1,
        }
    }
}

/// What the shutdown signals received so far ask for.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    /// Fires on the first signal: drain.
    pub drain: CancellationToken,
    /// Fires on the second signal: abandon the running builds.
    pub abandon: CancellationToken,
}

/// Turns the stream of signals into [`Requests`]: the first item drains, the second abandons.
/// Returns after the second item or when the stream ends (no more signals can come).
pub async fn watch(mut signals: impl Stream<Item = ()> + Unpin, requests: Requests) {
    if signals.next().await.is_none() {
        return;
    }
    requests.drain.cancel();
    if signals.next().await.is_none() {
        return;
    }
    info!("second shutdown signal: abandoning running builds");
    requests.abandon.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_signal_drains_second_abandons() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let signals =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
            );
        let req = Requests::default();
        let w = tokio::spawn(watch(Box::pin(signals), req.clone()));
        tx.send(()).unwrap();
        req.drain.cancelled().await;
        assert!(!req.abandon.is_cancelled());
        tx.send(()).unwrap();
        req.abandon.cancelled().await;
        w.await.unwrap();
    }

    #[tokio::test]
    async fn an_ended_stream_requests_nothing() {
        let req = Requests::default();
        watch(futures::stream::empty(), req.clone()).await;
        assert!(!req.drain.is_cancelled() && !req.abandon.is_cancelled());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Stopped::Drained.exit_code(), 0);
        assert_eq!(Stopped::Abandoned { builds: 2 }.exit_code(), 1);
    }
}
