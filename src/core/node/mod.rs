//! The sans-IO agent endpoint: every peer, session and timer of one agent.
//!
//! Call order (the quinn pattern), from one task:
//! 1. feed input with [`Node::handle_datagram`] (from the UDP socket),
//!    [`Node::handle_tun_packet`] (from the TUN) and, when the deadline from
//!    [`Node::poll_timeout`] passes, [`Node::handle_timeout`];
//! 2. then drain [`Node::poll_transmit`] (to the UDP socket),
//!    [`Node::poll_tun_packet`] (to the TUN) and [`Node::poll_event`];
//! 3. sleep until the next [`Node::poll_timeout`] or input.

mod datapath;
mod handshakes;
pub mod known_sources;
mod peers;
mod registration;
mod services;
mod timers;
mod trust_requests;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::address::{NodePrefix, agent_address4};
use crate::core::api::{
    AutoApprove, DEFAULT_REGISTER_INTERVAL, Event, NodeConfig, PeerSlot, Transmit, TunPacket,
};
use crate::core::identity::{AgentId, Identity};
use crate::core::node::known_sources::KnownSources;
use crate::core::noise::cipher::CipherSet;
use crate::core::noise::cookie::CookieResponder;
use crate::core::noise::mac::Mac1Key;
use crate::core::packet_map::PacketMap;
use crate::core::peer::Peer;
use crate::core::peer::context::{Context, REGISTER_TIMEOUT};
use crate::core::peer::table::PeerTable;
use crate::core::rng::core_rng;
use crate::core::stats::status::{DropCounters, NodeStatus};
use crate::core::trust::pending::PendingRequests;
use crate::core::wire::path::PathAddr;

/// How often idle connection-tracking entries are swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);
/// Domain-separation label of a revocation notice signature.
const REVOCATION_LABEL: &[u8] = b"agentnet revocation v1";

/// One agent: its peers, sessions and timers. See the module docs for the
/// call order.
pub struct Node {
    ctx: Context,
    identity: Identity,
    peers: PeerTable,
    /// Peer order as added (status lists peers in this order).
    peer_order: Vec<PeerSlot>,
    /// Reused list of the peers whose timers are due.
    due_scratch: Vec<PeerSlot>,
    by_noise_key: HashMap<[u8; 32], PeerSlot>,
    by_prefix: PacketMap<NodePrefix, PeerSlot>,
    /// IPv4 cryptokey routing: each routed peer's derived IPv4 address. On
    /// a collision the peer trusted first keeps it (see `route_ipv4`).
    by_address4: PacketMap<Ipv4Addr, PeerSlot>,
    next_housekeeping: Instant,
    /// When the on-demand rendezvous links are looked at next.
    next_link_sweep: Instant,
    pending: PendingRequests,
    auto_approve: AutoApprove,
    /// Load detection and cookie replies for initiations (type 3).
    cookies: CookieResponder,
    /// Where a cookie reply may go: trusted peers' addresses and nodes.
    known_sources: KnownSources,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.ctx.own_id)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The peer that local session index `index` was given to (which must
/// still be asked whether it holds that session: see [`PeerSlot`]).
fn peer_by_index<'a>(
    by_index: &PacketMap<u32, PeerSlot>,
    peers: &'a mut PeerTable,
    index: u32,
) -> Option<&'a mut Peer> {
    by_index.get(&index).and_then(|slot| peers.at_mut(*slot))
}

/// What a revocation notice from `revoker` to `revoked` signs.
fn revocation_context(revoker: &AgentId, revoked: &AgentId) -> Vec<u8> {
    let mut message = REVOCATION_LABEL.to_vec();
    message.extend_from_slice(revoker.as_bytes());
    message.extend_from_slice(revoked.as_bytes());
    message
}

