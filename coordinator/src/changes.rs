//! Notices that something a live view shows may have changed.
//!
//! Live views (the SSE streams, `?follow=true` logs) do not receive the change itself: they are
//! woken and read the current state back from the database and the log files. So a slow reader
//! never makes the coordinator buffer anything, a missed wake-up costs at most one poll interval,
//! and work done by another coordinator on the same database shows up too, through the poll.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How often a live view looks even when nothing woke it (another coordinator's work, the reaper).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two looks: a burst of log reports wakes each view once, not once per report.
pub const MIN_GAP: Duration = Duration::from_millis(150);

/// The sending side: bumped after every change this coordinator makes.
#[derive(Debug)]
pub struct Changes {
    tx: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    /// A notifier nobody watches yet.
    pub fn new() -> Self {
        Changes {
            tx: watch::channel(0).0,
        }
    }

    /// Wakes every watcher.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A watcher that wakes at most every [`MIN_GAP`] and at least every [`POLL_INTERVAL`].
    pub fn watch(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
            last: None,
            hurry: false,
        }
    }
}

/// One live view's wake-ups.
#[derive(Debug)]
pub struct Watcher {
    rx: watch::Receiver<u64>,
    last: Option<Instant>,
    hurry: bool,
}

impl Watcher {
    /// Waits for the next time to look: a change, or the poll interval, but never sooner than
    /// [`MIN_GAP`] after the last look.
    pub async fn next(&mut self) {
        if std::mem::take(&mut self.hurry) {
            // The last look left work undone; do it without waiting.
            tokio::task::yield_now().await;
        } else if let Some(last) = self.last {
            tokio::time::sleep_until(last + MIN_GAP).await;
            // Anything that happened during the gap is seen by this look; a notice already
            // pending is consumed here rather than causing a second look right after.
            if !self.rx.has_changed().unwrap_or(false) {
                let _ = tokio::time::timeout_at(last + POLL_INTERVAL, self.rx.changed()).await;
            }
        }
        self.rx.mark_unchanged();
        self.last = Some(Instant::now());
    }

    /// Makes the next [`Watcher::next`] return at once, for a view with a backlog to send.
    pub fn hurry(&mut self) {
        self.hurry = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wakes_on_change_after_the_gap_or_on_the_poll() {
        let changes = Changes::new();
        let mut w = changes.watch();
        let t0 = Instant::now();
        w.next().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first look is at once");

        // Nothing happens: the poll interval wakes it.
        w.next().await;
        assert_eq!(t0.elapsed(), POLL_INTERVAL);

        // A burst of notices during the gap gives one look, at the end of the gap.
        let t1 = Instant::now();
        changes.notify();
        changes.notify();
        w.next().await;
        assert_eq!(t1.elapsed(), MIN_GAP);
        let t2 = Instant::now();
        w.next().await;
        assert_eq!(t2.elapsed(), POLL_INTERVAL, "the burst was consumed");

        // A notice after the gap wakes it right away.
        let notifier = {
            let c = std::sync::Arc::new(changes);
            let c2 = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                c2.notify();
            });
            c
        };
        let t3 = Instant::now();
        w.next().await;
        assert_eq!(t3.elapsed(), Duration::from_millis(400));
        drop(notifier);

        // A view with a backlog does not wait at all.
        let t4 = Instant::now();
        w.hurry();
        w.next().await;
        assert_eq!(t4.elapsed(), Duration::ZERO);
    }
}
