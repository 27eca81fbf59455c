//! One trusted peer: its sessions, handshake retries, queue and timers.

pub mod birthday;
pub mod context;
mod path;
mod pings;
mod punch;
mod schedule;
mod services;
mod sessions;
pub mod table;
mod timers;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::address::{NodeId, NodePrefix, agent_address4};
use crate::core::api::PeerConfig;
use crate::core::api::PeerSlot;
use crate::core::identity::AgentId;
use crate::core::noise::cookie::InitiatorCookie;
use crate::core::noise::handshake::InitiatorHandshake;
use crate::core::noise::session::Session;
use crate::core::peer::birthday::BurstBudget;
use crate::core::peer::context::Context;
use crate::core::policy::Policy;
use crate::core::policy::conntrack::{ConnectionTracker, InboundVerdict};
use crate::core::stats::status::{PathKind, PeerStatus};
use crate::core::stats::{PeerStats, ReportContext};
use crate::core::wire::packet::{IpPacket, IpVersion};
use crate::core::wire::path::NatHint;
use crate::core::wire::path::{NatKind, PathAddr};
use crate::core::wire::segment::TcpSegmentInfo;

use path::RelayState;
use punch::{ProbeRound, PunchState};
use services::ServicesExchange;

/// Send a keepalive when we received but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Base of the wait before a handshake is retried.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Traffic to a live peer is answered within this long (its keepalive
/// comes [`KEEPALIVE_TIMEOUT`] after our data at the latest): a peer
/// silent for longer has stopped, moved or dropped this agent, and
/// `status` says so instead of showing the last path it answered on.
pub const SILENT_AFTER: Duration = KEEPALIVE_TIMEOUT.saturating_add(REKEY_TIMEOUT);
/// First retry of an unanswered initiation.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Initiations from one peer closer together than this (accepted ones)
/// mean it is retrying on its own, faster than our first retry (a
/// well-behaved peer retries after ≥ 0.8 s): our own retry waits for it to
/// stop ([`Peer::accept_initiation`]).
const PEER_KEEPS_INITIATING: Duration = Duration::from_millis(500);
/// Longest wait between retries (backoff cap).
const MAX_RETRY: Duration = Duration::from_secs(8);
/// Stop retrying a handshake after this long; new traffic starts again.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Initiations from one peer closer together than this are dropped.
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);
/// Packets held while a session is being set up.
pub const MAX_QUEUED_PACKETS: usize = 128;
/// A direct path that has not answered for this long while we send on it is
/// given up for the relay.
pub const DIRECT_PATH_TIMEOUT: Duration = Duration::from_secs(3);
/// A relay that carries nothing back for this long while we send through it
/// is given up for the next one (shorter than for the direct path: the
/// alternative is another relay, not a slower path, so switching is cheap).
pub const RELAY_PATH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Probe an unanswered relay after this long.
const RELAY_PROBE_AFTER: Duration = Duration::from_millis(500);
/// Probe an unanswered direct path after this long.
const DIRECT_PROBE_AFTER: Duration = Duration::from_secs(1);
/// Hole-punching rounds: waits between rounds of pings to every candidate.
/// The last one, repeated, is longer than the 30 s a Linux router keeps an
/// unanswered UDP entry: a punch that failed behind a router without an
/// inbound firewall leaves nothing there for the next (`punch.rs`).
const PROBE_SCHEDULE: [Duration; 6] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(35),
];
/// A relay that failed a peer is tried again for it after this long.
const RELAY_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Least time between two ping-backs to a peer.
const PING_BACK_INTERVAL: Duration = Duration::from_millis(50);
/// Probe sockets a hard-NAT side punches from in one birthday round.
pub const BIRTHDAY_SOCKETS: u16 = 256;
/// Random ports an easy-NAT side probes in one birthday round. Against
/// the [`BIRTHDAY_SOCKETS`] mappings of a NAT that picks from 64,512 ports,
/// a round misses with probability (1 - 256/64512)^1024 ≈ 1.7 % (it was
/// ~13 % with 512 probes, measured 10 % in the NAT lab); three rounds fall
/// within the first 5 s (`PROBE_SCHEDULE`).
const BIRTHDAY_PORTS: usize = 1024;
/// How long the address a peer was last seen at directly bounds where its
/// birthday bursts go (after that, a peer that moved behind another NAT is
/// punched at the one address it claims).
const OBSERVED_IP_LIFETIME: Duration = Duration::from_secs(600);
/// Pings remembered for matching their pongs.
const MAX_OUTSTANDING_PINGS: usize = 32;
/// Start a handshake when a session we initiated is this old on receive.
const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(180 - 10 - 5);
/// Age at which a session the *peer* initiated is rekeyed by us when we
/// send on it, the agent with the lower ID first, the other later (so the
/// two do not cross again). Normally the initiator rekeys it first (at
/// `REKEY_AFTER_TIME` on send, [`REKEY_ON_RECEIVE_AGE`] on receive); this
/// is the backstop for a pair whose crossed handshakes, arriving in an
/// unlucky order, left both sides on sessions neither initiated, which
/// nobody would rekey before they expire under the traffic.
const RESPONDER_REKEY_AGE: [Duration; 2] = [Duration::from_secs(130), Duration::from_secs(140)];

