//! One trusted peer: its sessions, handshake retries, queue and timers.

pub mod birthday;
pub mod context;
pub mod table;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};

use crate::core::address::{NodeId, NodePrefix, agent_address4};
use crate::core::api::PeerSlot;
use crate::core::api::{Event, PeerConfig};
use crate::core::identity::AgentId;
use crate::core::noise::cookie::InitiatorCookie;
use crate::core::noise::handshake::{InitiationPayload, InitiatorHandshake, SUPPORTED_VERSIONS};
use crate::core::noise::session::{REJECT_AFTER_TIME, Session};
use crate::core::peer::birthday::{BurstBudget, burst_targets};
use crate::core::peer::context::Context;
use crate::core::policy::Policy;
use crate::core::policy::conntrack::ConnectionTracker;
use crate::core::stats::status::{PathKind, PeerStatus};
use crate::core::stats::{PeerStats, ReportContext};
use crate::core::wire::control_frame::{CONTROL_FRAME_LIMIT, ControlFrame};
use crate::core::wire::packet::IpPacket;
use crate::core::wire::path::{NatKind, PathAddr};

/// Send a keepalive when we received but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Base of the wait before a handshake is retried.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry of an unanswered initiation.
const FIRST_RETRY: Duration = Duration::from_secs(1);
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
const PROBE_SCHEDULE: [Duration; 7] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
    Duration::from_secs(30),
];
/// A relay that failed a peer is tried again for it after this long.
const RELAY_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Least time between two ping-backs to a peer.
const PING_BACK_INTERVAL: Duration = Duration::from_millis(50);
/// Probe sockets a hard-NAT side punches from in one birthday round.
pub const BIRTHDAY_SOCKETS: u16 = 256;
/// Random ports an easy-NAT side probes in one birthday round.
const BIRTHDAY_PORTS: usize = 512;
/// How long the address a peer was last seen at directly bounds where its
/// birthday bursts go (after that, a peer that moved behind another NAT is
/// punched at the one address it claims).
const OBSERVED_IP_LIFETIME: Duration = Duration::from_secs(600);
/// Pings remembered for matching their pongs.
const MAX_OUTSTANDING_PINGS: usize = 32;
/// Start a handshake when a session we initiated is this old on receive.
const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(180 - 10 - 5);

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

