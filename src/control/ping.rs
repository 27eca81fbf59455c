//! `agentnet ping`: what the daemon answers for one overlay-level path ping,
//! and how a peer is named on the command line (`NAME`, `NAME.agent.internal`,
//! agent ID or overlay address).
//!
//! The ping is a path ping control frame inside the peer's session, sent
//! along the path the peer's traffic takes now; the pong says which way it
//! came back (direct or through a relay).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::address::{NetworkId, NodePrefix};
use crate::core::identity::AgentId;
use crate::core::stats::status::PathKind;
use crate::core::trust::store::{TrustEntry, TrustStore};
use crate::core::wire::path::PathAddr;

/// How long the daemon waits for a pong unless told otherwise.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait a client may ask for.
pub const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// The DNS zone of peer names (`NAME.agent.internal`).
const NAME_ZONE: &str = ".agent.internal";

/// A path as `ping` and `status` show it: its kind and where it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathView {
    /// Direct or relayed.
    pub path: PathKind,
    /// The peer's endpoint (direct) or the relaying rendezvous (relay).
    pub via: SocketAddr,
}

impl From<PathAddr> for PathView {
    fn from(path: PathAddr) -> Self {
        let kind = if path.is_relay() {
            PathKind::Relay
        } else {
            PathKind::Direct
        };
        Self {
            path: kind,
            via: path.underlay(),
        }
    }
}

impl std::fmt::Display for PathView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path {
            PathKind::Direct => write!(f, "direct {}", self.via),
            PathKind::Relay => write!(f, "relay via {}", self.via),
            PathKind::None => write!(f, "no path"),
        }
    }
}

/// The answer to one ping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    /// Round-trip time in milliseconds (measured by the daemon).
    pub rtt_ms: f64,
    /// The way the pong came back.
    pub from: PathView,
}

/// What the daemon says about one ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingOutcome {
    /// The peer's local name.
    pub name: String,
    /// The peer's agent ID.
    pub id: AgentId,
    /// The peer's agent address.
    pub address: Ipv6Addr,
    /// The path the ping went out on.
    pub sent_on: PathView,
    /// The pong, or `None` when none came within the timeout.
    pub reply: Option<PingReply>,
}

/// Finds the trusted peer a command line names: a local name (optionally
/// with `.agent.internal`), an agent ID, an address in its node prefix, or
/// the IPv4 address routed to it (`ipv4_holder` says to whom: two agents
/// may derive the same one, and only one holds it).
pub fn find_peer<'a>(
    trust: &'a TrustStore,
    network: NetworkId,
    text: &str,
    ipv4_holder: impl FnOnce(Ipv4Addr) -> Option<AgentId>,
) -> Option<&'a TrustEntry> {
    let text = text.trim().trim_end_matches('.');
    if let Ok(id) = text.parse::<AgentId>() {
        return trust.get(&id);
    }
    if let Ok(address) = text.trim_matches(['[', ']']).parse::<Ipv6Addr>() {
        return trust
            .peers
            .iter()
            .find(|entry| NodePrefix::of_agent(network, &entry.id).contains(&address));
    }
    if let Ok(address) = text.parse::<Ipv4Addr>() {
        return trust.get(&ipv4_holder(address)?);
    }
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix(NAME_ZONE).unwrap_or(&lower);
    trust.by_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::policy::Policy;
    use crate::core::trust::store::TrustState;

    #[test]
    fn peers_are_found_by_name_id_and_address() {
        let id = Identity::from_secret_bytes(&[5; 32])
            .expect("key")
            .agent_id();
        let network = NetworkId::from_name("agentnet");
        let trust = TrustStore {
            peers: vec![TrustEntry {
                id,
                name: "bob".into(),
                endpoint: None,
                allow: Policy::All,
                state: TrustState::Trusted,
                added_unix: 0,
                expires_unix: None,
            }],
        };
        let address = NodePrefix::of_agent(network, &id).agent_address();
        let address4: Ipv4Addr = "100.64.0.9".parse().expect("address");
        let holder = |asked: Ipv4Addr| (asked == address4).then_some(id);
        for text in [
            "bob".to_string(),
            "Bob.agent.internal.".to_string(),
            id.to_string(),
            address.to_string(),
            NodePrefix::of_agent(network, &id).address(7).to_string(),
            address4.to_string(),
        ] {
            assert_eq!(
                find_peer(&trust, network, &text, holder).map(|e| e.id),
                Some(id),
                "{text}"
            );
        }
        for unknown in ["carol", "fd00::1", "100.64.0.10"] {
            assert!(
                find_peer(&trust, network, unknown, holder).is_none(),
                "{unknown}"
            );
        }
    }

    #[test]
    fn path_views_say_which_way() {
        let direct = PathView::from(PathAddr::Direct("10.0.0.2:7400".parse().expect("addr")));
        assert_eq!(direct.to_string(), "direct 10.0.0.2:7400");
        let relay = PathView::from(PathAddr::Relay("10.0.2.1:7300".parse().expect("addr")));
        assert_eq!(relay.to_string(), "relay via 10.0.2.1:7300");
    }
}