/// Where the direct path to a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathState {
    /// No round trip proved the direct endpoint (yet, or any more): packets
    /// go through a live relay when there is one, else to the endpoint.
    /// `probing`: the next step of hole punching, if one is scheduled
    /// (`punch.rs`).
    Unproven {
        /// The next step of hole punching.
        probing: Option<ProbeRound>,
    },
    /// A round trip proved the direct endpoint: packets go there while it
    /// answers.
    Direct {
        /// The first direct send (with a relay to fall back to) not
        /// answered yet.
        unanswered_since: Option<Instant>,
    },
}

/// Which of a peer's session slots holds a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The session used for sending.
    Current,
    /// The session before it, still accepted while packets drain.
    Previous,
    /// A session we answered, used once the initiator confirms it.
    Next,
}

/// State of the handshakes this side initiates.
#[derive(Debug)]
struct Retry {
    first_attempt: Instant,
    attempts: u32,
    retry_at: Instant,
}

/// What a completed handshake told about the peer.
#[derive(Debug)]
pub struct HandshakeNews {
    /// The name it announced (escaped: it is shown in `status`).
    pub name: String,
    /// Its candidate endpoints.
    pub candidates: Vec<SocketAddr>,
    /// Its NAT kind and reflexive endpoints.
    pub nat: NatHint,
}

/// Per-peer counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub handshakes: u64,
    pub dropped_policy: u64,
    pub dropped_replay: u64,
    pub dropped_spoofed: u64,
}

/// What becomes of an IP packet received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// It goes to the TUN; `tcp_segment` is what the check read of its TCP
    /// segment (for the shell's segment merging).
    Deliver { tcp_segment: Option<TcpSegmentInfo> },
    /// Refused (counted).
    Drop,
}