/// A trusted peer.
pub struct Peer {
    pub config: PeerConfig,
    pub noise_public: [u8; 32],
    pub prefix: NodePrefix,
    /// The peer's derived IPv4 address.
    pub address4: Ipv4Addr,
    /// Whether IPv4 to and from this peer is routed: not when IPv4 is off
    /// here, nor when another trusted agent (or this one) holds the address
    /// (`ipv4_conflict` says which).
    pub ipv4_routed: bool,
    /// The agent that holds this peer's IPv4 address here, if not it.
    pub ipv4_conflict: Option<AgentId>,
    pub endpoint: Option<SocketAddr>,
    /// The probe socket the direct endpoint is reached through (`None`: the
    /// main socket).
    pub endpoint_socket: Option<u16>,
    /// What the peer said about its NAT.
    pub remote_nat: NatKind,
    /// The peer's reflexive endpoints (what rendezvous servers saw).
    pub remote_reflexive: Vec<SocketAddr>,
    /// Birthday rounds this peer caused lately (bounded per window).
    birthday_budget: BurstBudget,
    /// The address the peer's last authenticated direct packet came from,
    /// and when: for [`OBSERVED_IP_LIFETIME`] the only one its birthday
    /// bursts may aim at.
    observed_ip: Option<(IpAddr, Instant)>,
    last_ping_back: Option<Instant>,
    // The session slots and the handshake in flight are boxed: empty most
    // of the time, and inline they made every peer ~5 KiB (issue 7).
    pub current: Option<Box<Session>>,
    pub previous: Option<Box<Session>>,
    pub next: Option<Box<Session>>,
    handshake: Option<Box<InitiatorHandshake>>,
    retry: Option<Retry>,
    pub last_initiation_timestamp: Option<crate::core::noise::tai64n::Tai64N>,
    pub last_initiation_accepted: Option<Instant>,
    queue: VecDeque<Vec<u8>>,
    pub conntrack: ConnectionTracker,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    unanswered_since: Option<Instant>,
    pub last_handshake: Option<Instant>,
    pub remote_name: Option<String>,
    pub remote_candidates: Vec<SocketAddr>,
    pub counters: PeerCounters,
    /// The peer's node ID (relay envelopes name it).
    pub node_id: NodeId,
    /// Where the node's table keeps this peer (its session indices name it).
    pub slot: PeerSlot,
    /// Whether this "peer" is a rendezvous server (no IP traffic).
    pub is_rendezvous: bool,
    /// The direct endpoint answered a round trip recently.
    direct_confirmed: bool,
    /// First direct send not yet followed by a direct receive.
    direct_unanswered_since: Option<Instant>,
    /// Last ping sent to check the path in use (not a hole-punching probe).
    last_ping_sent: Option<Instant>,
    pings: VecDeque<(u64, PathAddr, Instant)>,
    next_probe: Option<Instant>,
    probe_round: usize,
    /// The rendezvous we last heard the peer through.
    heard_via: Option<SocketAddr>,
    /// First relayed send not yet followed by any receive from the peer.
    relay_unanswered_since: Option<Instant>,
    /// Relays that stopped carrying this peer's traffic, and since when.
    failed_relays: Vec<(SocketAddr, Instant)>,
    /// The path last reported in an event.
    reported_path: PathKind,
    /// Round-trip time of the last answered path ping.
    pub last_rtt: Option<Duration>,
    /// When the path last changed.
    pub path_changed_at: Option<Instant>,
    /// Measurements for status and metrics: RTT, loss, handshakes, paths.
    pub stats: PeerStats,
    /// The cookie this peer gave us under load, and our initiation in flight.
    pub cookie: InitiatorCookie,
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

impl Peer {
    /// A peer with no session yet, kept in `slot` of the node's table.
    pub fn new(ctx: &Context, config: PeerConfig, slot: PeerSlot) -> Self {
        let noise_public = config.id.noise_public_key();
        Self {
            node_id: NodeId::of(&config.id),
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
            noise_public,
            config,
            current: None,
            previous: None,
            next: None,
            handshake: None,
            retry: None,
            last_initiation_timestamp: None,
            last_initiation_accepted: None,
            queue: VecDeque::new(),
            conntrack: ConnectionTracker::default(),
            last_sent: None,
            last_received: None,
            unanswered_since: None,
            last_handshake: None,
            remote_name: None,
            remote_candidates: Vec::new(),
            counters: PeerCounters::default(),
            is_rendezvous: false,
            direct_confirmed: false,
            direct_unanswered_since: None,
            last_ping_sent: None,
            pings: VecDeque::new(),
            next_probe: None,
            probe_round: 0,
            heard_via: None,
            relay_unanswered_since: None,
            failed_relays: Vec::new(),
            reported_path: PathKind::None,
            last_rtt: None,
            path_changed_at: None,
            stats: PeerStats::default(),
            cookie: InitiatorCookie::default(),
        }
    }

    /// Whether a session can carry packets now.
    pub fn is_up(&self, now: Instant) -> bool {
        self.current
            .as_ref()
            .is_some_and(|session| session.is_usable(now))
    }

    /// The slot holding the session with this local index.
    pub fn slot_of(&self, local_index: u32) -> Option<Slot> {
        let holds = |session: &Option<Box<Session>>| {
            session
                .as_ref()
                .is_some_and(|s| s.local_index == local_index)
        };
        if holds(&self.current) {
            Some(Slot::Current)
        } else if holds(&self.next) {
            Some(Slot::Next)
        } else if holds(&self.previous) {
            Some(Slot::Previous)
        } else {
            None
        }
    }

