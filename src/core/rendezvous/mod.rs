//! The rendezvous and relay server, sans-IO (DESIGN.md §5).
//!
//! Agents hold a Noise session with it (same handshake and transport as
//! between agents; any key may register) and send `Register` frames; it
//! answers with the reflexive endpoint it saw and keeps the registration as
//! soft state. Relay envelopes (type 5) from a registered agent are forwarded
//! to the registered endpoint of the node they name, with the node field
//! rewritten to the sender's node: the relay sees which nodes talk, never
//! what. Sealed trust requests for an agent that is not registered wait in a
//! bounded mailbox until it registers. There is no list, lookup or search
//! call: an unknown destination and one that ignores the sender look alike.
//!
//! Call order as for [`crate::core::node::Node`]: `handle_datagram` /
//! `handle_timeout`, then drain `poll_transmit`.
//!
//! [`choice`] says which of several servers serve an agent (rendezvous
//! hashing by node ID).

pub mod choice;
mod mailbox;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::core::address::{NetworkId, NodeId};
use crate::core::identity::{AgentId, Identity};
use crate::core::limit::{KeyedLimiter, Rate, address_key, keyed_hash};
use crate::core::noise::cipher::TransportCipher;
use crate::core::noise::cookie::{CookieResponder, HandshakeSource, InitiationVerdict};
use crate::core::noise::handshake::{ReceivedInitiation, ResponsePayload, choose_version};
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::session::Session;
use crate::core::noise::tai64n::Tai64N;
use crate::core::rng::{CoreRng, core_rng};
use crate::core::trust::request::MAX_REQUEST_DATAGRAM_LEN;
use crate::core::wire::control_frame::{CONTROL_FRAME_LIMIT, ControlFrame};
use crate::core::wire::path::{NatHint, rewrite_relay_node, set_relay_source_tag};
use crate::core::wire::{self, Datagram, RELAY_HEADER_LEN, TYPE_TRUST_REQUEST};
use mailbox::StoredRequest;
use rand::RngCore;

/// Where a client is reached: a UDP endpoint or a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ClientAddr {
    /// A UDP source endpoint.
    Udp(SocketAddr),
    /// A TCP connection (id chosen by the shell) from this peer address.
    Tcp(u64, SocketAddr),
}

impl ClientAddr {
    /// The underlay address of the client.
    pub fn socket_addr(&self) -> SocketAddr {
        match self {
            ClientAddr::Udp(address) | ClientAddr::Tcp(_, address) => *address,
        }
    }
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// The server's own identity.
    pub identity: Identity,
    /// The overlay network it serves.
    pub network: NetworkId,
    /// How long a registration lasts without a refresh.
    pub registration_lifetime: Duration,
    /// Relayed datagrams one source may send per second (sustained).
    pub relay_packets_per_second: u32,
    /// Burst allowance on top of the rate.
    pub relay_burst: u32,
    /// Trust requests kept per offline target.
    pub mailbox_per_target: usize,
    /// How long a stored trust request waits.
    pub mailbox_ttl: Duration,
    /// Most clients created from one source IP address (an IPv6 /64 counts
    /// as one, as [`address_key`] folds it): one host (or one NAT) cannot
    /// take the client table from everyone else by making up keys, nor by
    /// picking a new address in its /64 for each.
    pub max_clients_per_ip: usize,
}

impl RendezvousConfig {
    /// Defaults for a server with this identity in this network.
    pub fn new(identity: Identity, network: NetworkId) -> Self {
        Self {
            identity,
            network,
            registration_lifetime: Duration::from_secs(90),
            relay_packets_per_second: 100_000,
            relay_burst: 20_000,
            mailbox_per_target: 16,
            mailbox_ttl: Duration::from_secs(24 * 3600),
            max_clients_per_ip: DEFAULT_MAX_CLIENTS_PER_IP,
        }
    }
}

