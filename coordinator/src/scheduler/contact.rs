//! Whether this replica has been in touch with its database long enough to judge leases.
//!
//! A lease lapses when its agent stops heartbeating. But a heartbeat can only be recorded while
//! the database answers: during a database outage, or while every coordinator is down, every
//! running lease "lapses" although its agent is alive and building. Judging leases by the clock
//! alone would then requeue every running build when the database comes back, spending an
//! attempt on each. So this replica judges a lease only after it has been in unbroken contact
//! with the database for a whole lease TTL: time enough for every live agent to heartbeat again.
//! In effect each lease is extended by any span in which this coordinator could not reach the
//! database (or was not running), without writing anything. A dead agent's build is taken back
//! that much later, which costs less than throwing away every running build.
//!
//! The reaper reports each of its round trips here ([`Contact::answered`], [`Contact::failed`]);
//! a round trip that took longer than [`SLOW`] counts as a break too, since it may have waited out
//! an outage in the connection pool.

use std::sync::Mutex;
use std::time::Duration;

/// A database round trip slower than this counts as a break in contact.
pub const SLOW: Duration = Duration::from_secs(3);

/// This replica's record of its contact with the database.
#[derive(Debug)]
pub struct Contact {
    /// Unix ms since which every round trip answered in time; None while broken (and at start).
    since: Mutex<Option<i64>>,
    /// How long contact must last before leases may be judged: the lease TTL.
    needed_ms: i64,
}

/// What a report changed, for the caller to log once per change rather than every second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: contact was already as reported.
    None,
    /// Contact was broken (or never made) and is made now.
    Restored,
    /// Contact was unbroken and is broken now.
    Lost,
}

impl Contact {
    /// No contact yet: a coordinator that just started judges no lease for `lease_ttl`, however
    /// long it was down.
    pub fn new(lease_ttl: Duration) -> Self {
        Contact {
            since: Mutex::new(None),
            needed_ms: lease_ttl.as_millis() as i64,
        }
    }

    /// A round trip asked at `asked` was answered at `answered` (Unix ms).
    pub fn answered(&self, asked: i64, answered: i64) -> Change {
        if answered - asked > SLOW.as_millis() as i64 {
            return self.failed();
        }
        let mut since = self.since.lock().expect("contact lock");
        match *since {
            Some(_) => Change::None,
            None => {
                // Contact counts from when the answer came, not from the question: the database
                // may have been away for most of the wait.
                *since = Some(answered);
                Change::Restored
            }
        }
    }

    /// A round trip failed: contact is broken until the next answer.
    pub fn failed(&self) -> Change {
        match self.since.lock().expect("contact lock").take() {
            Some(_) => Change::Lost,
            None => Change::None,
        }
    }

    /// Whether leases may be judged at `now`: contact has lasted a whole lease TTL.
    pub fn may_judge(&self, now: i64) -> bool {
        self.since
            .lock()
            .expect("contact lock")
            .is_some_and(|since| now - since >= self.needed_ms)
    }

    /// How long contact must last before leases are judged.
    pub fn needed(&self) -> Duration {
        Duration::from_millis(self.needed_ms as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(15);

    #[test]
    fn nothing_is_judged_until_contact_has_lasted_a_lease_ttl() {
        let c = Contact::new(TTL);
        assert!(!c.may_judge(1_000_000), "no contact yet");
        assert_eq!(c.answered(1_000, 1_010), Change::Restored);
        assert!(!c.may_judge(1_010));
        assert!(!c.may_judge(1_010 + 14_999));
        assert_eq!(c.answered(2_000, 2_005), Change::None);
        assert!(c.may_judge(1_010 + 15_000));
    }

    #[test]
    fn a_failure_breaks_contact_and_the_wait_starts_again_at_the_next_answer() {
        let c = Contact::new(TTL);
        c.answered(0, 1);
        assert!(c.may_judge(20_000));
        assert_eq!(c.failed(), Change::Lost);
        assert_eq!(c.failed(), Change::None);
        assert!(!c.may_judge(20_001));
        // The database answers again after a minute away.
        assert_eq!(c.answered(80_000, 80_002), Change::Restored);
        assert!(!c.may_judge(80_002 + 14_000));
        assert!(c.may_judge(80_002 + 15_000));
    }

    #[test]
    fn a_round_trip_that_waited_out_an_outage_counts_as_a_break() {
        let c = Contact::new(TTL);
        c.answered(0, 1);
        assert!(c.may_judge(20_000));
        // Asked before the outage, answered a minute later from the pool's queue.
        assert_eq!(c.answered(20_000, 80_000), Change::Lost);
        assert!(!c.may_judge(80_000));
        assert_eq!(c.answered(81_000, 81_001), Change::Restored);
        assert!(c.may_judge(96_001));
    }
}