    /// The session in a slot.
    pub fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_deref_mut(),
            Slot::Previous => self.previous.as_deref_mut(),
            Slot::Next => self.next.as_deref_mut(),
        }
    }

    /// Whether this local index belongs to our in-flight initiation.
    pub fn is_pending_initiation(&self, local_index: u32) -> bool {
        self.handshake
            .as_ref()
            .is_some_and(|h| h.local_index() == local_index)
    }

    /// The in-flight initiation (to finish it in place: a forged response
    /// must not spend it).
    pub fn pending_initiation_mut(&mut self) -> Option<&mut InitiatorHandshake> {
        self.handshake.as_deref_mut()
    }

    /// Drops the in-flight initiation (finished, or spent by a response that
    /// opened but was unusable).
    pub fn take_pending_initiation(&mut self) -> Option<InitiatorHandshake> {
        self.handshake.take().map(|handshake| *handshake)
    }

    /// Makes a new session current, keeping the old one as previous.
    pub fn install_current(&mut self, ctx: &mut Context, now: Instant, session: Box<Session>) {
        let was_up = self.is_up(now);
        if let Some(old) = self.previous.take() {
            ctx.release_index(old.local_index);
        }
        self.previous = self.current.take();
        // Initiator: since the first initiation; responder: since answering.
        let started = self
            .retry
            .as_ref()
            .map_or(session.created, |retry| retry.first_attempt);
        self.stats
            .on_handshake_completed(now, now.saturating_duration_since(started));
        self.current = Some(session);
        self.retry = None;
        if !was_up {
            ctx.events.push_back(Event::PeerUp { id: self.config.id });
        }
        self.flush_queue(ctx, now);
        if !self.direct_confirmed && self.relay_route(ctx, now).is_some() {
            self.start_probing(now);
        }
        self.report_path(ctx, now);
    }

    /// Holds an answered session until the initiator confirms it.
    pub fn install_next(&mut self, ctx: &mut Context, session: Box<Session>) {
        if let Some(old) = self.next.replace(session) {
            ctx.release_index(old.local_index);
        }
    }

    /// Promotes the confirmed `next` session to current.
    pub fn confirm_next(&mut self, ctx: &mut Context, now: Instant) {
        if let Some(session) = self.next.take() {
            self.install_current(ctx, now, session);
        }
    }

    /// Notes the path of an authenticated packet. A direct source is the
    /// peer's endpoint from now on (roaming); `proves_round_trip` says the
    /// packet answers something we sent there (pong, response, data sent
    /// only on a confirmed path), which confirms the direct path.
    pub fn observe_path(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        from: PathAddr,
        proves_round_trip: bool,
    ) {
        match from {
            PathAddr::Direct(address) | PathAddr::Probe(_, address) => {
                let socket = match from {
                    PathAddr::Probe(socket, _) => Some(socket),
                    _ => None,
                };
                let relay_alternative = self.relay_route(ctx, now).is_some();
                // While a confirmed endpoint works, an unconfirmed source
                // (a probe to another candidate) does not take its place.
                let same = self.endpoint == Some(address) && self.endpoint_socket == socket;
                let keep_confirmed =
                    self.direct_confirmed && !proves_round_trip && relay_alternative;
                if !same && !keep_confirmed {
                    self.endpoint = Some(address);
                    self.endpoint_socket = socket;
                    ctx.events.push_back(Event::EndpointChanged {
                        id: self.config.id,
                        endpoint: address,
                    });
                }
                self.observed_ip = Some((address.ip(), now));
                let same = self.endpoint == Some(address) && self.endpoint_socket == socket;
                if same && (proves_round_trip || !relay_alternative) {
                    self.direct_confirmed = true;
                    self.direct_unanswered_since = None;
                    self.next_probe = None;
                }
            }
            PathAddr::Relay(rendezvous) => {
                self.heard_via = Some(rendezvous);
                self.failed_relays.retain(|(relay, _)| *relay != rendezvous);
            }
        }
        self.relay_unanswered_since = None;
        self.report_path(ctx, now);
    }

    /// Notes an authenticated packet from the peer. Only packets with a
    /// payload call for a keepalive back; keepalives themselves do not, or
    /// two idle peers would keep each other awake forever.
    pub fn observe_receive(&mut self, now: Instant, has_payload: bool) {
        if has_payload {
            self.last_received = Some(now);
        }
        self.unanswered_since = None;
    }

    /// Whether we should start a handshake after receiving on the current
    /// session (it is ours and about to expire).
    pub fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        self.handshake.is_none()
            && self.current.as_ref().is_some_and(|session| {
                session.is_initiator
                    && now.saturating_duration_since(session.created) >= REKEY_ON_RECEIVE_AGE
            })
    }

    /// Sends an IP packet (already accepted for this peer) or a control
    /// payload; queues it and starts a handshake when no session is up.
    pub fn send(&mut self, ctx: &mut Context, now: Instant, payload: &[u8]) {
        if self.is_up(now) && self.send_path(ctx, now).is_some() {
            self.seal_and_transmit(ctx, now, payload);
        } else {
            if self.queue.len() >= MAX_QUEUED_PACKETS {
                self.queue.pop_front();
            }
            self.queue.push_back(payload.to_vec());
            self.start_handshake_if_idle(ctx, now);
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

    /// The rendezvous to relay through: the one we last heard the peer
    /// through if it is live, else the first live one.
    pub fn relay_route(&self, ctx: &Context, now: Instant) -> Option<SocketAddr> {
        if self.is_rendezvous {
            return None;
        }
        let failed = |relay: &SocketAddr| {
            self.failed_relays.iter().any(|(failed, since)| {
                failed == relay && now.saturating_duration_since(*since) < RELAY_RETRY_AFTER
            })
        };
        if let Some(via) = self.heard_via
            && ctx.relay_is_live(now, via)
            && !failed(&via)
        {
            return Some(via);
        }
        let live = ctx.live_relays(now);
        live.iter()
            .find(|relay| !failed(relay))
            .or(live.first())
            .copied()
    }

    /// Whether the direct path is usable: confirmed and not silent for
    /// longer than [`DIRECT_PATH_TIMEOUT`] while we send on it.
    fn direct_is_alive(&self, now: Instant) -> bool {
        self.direct_confirmed
            && self
                .direct_unanswered_since
                .is_none_or(|since| now.saturating_duration_since(since) < DIRECT_PATH_TIMEOUT)
    }

    /// The path packets take now.
    pub fn send_path(&self, ctx: &Context, now: Instant) -> Option<PathAddr> {
        let relay = self.relay_route(ctx, now);
        let direct = self.endpoint.map(|endpoint| match self.endpoint_socket {
            Some(socket) => PathAddr::Probe(socket, endpoint),
            None => PathAddr::Direct(endpoint),
        });
        match (direct, relay) {
            (Some(direct), Some(relay)) => Some(if self.direct_is_alive(now) {
                direct
            } else {
                PathAddr::Relay(relay)
            }),
            (Some(direct), None) => Some(direct),
            (None, Some(relay)) => Some(PathAddr::Relay(relay)),
            (None, None) => None,
        }
    }

    /// The direct path in use or to be confirmed (main or probe socket).
    fn direct_path(&self) -> Option<PathAddr> {
        self.endpoint.map(|endpoint| match self.endpoint_socket {
            Some(socket) => PathAddr::Probe(socket, endpoint),
            None => PathAddr::Direct(endpoint),
        })
    }

    fn path_kind(&self, ctx: &Context, now: Instant) -> PathKind {
        if !self.is_up(now) {
            return PathKind::None;
        }
        match self.send_path(ctx, now) {
            Some(PathAddr::Direct(_) | PathAddr::Probe(..)) => PathKind::Direct,
            Some(PathAddr::Relay(_)) => PathKind::Relay,
            None => PathKind::None,
        }
    }

    /// Emits a path-change event when the path differs from the last one
    /// reported.
    fn report_path(&mut self, ctx: &mut Context, now: Instant) {
        if self.is_rendezvous {
            return;
        }
        let path = self.path_kind(ctx, now);
        if path != self.reported_path {
            self.reported_path = path;
            self.path_changed_at = Some(now);
            let via = self.send_path(ctx, now).filter(|_| path != PathKind::None);
            self.stats.on_path_changed(now, path, via);
            ctx.events.push_back(Event::PathChanged {
                id: self.config.id,
                path,
            });
        }
    }

    /// Seals a payload on the current session and sends it along `path`.
    fn seal_to(&mut self, ctx: &mut Context, now: Instant, path: PathAddr, payload: &[u8]) -> bool {
        let Some(session) = self.current.as_mut() else {
            return false;
        };
        let mut datagram = Vec::with_capacity(payload.len() + crate::core::wire::DATA_OVERHEAD);
        if session.seal(now, payload, &mut datagram).is_err() {
            return false;
        }
        let local_index = session.local_index;
        ctx.send_on(path, self.node_id, datagram);
        // A control frame (probe, pong to a probe) off the path in use may
        // never reach the peer: tell it, so it is not counted as loss.
        if payload
            .first()
            .is_some_and(|first| *first < CONTROL_FRAME_LIMIT)
            && self.send_path(ctx, now) != Some(path)
        {
            self.stats.on_offpath_sent(local_index);
        }
        true
    }

    fn seal_and_transmit(&mut self, ctx: &mut Context, now: Instant, payload: &[u8]) {
        let Some(path) = self.send_path(ctx, now) else {
            return;
        };
        if !self.seal_to(ctx, now, path, payload) {
            return;
        }
        let wants_rekey = self
            .current
            .as_ref()
            .is_some_and(|session| session.wants_rekey(now));
        self.last_sent = Some(now);
        if !payload.is_empty() {
            self.counters.tx_bytes += payload.len() as u64;
            self.counters.tx_packets += 1;
            if self.unanswered_since.is_none() {
                self.unanswered_since = Some(now);
            }
            match path {
                PathAddr::Direct(_) | PathAddr::Probe(..) => {
                    if self.relay_route(ctx, now).is_some()
                        && self.direct_unanswered_since.is_none()
                    {
                        self.direct_unanswered_since = Some(now);
                    }
                }
                PathAddr::Relay(_) => {
                    if self.relay_unanswered_since.is_none() {
                        self.relay_unanswered_since = Some(now);
                    }
                }
            }
        }
        if wants_rekey {
            self.start_handshake_if_idle(ctx, now);
        }
    }

    /// Sends a path ping along `path`, remembering it for its pong. A
    /// liveness ping checks the path in use; a probe punches a candidate.
    fn send_ping(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        path: PathAddr,
        liveness: bool,
    ) -> Option<u64> {
        let id = ctx.rng.next_u64();
        if self.seal_to(ctx, now, path, &ControlFrame::PathPing { id }.encode()) {
            if self.pings.len() >= MAX_OUTSTANDING_PINGS {
                self.pings.pop_front();
            }
            self.pings.push_back((id, path, now));
            if liveness {
                self.last_ping_sent = Some(now);
            }
            return Some(id);
        }
        None
    }

    /// Answers a path ping on the path it came by (a direct answer is what
    /// opens this side's NAT for the peer).
    pub fn answer_ping(&mut self, ctx: &mut Context, now: Instant, id: u64, from: PathAddr) {
        self.seal_to(ctx, now, from, &ControlFrame::PathPong { id }.encode());
    }

    /// Handles a pong: measures RTT; a direct pong confirms the direct path.
    pub fn handle_pong(&mut self, ctx: &mut Context, now: Instant, id: u64, from: PathAddr) {
        let Some(position) = self.pings.iter().position(|(ping, _, _)| *ping == id) else {
            return;
        };
        let Some((_, sent_to, sent_at)) = self.pings.remove(position) else {
            return;
        };
        let rtt = now.saturating_duration_since(sent_at);
        self.last_rtt = Some(rtt);
        if self.stats.on_pong(now, id, rtt, from) {
            ctx.events.push_back(Event::PingReply {
                id: self.config.id,
                ping: id,
                rtt,
                path: from,
            });
        }
        let _ = sent_to;
        // The answer may come from another address than the one probed (a
        // NAT rewrote it); where it came from is what works.
        if from.direct_endpoint().is_some() {
            self.observe_path(ctx, now, from, true);
        }
    }

    /// A ping arrived on a direct path we have not confirmed: ping back on
    /// it at once, so our side confirms it too (after a birthday hit only
    /// that exact socket pair works).
    pub fn ping_back(&mut self, ctx: &mut Context, now: Instant, from: PathAddr) {
        if self.direct_confirmed || from.direct_endpoint().is_none() {
            return;
        }
        if self
            .last_ping_back
            .is_some_and(|at| now.saturating_duration_since(at) < PING_BACK_INTERVAL)
        {
            return;
        }
        self.last_ping_back = Some(now);
        self.send_ping(ctx, now, from, false);
    }

    /// One round of birthday probing (DESIGN.md §5 and issue 4): behind a
    /// hard NAT, ping the peer's reflexive endpoint from many fresh probe
    /// sockets; behind an easy NAT facing a hard one, ping many random
    /// ports of the peer's public address. A few hundred each make a hit
    /// likely in one round; rounds are few and spaced.
    fn birthday_round(&mut self, ctx: &mut Context, now: Instant) {
        let ours = ctx.nat_kind();
        if !matches!(
            (ours, self.remote_nat),
            (NatKind::Hard, NatKind::Easy) | (NatKind::Easy, NatKind::Hard)
        ) {
            return;
        }
        // Only at an address the peer could own, and a few rounds per
        // window: a lying hint must not aim bursts at a third party.
        let observed = self
            .observed_ip
            .filter(|(_, at)| now.saturating_duration_since(*at) < OBSERVED_IP_LIFETIME)
            .map(|(address, _)| address);
        let targets = burst_targets(&self.remote_reflexive, observed);
        if targets.is_empty() || !self.birthday_budget.take(now) {
            return;
        }
        let id = ctx.rng.next_u64();
        let mut sent = 0usize;
        match (ours, self.remote_nat) {
            (NatKind::Hard, NatKind::Easy) => {
                for target in targets.iter().copied() {
                    for socket in 0..BIRTHDAY_SOCKETS {
                        sent += usize::from(self.seal_to(
                            ctx,
                            now,
                            PathAddr::Probe(socket, target),
                            &ControlFrame::PathPing { id }.encode(),
                        ));
                    }
                }
            }
            (NatKind::Easy, NatKind::Hard) => {
                // One address (see `burst_targets`).
                if let Some(address) = targets.first().map(SocketAddr::ip) {
                    for _ in 0..BIRTHDAY_PORTS {
                        let port = ctx.rng.gen_range(1024..=u16::MAX);
                        let target = SocketAddr::new(address, port);
                        sent += usize::from(self.seal_to(
                            ctx,
                            now,
                            PathAddr::Direct(target),
                            &ControlFrame::PathPing { id }.encode(),
                        ));
                    }
                }
            }
            _ => return,
        }
        tracing::debug!(peer = %self.config.id, ?ours, theirs = ?self.remote_nat, sent, "birthday probing round");
        if self.pings.len() >= MAX_OUTSTANDING_PINGS {
            self.pings.pop_front();
        }
        if let Some(&target) = targets.first() {
            self.pings.push_back((id, PathAddr::Direct(target), now));
        }
    }

    /// A handshake came through a relay: the direct path is not proven for
    /// the new session, so probe it again before using it.
    pub fn forget_direct_path(&mut self, now: Instant) {
        if self.direct_confirmed {
            self.direct_confirmed = false;
            self.direct_unanswered_since = None;
            self.start_probing(now);
        }
    }

    /// Starts hole punching: rounds of pings to every candidate.
    pub fn start_probing(&mut self, now: Instant) {
        if !self.is_rendezvous && self.next_probe.is_none() {
            self.probe_round = 0;
            self.next_probe = Some(now);
        }
    }

    /// Learns the peer's candidate endpoints (from a handshake or update).
    pub fn set_remote_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        if candidates != self.remote_candidates {
            self.remote_candidates = candidates;
            if !self.direct_confirmed {
                self.start_probing(now);
            }
        }
    }

    /// Learns the peer's NAT kind and reflexive endpoints.
    pub fn set_remote_nat(&mut self, hint: crate::core::noise::handshake::NatHint) {
        self.remote_nat = hint.kind;
        self.remote_reflexive = hint.reflexive;
    }

    fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = self.endpoint.into_iter().collect();
        for candidate in &self.remote_candidates {
            if !targets.contains(candidate) {
                targets.push(*candidate);
            }
        }
        targets
    }

    fn flush_queue(&mut self, ctx: &mut Context, now: Instant) {
        let queued = std::mem::take(&mut self.queue);
        let was_empty = queued.is_empty();
        for payload in queued {
            self.seal_and_transmit(ctx, now, &payload);
        }
        if was_empty
            && self
                .current
                .as_ref()
                .is_some_and(|s| s.is_initiator && s.sent() == 0)
        {
            // Confirm the session to the responder, which waits for our
            // first packet before it sends on it.
            self.seal_and_transmit(ctx, now, &[]);
        }
    }

    /// Abandons any handshake in flight and starts a new one now.
    pub fn restart_handshake(&mut self, ctx: &mut Context, now: Instant) {
        if let Some(handshake) = self.handshake.take() {
            ctx.release_index(handshake.local_index());
        }
        self.retry = None;
        self.start_handshake_if_idle(ctx, now);
    }

    /// Starts a handshake unless one is in flight.
    pub fn start_handshake_if_idle(&mut self, ctx: &mut Context, now: Instant) {
        if self.retry.is_none() {
            self.retry = Some(Retry {
                first_attempt: now,
                attempts: 0,
                retry_at: now,
            });
            self.send_initiation(ctx, now);
        }
    }

    fn send_initiation(&mut self, ctx: &mut Context, now: Instant) {
        let Some(retry) = self.retry.as_mut() else {
            return;
        };
        retry.attempts += 1;
        // 1, 1, 2, 2, 4, 4, 8, 8, ... seconds: quick retries for a lossy
        // first exchange, then exponential backoff to the cap.
        let doublings = ((retry.attempts - 1) / 2).min(8);
        let backoff = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
        let jitter = ctx.rng.gen_range(0.8..1.2);
        retry.retry_at = now + backoff.mul_f64(jitter);
        if let Some(old) = self.handshake.take() {
            ctx.release_index(old.local_index());
        }
        // Direct and through every live relay, in parallel: whichever path
        // answers first carries the session (a duplicate arriving later is
        // dropped by the responder as a replayed initiation).
        let mut paths: Vec<PathAddr> = self.endpoint.map(PathAddr::Direct).into_iter().collect();
        if !self.is_rendezvous {
            paths.extend(ctx.live_relays(now).into_iter().map(PathAddr::Relay));
        }
        if paths.is_empty() {
            // Nowhere to send yet; the retry timer tries again (an endpoint
            // may be learnt from the peer's own initiation meanwhile).
            return;
        }
        let local_index = ctx.allocate_index(self.slot);
        let payload = InitiationPayload {
            timestamp: ctx.timestamp(now),
            versions: SUPPORTED_VERSIONS.to_vec(),
            name: ctx.name.clone(),
            candidates: ctx.local_candidates.clone(),
            nat: ctx.nat_hint(),
        };
        match InitiatorHandshake::start(
            &mut ctx.rng,
            ctx.network,
            &ctx.noise_secret,
            &self.noise_public,
            local_index,
            &payload,
        ) {
            Ok((handshake, mut datagram)) => {
                // mac2 when the peer gave us a cookie (it is under load).
                self.cookie.stamp(now, local_index, &mut datagram);
                tracing::debug!(peer = %self.config.id, local_index, attempt = self.retry.as_ref().map_or(0, |r| r.attempts), "sending handshake initiation");
                self.handshake = Some(Box::new(handshake));
                self.stats.on_initiation_sent();
                for path in paths {
                    ctx.send_on(path, self.node_id, datagram.clone());
                }
            }
            Err(error) => {
                tracing::warn!(peer = %self.config.id, %error, "could not build handshake initiation");
                ctx.release_index(local_index);
            }
        }
    }

    /// Destroys every session and pending handshake (keys are dropped).
    pub fn clear_sessions(&mut self, ctx: &mut Context) {
        for session in [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            ctx.release_index(session.local_index);
        }
        if let Some(handshake) = self.handshake.take() {
            ctx.release_index(handshake.local_index());
        }
        self.retry = None;
        self.queue.clear();
        self.unanswered_since = None;
    }

    /// Frees what only traffic needs once it stopped: the expanded AEAD
    /// keys of sessions idle for [`crate::core::noise::session::KEEP_EXPANDED_KEY_FOR`]
    /// (see [`Session::release_idle_keys`]) and the expired receive-rate
    /// window. Called by the node's housekeeping.
    pub fn release_idle_memory(&mut self, now: Instant) {
        for session in [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .flatten()
        {
            session.release_idle_keys(now);
        }
        self.stats.release_idle_memory(now);
    }

    /// The earliest time [`Peer::on_timeout`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.retry.as_ref().map(|retry| retry.retry_at);
        deadline = earliest(deadline, self.rtt_ping_deadline());
        if let Some(received) = self.last_received
            && self.current.is_some()
            && self.last_sent.is_none_or(|sent| sent < received)
        {
            deadline = earliest(deadline, Some(received + KEEPALIVE_TIMEOUT));
        }
        if let Some(since) = self.unanswered_since {
            deadline = earliest(deadline, Some(since + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT));
        }
        for session in [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
        {
            deadline = earliest(deadline, Some(session.created + REJECT_AFTER_TIME));
        }
        if self.current.is_some() {
            deadline = earliest(deadline, self.next_probe);
            if let Some(since) = self.relay_unanswered_since {
                deadline = earliest(deadline, Some(since + RELAY_PATH_TIMEOUT));
                if self.last_ping_sent.is_none_or(|ping| ping < since) {
                    deadline = earliest(deadline, Some(since + RELAY_PROBE_AFTER));
                }
            }
            if let Some(since) = self.direct_unanswered_since
                && self.direct_confirmed
            {
                let probe_at = since + DIRECT_PROBE_AFTER;
                let probe_due = self.last_ping_sent.is_none_or(|ping| ping < since);
                deadline = earliest(deadline, Some(since + DIRECT_PATH_TIMEOUT));
                if probe_due {
                    deadline = earliest(deadline, Some(probe_at));
                }
            }
        }
        deadline
    }

    /// Runs the peer's timers.
    pub fn on_timeout(&mut self, ctx: &mut Context, now: Instant) {
        let was_up = self.current.is_some();
        for slot in [Slot::Current, Slot::Previous, Slot::Next] {
            let expired = match slot {
                Slot::Current => &mut self.current,
                Slot::Previous => &mut self.previous,
                Slot::Next => &mut self.next,
            };
            if expired
                .as_ref()
                .is_some_and(|session| !session.is_usable(now))
                && let Some(session) = expired.take()
            {
                ctx.release_index(session.local_index);
            }
        }
        if was_up && self.current.is_none() {
            ctx.events.push_back(Event::PeerDown { id: self.config.id });
        }

        if let Some(retry) = &self.retry
            && retry.retry_at <= now
        {
            if now.saturating_duration_since(retry.first_attempt) >= REKEY_ATTEMPT_TIME {
                tracing::debug!(peer = %self.config.id, "giving up handshake until new traffic");
                if let Some(handshake) = self.handshake.take() {
                    ctx.release_index(handshake.local_index());
                }
                self.retry = None;
                self.queue.clear();
            } else {
                self.send_initiation(ctx, now);
            }
        }

        if let Some(since) = self.unanswered_since
            && now >= since + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
        {
            // We sent data and heard nothing back: the session may be dead
            // on the other side.
            self.unanswered_since = None;
            self.start_handshake_if_idle(ctx, now);
        }

        if let Some(received) = self.last_received
            && self.is_up(now)
            && self.last_sent.is_none_or(|sent| sent < received)
            && now >= received + KEEPALIVE_TIMEOUT
        {
            self.seal_and_transmit(ctx, now, &[]);
        }
        self.run_path_timers(ctx, now);
        self.run_rtt_ping(ctx, now);
    }

    /// Direct-path liveness and hole punching.
    fn run_path_timers(&mut self, ctx: &mut Context, now: Instant) {
        if !self.is_up(now) || self.is_rendezvous {
            return;
        }
        if let Some(since) = self.direct_unanswered_since
            && self.direct_confirmed
        {
            let silent = now.saturating_duration_since(since);
            if silent >= DIRECT_PATH_TIMEOUT {
                tracing::debug!(peer = %self.config.id, "direct path stopped answering; using the relay");
                self.direct_confirmed = false;
                self.direct_unanswered_since = None;
                self.start_probing(now);
            } else if silent >= DIRECT_PROBE_AFTER
                && self.last_ping_sent.is_none_or(|ping| ping < since)
                && let Some(direct) = self.direct_path()
            {
                // Traffic went out and nothing came back yet: ask.
                self.send_ping(ctx, now, direct, true);
            }
        }
        if let Some(since) = self.relay_unanswered_since
            && let Some(PathAddr::Relay(relay)) = self.send_path(ctx, now)
        {
            let silent = now.saturating_duration_since(since);
            if silent >= RELAY_PATH_TIMEOUT {
                // This relay stopped carrying the peer's traffic (server
                // gone, or the peer registered elsewhere): try the next.
                tracing::debug!(peer = %self.config.id, %relay, "relay stopped answering; trying another");
                self.failed_relays.retain(|(failed, _)| *failed != relay);
                self.failed_relays.push((relay, now));
                if self.heard_via == Some(relay) {
                    self.heard_via = None;
                }
                self.relay_unanswered_since = None;
            } else if silent >= RELAY_PROBE_AFTER
                && self.last_ping_sent.is_none_or(|ping| ping < since)
            {
                self.send_ping(ctx, now, PathAddr::Relay(relay), true);
            }
        }
        if let Some(probe_at) = self.next_probe
            && probe_at <= now
        {
            if self.direct_confirmed || self.relay_route(ctx, now).is_none() {
                self.next_probe = None;
            } else {
                for target in self.probe_targets() {
                    self.send_ping(ctx, now, PathAddr::Direct(target), false);
                }
                if self.probe_round >= 1 {
                    self.birthday_round(ctx, now);
                }
                let wait = PROBE_SCHEDULE[self.probe_round.min(PROBE_SCHEDULE.len() - 1)];
                self.probe_round += 1;
                self.next_probe = Some(now + wait);
            }
        }
        self.report_path(ctx, now);
    }

    /// IP packets sent and received so far (what makes a peer active).
    fn traffic(&self) -> u64 {
        self.counters.rx_packets + self.counters.tx_packets
    }

    /// When the periodic RTT ping is due (only while IP traffic flows).
    fn rtt_ping_deadline(&self) -> Option<Instant> {
        if self.is_rendezvous {
            return None;
        }
        let session = self.current.as_ref()?;
        self.stats
            .rtt_ping_deadline(self.traffic(), session.created)
    }

    /// Sends the periodic RTT ping on the path in use when it is due.
    fn run_rtt_ping(&mut self, ctx: &mut Context, now: Instant) {
        if self.is_rendezvous || self.current.is_none() {
            return;
        }
        // Asked first: it moves the schedule on even when nothing is sent.
        if !self.stats.rtt_ping_due(now, self.traffic()) || !self.is_up(now) {
            return;
        }
        let Some(path) = self.send_path(ctx, now) else {
            return;
        };
        if let Some(session) = &self.current
            && let Some(count) = self.stats.offpath_report(session.local_index)
        {
            let frame = ControlFrame::SkippedCounters { count }.encode();
            self.seal_to(ctx, now, path, &frame);
        }
        if let Some(id) = self.send_ping(ctx, now, path, false) {
            self.stats.on_ping_sent(now, id, false);
        }
    }

    /// Sends a path ping on the path in use for `agentnet ping`; its pong
    /// comes back as [`Event::PingReply`]. Returns the ping's id and path.
    pub fn request_ping(&mut self, ctx: &mut Context, now: Instant) -> Option<(u64, PathAddr)> {
        if self.is_rendezvous || !self.is_up(now) {
            return None;
        }
        let path = self.send_path(ctx, now)?;
        let id = self.send_ping(ctx, now, path, false)?;
        self.stats.on_ping_sent(now, id, true);
        Some((id, path))
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
            address4_conflict: self.ipv4_conflict,
            node_prefix: self.prefix.to_string(),
            endpoint: self.endpoint,
            path: self.path_kind(ctx, now),
            relay: match self.send_path(ctx, now) {
                Some(PathAddr::Relay(rendezvous)) if up => Some(rendezvous),
                _ => None,
            },
            rtt_ms: self.last_rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
            candidates: self.remote_candidates.clone(),
            session_established: up,
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
