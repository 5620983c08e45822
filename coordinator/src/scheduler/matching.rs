//! Why a queued build is still waiting, in words for the job JSON. Pure logic.

use std::collections::HashMap;

use archfarm_protocol::api::EmulationPolicy;
use archfarm_protocol::Platform;
use uuid::Uuid;

use crate::store::AgentRow;

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
            draining: false,
            revoked: false,
        }
    }

    #[test]
    fn never_says_so() {
        let emu = agent("emu", &["linux/amd64"], &["linux/s390x"]);
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
