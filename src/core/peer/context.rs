//! What every peer of a node shares: identity, randomness, the session-index
//! table and the output queues. Kept apart from the peer table so a peer can
//! be borrowed mutably together with it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::core::address::{NetworkId, NodeId, NodePrefix};
use crate::core::api::PeerSlot;
use crate::core::api::{Event, Transmit, TunPacket};
use crate::core::identity::AgentId;
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::tai64n::Tai64N;
use crate::core::packet_map::PacketMap;
use crate::core::rendezvous::choice::{SERVERS_PER_AGENT, servers_for};
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
    /// This node's static key, with its peers' precomputed static-static secrets.
    pub noise_static: crate::core::noise::static_keys::NoiseStatic,
    pub own_mac1: Mac1Key,
    /// Transport ciphers offered as initiator and accepted as responder.
    pub transport_ciphers: crate::core::noise::cipher::CipherSet,
    pub tunnel_mtu: u16,
    pub rng: CoreRng,
    /// The monotonic instant that corresponds to `unix_at_start`.
    pub started: Instant,
    /// Wall-clock time when the node started, for TAI64N timestamps.
    pub unix_at_start: Duration,
    /// Local session index → the slot of the peer it was given to.
    pub by_index: PacketMap<u32, PeerSlot>,
    pub transmits: VecDeque<Transmit>,
    /// IP packets for the TUN, each behind `tun_headroom` bytes.
    pub tun_out: VecDeque<TunPacket>,
    /// Room kept before every packet for the TUN (the shell's header).
    pub tun_headroom: usize,
    /// Buffers given back for reuse: receiving and sealing take one instead
    /// of allocating (bounded, see [`Context::recycle_buffer`]).
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
    /// Every rendezvous server configured, in the order added (the order
    /// decides nothing: choices rank them by node ID).
    pub configured_rendezvous: Vec<(AgentId, SocketAddr)>,
    /// Register with every configured server, not only this agent's own
    /// (`netcheck`, which checks every server).
    pub register_with_every: bool,
    /// This agent's links to rendezvous servers: its home servers and the
    /// on-demand ones that reach peers homed elsewhere.
    pub rendezvous: Vec<RendezvousLink>,
    /// Servers a peer needs a link to and that have none yet: the node's
    /// timer opens them at once (see [`Context::want_link`]).
    pub links_wanted: Vec<AgentId>,
    /// When the first of `links_wanted` was asked for (the timer's due
    /// time).
    pub links_wanted_since: Option<Instant>,
    /// Datagrams waiting for an on-demand link to register before they go
    /// through it (trust requests to a target homed elsewhere).
    pub relay_backlog: Vec<BackloggedRelay>,
    /// How often registrations are refreshed (also holds NAT mappings open).
    pub register_interval: Duration,
    /// The services this agent advertises (each peer is offered those its
    /// policy lets it open).
    pub advertised: Vec<crate::core::services::Service>,
    /// The last generation of a `Services` offer issued to any peer (0:
    /// none). Node-wide and restored across restarts (the shell keeps it
    /// in the state directory), so an offer made after a restart replaces
    /// the earlier ones even when the wall clock went back.
    pub last_services_generation: u64,
    /// Moves whenever what a peer advertised here is replaced or forgotten
    /// (see [`Context::note_learned_services_changed`]).
    pub learned_services_changes: u64,
}

/// A registration not acknowledged within this long means the rendezvous
/// is unreachable.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an on-demand link stays after the last peer that needed it.
pub const ON_DEMAND_LINGER: Duration = Duration::from_secs(120);
/// Most on-demand links at once (beyond the home servers).
pub const MAX_ON_DEMAND_LINKS: usize = 16;
/// Most datagrams waiting for an on-demand link.
const MAX_RELAY_BACKLOG: usize = 64;
/// How long a datagram waits for its link.
const RELAY_BACKLOG_WAIT: Duration = Duration::from_secs(30);

