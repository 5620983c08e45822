//! Which of the builds an agent may take it is given, and the words that say why. Pure logic.
//!
//! Two rules order the builds an agent may take (those the native and emulation rules already
//! allow it):
//! - **Warm cache.** A build whose repository and platform another online agent built last, within
//!   [`WARM_WINDOW`], is held for that agent until it has waited the bound
//!   (`--warm-agent-wait-secs`), provided that agent could take it in the same mode or a better one
//!   (a warm emulating agent never holds a build back from a native one).
//! - **Scarcity.** Of the rest, the agent gets the one the fewest other online agents could take
//!   (natively, or emulated where the job allows it, with the job's network; capacity aside), the
//!   oldest first among equals: an agent that alone can build a platform does not spend itself on
//!   one that others could build.

use std::collections::HashMap;
use std::time::Duration;

use archfarm_protocol::api::{BuildMode, EmulationPolicy};
use archfarm_protocol::duration::format_duration;
use archfarm_protocol::{Network, Platform};
use uuid::Uuid;

use crate::store::{AgentRow, QueuedBuild, WarmAgent};

/// How long after a successful build its agent counts as warm for that repository and platform.
/// A day spans a team's working day of CI runs; a cache older than that is as likely to have been
/// pruned for space, or to hold layers of a base image that has moved on, as to help.
pub const WARM_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A build the polling agent may take now, in the mode the native and emulation rules allow.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The build.
    pub build: QueuedBuild,
    /// How the polling agent would build it.
    pub mode: BuildMode,
    /// Why emulation is allowed (the emulation estimate's verdict); `None` for native.
    pub emulated_because: Option<String>,
}

/// A build's warm agent as the polling agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warmth {
    /// No warm agent counts: none, too old, offline, or unable to take it in this mode.
    Cold,
    /// The polling agent built it last, at this time (Unix ms).
    Mine {
        /// When it built it.
        built_at: i64,
    },
    /// Held for the warm agent, named here, until `until` (Unix ms).
    Held {
        /// The warm agent.
        agent: String,
        /// When the hold ends.
        until: i64,
    },
    /// The warm agent, named here, did not take it within the bound.
    Released {
        /// The warm agent.
        agent: String,
    },
}

/// The warm agents of the read, by repository and platform.
pub type WarmMap = HashMap<(String, Platform), WarmAgent>;

/// Indexes warm agents by `(registry/repository, platform)`.
pub fn warm_map(warm: Vec<WarmAgent>) -> WarmMap {
    warm.into_iter()
        .map(|w| ((w.repository.clone(), w.platform.clone()), w))
        .collect()
}

/// Whether `agent` could take a build of `platform` at all, capacity aside.
pub fn could_take(
    agent: &AgentRow,
    platform: &Platform,
    emulation: EmulationPolicy,
    network: Option<Network>,
) -> bool {
    !agent.draining
        && agent.networks.allows(network)
        && (agent.native.contains(platform)
            || (emulation != EmulationPolicy::Never && agent.emulated.contains(platform)))
}

/// Whether a warm agent `warm` could take the build in `mode` or better: natively when `mode`
/// is native (a warm emulator never holds a build back from a native agent), either way when it
/// is emulated.
pub fn warm_counts(
    warm: &AgentRow,
    mode: BuildMode,
    platform: &Platform,
    emulation: EmulationPolicy,
    network: Option<Network>,
) -> bool {
    match mode {
        BuildMode::Native => {
            !warm.draining && warm.networks.allows(network) && warm.native.contains(platform)
        }
        BuildMode::Emulated => could_take(warm, platform, emulation, network),
    }
}

/// The warm side of `build` for `agent`, which would take it in `mode`, at `now` with the bound
/// `wait` (zero: warm agents are not waited for).
pub fn warmth(
    agent: &AgentRow,
    mode: BuildMode,
    build: &QueuedBuild,
    warm: Option<&WarmAgent>,
    now: i64,
    wait: Duration,
) -> Warmth {
    let Some(w) = warm.filter(|_| !wait.is_zero()) else {
        return Warmth::Cold;
    };
    if w.agent.id == agent.id {
        return Warmth::Mine {
            built_at: w.built_at,
        };
    }
    if !warm_counts(
        &w.agent,
        mode,
        &build.platform,
        build.emulation,
        build.network,
    ) {
        return Warmth::Cold;
    }
    let until = build.queued_at + wait.as_millis() as i64;
    if now < until {
        Warmth::Held {
            agent: w.agent.name.clone(),
            until,
        }
    } else {
        Warmth::Released {
            agent: w.agent.name.clone(),
        }
    }
}

