//! What every peer of a node shares: identity, randomness, the session-index
//! table and the output queues. Kept apart from the peer table so a peer can
//! be borrowed mutably together with it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use zeroize::Zeroizing;

use crate::core::address::{NetworkId, NodeId, NodePrefix};
use crate::core::api::PeerSlot;
use crate::core::api::{Event, Transmit, TunPacket};
use crate::core::identity::AgentId;
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::tai64n::Tai64N;
use crate::core::rng::CoreRng;
use crate::core::stats::status::DropCounters;
use crate::core::wire::path::{PathAddr, relay_envelope};

/// Shared state of a node.
pub struct Context {
    pub network: NetworkId,
    pub own_id: AgentId,
    pub own_prefix: NodePrefix,
    /// This agent's IPv4 address (`None`: IPv4 is off on this node).
    pub own_address4: Option<std::net::Ipv4Addr>,
    pub name: String,
    pub noise_secret: Zeroizing<[u8; 32]>,
    pub own_mac1: Mac1Key,
    pub tunnel_mtu: u16,
    pub rng: CoreRng,
    /// The monotonic instant that corresponds to `unix_at_start`.
    pub started: Instant,
    /// Wall-clock time when the node started, for TAI64N timestamps.
    pub unix_at_start: Duration,
    /// Local session index → the slot of the peer it was given to.
    pub by_index: HashMap<u32, PeerSlot>,
    pub transmits: VecDeque<Transmit>,
    /// IP packets for the TUN, each behind `tun_headroom` bytes.
    pub tun_out: VecDeque<TunPacket>,
    /// Room kept before every packet for the TUN (the shell's header).
    pub tun_headroom: usize,
    /// Buffers given back for reuse: receiving takes one instead of
    /// allocating (bounded, see [`Context::recycle_buffer`]).
    pub spare_buffers: Vec<Vec<u8>>,
    pub events: VecDeque<Event>,
    pub dropped: DropCounters,
    /// Endpoints announced to peers: local addresses and reflexive ones.
    pub local_candidates: Vec<SocketAddr>,
    /// Addresses of this host's interfaces (from the shell).
    pub interface_candidates: Vec<SocketAddr>,
    /// The public endpoint the gateway maps to our socket (PCP, NAT-PMP or
    /// UPnP-IGD, from the shell), if it gave one.
    pub mapped_candidate: Option<SocketAddr>,
    /// This agent's registrations with rendezvous servers.
    pub rendezvous: Vec<RendezvousLink>,
    /// How often registrations are refreshed (also holds NAT mappings open).
    pub register_interval: Duration,
    /// The services this agent advertises (each peer is offered those its
    /// policy lets it open).
    pub advertised: Vec<crate::core::services::Service>,
}

/// This agent's link to one rendezvous server.
#[derive(Debug, Clone)]
pub struct RendezvousLink {
    /// The server's agent ID.
    pub id: AgentId,
    /// Its UDP endpoint.
    pub endpoint: SocketAddr,
    /// Until when the registration holds (none: not registered).
    pub registered_until: Option<Instant>,
    /// Our endpoint as the server sees it.
    pub reflexive: Option<SocketAddr>,
    /// When the next registration refresh is due.
    pub next_register: Instant,
    /// When the last registration was acknowledged.
    pub last_registered: Option<Instant>,
    /// When the last registration was sent and not yet acknowledged.
    pub register_unanswered_since: Option<Instant>,
}

impl RendezvousLink {
    /// Whether the registration holds now.
    pub fn is_live(&self, now: Instant) -> bool {
        self.registered_until.is_some_and(|until| until > now)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("own_id", &self.own_id)
            .field("sessions", &self.by_index.len())
            .finish_non_exhaustive()
    }
}

/// Spare buffers kept at most (a receive burst's worth).
const MAX_SPARE_BUFFERS: usize = 256;
/// A buffer with more capacity than this is not kept for reuse.
const MAX_SPARE_CAPACITY: usize = 16 * 1024;

