//! Why a queued build is still waiting, in words for the job JSON. Pure logic.

use std::collections::HashMap;

use archfarm_protocol::api::EmulationPolicy;
use archfarm_protocol::{network, Network, Platform};
use uuid::Uuid;

use crate::store::AgentRow;

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
            draining: false,
            drain_requested: false,
            unavailable: None,
            storage_driver: None,
            storage: None,
            revoked: false,
            networks: Default::default(),
        }
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