/// Most clients with sessions at once.
pub const MAX_CLIENTS: usize = 200_000;
/// Default of [`RendezvousConfig::max_clients_per_ip`]: room for a large
/// NAT full of agents.
pub const DEFAULT_MAX_CLIENTS_PER_IP: usize = 1024;
/// Most mailboxes (offline targets with stored requests).
pub const MAX_MAILBOXES: usize = 20_000;
/// Most trust requests stored on behalf of one source IP address (an IPv6
/// /64 counts as one, as [`address_key`] folds it), over all mailboxes: one
/// flooder cannot take the mailboxes from everyone else.
pub const MAX_STORED_PER_IP: usize = 256;
/// Most bytes of stored trust requests in all mailboxes together.
pub const MAX_MAILBOX_BYTES: usize = 64 << 20;
/// Largest relay envelope stored in a mailbox: a trust request the target
/// would accept, in its envelope.
pub const MAX_STORED_DATAGRAM_LEN: usize = RELAY_HEADER_LEN + MAX_REQUEST_DATAGRAM_LEN;
/// Relay rate-limit buckets (a fixed array, 8 bytes each, allocated at the
/// first relayed datagram; source IPs that hash to one bucket share it).
pub const MAX_BUCKETS: usize = 65_536;
/// A client that sent nothing for this long is forgotten.
const CLIENT_IDLE: Duration = Duration::from_secs(200);
/// How often soft state is swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Initiations from one client closer than this are dropped.
const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);
/// A node that registered from its address this recently keeps it against
/// another node's claim made over a session whose handshake came from
/// elsewhere: a client with a session of its own that sends `Register`
/// from a spoofed source (an address it does not hold). It is refused
/// without an answer. A claim over a session made from the address
/// itself (which a spoofed source cannot complete: the response goes
/// there) takes it at once: a NAT gave the mapping to that client, or the
/// holder itself came back. Past the hold, any claim takes it (a client
/// whose NAT moved it mid-session to a mapping another host left; a NAT
/// gives a mapping away only after nothing crossed it for its timeout,
/// and agents refresh every 25 s).
pub const ADDRESS_HOLD: Duration = Duration::from_secs(30);

/// Counters of the server, for status and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RelayCounters {
    /// Registrations accepted (including refreshes).
    pub registrations: u64,
    /// Agents registered now.
    pub registered_now: u64,
    /// Datagrams forwarded.
    pub relayed_packets: u64,
    /// Bytes forwarded.
    pub relayed_bytes: u64,
    /// `Register` frames refused because another node registered from the
    /// same address within [`ADDRESS_HOLD`] and the session was made
    /// elsewhere (a spoofed source).
    pub address_claims_refused: u64,
    /// Relay envelopes from sources that are not registered.
    pub dropped_unregistered: u64,
    /// Relay envelopes over the source's rate.
    pub dropped_rate_limited: u64,
    /// Relay envelopes for a node that is not registered (not requests).
    pub dropped_unknown_destination: u64,
    /// Trust requests stored for offline targets.
    pub mailbox_stored: u64,
    /// Stored trust requests delivered at registration.
    pub mailbox_delivered: u64,
    /// Stored trust requests dropped (full mailbox, expiry).
    pub mailbox_dropped: u64,
    /// Handshakes completed with clients.
    pub handshakes: u64,
    /// Initiations answered with a cookie reply under load (not processed).
    pub cookie_replies: u64,
    /// Datagrams that failed mac1, Noise or parsing.
    pub rejected: u64,
}

struct Client {
    sessions: [Option<Session>; 2],
    /// Where the current session's initiation came from (the response
    /// went there): a session whose handshake came from an address proves
    /// its client receives there, which a spoofed source cannot. Kept for
    /// the current session only (`sessions[0]`): clients send on their
    /// newest session, and a spoofed initiation, which makes a new current
    /// one nobody can use, must not vouch for the previous one.
    handshake_from: Option<ClientAddr>,
    last_timestamp: Option<Tai64N>,
    last_initiation: Option<Instant>,
    addr: ClientAddr,
    last_seen: Instant,
    /// The source the client was created from, as [`address_key`] folds
    /// its IP (counted against `max_clients_per_ip` until it is forgotten).
    created_from: IpAddr,
    /// The Ed25519 key this client last registered (checked against its
    /// Noise key then) and its node ID: a refresh naming the same key
    /// skips the point decompressions and the hash.
    registered_as: Option<([u8; 32], NodeId)>,
}