/// A trusted peer.
pub struct Peer {
    config: PeerConfig,
    noise_public: [u8; 32],
    prefix: NodePrefix,
    /// The peer's derived IPv4 address.
    address4: Ipv4Addr,
    /// Whether IPv4 to and from this peer is routed: not when IPv4 is off
    /// here, nor when another trusted agent (or this one) holds the address
    /// (`ipv4_conflict` says which).
    ipv4_routed: bool,
    /// The agent that holds this peer's IPv4 address here, if not it
    /// (boxed: rare, and 33 bytes inline in every peer).
    ipv4_conflict: Option<Box<AgentId>>,
    endpoint: Option<SocketAddr>,
    /// The probe socket the direct endpoint is reached through (`None`: the
    /// main socket).
    endpoint_socket: Option<u16>,
    /// What the peer said about its NAT.
    remote_nat: NatKind,
    /// The peer's reflexive endpoints (what rendezvous servers saw).
    remote_reflexive: Vec<SocketAddr>,
    /// Birthday rounds this peer caused lately (bounded per window).
    birthday_budget: BurstBudget,
    /// The address the peer's last authenticated direct packet came from,
    /// and when: for [`OBSERVED_IP_LIFETIME`] the only one its birthday
    /// bursts may aim at.
    observed_ip: Option<(IpAddr, Instant)>,
    last_ping_back: Option<Instant>,
    /// When a revocation notice of this peer's was last checked (see
    /// [`Peer::may_check_revocation`]).
    last_revocation_check: Option<Instant>,
    // The session slots and the handshake in flight are boxed: empty most
    // of the time, and inline they made every peer ~5 KiB (issue 7).
    current: Option<Box<Session>>,
    previous: Option<Box<Session>>,
    next: Option<Box<Session>>,
    handshake: Option<Box<InitiatorHandshake>>,
    // Cold state is boxed, made when needed: an idle peer holds none of
    // it, and inline it cost every peer ~150 bytes (issue 16's idle-peer
    // goal, 2 KiB).
    retry: Option<Box<Retry>>,
    last_initiation_timestamp: Option<crate::core::noise::tai64n::Tai64N>,
    last_initiation_accepted: Option<Instant>,
    /// Packets waiting for a session.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every peer, not 32"
    )]
    queue: Option<Box<VecDeque<Vec<u8>>>>,
    conntrack: ConnectionTracker,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    unanswered_since: Option<Instant>,
    /// Since when data we sent has gone without any answer (kept across
    /// the handshake retries that `unanswered_since` starts).
    silent_since: Option<Instant>,
    last_handshake: Option<Instant>,
    remote_name: Option<String>,
    remote_candidates: Vec<SocketAddr>,
    counters: PeerCounters,
    /// The peer's node ID (relay envelopes name it).
    node_id: NodeId,
    /// Where the node's table keeps this peer (its session indices name it).
    slot: PeerSlot,
    /// Whether this "peer" is a rendezvous server (no IP traffic).
    is_rendezvous: bool,
    /// Where the direct path stands (proven, or unproven and probed).
    path: PathState,
    /// Last ping sent to check the path in use (not a hole-punching probe).
    last_ping_sent: Option<Instant>,
    /// Pings awaiting their pong (made at the first, dropped when the last
    /// is answered).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every peer, not 32"
    )]
    pings: Option<Box<VecDeque<(u64, PathAddr, Instant)>>>,
    /// The relay side of the path: where the peer was heard, what failed.
    relay: RelayState,
    /// The rendezvous servers the peer registers with (rendezvous hashing
    /// of its node ID), best first: where it is relayed to. Computed when
    /// the peer or the server list changes, not per packet.
    relay_servers: Vec<AgentId>,
    /// What times hole punching: the relay's round trip, who leads.
    punch: PunchState,
    /// The path last reported in an event.
    reported_path: PathKind,
    /// Round-trip time of the last answered path ping, in microseconds
    /// (saturating; status shows it in milliseconds).
    last_rtt_us: Option<u32>,
    /// When the path last changed.
    path_changed_at: Option<Instant>,
    /// Measurements for status and metrics: RTT, loss, handshakes, paths.
    stats: PeerStats,
    /// The cookie this peer gave us under load, and our initiation in
    /// flight: made at an initiation, dropped once a handshake completes
    /// unless a fresh cookie is held.
    cookie: Option<Box<InitiatorCookie>>,
    /// The services offered to the peer and those it advertised here.
    services: ServicesExchange,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.config.id)
            .field("endpoint", &self.endpoint)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Shortest time between two checks of a peer's revocation notices: each