impl Node {
    /// Creates a node. `rng_seed` must come from the OS's secure RNG; the core
    /// derives every random value (ephemeral keys, session indices, jitter)
    /// from it, which makes simulations reproducible. `unix_now` is the wall
    /// clock at `now` (for the TAI64N timestamps of initiations).
    pub fn new(config: NodeConfig, rng_seed: [u8; 32], now: Instant, unix_now: Duration) -> Self {
        let own_id = config.identity.agent_id();
        let ctx = Context {
            network: config.network,
            own_id,
            own_prefix: NodePrefix::of_agent(config.network, &own_id),
            own_address4: Some(agent_address4(config.network, &own_id)),
            name: config.name.clone(),
            noise_static: crate::core::noise::static_keys::NoiseStatic::new(
                &config.identity.noise_secret_key(),
            ),
            own_mac1: Mac1Key::for_responder(config.network, &own_id.noise_public_key()),
            tunnel_mtu: config.tunnel_mtu,
            rng: core_rng(rng_seed),
            started: now,
            unix_at_start: unix_now,
            by_index: PacketMap::default(),
            transmits: VecDeque::new(),
            tun_out: VecDeque::new(),
            tun_headroom: 0,
            transport_ciphers: CipherSet::ALL,
            spare_buffers: Vec::new(),
            events: VecDeque::new(),
            dropped: DropCounters::default(),
            local_candidates: Vec::new(),
            interface_candidates: Vec::new(),
            mapped_candidate: None,
            configured_rendezvous: Vec::new(),
            register_with_every: false,
            rendezvous: Vec::new(),
            links_wanted: Vec::new(),
            links_wanted_since: None,
            relay_backlog: Vec::new(),
            register_interval: DEFAULT_REGISTER_INTERVAL,
            advertised: Vec::new(),
            last_services_generation: 0,
            learned_services_changes: 0,
        };
        Self {
            ctx,
            identity: config.identity,
            peers: PeerTable::default(),
            peer_order: Vec::new(),
            due_scratch: Vec::new(),
            by_noise_key: HashMap::new(),
            by_prefix: PacketMap::default(),
            by_address4: PacketMap::default(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            next_link_sweep: now + registration::LINK_SWEEP_INTERVAL,
            pending: PendingRequests::default(),
            auto_approve: AutoApprove::default(),
            cookies: CookieResponder::new(config.network, &own_id.noise_public_key()),
            known_sources: KnownSources::default(),
        }
    }

    /// This agent's ID.
    pub fn agent_id(&self) -> AgentId {
        self.ctx.own_id
    }

    /// This agent's node prefix.
    pub fn node_prefix(&self) -> NodePrefix {
        self.ctx.own_prefix
    }

    /// Sets the endpoints announced to peers in handshakes.
    pub fn set_local_candidates(&mut self, candidates: Vec<SocketAddr>) {
        self.ctx.interface_candidates = candidates;
        self.ctx.refresh_candidates();
    }

    /// Sets the public endpoint a port mapping on the gateway (PCP,
    /// NAT-PMP, UPnP-IGD) forwards to our socket, or none. Announced as a
    /// candidate: a peer that pings it gets through this agent's NAT even
    /// when that NAT maps each destination to a new port. When it changes,
    /// connected peers hear of it at once (a `Candidates` frame). Returns
    /// whether it changed.
    pub fn set_mapped_candidate(&mut self, now: Instant, mapped: Option<SocketAddr>) -> bool {
        if self.ctx.mapped_candidate == mapped {
            return false;
        }
        self.ctx.mapped_candidate = mapped;
        if self.ctx.refresh_candidates() {
            self.announce_candidates(now);
        }
        true
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ctx.transmits.pop_front()
    }

    /// The next IP packet to write to the TUN, behind the room asked for
    /// with [`Node::set_tun_headroom`] (none by default). Give the buffer
    /// back with [`Node::recycle_buffer`] once written: the data path then
    /// receives without allocating.
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.ctx.tun_out.pop_front().map(|packet| packet.buffer)
    }