/// Why this agent holds a link to a rendezvous server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// One of this agent's own servers (rendezvous hashing of its node
    /// ID): registered with for as long as the agent runs, so that peers
    /// find it there.
    Home,
    /// A server of a peer homed elsewhere, opened to relay through it and
    /// kept until `wanted_until` (refreshed while such a peer is in use).
    OnDemand {
        /// When the link is dropped unless wanted again.
        wanted_until: Instant,
    },
}

/// A datagram for a node that waits for the link to `server` to register.
#[derive(Debug, Clone)]
pub struct BackloggedRelay {
    /// The server to relay through.
    pub server: AgentId,
    /// The node it is for.
    pub node: NodeId,
    /// The datagram (not yet in its envelope).
    pub datagram: Vec<u8>,
    /// When it is given up.
    pub expires: Instant,
}

/// This agent's link to one rendezvous server.
#[derive(Debug, Clone)]
pub struct RendezvousLink {
    /// The server's agent ID.
    pub id: AgentId,
    /// Home server, or opened on demand.
    pub role: LinkRole,
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
    /// A link not registered yet, its first registration due now.
    pub fn new(id: AgentId, endpoint: SocketAddr, role: LinkRole, now: Instant) -> Self {
        Self {
            id,
            role,
            endpoint,
            registered_until: None,
            reflexive: None,
            next_register: now,
            last_registered: None,
            register_unanswered_since: None,
        }
    }

    /// Whether the registration holds now.
    pub fn is_live(&self, now: Instant) -> bool {
        self.registered_until.is_some_and(|until| until > now)
    }

    /// Whether the server left a registration unanswered for
    /// [`REGISTER_TIMEOUT`] (gone, or unreachable from here): a peer homed
    /// there is looked for on its next server instead.
    pub fn is_down(&self, now: Instant) -> bool {
        !self.is_live(now)
            && self
                .register_unanswered_since
                .is_some_and(|since| now.saturating_duration_since(since) >= REGISTER_TIMEOUT)
    }

