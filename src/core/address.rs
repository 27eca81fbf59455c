//! The address plan (DESIGN.md §1): RFC 4193 unique local addresses derived
//! from the network name and each agent's key, so nothing is allocated and
//! anyone who knows a key can verify an address.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use blake2::{Blake2s256, Digest};

use crate::core::identity::AgentId;

/// Domain-separation label of the network global ID.
const NETWORK_LABEL: &[u8] = b"agentnet network v1";
/// Domain-separation label of the node ID.
const NODE_LABEL: &[u8] = b"agentnet node v1";
/// Domain-separation label of the IPv4 address.
const IPV4_LABEL: &[u8] = b"agentnet ipv4 v1";
/// The IPv4 overlay block (RFC 6598 shared address space), routed into the
/// TUN next to the IPv6 network.
pub const IPV4_NETWORK: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Prefix length of the IPv4 overlay block.
pub const IPV4_PREFIX_LEN: u8 = 10;
/// Name of the network when none is given.
pub const DEFAULT_NETWORK_NAME: &str = "agentnet";
/// Prefix length of the whole network, routed into the TUN.
pub const NETWORK_PREFIX_LEN: u8 = 48;
/// Prefix length of one node's block.
pub const NODE_PREFIX_LEN: u8 = 112;
/// Interface ID of the agent itself within its node prefix.
pub const AGENT_INTERFACE_ID: u16 = 0x0001;

/// The 40-bit global ID of an overlay network.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkId([u8; 5]);

impl NetworkId {
    /// Derives the global ID of the network with this name.
    pub fn from_name(name: &str) -> Self {
        let digest = Blake2s256::new()
            .chain_update(NETWORK_LABEL)
            .chain_update(name.as_bytes())
            .finalize();
        let mut id = [0u8; 5];
        id.copy_from_slice(&digest[..5]);
        Self(id)
    }

    /// The raw 5 bytes.
    pub fn as_bytes(&self) -> &[u8; 5] {
        &self.0
    }

    /// The network's `/48` prefix: `fd` ‖ global ID, then zeros.
    pub fn prefix(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..6].copy_from_slice(&self.0);
        Ipv6Addr::from(octets)
    }

    /// Whether an address lies inside this network's `/48`.
    pub fn contains(&self, address: &Ipv6Addr) -> bool {
        let octets = address.octets();
        octets[0] == 0xfd && octets[1..6] == self.0
    }
}

impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkId({}/{NETWORK_PREFIX_LEN})", self.prefix())
    }
}

/// The 64-bit node ID derived from an agent's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NodeId(pub [u8; 8]);

impl NodeId {
    /// Derives the node ID of an agent.
    pub fn of(agent: &AgentId) -> Self {
        let digest = Blake2s256::new()
            .chain_update(NODE_LABEL)
            .chain_update(agent.as_bytes())
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// One node's `/112`: network prefix ‖ node ID. Its `::1` is the agent; the
/// rest belongs to containers routed through the node.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodePrefix([u8; 14]);

impl NodePrefix {
    /// The node prefix of an agent in a network.
    pub fn new(network: NetworkId, node: NodeId) -> Self {
        let mut bytes = [0u8; 14];
        bytes[0] = 0xfd;
        bytes[1..6].copy_from_slice(network.as_bytes());
        bytes[6..14].copy_from_slice(&node.0);
        Self(bytes)
    }

    /// The node prefix of an agent, from its key.
    pub fn of_agent(network: NetworkId, agent: &AgentId) -> Self {
        Self::new(network, NodeId::of(agent))
    }

    /// The node prefix an address lies in (its first 112 bits).
    pub fn of_address(address: &Ipv6Addr) -> Self {
        let mut bytes = [0u8; 14];
        bytes.copy_from_slice(&address.octets()[..14]);
        Self(bytes)
    }

    /// The node prefix of the 16 raw bytes of an address.
    pub fn of_octets(octets: &[u8; 16]) -> Self {
        let mut bytes = [0u8; 14];
        bytes.copy_from_slice(&octets[..14]);
        Self(bytes)
    }

    /// The address with this interface ID inside the prefix.
    pub fn address(&self, interface_id: u16) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets[..14].copy_from_slice(&self.0);
        octets[14..].copy_from_slice(&interface_id.to_be_bytes());
        Ipv6Addr::from(octets)
    }

    /// The agent's own address (`::1` of the prefix).
    pub fn agent_address(&self) -> Ipv6Addr {
        self.address(AGENT_INTERFACE_ID)
    }

    /// Whether an address lies inside this prefix.
    pub fn contains(&self, address: &Ipv6Addr) -> bool {
        address.octets()[..14] == self.0
    }
}

impl fmt::Display for NodePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{NODE_PREFIX_LEN}", self.address(0))
    }
}