    /// [`Node::poll_tun_packet`], with what the core read of the packet's
    /// TCP segment while checking it.
    pub fn poll_tun_delivery(&mut self) -> Option<TunPacket> {
        self.ctx.tun_out.pop_front()
    }

    /// Keeps `bytes` of room (zeros) before every packet
    /// [`Node::poll_tun_packet`] returns, for a header the shell writes
    /// there (the virtio-net header of a TUN with offloads): the packet is
    /// decrypted where it is written from.
    pub fn set_tun_headroom(&mut self, bytes: usize) {
        self.ctx.tun_headroom = bytes;
    }

    /// The transport ciphers this node offers when it initiates and
    /// accepts when it responds (every one by default; the agent gives
    /// [`CipherSet::accelerated`]). ChaCha20-Poly1305 is always in it.
    /// Sessions already made keep their cipher.
    pub fn set_transport_ciphers(&mut self, ciphers: CipherSet) {
        self.ctx.transport_ciphers = ciphers;
    }

    /// Gives a buffer back for reuse (one [`Node::poll_tun_packet`]
    /// returned, or any other): packets are decrypted and sealed into such
    /// buffers instead of fresh ones. Large or surplus buffers are dropped.
    pub fn recycle_buffer(&mut self, buffer: Vec<u8>) {
        self.ctx.recycle_buffer(buffer);
    }

    /// Takes back the buffers of datagrams the shell has sent (emptying
    /// `sent`): the next packets are sealed into them.
    pub fn recycle_sent(&mut self, sent: &mut Vec<Transmit>) {
        for transmit in sent.drain(..) {
            self.ctx.recycle_buffer(transmit.payload);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.ctx.events.pop_front()
    }

    /// Counters of traffic dropped before a peer was identified (cheap).
    pub fn drop_counters(&self) -> DropCounters {
        self.ctx.dropped
    }

    /// The path a peer's traffic takes now, if it has one.
    pub fn peer_path(&self, now: Instant, id: &AgentId) -> Option<PathAddr> {
        let peer = self.peers.get(id)?;
        peer.is_up(now)
            .then(|| peer.send_path(&self.ctx, now))
            .flatten()
    }

    /// Sends a path ping to a peer along the path its traffic takes now
    /// (`agentnet ping`); the pong comes back as [`Event::PingReply`].
    /// Returns the ping's id and path. Without a session, a handshake
    /// starts and the error says so.
    pub fn ping(
        &mut self,
        now: Instant,
        id: &AgentId,
    ) -> Result<(u64, PathAddr), crate::core::stats::PingError> {
        use crate::core::stats::PingError;
        let Some(peer) = self.peers.get_mut(id).filter(|peer| !peer.is_rendezvous()) else {
            return Err(PingError::UnknownPeer);
        };
        if !peer.is_up(now) {
            peer.start_handshake_if_idle(&mut self.ctx, now);
            self.open_wanted_links(now);
            return Err(PingError::NoSession);
        }
        peer.request_ping(&mut self.ctx, now)
            .ok_or(PingError::NoPath)
    }

    /// A snapshot of the node's state.
    pub fn status(&self, now: Instant) -> NodeStatus {
        NodeStatus {
            id: self.ctx.own_id,
            address: self.ctx.own_prefix.agent_address(),
            address4: self.ctx.own_address4,
            node_prefix: self.ctx.own_prefix.to_string(),
            mtu: self.ctx.tunnel_mtu,
            peers: self
                .peer_order
                .iter()
                .filter_map(|slot| self.peers.at(*slot))
                .filter(|peer| !peer.is_rendezvous())
                .map(|peer| peer.status(&self.ctx, now))
                .collect(),
            dropped: self.ctx.dropped,
            rendezvous: self.rendezvous_status(now),
            candidates: self.ctx.local_candidates.clone(),
            nat: self.ctx.nat_kind(),
        }
    }
}

#[cfg(test)]
mod tests;
