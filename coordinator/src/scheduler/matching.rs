//! Which queued build an agent should take, and why a build is still waiting. Pure logic.

use std::collections::{HashMap, HashSet};

use archfarm_protocol::api::{BuildMode, EmulationPolicy};
use archfarm_protocol::Platform;
use uuid::Uuid;

use crate::store::{AgentRow, QueuedBuild};

/// The first queued build (oldest job first) this agent may take, with the mode it would run in.
///
/// A native match is always allowed. An emulated match only when the job's policy is `fallback` and
/// no online agent has the platform natively: a native agent that is merely busy will get it soon,
/// and QEMU is 4x to 20x slower.
pub fn pick(
    agent: &AgentRow,
    queued: &[QueuedBuild],
    natively_served: &HashSet<Platform>,
) -> Option<(usize, BuildMode)> {
    queued.iter().enumerate().find_map(|(i, build)| {
        if agent.native.contains(&build.platform) {
            Some((i, BuildMode::Native))
        } else if agent.emulated.contains(&build.platform)
            && build.emulation == EmulationPolicy::Fallback
            && !natively_served.contains(&build.platform)
        {
            Some((i, BuildMode::Emulated))
        } else {
            None
        }
    })
}

/// Platforms some online agent builds natively.
pub fn natively_served(online: &[AgentRow]) -> HashSet<Platform> {
    online
        .iter()
        .flat_map(|a| a.native.iter().cloned())
        .collect()
}

/// A sentence saying why a queued build has not been taken yet.
pub fn waiting_reason(
    platform: &Platform,
    emulation: EmulationPolicy,
    online: &[AgentRow],
    running: &HashMap<Uuid, i64>,
) -> String {
    let native: Vec<&AgentRow> = online
        .iter()
        .filter(|a| a.native.contains(platform))
        .collect();
    let emulating: Vec<&AgentRow> = online
        .iter()
        .filter(|a| a.emulated.contains(platform))
        .collect();
    let names = |agents: &[&AgentRow]| {
        agents
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let busy = |agents: &[&AgentRow]| {
        agents
            .iter()
            .all(|a| running.get(&a.id).copied().unwrap_or(0) >= a.capacity)
    };
    if !native.is_empty() {
        if busy(&native) {
            format!(
                "waiting for a free slot on a native {platform} agent ({})",
                names(&native)
            )
        } else {
            format!(
                "about to be taken by a native {platform} agent ({})",
                names(&native)
            )
        }
    } else if emulating.is_empty() {
        format!("no online agent can build {platform}, natively or emulated; start an agent for it")
    } else if emulation == EmulationPolicy::Never {
        format!(
            "no online agent builds {platform} natively and the job's emulation policy is 'never' \
             (emulating agents: {})",
            names(&emulating)
        )
    } else if busy(&emulating) {
        format!(
            "waiting for a free slot on an emulating agent ({})",
            names(&emulating)
        )
    } else {
        format!(
            "about to be taken by an emulating agent ({})",
            names(&emulating)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn agent(name: &str, native: &[&str], emulated: &[&str]) -> AgentRow {
        AgentRow {
            id: Uuid::new_v4(),
            name: name.into(),
            native: native.iter().map(|s| p(s)).collect(),
            emulated: emulated.iter().map(|s| p(s)).collect(),
            capacity: 1,
            last_seen: 0,
        }
    }

    fn queued(platform: &str, emulation: EmulationPolicy) -> QueuedBuild {
        QueuedBuild {
            id: Uuid::new_v4(),
            job_id: Uuid::new_v4(),
            platform: p(platform),
            emulation,
        }
    }

    #[test]
    fn native_first_emulation_only_as_fallback() {
        let amd = agent("amd", &["linux/amd64"], &[]);
        let arm = agent("arm", &["linux/arm64"], &[]);
        let emu = agent("emu", &["linux/amd64"], &["linux/arm64", "linux/s390x"]);
        let online = vec![amd.clone(), arm.clone(), emu.clone()];
        let served = natively_served(&online);
        let q = vec![
            queued("linux/arm64", EmulationPolicy::Fallback),
            queued("linux/s390x", EmulationPolicy::Fallback),
            queued("linux/amd64", EmulationPolicy::Fallback),
        ];
        // arm64 has a native agent online, so the emulating agent leaves it alone.
        assert_eq!(pick(&emu, &q, &served), Some((1, BuildMode::Emulated)));
        assert_eq!(pick(&arm, &q, &served), Some((0, BuildMode::Native)));
        assert_eq!(pick(&amd, &q, &served), Some((2, BuildMode::Native)));
        // Without the native arm64 agent, emulation takes arm64 too (oldest first).
        let served = natively_served(&[amd, emu.clone()]);
        assert_eq!(pick(&emu, &q, &served), Some((0, BuildMode::Emulated)));
    }

    #[test]
    fn never_means_never() {
        let emu = agent("emu", &["linux/amd64"], &["linux/s390x"]);
        let q = vec![queued("linux/s390x", EmulationPolicy::Never)];
        assert_eq!(
            pick(&emu, &q, &natively_served(std::slice::from_ref(&emu))),
            None
        );
        let why = waiting_reason(
            &p("linux/s390x"),
            EmulationPolicy::Never,
            &[emu],
            &HashMap::new(),
        );
        assert!(why.contains("emulation policy is 'never'"), "{why}");
    }

    #[test]
    fn reasons_name_the_agents() {
        let arm = agent("pi-4", &["linux/arm64"], &[]);
        let mut running = HashMap::new();
        running.insert(arm.id, 1);
        let why = waiting_reason(
            &p("linux/arm64"),
            EmulationPolicy::Fallback,
            std::slice::from_ref(&arm),
            &running,
        );
        assert!(why.contains("free slot") && why.contains("pi-4"), "{why}");
        let why = waiting_reason(
            &p("linux/riscv64"),
            EmulationPolicy::Fallback,
            &[arm],
            &running,
        );
        assert!(
            why.contains("no online agent can build linux/riscv64"),
            "{why}"
        );
    }
}
