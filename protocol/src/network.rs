//! The network of a build's `RUN` steps: what an agent allows and what a job may ask for.
//!
//! One home for the names, so the CLI, the coordinator and the agent accept and refuse the same
//! words with the same message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network a build's `RUN` steps can be given (`buildah build --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Network {
    /// The agent host's own network namespace: what package installs need on most hosts, and
    /// everything the host reaches (its loopback services, a cloud's metadata endpoint).
    #[default]
    Host,
    /// A namespace with only a loopback interface: nothing outside the step is reachable, a
    /// cloud's metadata endpoint included.
    None,
    /// A namespace of its own behind a bridge with NAT (buildah's CNI default): the outside world,
    /// but not the host's loopback services; the host's routes (a metadata endpoint) still apply.
    Private,
}

/// Every network, in the order messages list them.
pub const NETWORKS: [Network; 3] = [Network::Host, Network::None, Network::Private];

/// What a job asks for when it names no network: the agent's own default.
pub const DEFAULT_WORD: &str = "default";

impl Network {
    /// The lowercase name used on command lines, in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
            Network::Private => "private",
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            "private" => Ok(Network::Private),
            other => Err(format!(
                "'{other}' is not a build network: accepted are host (the agent host's network), \
                 none (loopback only) and private (a namespace behind NAT)"
            )),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a job asks for: `default` (the agent's own default, `None`) or one network.
pub fn parse_job_network(s: &str) -> Result<Option<Network>, String> {
    if s.trim().eq_ignore_ascii_case(DEFAULT_WORD) {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!(
            "'{}' is not a build network: accepted are default (the agent's own), host (the agent \
             host's network), none (loopback only) and private (a namespace behind NAT)",
            s.trim()
        )
    })
}

/// A comma-separated list of networks (an agent's `--allow-network`), without duplicates.
pub fn parse_list(s: &str) -> Result<Vec<Network>, String> {
    let mut out: Vec<Network> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let n: Network = item.parse()?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err("no network given: name at least one of host, none, private".into());
    }
    Ok(out)
}

/// `host, none`: a list of networks for messages and tables.
pub fn join(networks: &[Network]) -> String {
    networks
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an agent allowing `allowed` may build a job asking for `wanted` (`None`: its default,
/// which every agent allows).
pub fn allows(allowed: &[Network], wanted: Option<Network>) -> bool {
    match wanted {
        None => true,
        Some(n) => allowed.contains(&n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for n in NETWORKS {
            assert_eq!(n.as_str().parse::<Network>(), Ok(n));
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), n);
        }
        assert_eq!(" None ".parse::<Network>(), Ok(Network::None));
        assert_eq!(Network::default(), Network::Host);
        let e = "bridge".parse::<Network>().unwrap_err();
        assert!(e.contains("'bridge'") && e.contains("private"), "{e}");
        let e = serde_json::from_str::<Network>("\"slirp\"").unwrap_err();
        assert!(e.to_string().contains("accepted are host"), "{e}");
    }

    #[test]
    fn a_job_may_ask_for_the_default() {
        assert_eq!(parse_job_network("default"), Ok(None));
        assert_eq!(parse_job_network("Default "), Ok(None));
        assert_eq!(parse_job_network("none"), Ok(Some(Network::None)));
        let e = parse_job_network("bridge").unwrap_err();
        assert!(
            e.contains("'bridge'")
                && e.contains("default")
                && e.contains("host")
                && e.contains("none")
                && e.contains("private"),
            "{e}"
        );
    }

    #[test]
    fn lists_split_dedupe_and_refuse_unknown_names() {
        assert_eq!(
            parse_list("host, none,host"),
            Ok(vec![Network::Host, Network::None])
        );
        assert!(parse_list(" , ").unwrap_err().contains("at least one"));
        assert!(parse_list("host,bridge").unwrap_err().contains("'bridge'"));
        assert_eq!(join(&[Network::Host, Network::None]), "host, none");
    }

    #[test]
    fn the_default_is_always_allowed() {
        assert!(allows(&[], None));
        assert!(!allows(&[], Some(Network::Host)));
        assert!(allows(&[Network::Host, Network::None], Some(Network::None)));
        assert!(!allows(
            &[Network::Host, Network::None],
            Some(Network::Private)
        ));
    }
}
