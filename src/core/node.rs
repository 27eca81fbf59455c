//! The sans-IO agent endpoint: every peer, session and timer of one agent.
//!
//! Call order (the quinn pattern), from one task:
//! 1. feed input with [`Node::handle_datagram`] (from the UDP socket),
//!    [`Node::handle_tun_packet`] (from the TUN) and, when the deadline from
//!    [`Node::poll_timeout`] passes, [`Node::handle_timeout`];
//! 2. then drain [`Node::poll_transmit`] (to the UDP socket),
//!    [`Node::poll_tun_packet`] (to the TUN) and [`Node::poll_event`];
//! 3. sleep until the next [`Node::poll_timeout`] or input.

use std::net::SocketAddr;
use std::time::Instant;

use super::address::NetworkId;
use super::identity::{AgentId, Identity};
use super::policy::Policy;
use super::status::NodeStatus;

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

/// A datagram to send on the UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The whole UDP payload.
    pub payload: Vec<u8>,
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
    /// The peer's endpoint moved (roaming).
    EndpointChanged {
        /// The peer.
        id: AgentId,
        /// Its new endpoint.
        endpoint: SocketAddr,
    },
}

/// One agent: its peers, sessions and timers. See the module docs for the
/// call order.
pub struct Node {
    config: NodeConfig,
}

impl Node {
    /// Creates a node. `rng_seed` must come from the OS's secure RNG; the core
    /// derives every random value (ephemeral keys, session indices, jitter)
    /// from it, which makes simulations reproducible.
    pub fn new(config: NodeConfig, rng_seed: [u8; 32], now: Instant) -> Self {
        let _ = (rng_seed, now);
        Self { config }
    }

    /// This agent's ID.
    pub fn agent_id(&self) -> AgentId {
        self.config.identity.agent_id()
    }

    /// Adds a trusted peer, or updates its name, endpoint and policy.
    pub fn upsert_peer(&mut self, now: Instant, peer: PeerConfig) {
        let _ = (now, peer);
    }

    /// Removes a peer and destroys its sessions and keys at once. Returns
    /// whether it was known.
    pub fn remove_peer(&mut self, id: &AgentId) -> bool {
        let _ = id;
        false
    }

    /// Starts a handshake with a peer now (if none is under way).
    pub fn connect(&mut self, now: Instant, id: &AgentId) {
        let _ = (now, id);
    }

    /// Feeds one UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let _ = (now, from, datagram);
    }

    /// Feeds one IP packet read from the TUN.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) {
        let _ = (now, packet);
    }

    /// Runs every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }

    /// The next IP packet to write to the TUN.
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// A snapshot of the node's state.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let _ = now;
        todo!()
    }
}
