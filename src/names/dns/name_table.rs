//! The trusted names the responder answers: each peer's agent address,
//! and its IPv4 address where IPv4 reaches it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::peer_fqdn;
use crate::core::address::{NetworkId, NodePrefix};
use crate::core::identity::AgentId;
use crate::core::trust::store::{TrustState, TrustStore};

/// The addresses of one trusted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NameAddresses {
    /// Its agent address (always).
    pub(super) address: Ipv6Addr,
    /// Its IPv4 address, when IPv4 to it is routed here.
    pub(super) address4: Option<Ipv4Addr>,
}

/// Trusted names and their agent addresses (names are lowercase DNS labels,
/// as the trust store requires): the IPv6 agent address of each, and its
/// IPv4 address where IPv4 reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    names: BTreeMap<String, NameAddresses>,
}

impl NameTable {
    /// The names of the trusted peers of `store` in `network`, IPv6 only.
    /// Requested-only entries are not peers yet and get no name.
    pub fn from_trust(store: &TrustStore, network: NetworkId) -> Self {
        Self::from_trust_with_ipv4(store, network, |_| None)
    }

    /// Like [`NameTable::from_trust`], and each name also gets the IPv4
    /// address `routed_ipv4` gives its agent: the node's routed address
    /// (`None` when IPv4 is off or the address is another agent's).
    pub fn from_trust_with_ipv4(
        store: &TrustStore,
        network: NetworkId,
        routed_ipv4: impl Fn(&AgentId) -> Option<Ipv4Addr>,
    ) -> Self {
        let names = store
            .peers
            .iter()
            .filter(|entry| entry.state == TrustState::Trusted)
            .map(|entry| {
                let addresses = NameAddresses {
                    address: NodePrefix::of_agent(network, &entry.id).agent_address(),
                    address4: routed_ipv4(&entry.id),
                };
                (entry.name.to_ascii_lowercase(), addresses)
            })
            .collect();
        Self { names }
    }

    /// The agent address of a name (one label, any case).
    pub fn lookup(&self, label: &str) -> Option<Ipv6Addr> {
        self.get(label).map(|addresses| addresses.address)
    }

    /// The IPv4 address of a name (one label, any case), if IPv4 reaches it.
    pub fn lookup4(&self, label: &str) -> Option<Ipv4Addr> {
        self.get(label).and_then(|addresses| addresses.address4)
    }

    /// Both addresses of a name (one label, any case).
    pub(super) fn get(&self, label: &str) -> Option<&NameAddresses> {
        self.names.get(&label.to_ascii_lowercase())
    }

    /// `(agent address, fully qualified name)` pairs in name order.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv6Addr, String)> + '_ {
        self.names
            .iter()
            .map(|(name, addresses)| (addresses.address, peer_fqdn(name)))
    }

    /// `(IPv4 address, fully qualified name)` pairs in name order, for the
    /// names IPv4 reaches.
    pub fn entries4(&self) -> impl Iterator<Item = (Ipv4Addr, String)> + '_ {
        self.names.iter().filter_map(|(name, addresses)| {
            addresses
                .address4
                .map(|address4| (address4, peer_fqdn(name)))
        })
    }

    /// Every `(address, fully qualified name)` pair in name order, the
    /// IPv6 address of a name before its IPv4 one: the lines of a hosts
    /// file.
    pub fn host_entries(&self) -> impl Iterator<Item = (IpAddr, String)> + '_ {
        self.names.iter().flat_map(|(name, addresses)| {
            let fqdn = peer_fqdn(name);
            std::iter::once((IpAddr::V6(addresses.address), fqdn.clone())).chain(
                addresses
                    .address4
                    .map(|address4| (IpAddr::V4(address4), fqdn)),
            )
        })
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
