//! Which networks this agent gives builds: its default (`--network`) and what a job may ask for
//! (`--allow-network`). Pure logic; the lease loop refuses a lease outside it.

use archfarm_protocol::network::join;
use archfarm_protocol::Network;

use crate::backend::isolation::IsolationKind;

/// The agent's network policy, as it registers it with the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// What a build gets when its job names no network.
    pub default: Network,
    /// What a job may ask for; always holds `default`.
    pub allowed: Vec<Network>,
}

impl NetworkPolicy {
    /// The policy from the flags. Without `--allow-network` a job may ask for the default or
    /// for `none`: less network than the agent gives anyway is always safe with OCI isolation.
    /// Chroot isolation shares the host's network whatever buildah is told, so it allows only
    /// `host`.
    pub fn from_flags(
        isolation: IsolationKind,
        default: Network,
        allow: &[Network],
    ) -> Result<Self, String> {
        if isolation == IsolationKind::Chroot {
            if default != Network::Host {
                return Err(format!(
                    "--network {default} needs --isolation oci: chroot isolation always shares \
                     the host's network"
                ));
            }
            if let Some(n) = allow.iter().find(|n| **n != Network::Host) {
                return Err(format!(
                    "--allow-network {n} needs --isolation oci: chroot isolation always shares \
                     the host's network, so it can only allow host"
                ));
            }
            return Ok(NetworkPolicy {
                default,
                allowed: vec![Network::Host],
            });
        }
        let wanted: &[Network] = if allow.is_empty() {
            &[Network::None]
        } else {
            allow
        };
        // The default first: a job naming the network it would get anyway is always welcome.
        let mut allowed = vec![default];
        for n in wanted {
            if !allowed.contains(n) {
                allowed.push(*n);
            }
        }
        Ok(NetworkPolicy { default, allowed })
    }

    /// The network to build a leased job with: its own choice when this agent allows it, the
    /// default when it names none. Anything else is refused with a sentence for the build's
    /// failure: the coordinator should never lease it here, so this is defence in depth.
    pub fn resolve(&self, wanted: Option<Network>) -> Result<Network, String> {
        match wanted {
            None => Ok(self.default),
            Some(n) if self.allowed.contains(&n) => Ok(n),
            Some(n) => Err(format!(
                "this agent does not allow --network {n} (it allows {}); refusing the build",
                join(&self.allowed)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_a_job_may_ask_for_the_agents_network_or_none() {
        let p = NetworkPolicy::from_flags(IsolationKind::Oci, Network::Host, &[]).unwrap();
        assert_eq!(p.allowed, [Network::Host, Network::None]);
        let p = NetworkPolicy::from_flags(IsolationKind::Oci, Network::None, &[]).unwrap();
        assert_eq!(p.allowed, [Network::None]);
        let p = NetworkPolicy::from_flags(IsolationKind::Oci, Network::Private, &[]).unwrap();
        assert_eq!(p.allowed, [Network::Private, Network::None]);
    }

    #[test]
    fn an_allow_list_replaces_none_and_always_keeps_the_default() {
        let p = NetworkPolicy::from_flags(
            IsolationKind::Oci,
            Network::None,
            &[Network::Private, Network::Host],
        )
        .unwrap();
        assert_eq!(p.allowed, [Network::None, Network::Private, Network::Host]);
        let p =
            NetworkPolicy::from_flags(IsolationKind::Oci, Network::Host, &[Network::Host]).unwrap();
        assert_eq!(p.allowed, [Network::Host]);
    }

    #[test]
    fn chroot_allows_only_host() {
        let p = NetworkPolicy::from_flags(IsolationKind::Chroot, Network::Host, &[]).unwrap();
        assert_eq!(p.allowed, [Network::Host]);
        let e = NetworkPolicy::from_flags(IsolationKind::Chroot, Network::None, &[]).unwrap_err();
        assert!(e.contains("--network none needs --isolation oci"), "{e}");
        let e = NetworkPolicy::from_flags(
            IsolationKind::Chroot,
            Network::Host,
            &[Network::Host, Network::None],
        )
        .unwrap_err();
        assert!(
            e.contains("--allow-network none needs --isolation oci"),
            "{e}"
        );
    }

    #[test]
    fn leases_get_their_network_or_the_default_and_others_are_refused() {
        let p = NetworkPolicy::from_flags(IsolationKind::Oci, Network::Host, &[]).unwrap();
        assert_eq!(p.resolve(None), Ok(Network::Host));
        assert_eq!(p.resolve(Some(Network::None)), Ok(Network::None));
        let e = p.resolve(Some(Network::Private)).unwrap_err();
        assert_eq!(
            e,
            "this agent does not allow --network private (it allows host, none); refusing the build"
        );
    }
}
