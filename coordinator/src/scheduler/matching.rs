//! Why a queued build is still waiting, in words for the job JSON. Pure logic.

use std::collections::HashMap;
use std::time::Duration;

use archfarm_protocol::api::{BuildMode, EmulationPolicy};
use archfarm_protocol::duration::format_duration;
use archfarm_protocol::{network, Network, Platform};
use uuid::Uuid;

use super::choice::warm_counts;
use crate::store::{AgentRow, WarmAgent};

/// A sentence saying why a queued build has not been taken yet. `network` is what its job asks
/// for (`None`: the agent's default, which every agent allows).
pub fn waiting_reason(
    platform: &Platform,
    emulation: EmulationPolicy,
    network: Option<Network>,
    online: &[AgentRow],
    running: &HashMap<Uuid, i64>,
) -> String {
    let capable = online
        .iter()
        .filter(|a| a.native.contains(platform) || a.emulated.contains(platform));
    let (allowing, refusing): (Vec<&AgentRow>, Vec<&AgentRow>) =
        capable.partition(|a| a.networks.allows(network));
    if let (Some(n), true, false) = (network, allowing.is_empty(), refusing.is_empty()) {
        let what: Vec<String> = refusing
            .iter()
            .map(|a| match a.networks.allowed.as_slice() {
                [] => format!("{} allows only its default", a.name),
                list => format!("{} allows {}", a.name, network::join(list)),
            })
            .collect();
        return format!(
            "no agent for {platform} allows --network {n} ({}); start one with \
             --allow-network {n}, or build with another --network",
            what.join("; ")
        );
    }
    // Agents that may not give the job its network will never take it: leave them out.
    let online: Vec<AgentRow> = online
        .iter()
        .filter(|a| a.networks.allows(network))
        .cloned()
        .collect();
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

/// Why a queued build is held for its warm agent `warm` (see [`super::choice`]), or `None` when
/// it is not held: no warm agent, the bound passed, or a native agent would take it anyway
/// because the warm agent only emulates the platform.
#[allow(clippy::too_many_arguments)]
pub fn held_for_warm_agent(
    platform: &Platform,
    emulation: EmulationPolicy,
    network: Option<Network>,
    queued_at: i64,
    warm: Option<&WarmAgent>,
    online: &[AgentRow],
    now: i64,
    wait: Duration,
) -> Option<String> {
    let w = warm.filter(|_| !wait.is_zero())?;
    let until = queued_at + wait.as_millis() as i64;
    if now >= until {
        return None;
    }
    let held_from_native = warm_counts(&w.agent, BuildMode::Native, platform, emulation, network);
    if !held_from_native {
        if !warm_counts(&w.agent, BuildMode::Emulated, platform, emulation, network) {
            return None;
        }
        // Native agents do not wait for a warm emulating one.
        let native = online.iter().any(|a| {
            a.id != w.agent.id
                && !a.draining
                && a.native.contains(platform)
                && a.networks.allows(network)
        });
        if native {
            return None;
        }
    }
    let ms = |d: i64| Duration::from_millis(d.max(0) as u64);
    Some(format!(
        "held for {}, which built it {} ago (warm cache), for up to {} more; then any agent may take it",
        w.agent.name,
        format_duration(ms(now - w.built_at)),
        format_duration(ms(until - now))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn agent(name: &str, native: &[&str], emulated: &[&str]) -> AgentRow {
        AgentRow::for_test(name, native, emulated)
    }

    #[test]
    fn a_build_held_for_its_warm_agent_says_so_until_the_bound() {
        let warm_a = agent("amd64-a", &["linux/amd64"], &[]);
        let cold_b = agent("amd64-b", &["linux/amd64"], &[]);
        let w = WarmAgent {
            repository: "127.0.0.1:5000/team/app".into(),
            platform: p("linux/amd64"),
            agent: warm_a.clone(),
            built_at: 0,
        };
        let online = [warm_a, cold_b];
        let wait = Duration::from_secs(30);
        let held = |now| {
            held_for_warm_agent(
                &p("linux/amd64"),
                EmulationPolicy::Fallback,
                None,
                60_000,
                Some(&w),
                &online,
                now,
                wait,
            )
        };
        assert_eq!(
            held(70_000).as_deref(),
            Some(
                "held for amd64-a, which built it 1m10s ago (warm cache), for up to 20s more; \
                 then any agent may take it"
            )
        );
        assert_eq!(held(90_000), None, "the bound passed");
        // A warm agent that only emulates the platform holds nothing back from a native one.
        let emu = agent("emu", &["linux/amd64"], &["linux/arm64"]);
        let pi = agent("pi", &["linux/arm64"], &[]);
        let w = WarmAgent {
            platform: p("linux/arm64"),
            agent: emu.clone(),
            ..w.clone()
        };
        let why = |online: &[AgentRow]| {
            held_for_warm_agent(
                &p("linux/arm64"),
                EmulationPolicy::Fallback,
                None,
                0,
                Some(&w),
                online,
                1,
                wait,
            )
        };
        assert_eq!(why(&[emu.clone(), pi]), None);
        assert!(why(&[emu]).is_some_and(|w| w.starts_with("held for emu,")));
    }

    #[test]
    fn never_says_so() {
        let emu = agent("emu", &["linux/amd64"], &["linux/s390x"]);
        let why = waiting_reason(
            &p("linux/s390x"),
            EmulationPolicy::Never,
            None,
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
            None,
            std::slice::from_ref(&arm),
            &running,
        );
        assert!(why.contains("free slot") && why.contains("pi-4"), "{why}");
        let why = waiting_reason(
            &p("linux/riscv64"),
            EmulationPolicy::Fallback,
            None,
            &[arm],
            &running,
        );
        assert!(
            why.contains("no online agent can build linux/riscv64"),
            "{why}"
        );
    }

    #[test]
    fn a_network_no_agent_allows_is_named() {
        let old = agent("old", &["linux/amd64"], &[]);
        let mut sealed = agent("sealed", &["linux/amd64"], &[]);
        sealed.networks.allowed = vec![Network::Host, Network::None];
        let fleet = [old, sealed];
        let why = waiting_reason(
            &p("linux/amd64"),
            EmulationPolicy::Fallback,
            Some(Network::Private),
            &fleet,
            &HashMap::new(),
        );
        assert!(
            why.starts_with("no agent for linux/amd64 allows --network private (")
                && why.contains("old allows only its default")
                && why.contains("sealed allows host, none"),
            "{why}"
        );
        // One that allows it is the one the build waits for; the others are left out.
        let why = waiting_reason(
            &p("linux/amd64"),
            EmulationPolicy::Fallback,
            Some(Network::None),
            &fleet,
            &HashMap::new(),
        );
        assert_eq!(
            why,
            "about to be taken by a native linux/amd64 agent (sealed)"
        );
        // No agent for the platform at all says that, whatever the network.
        let why = waiting_reason(
            &p("linux/s390x"),
            EmulationPolicy::Fallback,
            Some(Network::None),
            &fleet,
            &HashMap::new(),
        );
        assert!(
            why.starts_with("no online agent can build linux/s390x"),
            "{why}"
        );
    }
}