impl Context {
    /// An empty buffer, a spare one when there is one.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        let mut buffer = self.spare_buffers.pop().unwrap_or_default();
        buffer.clear();
        buffer
    }

    /// Keeps a buffer for reuse, unless enough are kept or it is large.
    pub fn recycle_buffer(&mut self, buffer: Vec<u8>) {
        if self.spare_buffers.len() < MAX_SPARE_BUFFERS
            && buffer.capacity() > 0
            && buffer.capacity() <= MAX_SPARE_CAPACITY
        {
            self.spare_buffers.push(buffer);
        }
    }

    /// Queues a copy of an IP packet for the TUN, behind the headroom.
    pub fn queue_tun_packet(&mut self, packet: &[u8]) {
        let mut buffer = self.take_buffer();
        buffer.resize(self.tun_headroom, 0);
        buffer.extend_from_slice(packet);
        self.tun_out.push_back(TunPacket {
            buffer,
            tcp_segment: None,
        });
    }

    /// A fresh random local session index, registered to the peer in
    /// `peer`.
    pub fn allocate_index(&mut self, peer: PeerSlot) -> u32 {
        loop {
            let index = self.rng.next_u32();
            if index != 0 && !self.by_index.contains_key(&index) {
                self.by_index.insert(index, peer);
                return index;
            }
        }
    }

    /// Forgets a local session index.
    pub fn release_index(&mut self, index: u32) {
        self.by_index.remove(&index);
    }

    /// Wall-clock time at `now`, as the duration since the Unix epoch.
    pub fn unix_now(&self, now: Instant) -> Duration {
        self.unix_at_start + now.saturating_duration_since(self.started)
    }

    /// The TAI64N label of `now`.
    pub fn timestamp(&self, now: Instant) -> Tai64N {
        Tai64N::from_unix(self.unix_now(now))
    }

    /// Rendezvous servers whose registration holds now, in configured order.
    pub fn live_relays(&self, now: Instant) -> Vec<SocketAddr> {
        self.rendezvous
            .iter()
            .filter(|link| link.is_live(now))
            .map(|link| link.endpoint)
            .collect()
    }

    /// Whether a relay path through `rendezvous` is usable now.
    pub fn relay_is_live(&self, now: Instant, rendezvous: SocketAddr) -> bool {
        self.rendezvous
            .iter()
            .any(|link| link.endpoint == rendezvous && link.is_live(now))
    }

    /// Whether `address` is one of our rendezvous servers.
    pub fn is_rendezvous_endpoint(&self, address: SocketAddr) -> bool {
        self.rendezvous.iter().any(|link| link.endpoint == address)
    }

    /// What the rendezvous servers' answers say about our NAT.
    pub fn nat_kind(&self) -> crate::core::wire::path::NatKind {
        use crate::core::wire::path::NatKind;
        let seen: Vec<SocketAddr> = self
            .rendezvous
            .iter()
            .filter_map(|link| link.reflexive)
            .collect();
        if seen
            .iter()
            .any(|address| self.interface_candidates.contains(address))
        {
            return NatKind::None;
        }
        match seen.as_slice() {
            [] | [_] => NatKind::Unknown,
            [first, rest @ ..] if rest.iter().all(|address| address == first) => NatKind::Easy,
            [first, rest @ ..] if rest.iter().all(|address| address.ip() == first.ip()) => {
                NatKind::Hard
            }
            _ => NatKind::Unknown,
        }
    }

    /// The NAT hint announced to peers.
    pub fn nat_hint(&self) -> crate::core::wire::path::NatHint {
        crate::core::wire::path::NatHint {
            kind: self.nat_kind(),
            reflexive: self.reflexive_endpoints(),
        }
    }

    /// Our reflexive endpoints (as rendezvous servers saw us).
    pub fn reflexive_endpoints(&self) -> Vec<SocketAddr> {
        let mut seen = Vec::new();
        for address in self.rendezvous.iter().filter_map(|link| link.reflexive) {
            if !seen.contains(&address) {
                seen.push(address);
            }
        }
        seen
    }

    /// Recomputes the announced candidates: the gateway's port mapping
    /// (first: it reaches us through any NAT, so it must survive the
    /// [`MAX_CANDIDATES`](crate::core::wire::path::MAX_CANDIDATES) cut),
    /// interface addresses, then the reflexive endpoints the rendezvous
    /// servers saw. Returns whether they changed.
    pub fn refresh_candidates(&mut self) -> bool {
        let mut candidates: Vec<SocketAddr> = self.mapped_candidate.into_iter().collect();
        for address in &self.interface_candidates {
            if !candidates.contains(address) {
                candidates.push(*address);
            }
        }
        for link in &self.rendezvous {
            if let Some(reflexive) = link.reflexive
                && !candidates.contains(&reflexive)
            {
                candidates.push(reflexive);
            }
        }
        candidates.truncate(crate::core::wire::path::MAX_CANDIDATES);
        let changed = candidates != self.local_candidates;
        self.local_candidates = candidates;
        changed
    }

    /// Sends a datagram for the peer with node ID `node` along `path`.
    pub fn send_on(&mut self, path: PathAddr, node: NodeId, datagram: Vec<u8>) {
        match path {
            PathAddr::Direct(address) => self.transmit(address, datagram),
            PathAddr::Relay(rendezvous) => {
                self.transmit(rendezvous, relay_envelope(node, &datagram))
            }
            PathAddr::Probe(socket, address) => self.transmits.push_back(Transmit {
                destination: address,
                payload: datagram,
                source: Some(socket),
            }),
        }
    }

    /// Queues a datagram.
    pub fn transmit(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            payload,
            source: None,
        });
    }
}