impl fmt::Debug for NodePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePrefix({self})")
    }
}

/// The agent's IPv4 address: 22 bits of BLAKE2s(label ‖ network ID ‖ key)
/// inside `100.64.0.0/10`, the same on every host (DESIGN.md §1). The
/// block's first and last addresses are never given out. 22 bits can
/// collide: the node that trusts both agents decides (`Node`).
pub fn agent_address4(network: NetworkId, agent: &AgentId) -> Ipv4Addr {
    let digest = Blake2s256::new()
        .chain_update(IPV4_LABEL)
        .chain_update(network.as_bytes())
        .chain_update(agent.as_bytes())
        .finalize();
    let host_bits = 32 - u32::from(IPV4_PREFIX_LEN);
    let last = (1u32 << host_bits) - 1;
    let host = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> (32 - host_bits);
    let host = host.clamp(1, last - 1);
    Ipv4Addr::from(u32::from(IPV4_NETWORK) | host)
}

/// Whether an address lies in the IPv4 overlay block.
pub fn in_ipv4_overlay(address: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(IPV4_PREFIX_LEN));
    u32::from(address) & mask == u32::from(IPV4_NETWORK)
}

/// Keys for tests that need particular addresses.
/// The agent's overlay addresses, as the TUN or the userspace stack gets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayAddresses {
    /// The agent address (`::1` of its node prefix).
    pub v6: Ipv6Addr,
    /// The IPv4 address, unless IPv4 is off.
    pub v4: Option<Ipv4Addr>,
}

#[cfg(test)]
pub(crate) mod test_keys {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::{NetworkId, agent_address4};
    use crate::core::identity::Identity;