struct Registration {
    addr: ClientAddr,
    expires: Instant,
    /// The agent reads source tags in relayed trust requests (its
    /// `Register` said so); others get envelopes without one.
    reads_source_tags: bool,
}

/// How much of its bounded tables the server uses, for tests and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RendezvousUsage {
    /// Clients with sessions (at most [`MAX_CLIENTS`]).
    pub clients: usize,
    /// Session indices in use (at most two per client).
    pub sessions: usize,
    /// Registrations.
    pub registrations: usize,
    /// Mailboxes (at most [`MAX_MAILBOXES`]).
    pub mailboxes: usize,
    /// Stored trust requests.
    pub stored_requests: usize,
    /// Bytes of stored trust requests (at most [`MAX_MAILBOX_BYTES`]).
    pub stored_bytes: usize,
    /// Relay rate-limit buckets allocated (0 until the first relayed
    /// datagram, then [`MAX_BUCKETS`]).
    pub buckets: usize,
    /// Sources the handshake limiter tracks.
    pub handshake_sources: usize,
}

/// The rendezvous/relay server state machine.
///
/// Scale (`examples/rendezvous_load.rs`, release, one core of the
/// project's 2-core VM, 100,000 agents registered with two sessions each
/// as after a rekey): 1,088 bytes of heap per registered agent (104 MiB
/// in all, hash-table slack included), 2 µs of CPU per registration
/// refresh (a refresh naming the key its session already registered skips
/// the Ed25519 point check; 16 µs before), 110–115 µs per handshake and
/// registration, 1.8 M relayed 1400-byte datagrams per CPU-second
/// (20 Gbit/s) among 2,000 relaying pairs, and 6–11 ms per soft-state
/// sweep (every 5 s).
pub struct RendezvousServer {
    config: RendezvousConfig,
    own_mac1: Mac1Key,
    noise_static: crate::core::noise::static_keys::NoiseStatic,
    rng: CoreRng,
    /// Clients by their Noise static key.
    clients: HashMap<[u8; 32], Client>,
    by_index: HashMap<u32, [u8; 32]>,
    registrations: HashMap<NodeId, Registration>,
    /// The node registered from each address: the reverse of
    /// `registrations`, one node per address. An entry is removed only by
    /// the node it names, since the address may have passed to another
    /// node since (a NAT reuses a mapping).
    by_addr: HashMap<ClientAddr, NodeId>,
    mailbox: HashMap<NodeId, VecDeque<StoredRequest>>,
    /// Relay rate per source IP (fixed hashed buckets: O(1) per datagram).
    buckets: KeyedLimiter,
    transmits: VecDeque<(ClientAddr, Vec<u8>)>,
    counters: RelayCounters,
    next_sweep: Instant,
    /// Clients per source they were created from ([`address_key`]).
    clients_per_ip: HashMap<IpAddr, usize>,
    /// Stored requests per source ([`address_key`]), and their bytes in
    /// total.
    stored_per_ip: HashMap<IpAddr, usize>,
    stored_bytes: usize,
    /// Load detection and cookie replies for initiations (type 3).
    cookies: CookieResponder,
    /// Secret of the source tags written into relayed trust requests
    /// ([`source_tag`]).
    source_tag_secret: [u8; 16],
}

impl std::fmt::Debug for RendezvousServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousServer")
            .field("id", &self.config.identity.agent_id())
            .field("clients", &self.clients.len())
            .field("registrations", &self.registrations.len())
            .finish_non_exhaustive()
    }
}