/// Whether scarcity could tell these builds apart: only when they differ in what decides who
/// could take them. When they do not, the fleet need not be read.
pub fn scarcity_matters(candidates: &[(Candidate, Warmth)]) -> bool {
    let key = |c: &Candidate| {
        (
            c.build.platform.clone(),
            c.build.network,
            c.build.emulation == EmulationPolicy::Never,
        )
    };
    candidates
        .windows(2)
        .any(|pair| key(&pair[0].0) != key(&pair[1].0))
}

/// How many online agents other than `me` could take `build`.
pub fn others(me: Uuid, build: &QueuedBuild, online: &[AgentRow]) -> usize {
    online
        .iter()
        .filter(|a| a.id != me)
        .filter(|a| could_take(a, &build.platform, build.emulation, build.network))
        .count()
}

/// One build the agent will try to claim, in order, with the decision recorded if it does.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The build and its mode.
    pub candidate: Candidate,
    /// Why it goes to this agent.
    pub decision: String,
}

/// Orders `open` (in queue order; held builds left out) for `agent`: fewest other online agents
/// first (`online`: `None` when scarcity does not matter, see [`scarcity_matters`]), then queue
/// order; each with its decision.
pub fn rank(
    agent: &AgentRow,
    open: Vec<(Candidate, Warmth)>,
    online: Option<&[AgentRow]>,
    now: i64,
    wait: Duration,
) -> Vec<Choice> {
    let counts: Vec<Option<usize>> = open
        .iter()
        .map(|(c, _)| online.map(|o| others(agent.id, &c.build, o)))
        .collect();
    let mut order: Vec<usize> = (0..open.len()).collect();
    // Stable: equal counts stay in queue order.
    order.sort_by_key(|&i| counts[i].unwrap_or(0));
    let first = order.iter().copied().min();
    order
        .into_iter()
        .map(|i| {
            let (candidate, warmth) = &open[i];
            // Scarcity is named only when it chose this build over an older one.
            let passed_over = first
                .filter(|&f| counts[i] < counts[f])
                .map(|f| (&open[f].0.build.platform, counts[f].unwrap_or(0)));
            Choice {
                decision: decision(
                    &agent.name,
                    candidate,
                    warmth,
                    counts[i].filter(|_| passed_over.is_some()),
                    passed_over,
                    now,
                    wait,
                ),
                candidate: candidate.clone(),
            }
        })
        .collect()
}

/// `n` agent(s).
fn agents(n: usize) -> String {
    format!("{n} other agent{}", if n == 1 { "" } else { "s" })
}

