//! What the core reports about itself and its peers, for `agentnet status`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::core::identity::AgentId;

/// Which way a peer's packets currently travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Straight to the peer's endpoint.
    Direct,
    /// Through a rendezvous relay.
    Relay,
    /// No working path (no session).
    None,
}

/// One peer as the core sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// The peer's agent ID.
    pub id: AgentId,
    /// Local name from the trust store.
    pub name: String,
    /// The peer's agent address.
    pub address: Ipv6Addr,
    /// The peer's IPv4 address when IPv4 to it is routed.
    pub address4: Option<Ipv4Addr>,
    /// The IPv4 address derived from its key (routed or not).
    pub derived_address4: Ipv4Addr,
    /// Who holds that IPv4 address here instead (this agent, or a peer
    /// trusted before it): IPv4 to this peer is off, IPv6 works.
    pub address4_conflict: Option<AgentId>,
    /// The peer's node prefix, `addr/112`.
    pub node_prefix: String,
    /// Current underlay endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Current path.
    pub path: PathKind,
    /// The rendezvous relaying the traffic, when the path is "relay".
    pub relay: Option<SocketAddr>,
    /// Round-trip time of the last answered path ping, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Seconds that data sent to the peer has gone without any answer,
    /// once longer than [`crate::core::peer::SILENT_AFTER`] (a live peer
    /// answers within it): the path and RTT are the last ones it answered
    /// on. `None` while it answers (or nothing was sent).
    pub silent_s: Option<f64>,
    /// Endpoints the peer announced (local and reflexive).
    pub candidates: Vec<SocketAddr>,
    /// Whether a session with the peer is established.
    pub session_established: bool,
    /// The transport cipher of the current session (`AES-256-GCM` or
    /// `ChaCha20-Poly1305`; `None` without one).
    pub cipher: Option<&'static str>,
    /// Seconds since the last completed handshake.
    pub last_handshake_age_s: Option<f64>,
    /// Inner bytes received from the peer (delivered or not).
    pub rx_bytes: u64,
    /// Inner bytes sent to the peer.
    pub tx_bytes: u64,
    /// Inner packets received.
    pub rx_packets: u64,
    /// Inner packets sent.
    pub tx_packets: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Inbound packets dropped by the peer's allow-policy.
    pub dropped_policy: u64,
    /// Packets dropped as replays or duplicates.
    pub dropped_replay: u64,
    /// Packets whose source was outside the peer's node prefix.
    pub dropped_spoofed: u64,
    /// The peer's allow-policy.
    pub allow: String,
    /// RTT, loss, reordering, handshakes, path history (issue 6).
    #[serde(flatten)]
    pub stats: crate::core::stats::PeerStatsReport,
}

/// Counters of traffic dropped before any peer was identified.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DropCounters {
    /// Datagrams too short or of an unknown type.
    pub malformed: u64,
    /// Handshake messages whose mac1 did not verify.
    pub bad_mac1: u64,
    /// Handshakes that failed Noise (wrong key, wrong network, garbage).
    pub handshake_failed: u64,
    /// Valid handshakes from keys that are not trusted.
    pub untrusted: u64,
    /// Replayed handshake initiations (old TAI64N timestamp).
    pub replayed_initiation: u64,
    /// Initiations from a trusted peer arriving faster than allowed.
    pub initiation_flood: u64,
    /// Transport packets for an unknown session index.
    pub unknown_session: u64,
    /// Transport packets that failed authentication.
    pub decrypt_failed: u64,
    /// Packets from the TUN to an address no trusted peer owns.
    pub no_route: u64,
    /// Packets from the TUN over the tunnel MTU (answered with Packet Too Big).
    pub too_big: u64,
    /// Packets from the TUN whose source is not this node's (outside its
    /// node prefix: routed in from a LAN, or spoofed): never sent.
    pub foreign_source: u64,
    /// Trust requests that failed to open or verify (bad seal, signature,
    /// stale timestamp, oversized, from an already trusted agent).
    pub trust_requests_rejected: u64,
    /// Trust requests whose nonce was seen before.
    pub trust_requests_replayed: u64,
    /// Trust requests over the per-source or per-requester rate.
    pub trust_requests_rate_limited: u64,
    /// Direct trust requests refused because the direct share of the
    /// pending list was full (a flood from forged sources; what waited
    /// before stays).
    pub trust_requests_crowded_out: u64,
    /// Initiations under load without a valid mac2: not processed, a cookie
    /// reply went back instead (type 3).
    pub needs_cookie: u64,
    /// Initiations under load with a valid mac2 over their source's rate.
    pub handshake_rate_limited: u64,
    /// Initiations under load without a valid mac2 from a source that got
    /// its share of cookie replies: dropped without a reply.
    pub cookie_rate_limited: u64,
    /// Initiations under load without a valid mac2 whose source is no
    /// trusted peer's address or node: dropped without a reply, so a
    /// stranger never learns that this address holds the agent.
    pub under_load_unknown_source: u64,
    /// Cookie replies that answer no initiation of ours or do not open.
    pub bad_cookie_reply: u64,
}

/// The core's whole state, for display.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// This agent's ID.
    pub id: AgentId,
    /// This agent's overlay address.
    pub address: Ipv6Addr,
    /// This agent's IPv4 overlay address (`None`: IPv4 is off).
    pub address4: Option<Ipv4Addr>,
    /// This agent's node prefix.
    pub node_prefix: String,
    /// Inner MTU of the tunnel.
    pub mtu: u16,
    /// Peers, in trust-store order.
    pub peers: Vec<PeerStatus>,
    /// Registrations with rendezvous servers.
    pub rendezvous: Vec<RendezvousStatus>,
    /// Endpoints announced to peers.
    pub candidates: Vec<SocketAddr>,
    /// What the rendezvous answers say about this agent's NAT.
    pub nat: crate::core::wire::path::NatKind,
    /// Traffic dropped before a peer was identified.
    pub dropped: DropCounters,
}

/// Why an agent holds a link to a rendezvous server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RendezvousRole {
    /// One of the agent's own servers (rendezvous hashing of its node ID):
    /// peers find it there.
    Home,
    /// A server of a peer homed elsewhere, kept while that peer is in use.
    OnDemand,
}

/// This agent's registration with one rendezvous server.
#[derive(Debug, Clone, Serialize)]
pub struct RendezvousStatus {
    /// The server's agent ID.
    pub id: AgentId,
    /// Why this agent holds the link: one of its own servers, or opened for
    /// a peer homed there.
    pub role: RendezvousRole,
    /// Its endpoint.
    pub endpoint: SocketAddr,
    /// Whether the registration holds.
    pub registered: bool,
    /// Our endpoint as the server sees it.
    pub reflexive: Option<SocketAddr>,
    /// Seconds since the server last acknowledged us.
    pub last_registered_age_s: Option<f64>,
}