impl RendezvousServer {
    /// A server; `rng_seed` from the OS's secure RNG.
    pub fn new(config: RendezvousConfig, rng_seed: [u8; 32], now: Instant) -> Self {
        let id = config.identity.agent_id();
        let relay_rate = Rate::per_second(config.relay_packets_per_second, config.relay_burst);
        let mut rng = core_rng(rng_seed);
        let mut source_tag_secret = [0u8; 16];
        rng.fill_bytes(&mut source_tag_secret);
        Self {
            source_tag_secret,
            own_mac1: Mac1Key::for_responder(config.network, &id.noise_public_key()),
            cookies: CookieResponder::new(config.network, &id.noise_public_key()),
            clients_per_ip: HashMap::new(),
            stored_per_ip: HashMap::new(),
            stored_bytes: 0,
            noise_static: crate::core::noise::static_keys::NoiseStatic::new(
                &config.identity.noise_secret_key(),
            ),
            config,
            rng,
            clients: HashMap::new(),
            by_index: HashMap::new(),
            registrations: HashMap::new(),
            by_addr: HashMap::new(),
            mailbox: HashMap::new(),
            buckets: KeyedLimiter::new(relay_rate, MAX_BUCKETS),
            transmits: VecDeque::new(),
            counters: RelayCounters::default(),
            next_sweep: now + SWEEP_INTERVAL,
        }
    }

    /// The server's agent ID (what agents configure).
    pub fn agent_id(&self) -> AgentId {
        self.config.identity.agent_id()
    }

    /// Counters so far.
    pub fn counters(&self) -> RelayCounters {
        RelayCounters {
            registered_now: self.registrations.len() as u64,
            ..self.counters
        }
    }

    /// How full the bounded tables are.
    pub fn usage(&self) -> RendezvousUsage {
        RendezvousUsage {
            clients: self.clients.len(),
            sessions: self.by_index.len(),
            registrations: self.registrations.len(),
            mailboxes: self.mailbox.len(),
            stored_requests: self.mailbox.values().map(VecDeque::len).sum(),
            stored_bytes: self.stored_bytes,
            buckets: self.buckets.buckets(),
            handshake_sources: self.cookies.tracked_sources(),
        }
    }

    /// Sets how many handshake initiations per second put the server under
    /// load (cookies required; 0: always).
    pub fn set_handshake_load_threshold(&mut self, per_second: u32) {
        self.cookies.set_load_threshold(per_second);
    }

    /// The next datagram to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(ClientAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// When [`RendezvousServer::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// A TCP connection closed: its registrations are gone.
    pub fn connection_closed(&mut self, addr: ClientAddr) {
        if let Some(node) = self.by_addr.remove(&addr)
            && self
                .registrations
                .get(&node)
                .is_some_and(|registration| registration.addr == addr)
        {
            self.registrations.remove(&node);
        }
    }