    /// Whether this is one of the agent's home servers.
    pub fn is_home(&self) -> bool {
        self.role == LinkRole::Home
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
    /// What some peer advertised here changed. The shell compares the
    /// count on every wake and reads the services again only when it
    /// moved, instead of walking every peer each time.
    pub fn note_learned_services_changed(&mut self) {
        self.learned_services_changes = self.learned_services_changes.wrapping_add(1);
    }

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

    /// Whether a relay path through `rendezvous` is usable now.
    pub fn relay_is_live(&self, now: Instant, rendezvous: SocketAddr) -> bool {
        self.rendezvous
            .iter()
            .any(|link| link.endpoint == rendezvous && link.is_live(now))
    }

    /// The link to the server with this ID, if one is open.
    pub fn link(&self, id: &AgentId) -> Option<&RendezvousLink> {
        self.rendezvous.iter().find(|link| link.id == *id)
    }

    /// The ID of the server whose link has this endpoint.
    pub fn link_id(&self, endpoint: SocketAddr) -> Option<AgentId> {
        self.rendezvous
            .iter()
            .find(|link| link.endpoint == endpoint)
            .map(|link| link.id)
    }

    /// The servers that serve `node` (rendezvous hashing over the
    /// configured servers), best first: where an agent with that node ID
    /// registers, so where its peers look for it.
    pub fn servers_of(&self, node: NodeId) -> Vec<AgentId> {
        let ids: Vec<AgentId> = self
            .configured_rendezvous
            .iter()
            .map(|(id, _)| *id)
            .collect();
        servers_for(node, &ids, SERVERS_PER_AGENT)
    }

    /// A peer needs the link to `server`: an on-demand link is kept for
    /// [`ON_DEMAND_LINGER`] more; a missing one is asked for (bounded), and
    /// the node opens it at its next timer, due at once.
    pub fn want_link(&mut self, now: Instant, server: AgentId) {
        if let Some(link) = self.rendezvous.iter_mut().find(|link| link.id == server) {
            if let LinkRole::OnDemand { wanted_until } = &mut link.role {
                *wanted_until = (*wanted_until).max(now + ON_DEMAND_LINGER);
            }
            return;
        }
        if !self.links_wanted.contains(&server) && self.links_wanted.len() < MAX_ON_DEMAND_LINKS {
            self.links_wanted.push(server);
            self.links_wanted_since.get_or_insert(now);
        }
    }

    /// Sends `datagram` for `node` through the server `server` now if its
    /// link is live, else when it registers (at most
    /// [`RELAY_BACKLOG_WAIT`] from now; the link is asked for).
    pub fn send_via_server(
        &mut self,
        now: Instant,
        server: AgentId,
        node: NodeId,
        datagram: Vec<u8>,
    ) {
        if let Some(link) = self.link(&server).filter(|link| link.is_live(now)) {
            let endpoint = link.endpoint;
            self.send_on(PathAddr::Relay(endpoint), node, datagram);
            return;
        }
        self.want_link(now, server);
        self.relay_backlog.retain(|queued| queued.expires > now);
        if self.relay_backlog.len() < MAX_RELAY_BACKLOG {
            self.relay_backlog.push(BackloggedRelay {
                server,
                node,
                datagram,
                expires: now + RELAY_BACKLOG_WAIT,
            });
        }
    }

    /// Sends what waited for the link to `server`, which registered.
    pub fn flush_relay_backlog(&mut self, now: Instant, server: AgentId) {
        let Some(endpoint) = self
            .link(&server)
            .filter(|link| link.is_live(now))
            .map(|link| link.endpoint)
        else {
            return;
        };
        let backlog = std::mem::take(&mut self.relay_backlog);
        for queued in backlog {
            if queued.expires <= now {
                continue;
            }
            if queued.server == server {
                self.send_on(PathAddr::Relay(endpoint), queued.node, queued.datagram);
            } else {
                self.relay_backlog.push(queued);
            }
        }
    }

    /// Whether `address` is one of our rendezvous servers.
    pub fn is_rendezvous_endpoint(&self, address: SocketAddr) -> bool {
        self.rendezvous.iter().any(|link| link.endpoint == address)
    }

    /// What the home rendezvous servers' answers say about our NAT.
    pub fn nat_kind(&self) -> crate::core::wire::path::NatKind {
        use crate::core::wire::path::NatKind;
        let seen: Vec<SocketAddr> = self
            .rendezvous
            .iter()
            .filter(|link| link.is_home())
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

    /// Our reflexive endpoints (as our home rendezvous servers saw us: an
    /// on-demand link comes and goes, and behind a NAT that maps each
    /// destination apart what its server saw is of no use to a peer).
    pub fn reflexive_endpoints(&self) -> Vec<SocketAddr> {
        let mut seen = Vec::new();
        for address in self
            .rendezvous
            .iter()
            .filter(|link| link.is_home())
            .filter_map(|link| link.reflexive)
        {
            if !seen.contains(&address) {
                seen.push(address);
            }
        }
        seen
    }

    /// Recomputes the announced candidates: the gateway's port mapping
    /// (first: it reaches us through any NAT, so it must survive the
    /// [`MAX_CANDIDATES`](crate::core::wire::path::MAX_CANDIDATES) cut),
    /// interface addresses, then the reflexive endpoints the home
    /// rendezvous servers saw. Returns whether they changed.
    pub fn refresh_candidates(&mut self) -> bool {
        let mut candidates: Vec<SocketAddr> = self.mapped_candidate.into_iter().collect();
        for address in &self.interface_candidates {
            if !candidates.contains(address) {
                candidates.push(*address);
            }
        }
        for reflexive in self.reflexive_endpoints() {
            if !candidates.contains(&reflexive) {
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
                let envelope = relay_envelope(node, &datagram);
                self.recycle_buffer(datagram);
                self.transmit(rendezvous, envelope)
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
