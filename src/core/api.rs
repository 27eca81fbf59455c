//! What the core shows its users: the node's configuration, the peers it
//! is given, what it hands back (datagrams, events) and the auto-approval
//! rules. Kept apart from `node` and `peer`, which both use these types, so
//! neither has to import the other's.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::core::address::NetworkId;
use crate::core::identity::{AgentId, Identity};
use crate::core::policy::Policy;
use crate::core::stats::status::PathKind;
use crate::core::trust::request::TrustRequest;
use crate::core::wire::path::PathAddr;
use crate::core::wire::segment::TcpSegmentInfo;

/// How often registrations with rendezvous servers are refreshed: below
/// the 30 s UDP timeout of common NATs.
pub const DEFAULT_REGISTER_INTERVAL: Duration = Duration::from_secs(25);
/// Static configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This agent's secret identity.
    pub identity: Identity,
    /// The overlay network it belongs to.
    pub network: NetworkId,
    /// This agent's own name, sent to peers in handshakes.
    pub name: String,
    /// Inner MTU of the tunnel (largest IP packet carried).
    pub tunnel_mtu: u16,
}

/// A trusted peer as the core needs it.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's agent ID.
    pub id: AgentId,
    /// Local name.
    pub name: String,
    /// Known underlay endpoint, if any.
    pub endpoint: Option<SocketAddr>,
    /// What the peer may open towards this agent.
    pub allow: Policy,
}

/// Whether IPv4 reaches a trusted peer, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Route {
    /// Packets to this IPv4 address go to the peer.
    Routed(Ipv4Addr),
    /// IPv4 is off on this agent.
    Off,
    /// Another agent (this one, or a peer trusted earlier) derives the same
    /// address and keeps it; the peer is reachable over IPv6 only.
    TakenBy(AgentId),
}

/// An IP packet for the TUN, behind the room asked for with
/// `Node::set_tun_headroom`, with what the core read of its TCP segment
/// when it checked it (for the shell's segment merging: the packet is not
/// parsed again).
#[derive(Debug)]
pub struct TunPacket {
    pub buffer: Vec<u8>,
    /// The TCP segment it carries, if one merging may consider.
    pub tcp_segment: Option<TcpSegmentInfo>,
}

/// A datagram to send on the UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The whole UDP payload.
    pub payload: Vec<u8>,
    /// Which local socket sends it: `None` the main one, `Some(n)` probe
    /// socket n (opened on demand by the shell, see [`PathAddr::Probe`]).
    pub source: Option<u16>,
}

/// Something the shell may want to log or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session with the peer was established.
    PeerUp {
        /// The peer.
        id: AgentId,
    },
    /// The peer's session expired or was destroyed.
    PeerDown {
        /// The peer.
        id: AgentId,
    },
    /// A verified trust request arrived and waits in the pending list.
    TrustRequested {
        /// The requester.
        id: AgentId,
        /// Whether the auto-approval rules accept it (the shell approves it
        /// through the same path as an operator would).
        auto_approve: bool,
    },
    /// The peer's traffic moved to another path (direct ↔ relay).
    PathChanged {
        /// The peer.
        id: AgentId,
        /// The new path.
        path: PathKind,
    },
    /// A rendezvous server acknowledged (or lost) our registration.
    RendezvousRegistered {
        /// The server.
        id: AgentId,
        /// Our endpoint as it sees it.
        reflexive: SocketAddr,
    },
    /// The peer's endpoint moved (roaming).
    EndpointChanged {
        /// The peer.
        id: AgentId,
        /// Its new endpoint.
        endpoint: SocketAddr,
    },
    /// The pong of a ping sent by `Node::ping` arrived.
    PingReply {
        /// The peer.
        id: AgentId,
        /// The ping's id, as `Node::ping` returned it.
        ping: u64,
        /// Round-trip time.
        rtt: Duration,
        /// The path the pong came along.
        path: PathAddr,
    },
}

/// Requesters trusted without an operator (orchestrated fleets). Off (empty)
/// by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoApprove {
    /// Agents whose requests are approved as they arrive.
    pub agents: Vec<AgentId>,
    /// Fleet keys whose endorsement of a requester approves it.
    pub fleet_keys: Vec<AgentId>,
}

impl AutoApprove {
    /// What these rules grant a verified request in `network` at `unix_now`
    /// (seconds since the Unix epoch), if they approve it: a listed agent
    /// gets what it asked for; an agent endorsed by a listed fleet key (for
    /// this network, not expired) gets what it asked for within the
    /// endorsement's cap.
    pub fn grant(
        &self,
        request: &TrustRequest,
        network: NetworkId,
        unix_now: u64,
    ) -> Option<Policy> {
        if self.agents.contains(&request.requester) {
            return Some(request.requested.clone());
        }
        let endorsement = request.endorsement.as_ref()?;
        let holds = self.fleet_keys.contains(&endorsement.fleet_key)
            && endorsement
                .check(&request.requester, network, unix_now)
                .is_ok();
        holds.then(|| request.requested.intersection(&endorsement.cap))
    }

    /// Whether these rules approve a verified request (see [`Self::grant`]).
    pub fn approves(&self, request: &TrustRequest, network: NetworkId, unix_now: u64) -> bool {
        self.grant(request, network, unix_now).is_some()
    }
}

/// Where a peer sits in its peer table (`core::peer::table`).
///
/// A slot is reused after its peer is removed, so a slot kept elsewhere may
/// later name another peer: a lookup by session index must (and does) ask
/// the peer whether it holds that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerSlot(u32);

impl PeerSlot {
    /// The slot at `index` of the table's slab.
    pub(crate) fn from_index(index: u32) -> Self {
        Self(index)
    }

    /// Its index in the table's slab.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}
