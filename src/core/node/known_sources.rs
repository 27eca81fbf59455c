//! Where a cookie reply may go: the underlay addresses and node IDs that
//! belong to trusted peers (issue #17, item 5).
//!
//! Under load a responder answers an initiation without a valid mac2 with a
//! cookie reply. Any reply to a stranger would confirm that this address
//! (or this rendezvous) holds the agent, so a reply goes back only to
//! where a trusted peer already is: a relayed initiation whose envelope
//! names a trusted peer's node (the reply goes through the relay to that
//! node), or a direct one from a trusted peer's known endpoint or announced
//! candidate. A spoofer of such an address makes the node answer the
//! trusted peer, never itself.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::address::NodeId;
use crate::core::noise::cookie::HandshakeSource;
use crate::core::peer::table::PeerTable;

/// How long the sets built from the peers are used before they are built
/// again (endpoints roam, candidates change); peers added or removed
/// rebuild them at once.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Trusted peers' addresses and node IDs, built from the peer table when
/// asked (only under load) and at most once per [`REFRESH_INTERVAL`]:
/// O(1) per initiation, bounded by the trusted peers' count.
#[derive(Debug, Default)]
pub struct KnownSources {
    nodes: HashSet<NodeId>,
    addresses: HashSet<SocketAddr>,
    built_at: Option<Instant>,
}

/// The same socket address whether it came as IPv4 or IPv4-mapped IPv6.
fn canonical(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), address.port()),
            None => address,
        },
        IpAddr::V4(_) => address,
    }
}

impl KnownSources {
    /// Forgets the sets (a peer was added, changed or removed).
    pub fn invalidate(&mut self) {
        self.built_at = None;
    }

    /// Whether a cookie reply to `source` would go to a trusted peer.
    pub fn admits(&mut self, now: Instant, source: &HandshakeSource, peers: &PeerTable) -> bool {
        if self
            .built_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH_INTERVAL)
        {
            self.rebuild(peers);
            self.built_at = Some(now);
        }
        match source {
            HandshakeSource::Direct(address) => self.addresses.contains(&canonical(*address)),
            HandshakeSource::Relayed { node, .. } => self.nodes.contains(node),
        }
    }

    fn rebuild(&mut self, peers: &PeerTable) {
        self.nodes.clear();
        self.addresses.clear();
        // Rendezvous servers never initiate to an agent: not a source.
        for peer in peers.iter().filter(|peer| !peer.is_rendezvous()) {
            self.nodes.insert(peer.node_id());
            let addresses = peer
                .endpoint()
                .into_iter()
                .chain(peer.config().endpoint)
                .chain(peer.remote_candidates().iter().copied());
            self.addresses.extend(addresses.map(canonical));
        }
    }
}