    /// Sweeps expired registrations, idle clients and old mail.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let by_addr = &mut self.by_addr;
        self.registrations.retain(|node, registration| {
            let live = registration.expires > now;
            if !live {
                unmap_addr(by_addr, registration.addr, *node);
            }
            live
        });
        let by_index = &mut self.by_index;
        let clients_per_ip = &mut self.clients_per_ip;
        self.clients.retain(|_, client| {
            let live = now.saturating_duration_since(client.last_seen) < CLIENT_IDLE;
            if !live {
                for session in client.sessions.iter().flatten() {
                    by_index.remove(&session.local_index);
                }
                release_count(clients_per_ip, client.created_from);
            }
            live
        });
        let ttl = self.config.mailbox_ttl;
        let mut dropped = 0;
        let stored_per_ip = &mut self.stored_per_ip;
        let stored_bytes = &mut self.stored_bytes;
        self.mailbox.retain(|_, queue| {
            queue.retain(|stored| {
                let live = now.saturating_duration_since(stored.stored) < ttl;
                if !live {
                    dropped += 1;
                    release_count(stored_per_ip, stored.source);
                    *stored_bytes -= stored.datagram.len();
                }
                live
            });
            !queue.is_empty()
        });
        self.counters.mailbox_dropped += dropped;
        self.cookies.expire(now);
    }

    /// Feeds one datagram from a client.
    pub fn handle_datagram(&mut self, now: Instant, from: ClientAddr, datagram: &[u8]) {
        match Datagram::parse(datagram) {
            Ok(Datagram::Initiation(initiation)) => self.handle_initiation(now, from, &initiation),
            Ok(Datagram::Data(data)) => self.handle_data(now, from, &data),
            Ok(Datagram::Relay(_)) => self.handle_relay(now, from, datagram),
            _ => self.counters.rejected += 1,
        }
    }

    fn allocate_index(&mut self, agent: [u8; 32]) -> u32 {
        loop {
            let index = self.rng.next_u32();
            if index != 0 && !self.by_index.contains_key(&index) {
                self.by_index.insert(index, agent);
                return index;
            }
        }
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: ClientAddr,
        initiation: &wire::Initiation<'_>,
    ) {
        // mac1 first; under load, mac2 or a cookie reply instead of any
        // Diffie-Hellman (anyone may know a rendezvous' key).
        if !self.own_mac1.verify(initiation.bytes()) {
            self.counters.rejected += 1;
            return;
        }
        match self.cookies.admit(
            now,
            &mut self.rng,
            &HandshakeSource::Direct(from.socket_addr()),
            initiation.bytes(),
            initiation.sender_index(),
        ) {
            InitiationVerdict::Process => {}
            InitiationVerdict::SendCookie(reply) => {
                self.counters.cookie_replies += 1;
                self.transmits.push_back((from, reply));
                return;
            }
            // `admit` replies to any source (agents register from anywhere),
            // so `UnknownSource` does not happen here.
            InitiationVerdict::RateLimited
            | InitiationVerdict::CookieRateLimited
            | InitiationVerdict::UnknownSource => {
                self.counters.rejected += 1;
                return;
            }
        }
        let received = match ReceivedInitiation::read(
            &mut self.rng,
            self.config.network,
            &self.noise_static,
            &self.own_mac1,
            initiation,
        ) {
            Ok(received) => received,
            Err(_) => {
                self.counters.rejected += 1;
                return;
            }
        };
        // Any agent may register: clients are keyed by their Noise key; the
        // Register frame later names the Ed25519 key it derives from.
        let agent = received.remote_static;
        if let Some(client) = self.clients.get(&agent) {
            if client
                .last_timestamp
                .is_some_and(|last| received.payload.timestamp <= last)
                || client
                    .last_initiation
                    .is_some_and(|at| now.saturating_duration_since(at) < MIN_INITIATION_INTERVAL)
            {
                self.counters.rejected += 1;
                return;
            }
        } else if self.clients.len() >= MAX_CLIENTS
            || self
                .clients_per_ip
                .get(&address_key(from.socket_addr().ip()))
                .is_some_and(|count| *count >= self.config.max_clients_per_ip)
        {
            self.counters.rejected += 1;
            return;
        }
        let Some(version) = choose_version(&received.payload.versions) else {
            self.counters.rejected += 1;
            return;
        };
        let sender_index = received.sender_index;
        let timestamp = received.payload.timestamp;
        let local_index = self.allocate_index(agent);
        let payload = ResponsePayload {
            version,
            name: "rendezvous".into(),
            candidates: Vec::new(),
            nat: NatHint::default(),
            // A server's sessions carry control frames only (relayed
            // traffic passes sealed end to end): the cipher every build has.
            cipher: TransportCipher::ChaCha20Poly1305,
        };
        let (response, keys) = match received.respond(self.config.network, local_index, &payload) {
            Ok(answer) => answer,
            Err(_) => {
                self.by_index.remove(&local_index);
                self.counters.rejected += 1;
                return;
            }
        };
        let session = Session::new(&keys, local_index, sender_index, false, now);
        let clients_per_ip = &mut self.clients_per_ip;
        let client = self.clients.entry(agent).or_insert_with(|| {
            let source = address_key(from.socket_addr().ip());
            *clients_per_ip.entry(source).or_default() += 1;
            Client {
                sessions: [None, None],
                handshake_from: None,
                last_timestamp: None,
                last_initiation: None,
                addr: from,
                last_seen: now,
                created_from: source,
                registered_as: None,
            }
        });
        if let Some(old) = client.sessions[1].take() {
            self.by_index.remove(&old.local_index);
        }
        client.sessions[1] = client.sessions[0].take();
        client.sessions[0] = Some(session);
        client.handshake_from = Some(from);
        client.last_timestamp = Some(timestamp);
        client.last_initiation = Some(now);
        client.addr = from;
        client.last_seen = now;
        self.counters.handshakes += 1;
        self.transmits.push_back((from, response));
    }

    fn handle_data(&mut self, now: Instant, from: ClientAddr, data: &wire::Data<'_>) {
        let Some(noise_key) = self.by_index.get(&data.receiver_index()).copied() else {
            self.counters.rejected += 1;
            return;
        };
        let Some(client) = self.clients.get_mut(&noise_key) else {
            self.counters.rejected += 1;
            return;
        };
        let local_index = data.receiver_index();
        let Some(slot) = client.sessions.iter().position(|session| {
            session
                .as_ref()
                .is_some_and(|s| s.local_index == local_index)
        }) else {
            self.counters.rejected += 1;
            return;
        };
        let mut buffer = data.ciphertext().to_vec();
        let made_here = slot == 0 && client.handshake_from == Some(from);
        let Some(session) = client.sessions[slot].as_mut() else {
            return;
        };
        let Ok(len) = session.open(now, data.counter(), &mut buffer) else {
            self.counters.rejected += 1;
            return;
        };
        buffer.truncate(len);
        client.addr = from;
        client.last_seen = now;
        if buffer
            .first()
            .is_none_or(|first| *first >= CONTROL_FRAME_LIMIT)
        {
            return; // keepalive, or something a rendezvous does not carry
        }
        let Some(key) = ControlFrame::register_key_bytes(&buffer) else {
            return;
        };
        let node = match client.registered_as {
            Some((registered, node)) if registered == key => node,
            _ => {
                let Some(agent) = AgentId::from_bytes(key)
                    .ok()
                    .filter(|agent| agent.noise_public_key() == noise_key)
                else {
                    // Not a key, or not the one the session was made with:
                    // a session may only register its own key.
                    self.counters.rejected += 1;
                    return;
                };
                let node = NodeId::of(&agent);
                client.registered_as = Some((key, node));
                node
            }
        };
        let lifetime = self.config.registration_lifetime;
        if !made_here
            && address_held_by_another(
                &self.by_addr,
                &self.registrations,
                lifetime,
                (now, from, node),
            )
        {
            self.counters.address_claims_refused += 1;
            return;
        }
        let answer = ControlFrame::Registered {
            reflexive: from.socket_addr(),
            lifetime_s: u16::try_from(lifetime.as_secs()).unwrap_or(u16::MAX),
        }
        .encode();
        let mut sealed = Vec::with_capacity(answer.len() + wire::DATA_OVERHEAD);
        if session.seal(now, &answer, &mut sealed).is_err() {
            return;
        }
        self.transmits.push_back((from, sealed));
        let reads_source_tags = ControlFrame::register_reads_source_tags(&buffer);
        self.register(
            node,
            Registration {
                addr: from,
                expires: now + lifetime,
                reads_source_tags,
            },
        );
        self.counters.registrations += 1;
        if let Some(mail) = self.mailbox.remove(&node) {
            for stored in &mail {
                self.release_stored(stored);
            }
            for stored in mail {
                let mut datagram = stored.datagram;
                rewrite_relay_node(&mut datagram, stored.from_node);
                // Kept as the sender sent it: the tag is the server's.
                let tag = source_tag(&self.source_tag_secret, stored.source, reads_source_tags);
                set_relay_source_tag(&mut datagram, tag);
                self.counters.mailbox_delivered += 1;
                self.transmits.push_back((from, datagram));
            }
        }
    }

    /// Records `node` as registered from `registration.addr` until it
    /// expires, keeping `by_addr` its exact reverse. The node's previous
    /// address is forgotten if it still names the node. A node registered
    /// from that address before loses its registration (the caller checked
    /// the claim: see [`ADDRESS_HOLD`]): the address is another node's now
    /// (its NAT mapping was reused), so what is relayed to the old node
    /// must not go there, and trust requests for it wait in its mailbox
    /// until it registers from wherever it is now.
    fn register(&mut self, node: NodeId, registration: Registration) {
        let from = registration.addr;
        if let Some(previous) = self.registrations.insert(node, registration)
            && previous.addr != from
        {
            unmap_addr(&mut self.by_addr, previous.addr, node);
        }
        if let Some(displaced) = self.by_addr.insert(from, node)
            && displaced != node
            && self
                .registrations
                .get(&displaced)
                .is_some_and(|registration| registration.addr == from)
        {
            self.registrations.remove(&displaced);
        }
    }

    /// `source`: the sender's IP as [`address_key`] folds it.
    fn take_token(&mut self, now: Instant, source: IpAddr) -> bool {
        self.buckets.take(now, &source, &mut self.rng)
    }

    fn handle_relay(&mut self, now: Instant, from: ClientAddr, datagram: &[u8]) {
        let Some(source_node) = self.by_addr.get(&from).copied() else {
            self.counters.dropped_unregistered += 1;
            return;
        };
        let source = address_key(from.socket_addr().ip());
        if !self.take_token(now, source) {
            self.counters.dropped_rate_limited += 1;
            return;
        }
        let Ok(Datagram::Relay(relay)) = Datagram::parse(datagram) else {
            self.counters.rejected += 1;
            return;
        };
        let destination = NodeId(relay.destination());
        let is_trust_request = relay.inner().first() == Some(&TYPE_TRUST_REQUEST);
        match self.registrations.get(&destination) {
            Some(registration) if registration.expires > now => {
                let mut forwarded = datagram.to_vec();
                rewrite_relay_node(&mut forwarded, source_node);
                // Whatever the sender wrote there, the tag is the server's.
                let reads = is_trust_request && registration.reads_source_tags;
                let tag = source_tag(&self.source_tag_secret, source, reads);
                set_relay_source_tag(&mut forwarded, tag);
                self.counters.relayed_packets += 1;
                self.counters.relayed_bytes += forwarded.len() as u64;
                let to = registration.addr;
                self.transmits.push_back((to, forwarded));
            }
            _ if is_trust_request => {
                self.store_request(now, destination, source_node, source, datagram);
            }
            _ => self.counters.dropped_unknown_destination += 1,
        }
    }
}