    /// The key whose secret starts with `seed` (little endian), zeros after.
    pub(crate) fn identity(seed: u32) -> Identity {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&seed.to_le_bytes());
        Identity::from_secret_bytes(&secret).expect("32 bytes")
    }

    /// Three keys, found by search (22 bits: a few thousand tries), whose
    /// last two derive the same IPv4 address in `network` and the first
    /// another one.
    pub(crate) fn colliding_identities(network: NetworkId) -> (Identity, Identity, Identity) {
        let mut seen: HashMap<Ipv4Addr, Identity> = HashMap::new();
        for seed in 1.. {
            let candidate = identity(seed);
            let address = agent_address4(network, &candidate.agent_id());
            if let Some(first) = seen.remove(&address) {
                let other = seen.into_values().next().expect("another key");
                return (other, first, candidate);
            }
            seen.insert(address, candidate);
        }
        unreachable!("the search is unbounded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;

    fn rfc8032_agent() -> AgentId {
        let secret: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(
                    &"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"[i..i + 2],
                    16,
                )
                .expect("hex")
            })
            .collect();
        Identity::from_secret_bytes(&secret)
            .expect("32 bytes")
            .agent_id()
    }

    #[test]
    fn pinned_network_prefix_of_default_network() {
        let network = NetworkId::from_name(DEFAULT_NETWORK_NAME);
        assert_eq!(network.prefix().to_string(), PINNED_DEFAULT_PREFIX);
    }

    #[test]
    fn pinned_agent_address_of_rfc8032_key() {
        let network = NetworkId::from_name(DEFAULT_NETWORK_NAME);
        let prefix = NodePrefix::of_agent(network, &rfc8032_agent());
        assert_eq!(prefix.agent_address().to_string(), PINNED_AGENT_ADDRESS);
        assert_eq!(prefix.to_string(), PINNED_NODE_PREFIX);
    }

    #[test]
    fn different_network_names_give_different_prefixes() {
        let a = NetworkId::from_name("agentnet");
        let b = NetworkId::from_name("lab");
        assert_ne!(a, b);
        let agent = rfc8032_agent();
        assert_ne!(
            NodePrefix::of_agent(a, &agent).agent_address(),
            NodePrefix::of_agent(b, &agent).agent_address()
        );
    }

    #[test]
    fn agent_address_is_unique_local_and_in_its_prefixes() {
        let network = NetworkId::from_name("agentnet");
        let prefix = NodePrefix::of_agent(network, &rfc8032_agent());
        let address = prefix.agent_address();
        assert_eq!(address.octets()[0], 0xfd);
        assert!(network.contains(&address));
        assert!(prefix.contains(&address));
        assert!(prefix.contains(&prefix.address(0xfffe)));
        assert_eq!(NodePrefix::of_address(&address), prefix);
        assert_eq!(address.segments()[7], AGENT_INTERFACE_ID);
    }

    #[test]
    fn pinned_ipv4_addresses_of_rfc8032_key() {
        let agent = rfc8032_agent();
        let default = agent_address4(NetworkId::from_name(DEFAULT_NETWORK_NAME), &agent);
        let lab = agent_address4(NetworkId::from_name("lab"), &agent);
        assert_eq!(default.to_string(), PINNED_AGENT_ADDRESS4);
        assert_eq!(lab.to_string(), PINNED_LAB_ADDRESS4);
    }

    proptest::proptest! {
        #[test]
        fn ipv4_addresses_stay_inside_the_block_and_skip_its_ends(secret in proptest::prelude::any::<[u8; 32]>()) {
            let agent = Identity::from_secret_bytes(&secret).expect("32 bytes").agent_id();
            let address = agent_address4(NetworkId::from_name("agentnet"), &agent);
            proptest::prop_assert!(in_ipv4_overlay(address));
            proptest::prop_assert_ne!(address, IPV4_NETWORK);
            proptest::prop_assert_ne!(address, Ipv4Addr::new(100, 127, 255, 255));
        }
    }

    #[test]
    fn ipv4_block_membership() {
        assert!(in_ipv4_overlay(Ipv4Addr::new(100, 64, 0, 1)));
        assert!(in_ipv4_overlay(Ipv4Addr::new(100, 127, 255, 254)));
        assert!(!in_ipv4_overlay(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(!in_ipv4_overlay(Ipv4Addr::new(100, 63, 255, 255)));
        assert!(!in_ipv4_overlay(Ipv4Addr::new(10, 0, 0, 1)));
    }

    // Computed independently with Python's hashlib.blake2s (the IPv4 ones:
    // blake2s(b"agentnet ipv4 v1" + network_id + key), first 22 bits).
    const PINNED_AGENT_ADDRESS4: &str = "100.123.36.93";
    const PINNED_LAB_ADDRESS4: &str = "100.64.76.4";
    const PINNED_DEFAULT_PREFIX: &str = "fd40:37b1:4f8d::";
    const PINNED_AGENT_ADDRESS: &str = "fd40:37b1:4f8d:7180:a717:5a39:cece:1";
    const PINNED_NODE_PREFIX: &str = "fd40:37b1:4f8d:7180:a717:5a39:cece:0/112";
}
