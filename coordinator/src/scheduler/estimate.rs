//! Whether a build should go to an emulating agent now or wait for a native one: expected finishing
//! times from recorded build durations. Pure logic; the clock and the history are passed in.

use std::time::Duration;

use archfarm_protocol::api::{BuildMode, EmulationPolicy};
use archfarm_protocol::duration::format_duration;
use archfarm_protocol::Platform;

/// Assumed native build time when a repository has no history at all.
const DEFAULT_NATIVE: Duration = Duration::from_secs(60);
/// Assumed slowdown of emulation when only one side has history (the design's rule of thumb).
const ASSUMED_SLOWDOWN: u32 = 10;

/// Expected build durations for one platform of one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimates {
    /// Native build time.
    pub native: Duration,
    /// Emulated build time.
    pub emulated: Duration,
    /// Where the figures come from, for the recorded decision.
    pub basis: &'static str,
}

fn median(mut values: Vec<i64>) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(Duration::from_millis(values[values.len() / 2].max(0) as u64))
}

/// Estimates from a repository's recent `(platform, mode, duration ms)` samples.
pub fn estimates(history: &[(Platform, BuildMode, i64)], platform: &Platform) -> Estimates {
    let of = |mode| {
        median(
            history
                .iter()
                .filter(|(p, m, _)| p == platform && *m == mode)
                .map(|(_, _, d)| *d)
                .collect(),
        )
    };
    match (of(BuildMode::Native), of(BuildMode::Emulated)) {
        (Some(native), Some(emulated)) => Estimates {
            native,
            emulated,
            basis: "recorded history",
        },
        (Some(native), None) => Estimates {
            native,
            emulated: native * ASSUMED_SLOWDOWN,
            basis: "native history, emulation assumed 10x slower",
        },
        (None, Some(emulated)) => Estimates {
            native: emulated / ASSUMED_SLOWDOWN,
            emulated,
            basis: "emulated history, native assumed 10x faster",
        },
        (None, None) => Estimates {
            native: DEFAULT_NATIVE,
            emulated: DEFAULT_NATIVE * ASSUMED_SLOWDOWN,
            basis: "no history, emulation assumed 10x slower",
        },
    }
}

/// An online native agent for the platform: its capacity and when its running builds started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAgent {
    /// Builds at once.
    pub capacity: i64,
    /// Start times (Unix ms) of its running builds.
    pub running_since: Vec<i64>,
}

/// How long until a native slot is free for a build with `ahead` queued builds of the same platform
/// before it: every slot frees when its build is expected to end, then serves the queue in turn.
pub fn native_wait(
    now: i64,
    agents: &[NativeAgent],
    native: Duration,
    ahead: usize,
) -> Option<Duration> {
    let per_build = native.as_millis() as i64;
    let mut free_at: Vec<i64> = Vec::new();
    for agent in agents {
        for started in &agent.running_since {
            free_at.push((started + per_build).max(now));
        }
        let idle = (agent.capacity - agent.running_since.len() as i64).max(0);
        free_at.extend(std::iter::repeat_n(now, idle as usize));
    }
    if free_at.is_empty() {
        return None;
    }
    free_at.sort_unstable();
    let slots = free_at.len();
    let when = free_at[ahead % slots] + (ahead / slots) as i64 * per_build;
    Some(Duration::from_millis((when - now).max(0) as u64))
}

/// The outcome for an emulating agent looking at a queued build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take it, emulated; the reason is recorded on the build.
    Emulate(String),
    /// Leave it for a native agent; the reason explains the wait.
    Wait(String),
}