/// Whether a node other than `node` registered from `from` within
/// [`ADDRESS_HOLD`] before `now` (its registration's expiry minus the
/// `lifetime` every registration is given): O(1), two lookups.
fn address_held_by_another(
    by_addr: &HashMap<ClientAddr, NodeId>,
    registrations: &HashMap<NodeId, Registration>,
    lifetime: Duration,
    (now, from, node): (Instant, ClientAddr, NodeId),
) -> bool {
    let Some(holder) = by_addr.get(&from).filter(|holder| **holder != node) else {
        return false;
    };
    registrations.get(holder).is_some_and(|registration| {
        let registered_at = registration
            .expires
            .checked_sub(lifetime)
            .unwrap_or(registration.expires);
        registration.addr == from && now.saturating_duration_since(registered_at) < ADDRESS_HOLD
    })
}

/// The tag of a source (its IP as [`address_key`] folds it) in the relay
/// envelopes of the trust requests it sends to an agent that `reads` tags:
/// 24 bits of a hash keyed with the server's secret, never 0 (no tag); 0
/// for an agent that does not. An agent sees which requests came from one
/// source, not the source.
fn source_tag(secret: &[u8; 16], source: IpAddr, reads: bool) -> u32 {
    if !reads {
        return 0;
    }
    // 24 bits: the tag fills the envelope's three spare bytes.
    let tag = (keyed_hash(secret, &source) & 0x00ff_ffff) as u32;
    tag.max(1)
}

/// Forgets `addr` as `node`'s address, unless it names another node now:
/// a node that registered from the address since keeps it.
fn unmap_addr(by_addr: &mut HashMap<ClientAddr, NodeId>, addr: ClientAddr, node: NodeId) {
    if by_addr.get(&addr) == Some(&node) {
        by_addr.remove(&addr);
    }
}

/// Decrements a per-source count, forgetting the source at zero.
fn release_count(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = counts.get_mut(&ip) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&ip);
        }
    }
}
