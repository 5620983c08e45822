//! Which scopes go when the storage is over its limit: a pure choice, so it can be tested alone.

use std::time::SystemTime;

/// What the choice needs to know of one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeStat {
    /// The scope's directory name.
    pub id: String,
    /// Bytes it occupies.
    pub bytes: u64,
    /// When a build last acquired it.
    pub last_used: SystemTime,
    /// A build holds it: never dropped, never pruned.
    pub in_use: bool,
    /// The build about to use it is acquiring it: pruned if need be, never dropped.
    pub keep: bool,
}

/// What to do to get under the limit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Scopes removed whole, least recently used first.
    pub drop: Vec<String>,
    /// Scopes left that are alone over the limit: their unused images are pruned.
    pub prune: Vec<String>,
}

/// Drops least recently used scopes no build holds until the total fits `limit`; then, if it still
/// does not, prunes each remaining scope no build holds that is alone over the limit.
pub fn plan(scopes: &[ScopeStat], limit: u64) -> Plan {
    let mut total: u64 = scopes.iter().map(|s| s.bytes).sum();
    let mut plan = Plan::default();
    if total <= limit {
        return plan;
    }
    let mut droppable: Vec<&ScopeStat> = scopes.iter().filter(|s| !s.in_use && !s.keep).collect();
    droppable.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.id.cmp(&b.id)));
    for s in droppable {
        if total <= limit {
            break;
        }
        total -= s.bytes;
        plan.drop.push(s.id.clone());
    }
    if total > limit {
        plan.prune = scopes
            .iter()
            .filter(|s| !s.in_use && s.bytes > limit && !plan.drop.contains(&s.id))
            .map(|s| s.id.clone())
            .collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn scope(id: &str, bytes: u64, age: u64) -> ScopeStat {
        ScopeStat {
            id: id.into(),
            bytes,
            last_used: UNIX_EPOCH + Duration::from_secs(1000 - age),
            in_use: false,
            keep: false,
        }
    }

    #[test]
    fn under_the_limit_nothing_goes() {
        assert_eq!(
            plan(&[scope("a", 5, 1), scope("b", 5, 2)], 10),
            Plan::default()
        );
    }

    #[test]
    fn least_recently_used_go_first_and_only_as_many_as_needed() {
        let scopes = [scope("new", 4, 1), scope("old", 4, 30), scope("mid", 4, 10)];
        let p = plan(&scopes, 8);
        assert_eq!(p.drop, ["old"]);
        assert!(p.prune.is_empty());
        let p = plan(&scopes, 4);
        assert_eq!(p.drop, ["old", "mid"]);
    }

    #[test]
    fn scopes_in_use_or_being_acquired_are_never_dropped() {
        let mut busy = scope("busy", 8, 50);
        busy.in_use = true;
        let mut mine = scope("mine", 8, 40);
        mine.keep = true;
        let p = plan(&[busy.clone(), mine.clone(), scope("idle", 1, 1)], 4);
        assert_eq!(p.drop, ["idle"]);
        // Still over: the scope being acquired is alone over the limit, so it is pruned; the busy
        // one is left alone whatever its size.
        assert_eq!(p.prune, ["mine"]);
    }
}