/// costs an Ed25519 verification, ~50 times an ordinary packet's work, and
/// a peer could send a false one in every datagram. A true notice ends the
/// session it came on, so a peer that revokes needs only one.
const REVOCATION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Peer {
    /// Whether a revocation notice that came at `now` is checked: at most
    /// one per [`REVOCATION_CHECK_INTERVAL`]; the others are dropped.
    pub fn may_check_revocation(&mut self, now: Instant) -> bool {
        if self
            .last_revocation_check
            .is_some_and(|at| now.saturating_duration_since(at) < REVOCATION_CHECK_INTERVAL)
        {
            return false;
        }
        self.last_revocation_check = Some(now);
        true
    }

    /// A peer with no session yet, kept in `slot` of the node's table.
    pub fn new(ctx: &Context, config: PeerConfig, slot: PeerSlot) -> Self {
        let noise_public = config.id.noise_public_key();
        let node_id = NodeId::of(&config.id);
        Self {
            node_id,
            slot,
            prefix: NodePrefix::of_agent(ctx.network, &config.id),
            address4: agent_address4(ctx.network, &config.id),
            ipv4_routed: false,
            ipv4_conflict: None,
            endpoint: config.endpoint,
            endpoint_socket: None,
            remote_nat: NatKind::Unknown,
            remote_reflexive: Vec::new(),
            birthday_budget: BurstBudget::default(),
            observed_ip: None,
            last_ping_back: None,
            last_revocation_check: None,
            noise_public,
            config,
            current: None,
            previous: None,
            next: None,
            handshake: None,
            retry: None,
            last_initiation_timestamp: None,
            last_initiation_accepted: None,
            queue: None,
            conntrack: ConnectionTracker::default(),
            last_sent: None,
            last_received: None,
            unanswered_since: None,
            silent_since: None,
            last_handshake: None,
            remote_name: None,
            remote_candidates: Vec::new(),
            counters: PeerCounters::default(),
            is_rendezvous: false,
            path: PathState::Unproven { probing: None },
            last_ping_sent: None,
            pings: None,
            relay: RelayState::default(),
            relay_servers: ctx.servers_of(node_id),
            punch: PunchState::default(),
            reported_path: PathKind::None,
            last_rtt_us: None,
            path_changed_at: None,
            stats: PeerStats::default(),
            cookie: None,
            services: ServicesExchange::default(),
        }
    }

    /// Tracks an outbound packet for the connection table when the policy
    /// needs it.
    pub fn track_outbound(&mut self, now: Instant, packet: &IpPacket<'_>) {
        if self.config.allow != Policy::All {
            self.conntrack
                .track_outbound(now, &self.config.allow, packet);
        }
    }

    /// A rendezvous server kept as a peer: sessions and registrations, no
    /// IP traffic, no IPv4 route, no hole punching.
    pub fn new_rendezvous(ctx: &Context, config: PeerConfig, slot: PeerSlot) -> Self {
        Self {
            is_rendezvous: true,
            relay_servers: Vec::new(),
            ..Self::new(ctx, config, slot)
        }
    }

    /// The peer's agent ID.
    pub fn id(&self) -> AgentId {
        self.config.id
    }

    /// What the operator configured for this peer.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// The peer's static Noise key (X25519 form of its ID).
    pub fn noise_public(&self) -> &[u8; 32] {
        &self.noise_public
    }

    /// The peer's node prefix.
    pub fn prefix(&self) -> NodePrefix {
        self.prefix
    }

    /// The peer's derived IPv4 address (routed or not).
    pub fn address4(&self) -> Ipv4Addr {
        self.address4
    }

    /// Whether IPv4 to and from this peer is routed.
    pub fn ipv4_routed(&self) -> bool {
        self.ipv4_routed
    }

    /// The agent that holds this peer's IPv4 address here, if not it.
    pub fn ipv4_conflict(&self) -> Option<AgentId> {
        self.ipv4_conflict.as_deref().copied()
    }

    /// Sets whether the peer's IPv4 address is routed to it, and who holds
    /// it when not (the node decides, from the order peers were trusted).
    pub fn set_ipv4_route(&mut self, routed: bool, conflict: Option<AgentId>) {
        self.ipv4_routed = routed;
        self.ipv4_conflict = conflict.map(Box::new);
    }

    /// The peer's node ID (relay envelopes name it).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The rendezvous servers the peer registers with, best first.
    pub fn relay_servers(&self) -> &[AgentId] {
        &self.relay_servers
    }

    /// Recomputes the peer's servers (the configured list changed).
    pub fn refresh_relay_servers(&mut self, ctx: &Context) {
        if !self.is_rendezvous {
            self.relay_servers = ctx.servers_of(self.node_id);
        }
    }

    /// Where the node's table keeps this peer.
    pub fn slot(&self) -> PeerSlot {
        self.slot
    }

    /// Whether this "peer" is a rendezvous server (no IP traffic).
    pub fn is_rendezvous(&self) -> bool {
        self.is_rendezvous
    }

    /// Whether a current session exists (usable or not).
    pub fn has_session(&self) -> bool {
        self.current.is_some()
    }

    /// The peer's direct endpoint as last seen (or configured).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// The endpoints the peer announced.
    pub fn remote_candidates(&self) -> &[SocketAddr] {
        &self.remote_candidates
    }

    /// Takes a new configuration (name, endpoint, policy) for the peer: a
    /// configured endpoint replaces the one in use when it changed, a
    /// changed policy re-checks the tracked connections.
    pub fn reconfigure(&mut self, now: Instant, config: PeerConfig) {
        if config.endpoint.is_some() && self.endpoint.is_none() {
            self.endpoint = config.endpoint;
        }
        if self.config.endpoint != config.endpoint && config.endpoint.is_some() {
            self.endpoint = config.endpoint;
        }
        if self.config.allow != config.allow {
            self.conntrack.policy_changed(now);
        }
        self.config = config;
    }

    /// Drops idle connection-tracking entries (housekeeping).
    pub fn expire_connections(&mut self, now: Instant) {
        self.conntrack.expire(now);
    }

    /// Counts a packet from the TUN too big for the tunnel.
    pub fn count_too_big(&mut self) {
        self.stats.too_big += 1;
    }

    /// Whether an IP packet that came out of this peer's session may go to
    /// the TUN (with what was read of its TCP segment on the way): a rendezvous carries none; the source must be the peer's
    /// (its node prefix, or its routed IPv4 address) and the destination
    /// ours (inbound cryptokey routing); then its policy, with connection
    /// tracking, decides. Counts what it refuses.
    pub fn accept_inbound(&mut self, ctx: &Context, now: Instant, packet: &[u8]) -> Inbound {
        if self.is_rendezvous {
            // A rendezvous carries no IP traffic of its own.
            self.counters.dropped_spoofed += 1;
            return Inbound::Drop;
        }
        self.counters.rx_bytes += packet.len() as u64;
        self.counters.rx_packets += 1;
        let Some(packet) = IpPacket::new_checked(packet) else {
            self.counters.dropped_spoofed += 1;
            return Inbound::Drop;
        };
        let genuine = match packet.version() {
            IpVersion::V6 => {
                self.prefix.contains(&Ipv6Addr::from(packet.source()))
                    && NodePrefix::of_octets(&packet.destination()) == ctx.own_prefix
            }
            IpVersion::V4 => {
                self.ipv4_routed
                    && packet.source_ip() == IpAddr::V4(self.address4)
                    && ctx.own_address4.map(IpAddr::V4) == Some(packet.destination_ip())
            }
        };
        if !genuine {
            self.counters.dropped_spoofed += 1;
            return Inbound::Drop;
        }
        if self.config.allow != Policy::All
            && self
                .conntrack
                .check_inbound(now, &self.config.allow, &packet)
                == InboundVerdict::Deny
        {
            self.counters.dropped_policy += 1;
            return Inbound::Drop;
        }
        Inbound::Deliver {
            tcp_segment: TcpSegmentInfo::of(&packet),
        }
    }

    /// A snapshot for `status`.
    pub fn status(&self, ctx: &Context, now: Instant) -> PeerStatus {
        let up = self.is_up(now);
        PeerStatus {
            id: self.config.id,
            name: self.config.name.clone(),
            address: self.prefix.agent_address(),
            address4: self.ipv4_routed.then_some(self.address4),
            derived_address4: self.address4,
            address4_conflict: self.ipv4_conflict(),
            node_prefix: self.prefix.to_string(),
            endpoint: self.endpoint,
            path: self.path_kind(ctx, now),
            relay: match self.send_path(ctx, now) {
                Some(PathAddr::Relay(rendezvous)) if up => Some(rendezvous),
                _ => None,
            },
            rtt_ms: self.last_rtt_us.map(|micros| f64::from(micros) / 1000.0),
            silent_s: self
                .silent_since
                .map(|since| now.saturating_duration_since(since))
                .filter(|silent| *silent >= SILENT_AFTER)
                .map(|silent| silent.as_secs_f64()),
            candidates: self.remote_candidates.clone(),
            session_established: up,
            cipher: self
                .current
                .as_ref()
                .filter(|_| up)
                .map(|session| session.cipher().name()),
            last_handshake_age_s: self
                .last_handshake
                .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            rx_bytes: self.counters.rx_bytes,
            tx_bytes: self.counters.tx_bytes,
            rx_packets: self.counters.rx_packets,
            tx_packets: self.counters.tx_packets,
            handshakes: self.counters.handshakes,
            dropped_policy: self.counters.dropped_policy,
            dropped_replay: self.counters.dropped_replay,
            dropped_spoofed: self.counters.dropped_spoofed,
            allow: self.config.allow.to_string(),
            stats: self.stats.report(
                now,
                |at| ctx.unix_now(at),
                ReportContext {
                    path: self.path_kind(ctx, now),
                    relay_id: match self.send_path(ctx, now) {
                        Some(PathAddr::Relay(relay)) if up => ctx
                            .rendezvous
                            .iter()
                            .find(|link| link.endpoint == relay)
                            .map(|link| link.id),
                        _ => None,
                    },
                    mtu: ctx.tunnel_mtu,
                    policy: self.counters.dropped_policy,
                    replay: self.counters.dropped_replay,
                    spoofed: self.counters.dropped_spoofed,
                },
            ),
        }
    }
}