/// Decides whether an emulating agent should take a build of `platform` now.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    now: i64,
    platform: &Platform,
    policy: EmulationPolicy,
    queued_at: i64,
    native_agents: &[NativeAgent],
    ahead: usize,
    est: Estimates,
) -> Verdict {
    if policy == EmulationPolicy::Never {
        return Verdict::Wait(format!(
            "the job's emulation policy is 'never'; waiting for a native {platform} agent"
        ));
    }
    let Some(wait) = native_wait(now, native_agents, est.native, ahead) else {
        return Verdict::Emulate(format!("no online agent builds {platform} natively"));
    };
    match policy {
        EmulationPolicy::PreferNative(limit) => {
            let waited = Duration::from_millis((now - queued_at).max(0) as u64);
            if waited >= limit {
                Verdict::Emulate(format!(
                    "waited {} for a native {platform} agent (prefer-native={})",
                    format_duration(waited),
                    format_duration(limit)
                ))
            } else {
                Verdict::Wait(format!(
                    "waiting up to {} for a native {platform} agent (prefer-native)",
                    format_duration(limit - waited)
                ))
            }
        }
        _ => {
            let native_finish = wait + est.native;
            let summary = format!(
                "expected finish: emulated {} vs native {} ({} queue + {} build); {}",
                format_duration(est.emulated),
                format_duration(native_finish),
                format_duration(wait),
                format_duration(est.native),
                est.basis
            );
            if est.emulated < native_finish {
                Verdict::Emulate(format!("emulation finishes sooner: {summary}"))
            } else {
                Verdict::Wait(format!("a native agent finishes sooner: {summary}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn history(native_secs: &[i64], emulated_secs: &[i64]) -> Vec<(Platform, BuildMode, i64)> {
        let arm = p("linux/arm64");
        native_secs
            .iter()
            .map(|s| (arm.clone(), BuildMode::Native, s * S))
            .chain(
                emulated_secs
                    .iter()
                    .map(|s| (arm.clone(), BuildMode::Emulated, s * S)),
            )
            .collect()
    }

    /// One native agent, capacity 1, busy with a build that started `busy_for` seconds before `now`.
    fn busy_native(now: i64, busy_for: i64) -> Vec<NativeAgent> {
        vec![NativeAgent {
            capacity: 1,
            running_since: vec![now - busy_for * S],
        }]
    }

    #[test]
    fn no_history_assumes_emulation_ten_times_slower() {
        let e = estimates(&[], &p("linux/arm64"));
        assert_eq!((e.native.as_secs(), e.emulated.as_secs()), (60, 600));
        let e = estimates(&history(&[30, 40, 50], &[]), &p("linux/arm64"));
        assert_eq!((e.native.as_secs(), e.emulated.as_secs()), (40, 400));
        let e = estimates(&history(&[], &[200]), &p("linux/arm64"));
        assert_eq!((e.native.as_secs(), e.emulated.as_secs()), (20, 200));
        // Another platform's history says nothing about this one.
        assert_eq!(
            estimates(&history(&[1], &[2]), &p("linux/s390x"))
                .native
                .as_secs(),
            60
        );
    }

    #[test]
    fn busy_native_and_history_says_emulation_is_sooner_emulates() {
        // Native builds take 300 s, emulated 400 s; the only native agent started one 10 s ago and
        // two more wait ahead: native would finish after 290 + 600 + 300 s, emulation after 400 s.
        let now = 1_000_000 * S;
        let est = estimates(&history(&[300, 300, 300], &[400, 420]), &p("linux/arm64"));
        let v = decide(
            now,
            &p("linux/arm64"),
            EmulationPolicy::Fallback,
            now,
            &busy_native(now, 10),
            2,
            est,
        );
        match v {
            Verdict::Emulate(why) => assert!(why.contains("emulation finishes sooner"), "{why}"),
            other => panic!("expected emulation, got {other:?}"),
        }
    }

    #[test]
    fn busy_native_finishing_soon_waits_for_native() {
        // The native build is nearly done (290 s of 300 s): native finishes in 10 + 300 s, emulation
        // would take 3000 s.
        let now = 1_000_000 * S;
        let est = estimates(&history(&[300], &[3000]), &p("linux/arm64"));
        let v = decide(
            now,
            &p("linux/arm64"),
            EmulationPolicy::Fallback,
            now,
            &busy_native(now, 290),
            0,
            est,
        );
        match v {
            Verdict::Wait(why) => {
                assert!(why.contains("native agent finishes sooner"), "{why}");
                assert!(why.contains("emulated 50m vs native 5m10s"), "{why}");
            }
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[test]
    fn prefer_native_waits_exactly_its_limit_and_never_never_emulates() {
        let now = 1_000_000 * S;
        let est = estimates(&[], &p("linux/arm64"));
        let agents = busy_native(now, 1);
        let policy = EmulationPolicy::PreferNative(Duration::from_secs(120));
        let v = decide(
            now,
            &p("linux/arm64"),
            policy,
            now - 119 * S,
            &agents,
            0,
            est,
        );
        assert!(
            matches!(v, Verdict::Wait(ref w) if w.contains("waiting up to 1s")),
            "{v:?}"
        );
        let v = decide(
            now,
            &p("linux/arm64"),
            policy,
            now - 120 * S,
            &agents,
            0,
            est,
        );
        assert!(
            matches!(v, Verdict::Emulate(ref w) if w.contains("waited 2m")),
            "{v:?}"
        );
        let v = decide(
            now,
            &p("linux/arm64"),
            EmulationPolicy::Never,
            0,
            &[],
            0,
            est,
        );
        assert!(matches!(v, Verdict::Wait(_)));
        let v = decide(
            now,
            &p("linux/arm64"),
            EmulationPolicy::Fallback,
            now,
            &[],
            0,
            est,
        );
        assert_eq!(
            v,
            Verdict::Emulate("no online agent builds linux/arm64 natively".into())
        );
    }

    #[test]
    fn queue_ahead_spreads_over_slots() {
        let now = 0;
        let agents = vec![
            NativeAgent {
                capacity: 2,
                running_since: vec![],
            },
            NativeAgent {
                capacity: 1,
                running_since: vec![-30 * S],
            },
        ];
        let native = Duration::from_secs(60);
        assert_eq!(native_wait(now, &agents, native, 0), Some(Duration::ZERO));
        assert_eq!(native_wait(now, &agents, native, 1), Some(Duration::ZERO));
        assert_eq!(
            native_wait(now, &agents, native, 2),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            native_wait(now, &agents, native, 3),
            Some(Duration::from_secs(60))
        );
        assert_eq!(native_wait(now, &[], native, 0), None);
    }
}