/// The recorded decision: `MODE on AGENT: reasons`. `others` is set when scarcity chose this
/// build over the older `passed_over` (its platform and how many others could take it).
fn decision(
    agent: &str,
    c: &Candidate,
    warmth: &Warmth,
    others: Option<usize>,
    passed_over: Option<(&Platform, usize)>,
    now: i64,
    wait: Duration,
) -> String {
    let platform = &c.build.platform;
    let mut why: Vec<String> = Vec::new();
    match warmth {
        Warmth::Mine { built_at } => why.push(format!(
            "warm cache (built {} for {platform} {} ago)",
            c.build.repository,
            format_duration(Duration::from_millis((now - built_at).max(0) as u64))
        )),
        Warmth::Released { agent: warm } => why.push(format!(
            "warm agent {warm} did not take it within {}",
            format_duration(wait)
        )),
        Warmth::Cold | Warmth::Held { .. } => {}
    }
    if let (Some(n), Some((older, left_for))) = (others, passed_over) {
        why.push(if n == 0 {
            format!("only agent that can build {platform}")
        } else {
            format!("{} can build {platform}", agents(n))
        });
        why.push(format!("{older} left for {}", agents(left_for)));
    }
    // When no other agent could take it, nothing native could either: the emulation verdict
    // would only repeat that.
    if let Some(because) = &c.emulated_because {
        if others != Some(0) {
            why.push(because.clone());
        }
    }
    if why.is_empty() {
        why.push(format!("builds {platform} natively"));
    }
    format!("{} on {agent}: {}", c.mode, why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const WAIT: Duration = Duration::from_secs(30);

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn agent(name: &str, native: &[&str], emulated: &[&str]) -> AgentRow {
        AgentRow::for_test(name, native, emulated)
    }

    fn build(platform: &str, queued_at: i64) -> QueuedBuild {
        QueuedBuild {
            id: Uuid::new_v4(),
            job_id: Uuid::new_v4(),
            platform: p(platform),
            emulation: EmulationPolicy::Fallback,
            repository: "127.0.0.1:5000/team/app".into(),
            queued_at,
            attempts: 0,
            optional: false,
            network: None,
        }
    }

    fn candidate(b: QueuedBuild, mode: BuildMode) -> Candidate {
        let emulated_because = (mode == BuildMode::Emulated)
            .then(|| format!("no online agent builds {} natively", b.platform));
        Candidate {
            build: b,
            mode,
            emulated_because,
        }
    }

    fn warm(by: &AgentRow, platform: &str, built_at: i64) -> WarmAgent {
        WarmAgent {
            repository: "127.0.0.1:5000/team/app".into(),
            platform: p(platform),
            agent: by.clone(),
            built_at,
        }
    }

    #[test]
    fn the_emulating_agent_takes_what_only_it_can_build() {
        // The case: a native-only amd64 agent and one that is native amd64 and emulates
        // arm64; one job for both platforms, amd64 first in the queue.
        let amd = agent("amd64-a", &["linux/amd64"], &[]);
        let emu = agent("emu-1", &["linux/amd64"], &["linux/arm64"]);
        let online = [amd.clone(), emu.clone()];
        let open = vec![
            (
                candidate(build("linux/amd64", 0), BuildMode::Native),
                Warmth::Cold,
            ),
            (
                candidate(build("linux/arm64", 0), BuildMode::Emulated),
                Warmth::Cold,
            ),
        ];
        assert!(scarcity_matters(&open));
        let ranked = rank(&emu, open.clone(), Some(&online), 0, WAIT);
        assert_eq!(ranked[0].candidate.build.platform, p("linux/arm64"));
        assert_eq!(
            ranked[0].decision,
            "emulated on emu-1: only agent that can build linux/arm64; linux/amd64 left for 1 other agent"
        );
        // Should arm64 be taken meanwhile, amd64 is still this agent's to take, plainly.
        assert_eq!(
            ranked[1].decision,
            "native on emu-1: builds linux/amd64 natively"
        );
        // The native-only agent never sees arm64: it gets amd64 without a word about scarcity.
        let ranked = rank(&amd, open[..1].to_vec(), None, 0, WAIT);
        assert_eq!(
            ranked[0].decision,
            "native on amd64-a: builds linux/amd64 natively"
        );
    }

    #[test]
    fn equal_scarcity_keeps_queue_order_and_capacity_does_not_count() {
        let a = agent("a", &["linux/amd64", "linux/arm64"], &[]);
        let mut busy = agent("busy", &["linux/amd64"], &[]);
        busy.capacity = 0;
        let other = agent("other", &["linux/arm64"], &[]);
        let online = [a.clone(), busy, other];
        let open = vec![
            (
                candidate(build("linux/amd64", 0), BuildMode::Native),
                Warmth::Cold,
            ),
            (
                candidate(build("linux/arm64", 1), BuildMode::Native),
                Warmth::Cold,
            ),
        ];
        let ranked = rank(&a, open, Some(&online), 0, WAIT);
        assert_eq!(ranked[0].candidate.build.platform, p("linux/amd64"));
        assert_eq!(
            ranked[0].decision,
            "native on a: builds linux/amd64 natively"
        );
    }

    #[test]
    fn who_could_take_a_build_follows_policy_network_and_draining() {
        let me = agent("me", &["linux/arm64"], &[]);
        let emu = agent("emu", &["linux/amd64"], &["linux/arm64"]);
        let mut draining = agent("draining", &["linux/arm64"], &[]);
        draining.draining = true;
        let mut sealed = agent("sealed", &["linux/arm64"], &[]);
        sealed.networks.allowed = vec![Network::None];
        let online = [me.clone(), emu, draining, sealed];
        let mut b = build("linux/arm64", 0);
        assert_eq!(
            others(me.id, &b, &online),
            2,
            "emu emulating, sealed; not draining"
        );
        b.network = Some(Network::None);
        assert_eq!(others(me.id, &b, &online), 1, "only sealed allows none");
        b.network = None;
        b.emulation = EmulationPolicy::Never;
        assert_eq!(others(me.id, &b, &online), 1, "not emu under 'never'");
        // Same platform, network and policy class: nothing to tell apart, no fleet read.
        let same = vec![
            (
                candidate(build("linux/arm64", 0), BuildMode::Native),
                Warmth::Cold,
            ),
            (
                candidate(build("linux/arm64", 1), BuildMode::Native),
                Warmth::Cold,
            ),
        ];
        assert!(!scarcity_matters(&same));
    }

    #[test]
    fn a_build_is_held_for_its_warm_agent_until_the_bound() {
        let warm_a = agent("amd64-a", &["linux/amd64"], &[]);
        let cold_b = agent("amd64-b", &["linux/amd64"], &[]);
        let now = 1_000_000 * S;
        let w = warm(&warm_a, "linux/amd64", now - 240 * S);
        let b = build("linux/amd64", now - 10 * S);
        assert_eq!(
            warmth(&cold_b, BuildMode::Native, &b, Some(&w), now, WAIT),
            Warmth::Held {
                agent: "amd64-a".into(),
                until: now + 20 * S
            }
        );
        let mine = warmth(&warm_a, BuildMode::Native, &b, Some(&w), now, WAIT);
        assert_eq!(
            mine,
            Warmth::Mine {
                built_at: now - 240 * S
            }
        );
        let ranked = rank(
            &warm_a,
            vec![(candidate(b.clone(), BuildMode::Native), mine)],
            None,
            now,
            WAIT,
        );
        assert_eq!(
            ranked[0].decision,
            "native on amd64-a: warm cache (built 127.0.0.1:5000/team/app for linux/amd64 4m ago)"
        );
        // At the bound, the cold agent takes it and says why.
        let late = warmth(&cold_b, BuildMode::Native, &b, Some(&w), now + 20 * S, WAIT);
        assert_eq!(
            late,
            Warmth::Released {
                agent: "amd64-a".into()
            }
        );
        let ranked = rank(
            &cold_b,
            vec![(candidate(b.clone(), BuildMode::Native), late)],
            None,
            now + 20 * S,
            WAIT,
        );
        assert_eq!(
            ranked[0].decision,
            "native on amd64-b: warm agent amd64-a did not take it within 30s"
        );
        // A bound of zero turns the preference off.
        assert_eq!(
            warmth(
                &cold_b,
                BuildMode::Native,
                &b,
                Some(&w),
                now,
                Duration::ZERO
            ),
            Warmth::Cold
        );
    }

    #[test]
    fn a_warm_emulator_never_holds_a_build_back_from_a_native_agent() {
        let emu = agent("emu-1", &["linux/amd64"], &["linux/arm64"]);
        let pi = agent("pi", &["linux/arm64"], &[]);
        let other_emu = agent("emu-2", &["linux/amd64"], &["linux/arm64"]);
        let now = 1_000_000 * S;
        let w = warm(&emu, "linux/arm64", now - 60 * S);
        let b = build("linux/arm64", now);
        assert_eq!(
            warmth(&pi, BuildMode::Native, &b, Some(&w), now, WAIT),
            Warmth::Cold
        );
        // Another emulating agent does wait for it.
        assert!(matches!(
            warmth(&other_emu, BuildMode::Emulated, &b, Some(&w), now, WAIT),
            Warmth::Held { .. }
        ));
        // A warm agent that may not give the job its network holds nothing.
        let mut sealed_job = b.clone();
        sealed_job.network = Some(Network::None);
        assert_eq!(
            warmth(
                &other_emu,
                BuildMode::Emulated,
                &sealed_job,
                Some(&w),
                now,
                WAIT
            ),
            Warmth::Cold
        );
    }
}
