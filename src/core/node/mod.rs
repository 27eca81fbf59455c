//! The sans-IO agent endpoint: every peer, session and timer of one agent.
//!
//! Call order (the quinn pattern), from one task:
//! 1. feed input with [`Node::handle_datagram`] (from the UDP socket),
//!    [`Node::handle_tun_packet`] (from the TUN) and, when the deadline from
//!    [`Node::poll_timeout`] passes, [`Node::handle_timeout`];
//! 2. then drain [`Node::poll_transmit`] (to the UDP socket),
//!    [`Node::poll_tun_packet`] (to the TUN) and [`Node::poll_event`];
//! 3. sleep until the next [`Node::poll_timeout`] or input.

pub mod known_sources;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::address::{NodeId, NodePrefix, agent_address4};
use crate::core::api::{
    AutoApprove, DEFAULT_REGISTER_INTERVAL, Event, Ipv4Route, NodeConfig, PeerConfig, PeerSlot,
    Transmit,
};
use crate::core::identity::{AgentId, Identity};
use crate::core::node::known_sources::KnownSources;
use crate::core::noise::cookie::{
    CookieReplyKey, CookieResponder, HandshakeSource, InitiationVerdict,
};
use crate::core::noise::handshake::{
    HandshakeError, ReceivedInitiation, ResponsePayload, choose_version,
};
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::session::{Session, SessionError};
use crate::core::peer::context::Context;
use crate::core::peer::context::RendezvousLink;
use crate::core::peer::table::PeerTable;
use crate::core::peer::{MIN_INITIATION_INTERVAL, Peer, Slot};
use crate::core::policy::Policy;
use crate::core::policy::conntrack::InboundVerdict;
use crate::core::rng::core_rng;
use crate::core::stats::status::{DropCounters, NodeStatus, RendezvousStatus};
use crate::core::trust::pending::{
    Admission, PendingRequest, PendingRequests, PendingStatus, RequestSender, SeenNonce,
};
use crate::core::trust::request::{Endorsement, TrustRequest, TrustRequestError};
use crate::core::wire::control_frame::{CONTROL_FRAME_LIMIT, ControlFrame};
use crate::core::wire::packet::{self, IpPacket, IpVersion};
use crate::core::wire::path::PathAddr;
use crate::core::wire::{self, Datagram};
use rand::RngCore;

/// A registration not acknowledged within this long means the rendezvous
/// is unreachable.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
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
    by_noise_key: HashMap<[u8; 32], PeerSlot>,
    by_prefix: HashMap<NodePrefix, PeerSlot>,
    /// IPv4 cryptokey routing: each routed peer's derived IPv4 address. On
    /// a collision the peer trusted first keeps it (see `route_ipv4`).
    by_address4: HashMap<Ipv4Addr, PeerSlot>,
    next_housekeeping: Instant,
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
    by_index: &HashMap<u32, PeerSlot>,
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
            noise_secret: config.identity.noise_secret_key(),
            own_mac1: Mac1Key::for_responder(config.network, &own_id.noise_public_key()),
            tunnel_mtu: config.tunnel_mtu,
            rng: core_rng(rng_seed),
            started: now,
            unix_at_start: unix_now,
            by_index: HashMap::new(),
            transmits: VecDeque::new(),
            tun_out: VecDeque::new(),
            events: VecDeque::new(),
            dropped: DropCounters::default(),
            local_candidates: Vec::new(),
            interface_candidates: Vec::new(),
            rendezvous: Vec::new(),
            register_interval: DEFAULT_REGISTER_INTERVAL,
        };
        Self {
            ctx,
            identity: config.identity,
            peers: PeerTable::default(),
            peer_order: Vec::new(),
            by_noise_key: HashMap::new(),
            by_prefix: HashMap::new(),
            by_address4: HashMap::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            pending: PendingRequests::default(),
            auto_approve: AutoApprove::default(),
            cookies: CookieResponder::new(config.network, &own_id.noise_public_key()),
            known_sources: KnownSources::default(),
        }
    }

    /// Sets how many handshake initiations per second put this node under
    /// load (cookies required; default
    /// [`crate::core::noise::cookie::DEFAULT_LOAD_THRESHOLD`]; 0: always).
    pub fn set_handshake_load_threshold(&mut self, per_second: u32) {
        self.cookies.set_load_threshold(per_second);
    }

    /// Whether this node is under handshake load (answering initiations
    /// without a valid mac2 with cookie replies).
    pub fn is_under_handshake_load(&self, now: Instant) -> bool {
        self.cookies.is_under_load(now)
    }

    /// Sets who is trusted without an operator.
    pub fn set_auto_approve(&mut self, rules: AutoApprove) {
        self.auto_approve = rules;
    }

    /// Builds a sealed trust request to `target` and sends it to the
    /// endpoint hint (if any) and through every registered rendezvous.
    /// Returns the datagram.
    pub fn send_trust_request(
        &mut self,
        now: Instant,
        target: AgentId,
        justification: &str,
        requested: Policy,
        endpoint: Option<SocketAddr>,
        endorsement: Option<Endorsement>,
    ) -> Result<Vec<u8>, TrustRequestError> {
        let mut nonce = [0u8; 16];
        self.ctx.rng.fill_bytes(&mut nonce);
        let request = TrustRequest {
            requester: self.ctx.own_id,
            target,
            unix_time: self.ctx.unix_now(now).as_secs(),
            nonce,
            name: self.ctx.name.clone(),
            justification: justification.to_string(),
            requested,
            candidates: self.ctx.local_candidates.clone(),
            endorsement,
        };
        let datagram = request.seal(&mut self.ctx.rng, self.ctx.network, &self.identity)?;
        if let Some(endpoint) = endpoint {
            self.ctx.transmit(endpoint, datagram.clone());
        }
        // And through every rendezvous: it forwards the request unchanged to
        // a registered target, or keeps it in the target's mailbox.
        for relay in self.ctx.live_relays(now) {
            self.ctx.send_on(
                PathAddr::Relay(relay),
                NodeId::of(&target),
                datagram.clone(),
            );
        }
        Ok(datagram)
    }

    /// Trust requests waiting for an operator, oldest first.
    pub fn pending_requests(&self, now: Instant) -> Vec<PendingStatus> {
        self.pending.list(now)
    }

    /// Removes a pending request (to approve or deny it).
    pub fn take_pending_request(&mut self, id: &AgentId) -> Option<PendingRequest> {
        self.pending.take(id)
    }

    /// Pending trust requests with all they carry, oldest first (the shell
    /// saves them so they survive a restart).
    pub fn pending_request_details(&self) -> impl Iterator<Item = &PendingRequest> {
        self.pending.iter()
    }

    /// Puts back a pending request saved before a restart; ignored if the
    /// requester is a peer by now.
    pub fn restore_pending_request(&mut self, now: Instant, pending: PendingRequest) {
        let requester = pending.request.requester;
        if requester == self.ctx.own_id || self.peers.contains(&requester) {
            return;
        }
        self.pending.restore(now, pending);
    }

    /// Nonces of trust requests seen recently (waiting, approved or
    /// denied), with how long each must still be remembered: the shell saves
    /// them so a replay after a restart is still a replay.
    pub fn seen_trust_request_nonces(&self, now: Instant) -> impl Iterator<Item = SeenNonce> + '_ {
        self.pending.seen_nonces(now)
    }

    /// Remembers a trust-request nonce saved before a restart.
    pub fn restore_seen_trust_request_nonce(&mut self, now: Instant, seen: SeenNonce) {
        self.pending.restore_seen_nonce(now, seen);
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

    /// This agent's IPv4 overlay address, unless IPv4 is off.
    pub fn address4(&self) -> Option<Ipv4Addr> {
        self.ctx.own_address4
    }

    /// Turns the IPv4 overlay on (the default) or off. Off, IPv4 packets
    /// are neither sent nor accepted and no peer has an IPv4 route.
    pub fn set_ipv4(&mut self, enabled: bool) {
        self.ctx.own_address4 = enabled.then(|| agent_address4(self.ctx.network, &self.ctx.own_id));
        self.by_address4.clear();
        for index in 0..self.peer_order.len() {
            self.route_ipv4(self.peer_order[index]);
        }
    }

    /// Gives the peer in `slot` its IPv4 route unless the address is taken:
    /// by this agent, or by a peer trusted earlier (which keeps it; the
    /// later one is reachable over IPv6 only, and status says why).
    fn route_ipv4(&mut self, slot: PeerSlot) {
        let own = self.ctx.own_address4;
        let own_id = self.ctx.own_id;
        let Some(peer) = self.peers.at(slot) else {
            return;
        };
        if peer.is_rendezvous {
            return;
        }
        let address = peer.address4;
        let conflict = match own {
            None => None,
            Some(own) if own == address => Some(Some(own_id)),
            Some(_) => match self.by_address4.get(&address) {
                Some(holder) if *holder != slot => {
                    Some(self.peers.at(*holder).map(|holder| holder.config.id))
                }
                _ => {
                    self.by_address4.insert(address, slot);
                    None
                }
            },
        };
        if let Some(peer) = self.peers.at_mut(slot) {
            peer.ipv4_routed = own.is_some() && conflict.is_none();
            peer.ipv4_conflict = conflict.flatten();
            if let Some(holder) = peer.ipv4_conflict {
                tracing::warn!(
                    peer = %peer.config.id,
                    address = %address,
                    holder = %holder,
                    "two agents derive the same IPv4 address: the later one is reachable over IPv6 only"
                );
            }
        }
    }

    /// How IPv4 reaches a trusted peer (`None`: not a peer).
    pub fn peer_ipv4_route(&self, id: &AgentId) -> Option<Ipv4Route> {
        let peer = self.peers.get(id).filter(|peer| !peer.is_rendezvous)?;
        Some(match (peer.ipv4_routed, peer.ipv4_conflict) {
            (true, _) => Ipv4Route::Routed(peer.address4),
            (false, Some(holder)) => Ipv4Route::TakenBy(holder),
            (false, None) => Ipv4Route::Off,
        })
    }

    /// The trusted peer an overlay address belongs to (its agent address,
    /// an address in its node prefix, or its routed IPv4 address).
    pub fn peer_of_address(&self, address: IpAddr) -> Option<AgentId> {
        let slot = match address {
            IpAddr::V6(v6) => self.by_prefix.get(&NodePrefix::of_address(&v6)),
            IpAddr::V4(v4) => self.by_address4.get(&v4),
        }?;
        self.peers
            .at(*slot)
            .filter(|peer| !peer.is_rendezvous)
            .map(|peer| peer.config.id)
    }

    /// Adds a trusted peer, or updates its name, endpoint and policy.
    pub fn upsert_peer(&mut self, now: Instant, peer: PeerConfig) {
        if peer.id == self.ctx.own_id {
            return;
        }
        self.known_sources.invalidate();
        if let Some(existing) = self.peers.get_mut(&peer.id) {
            if peer.endpoint.is_some() && existing.endpoint.is_none() {
                existing.endpoint = peer.endpoint;
            }
            if existing.config.endpoint != peer.endpoint && peer.endpoint.is_some() {
                existing.endpoint = peer.endpoint;
            }
            if existing.config.allow != peer.allow {
                existing.conntrack.policy_changed(now);
            }
            existing.config = peer;
            return;
        }
        let ctx = &self.ctx;
        let state = self
            .peers
            .insert(peer.id, |slot| Peer::new(ctx, peer, slot));
        self.by_noise_key.insert(state.noise_public, state.slot);
        self.by_prefix.insert(state.prefix, state.slot);
        let slot = state.slot;
        self.peer_order.push(slot);
        self.route_ipv4(slot);
    }

    /// Removes a peer and destroys its sessions and keys at once. Returns
    /// whether it was known.
    pub fn remove_peer(&mut self, id: &AgentId) -> bool {
        let Some(mut peer) = self.peers.remove(id) else {
            return false;
        };
        self.known_sources.invalidate();
        let was_up = peer.current.is_some();
        peer.clear_sessions(&mut self.ctx);
        self.by_noise_key.remove(&peer.noise_public);
        self.by_prefix.remove(&peer.prefix);
        self.peer_order.retain(|slot| *slot != peer.slot);
        if self.by_address4.get(&peer.address4) == Some(&peer.slot) {
            // The address is free: the earliest peer that wanted it gets it.
            self.by_address4.remove(&peer.address4);
            let waiting: Vec<PeerSlot> = self
                .peer_order
                .iter()
                .copied()
                .filter(|slot| {
                    self.peers
                        .at(*slot)
                        .is_some_and(|other| other.address4 == peer.address4)
                })
                .collect();
            for slot in waiting {
                self.route_ipv4(slot);
            }
        }
        // Packets of this peer may still be queued for the TUN; they were
        // accepted before the removal, so they may go out.
        if was_up {
            self.ctx.events.push_back(Event::PeerDown { id: *id });
        }
        true
    }

    /// Revokes a peer: sends it a signed revocation notice over its session
    /// (if one is up), then removes it as [`Node::remove_peer`] does.
    pub fn revoke_peer(&mut self, now: Instant, id: &AgentId) -> bool {
        let signature = self
            .identity
            .sign(&revocation_context(&self.ctx.own_id, id));
        if let Some(peer) = self.peers.get_mut(id)
            && peer.is_up(now)
        {
            peer.send(
                &mut self.ctx,
                now,
                &ControlFrame::Revoked { signature }.encode(),
            );
        }
        self.remove_peer(id)
    }

    /// Starts a handshake with a peer now (if none is under way).
    pub fn connect(&mut self, now: Instant, id: &AgentId) {
        if let Some(peer) = self.peers.get_mut(id)
            && !peer.is_up(now)
        {
            peer.start_handshake_if_idle(&mut self.ctx, now);
        }
    }

    /// Feeds one UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match Datagram::parse(datagram) {
            Ok(Datagram::Relay(relay)) if self.ctx.is_rendezvous_endpoint(from) => {
                // A rendezvous delivers a datagram from the node it names.
                let source = NodeId(relay.destination());
                match Datagram::parse(relay.inner()) {
                    Ok(Datagram::Relay(_)) | Err(_) => self.ctx.dropped.malformed += 1,
                    Ok(inner) => self.dispatch(now, PathAddr::Relay(from), Some(source), inner),
                }
            }
            Ok(Datagram::Relay(_)) => self.ctx.dropped.malformed += 1,
            Ok(parsed) => self.dispatch(now, PathAddr::Direct(from), None, parsed),
            Err(_) => self.ctx.dropped.malformed += 1,
        }
    }

    /// Feeds one datagram received on probe socket `socket` (see
    /// [`PathAddr::Probe`]): only direct traffic of a peer uses those.
    pub fn handle_datagram_on_probe(
        &mut self,
        now: Instant,
        socket: u16,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        match Datagram::parse(datagram) {
            Ok(Datagram::Data(data)) => {
                self.handle_data(now, PathAddr::Probe(socket, from), None, &data)
            }
            Ok(Datagram::Initiation(initiation)) => {
                self.handle_initiation(now, PathAddr::Probe(socket, from), None, &initiation)
            }
            Ok(Datagram::Response(response)) => {
                self.handle_response(now, PathAddr::Probe(socket, from), None, &response)
            }
            Ok(Datagram::CookieReply(reply)) => self.handle_cookie_reply(now, None, &reply),
            _ => self.ctx.dropped.malformed += 1,
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        datagram: Datagram<'_>,
    ) {
        match datagram {
            Datagram::Initiation(initiation) => {
                self.handle_initiation(now, from, relayed_by, &initiation)
            }
            Datagram::Response(response) => self.handle_response(now, from, relayed_by, &response),
            Datagram::Data(data) => self.handle_data(now, from, relayed_by, &data),
            Datagram::TrustRequest(bytes) => {
                self.handle_trust_request(now, from, relayed_by, bytes)
            }
            Datagram::CookieReply(reply) => self.handle_cookie_reply(now, relayed_by, &reply),
            Datagram::Relay(_) => self.ctx.dropped.malformed += 1,
        }
    }

    /// Adds a rendezvous server: this agent registers with it, learns its
    /// reflexive endpoint and relays through it.
    pub fn add_rendezvous(&mut self, now: Instant, id: AgentId, endpoint: SocketAddr) {
        if self.ctx.rendezvous.iter().any(|link| link.id == id) || id == self.ctx.own_id {
            return;
        }
        self.ctx.rendezvous.push(RendezvousLink {
            id,
            endpoint,
            registered_until: None,
            reflexive: None,
            next_register: now,
            last_registered: None,
            register_unanswered_since: None,
        });
        if !self.peers.contains(&id) {
            let ctx = &self.ctx;
            self.peers.insert(id, |slot| {
                let config = PeerConfig {
                    id,
                    name: "rendezvous".into(),
                    endpoint: Some(endpoint),
                    allow: Policy::All,
                };
                let mut peer = Peer::new(ctx, config, slot);
                peer.is_rendezvous = true;
                peer
            });
        }
    }

    /// Registers with a rendezvous now and, if its session is down, starts a
    /// fresh handshake at once (the shell calls this after switching the
    /// server's transport, e.g. from UDP to TCP).
    pub fn reconnect_rendezvous(&mut self, now: Instant, id: &AgentId) {
        if let Some(link) = self.ctx.rendezvous.iter_mut().find(|link| link.id == *id) {
            link.next_register = now;
        }
        if let Some(peer) = self.peers.get_mut(id)
            && !peer.is_up(now)
        {
            peer.restart_handshake(&mut self.ctx, now);
        }
        self.run_registrations(now);
    }

    /// This agent's registrations (cheap; for the shell's transport choice).
    pub fn rendezvous_status(&self, now: Instant) -> Vec<RendezvousStatus> {
        self.ctx
            .rendezvous
            .iter()
            .map(|link| RendezvousStatus {
                id: link.id,
                endpoint: link.endpoint,
                registered: link.is_live(now),
                reflexive: link.reflexive,
                last_registered_age_s: link
                    .last_registered
                    .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            })
            .collect()
    }

    /// Sets how often registrations are refreshed (default 25 s).
    pub fn set_register_interval(&mut self, interval: Duration) {
        self.ctx.register_interval = interval.max(Duration::from_secs(1));
    }

    fn run_registrations(&mut self, now: Instant) {
        for index in 0..self.ctx.rendezvous.len() {
            let link = &mut self.ctx.rendezvous[index];
            if let Some(since) = link.register_unanswered_since
                && now.saturating_duration_since(since) >= REGISTER_TIMEOUT
                && link.registered_until.is_some()
            {
                // The server stopped answering (gone, or the path to it is
                // blocked): do not relay through it any more.
                tracing::info!(rendezvous = %link.id, "rendezvous stopped answering");
                link.registered_until = None;
            }
            if link.next_register > now {
                continue;
            }
            link.next_register = now + self.ctx.register_interval;
            if link.register_unanswered_since.is_none() {
                link.register_unanswered_since = Some(now);
            }
            let id = link.id;
            let frame = ControlFrame::Register {
                agent: self.ctx.own_id,
            }
            .encode();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.send(&mut self.ctx, now, &frame);
            }
        }
    }

    fn handle_registered(
        &mut self,
        now: Instant,
        rendezvous: AgentId,
        reflexive: SocketAddr,
        lifetime_s: u16,
    ) {
        let Some(link) = self
            .ctx
            .rendezvous
            .iter_mut()
            .find(|link| link.id == rendezvous)
        else {
            return;
        };
        let was_live = link.is_live(now);
        link.registered_until = Some(now + Duration::from_secs(u64::from(lifetime_s)));
        link.last_registered = Some(now);
        link.register_unanswered_since = None;
        let reflexive_changed = link.reflexive != Some(reflexive);
        link.reflexive = Some(reflexive);
        if !was_live || reflexive_changed {
            tracing::info!(rendezvous = %rendezvous, %reflexive, "registered with rendezvous");
            self.ctx.events.push_back(Event::RendezvousRegistered {
                id: rendezvous,
                reflexive,
            });
        }
        if self.ctx.refresh_candidates() {
            self.announce_candidates(now);
        }
    }

    /// Tells every connected peer our current candidates (roaming, NAT
    /// rebinding), so it can punch towards the new ones.
    fn announce_candidates(&mut self, now: Instant) {
        let frame = ControlFrame::Candidates {
            candidates: self.ctx.local_candidates.clone(),
            nat: self.ctx.nat_hint(),
        }
        .encode();
        for peer in self.peers.iter_mut() {
            if !peer.is_rendezvous && peer.is_up(now) {
                peer.send(&mut self.ctx, now, &frame);
            }
        }
    }

    fn handle_trust_request(
        &mut self,
        now: Instant,
        path: PathAddr,
        relayed_by: Option<NodeId>,
        datagram: &[u8],
    ) {
        let from = path.underlay();
        let unix_now = self.ctx.unix_now(now);
        // Cheap checks first (no table is touched for garbage), then the
        // sender's rate and the verification budget (see `core::pending`).
        match TrustRequest::check_envelope(datagram, &self.ctx.own_mac1) {
            Ok(()) => {}
            Err(TrustRequestError::BadMac1) => {
                self.ctx.dropped.bad_mac1 += 1;
                return;
            }
            Err(_) => {
                self.ctx.dropped.trust_requests_rejected += 1;
                return;
            }
        }
        let sender = RequestSender::of_path(path, relayed_by);
        if self
            .pending
            .allow_verification(now, &sender, &mut self.ctx.rng)
            .is_err()
        {
            self.ctx.dropped.trust_requests_rate_limited += 1;
            return;
        }
        let dropped = &mut self.ctx.dropped;
        let request = match TrustRequest::open(
            datagram,
            self.ctx.network,
            &self.identity,
            &self.ctx.own_mac1,
            unix_now,
        ) {
            Ok(request) => request,
            Err(TrustRequestError::BadMac1) => {
                dropped.bad_mac1 += 1;
                return;
            }
            Err(error) => {
                tracing::debug!(%from, %error, "dropping trust request");
                dropped.trust_requests_rejected += 1;
                return;
            }
        };
        if self.peers.contains(&request.requester) || request.requester == self.ctx.own_id {
            dropped.trust_requests_rejected += 1;
            return;
        }
        match self.pending.check(now, &request, &mut self.ctx.rng) {
            Admission::Replayed => dropped.trust_requests_replayed += 1,
            Admission::RateLimited => dropped.trust_requests_rate_limited += 1,
            Admission::Queued => {
                let id = request.requester;
                let auto_approve =
                    self.auto_approve
                        .approves(&request, self.ctx.network, unix_now.as_secs());
                tracing::info!(requester = %id, name = %crate::core::text::Untrusted(&request.name), %from, auto_approve, "trust request received");
                self.pending.insert(now, request, from, path.is_relay());
                self.ctx
                    .events
                    .push_back(Event::TrustRequested { id, auto_approve });
            }
        }
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        initiation: &wire::Initiation<'_>,
    ) {
        let ctx = &mut self.ctx;
        // mac1 first (cheap, strangers stop here); then, under load, mac2
        // or a cookie reply instead of any Diffie-Hellman.
        if !ctx.own_mac1.verify(initiation.bytes()) {
            ctx.dropped.bad_mac1 += 1;
            return;
        }
        let source = HandshakeSource::of_path(from, relayed_by);
        // Under load, a cookie reply goes only where a trusted peer is: a
        // stranger gets no reply of any kind (issue #17, item 5).
        let (known_sources, peers) = (&mut self.known_sources, &self.peers);
        match self.cookies.admit_replying_only_to(
            now,
            &mut ctx.rng,
            &source,
            initiation.bytes(),
            initiation.sender_index(),
            || known_sources.admits(now, &source, peers),
        ) {
            InitiationVerdict::Process => {}
            InitiationVerdict::SendCookie(reply) => {
                ctx.dropped.needs_cookie += 1;
                ctx.send_on(from, relayed_by.unwrap_or(NodeId([0; 8])), reply);
                return;
            }
            InitiationVerdict::RateLimited => {
                ctx.dropped.handshake_rate_limited += 1;
                return;
            }
            InitiationVerdict::CookieRateLimited => {
                ctx.dropped.cookie_rate_limited += 1;
                return;
            }
            InitiationVerdict::UnknownSource => {
                ctx.dropped.under_load_unknown_source += 1;
                return;
            }
        }
        let received = match ReceivedInitiation::read(
            &mut ctx.rng,
            ctx.network,
            &ctx.noise_secret,
            &ctx.own_mac1,
            initiation,
        ) {
            Ok(received) => received,
            Err(HandshakeError::BadMac1) => {
                ctx.dropped.bad_mac1 += 1;
                return;
            }
            Err(_) => {
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        let Some(slot) = self.by_noise_key.get(&received.remote_static).copied() else {
            ctx.dropped.untrusted += 1;
            return;
        };
        let Some(peer) = self.peers.at_mut(slot).filter(|peer| !peer.is_rendezvous) else {
            ctx.dropped.untrusted += 1;
            return;
        };
        let id = peer.config.id;
        if relayed_by.is_some_and(|node| node != peer.node_id) {
            ctx.dropped.handshake_failed += 1;
            return;
        }
        if peer
            .last_initiation_timestamp
            .is_some_and(|last| received.payload.timestamp <= last)
        {
            ctx.dropped.replayed_initiation += 1;
            return;
        }
        if peer
            .last_initiation_accepted
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_INITIATION_INTERVAL)
        {
            ctx.dropped.initiation_flood += 1;
            return;
        }
        let Some(version) = choose_version(&received.payload.versions) else {
            ctx.dropped.handshake_failed += 1;
            return;
        };
        let sender_index = received.sender_index;
        let timestamp = received.payload.timestamp;
        // The name a peer announces is shown in `status`: stored inert.
        let remote_name = crate::core::text::escape_untrusted(&received.payload.name);
        let remote_candidates = received.payload.candidates.clone();
        let remote_nat = received.payload.nat.clone();
        let local_index = ctx.allocate_index(slot);
        let payload = ResponsePayload {
            version,
            name: ctx.name.clone(),
            candidates: ctx.local_candidates.clone(),
            nat: ctx.nat_hint(),
        };
        let (datagram, keys) = match received.respond(ctx.network, local_index, &payload) {
            Ok(answer) => answer,
            Err(_) => {
                ctx.release_index(local_index);
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        tracing::debug!(peer = %id, %from, local_index, "answering handshake initiation");
        peer.last_initiation_timestamp = Some(timestamp);
        peer.last_initiation_accepted = Some(now);
        peer.remote_name = Some(remote_name);
        peer.set_remote_candidates(now, remote_candidates);
        peer.set_remote_nat(remote_nat);
        peer.last_handshake = Some(now);
        peer.counters.handshakes += 1;
        if from.is_relay() {
            peer.forget_direct_path(now);
        }
        peer.observe_path(ctx, now, from, false);
        peer.install_next(
            ctx,
            Box::new(Session::new(&keys, local_index, sender_index, false, now)),
        );
        ctx.send_on(from, peer.node_id, datagram);
    }

    /// A cookie reply to our initiation in flight: keep the cookie, so the
    /// retry carries a valid mac2.
    fn handle_cookie_reply(
        &mut self,
        now: Instant,
        relayed_by: Option<NodeId>,
        reply: &wire::CookieReply<'_>,
    ) {
        let ctx = &mut self.ctx;
        let local_index = reply.receiver_index();
        let Some(peer) = ctx
            .by_index
            .get(&local_index)
            .and_then(|slot| self.peers.at_mut(*slot))
            .filter(|peer| {
                peer.is_pending_initiation(local_index)
                    && relayed_by.is_none_or(|node| node == peer.node_id)
            })
        else {
            ctx.dropped.bad_cookie_reply += 1;
            return;
        };
        let key = CookieReplyKey::for_responder(ctx.network, &peer.noise_public);
        match peer
            .cookie
            .handle_reply(now, local_index, reply.body(), &key)
        {
            Ok(()) => {
                tracing::debug!(peer = %peer.config.id, local_index, "peer is under load: got a cookie");
            }
            Err(_) => ctx.dropped.bad_cookie_reply += 1,
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        response: &wire::Response<'_>,
    ) {
        let ctx = &mut self.ctx;
        if !ctx.own_mac1.verify(response.bytes()) {
            ctx.dropped.bad_mac1 += 1;
            return;
        }
        let local_index = response.receiver_index();
        let Some(peer) = peer_by_index(&ctx.by_index, &mut self.peers, local_index) else {
            ctx.dropped.unknown_session += 1;
            return;
        };
        if !peer.is_pending_initiation(local_index)
            || relayed_by.is_some_and(|node| node != peer.node_id)
        {
            ctx.dropped.unknown_session += 1;
            return;
        }
        let Some(handshake) = peer.pending_initiation_mut() else {
            return;
        };
        let (payload, keys) = match handshake.finish(response.noise()) {
            Ok(done) => {
                peer.take_pending_initiation();
                done
            }
            Err(HandshakeError::Noise) => {
                // Not from the responder (anyone who saw our index on the
                // path can forge mac1): the initiation stays in flight for
                // the real response.
                ctx.dropped.handshake_failed += 1;
                return;
            }
            Err(_) => {
                // The responder's answer opened but is unusable: the retry
                // timer starts a fresh initiation.
                peer.take_pending_initiation();
                ctx.release_index(local_index);
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        tracing::debug!(peer = %peer.config.id, %from, local_index, "handshake complete");
        peer.remote_name = Some(crate::core::text::escape_untrusted(&payload.name));
        peer.set_remote_candidates(now, payload.candidates);
        peer.set_remote_nat(payload.nat);
        peer.last_handshake = Some(now);
        peer.counters.handshakes += 1;
        if from.is_relay() {
            peer.forget_direct_path(now);
        }
        peer.observe_path(ctx, now, from, true);
        peer.observe_receive(now, false);
        let session = Box::new(Session::new(
            &keys,
            local_index,
            response.sender_index(),
            true,
            now,
        ));
        peer.install_current(ctx, now, session);
    }

    fn handle_data(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        data: &wire::Data<'_>,
    ) {
        let ctx = &mut self.ctx;
        let local_index = data.receiver_index();
        let Some(peer) = peer_by_index(&ctx.by_index, &mut self.peers, local_index) else {
            ctx.dropped.unknown_session += 1;
            return;
        };
        let Some(slot) = peer.slot_of(local_index) else {
            ctx.dropped.unknown_session += 1;
            return;
        };
        if relayed_by.is_some_and(|node| node != peer.node_id) {
            ctx.dropped.unknown_session += 1;
            return;
        }
        let Some(session) = peer.session_mut(slot) else {
            return;
        };
        let counter = data.counter();
        if session.check_replay(counter).is_err() {
            let verdict = session.replay_window().check(counter);
            peer.counters.dropped_replay += 1;
            peer.stats.receive.on_refused(now, verdict);
            return;
        }
        let mut buffer = data.ciphertext().to_vec();
        let len = match session.open(now, counter, &mut buffer) {
            Ok(len) => len,
            Err(SessionError::Replay) => {
                peer.counters.dropped_replay += 1;
                return;
            }
            Err(SessionError::Decrypt) => {
                ctx.dropped.decrypt_failed += 1;
                peer.stats.decrypt_failed += 1;
                return;
            }
            Err(SessionError::Expired) => {
                ctx.dropped.unknown_session += 1;
                return;
            }
        };
        buffer.truncate(len);
        peer.stats.receive.on_accepted(now, local_index, counter);
        let control = buffer
            .first()
            .is_some_and(|first| *first < CONTROL_FRAME_LIMIT);
        peer.stats
            .receive
            .on_arrival_path(now, from.is_relay(), control);
        if slot == Slot::Next {
            peer.confirm_next(ctx, now);
        }
        let frame = match buffer.first() {
            Some(&first) if first < CONTROL_FRAME_LIMIT => ControlFrame::decode(&buffer),
            _ => None,
        };
        // A ping only proves the way here; anything else answers something
        // we sent along a path we already use.
        let is_ping = matches!(frame, Some(ControlFrame::PathPing { .. }));
        peer.observe_path(ctx, now, from, !is_ping);
        peer.observe_receive(now, len > 0);
        if peer.wants_rekey_on_receive(now) {
            peer.start_handshake_if_idle(ctx, now);
        }
        let Some(&first) = buffer.first() else {
            return; // keepalive
        };
        if first < CONTROL_FRAME_LIMIT {
            let Some(frame) = frame else {
                return;
            };
            let mut registered = None;
            match frame {
                ControlFrame::PathPing { id } => {
                    peer.answer_ping(ctx, now, id, from);
                    peer.ping_back(ctx, now, from);
                }
                ControlFrame::PathPong { id } => peer.handle_pong(ctx, now, id, from),
                ControlFrame::SkippedCounters { count } => {
                    peer.stats
                        .receive
                        .on_skipped_report(now, local_index, count);
                }
                ControlFrame::Candidates { candidates, nat } if !peer.is_rendezvous => {
                    peer.set_remote_candidates(now, candidates);
                    peer.set_remote_nat(nat);
                }
                ControlFrame::Registered {
                    reflexive,
                    lifetime_s,
                } if peer.is_rendezvous => {
                    registered = Some((peer.config.id, reflexive, lifetime_s));
                }
                ControlFrame::Revoked { signature } => {
                    let revoker = peer.config.id;
                    if revoker.verify(&revocation_context(&revoker, &ctx.own_id), &signature) {
                        tracing::info!(peer = %revoker, "peer revoked its trust; dropping its sessions");
                        let was_up = peer.current.is_some();
                        peer.clear_sessions(ctx);
                        if was_up {
                            ctx.events.push_back(Event::PeerDown { id: revoker });
                        }
                    }
                }
                ControlFrame::Candidates { .. }
                | ControlFrame::Register { .. }
                | ControlFrame::Registered { .. } => {}
            }
            if let Some((rendezvous, reflexive, lifetime_s)) = registered {
                self.handle_registered(now, rendezvous, reflexive, lifetime_s);
            }
            return;
        }
        if peer.is_rendezvous {
            // A rendezvous carries no IP traffic of its own.
            peer.counters.dropped_spoofed += 1;
            return;
        }
        peer.counters.rx_bytes += len as u64;
        peer.counters.rx_packets += 1;
        let Some(packet) = IpPacket::new_checked(&buffer) else {
            peer.counters.dropped_spoofed += 1;
            return;
        };
        // Cryptokey routing inbound: the source must be the sending peer's
        // (its node prefix, or its routed IPv4 address) and the destination
        // ours.
        let genuine = match packet.version() {
            IpVersion::V6 => {
                peer.prefix.contains(&Ipv6Addr::from(packet.source()))
                    && NodePrefix::of_octets(&packet.destination()) == ctx.own_prefix
            }
            IpVersion::V4 => {
                peer.ipv4_routed
                    && packet.source_ip() == IpAddr::V4(peer.address4)
                    && ctx.own_address4.map(IpAddr::V4) == Some(packet.destination_ip())
            }
        };
        if !genuine {
            peer.counters.dropped_spoofed += 1;
            return;
        }
        if peer.config.allow != Policy::All
            && peer
                .conntrack
                .check_inbound(now, &peer.config.allow, &packet)
                == InboundVerdict::Deny
        {
            peer.counters.dropped_policy += 1;
            return;
        }
        ctx.tun_out.push_back(buffer);
    }

    /// Feeds one IP packet read from the TUN.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) {
        let Some(parsed) = IpPacket::new_checked(packet) else {
            self.ctx.dropped.no_route += 1;
            return;
        };
        // Cryptokey routing outbound: the destination names the peer. Only
        // this node's own addresses may send into the overlay (the agent
        // address and attached namespaces, all in its node prefix; over
        // IPv4 the agent's address, which attachments are masqueraded
        // behind): not a LAN neighbour routing through the host, nor a
        // spoofer.
        let (slot, own_source) = match parsed.version() {
            IpVersion::V6 => (
                self.by_prefix
                    .get(&NodePrefix::of_octets(&parsed.destination())),
                NodePrefix::of_octets(&parsed.source()) == self.ctx.own_prefix,
            ),
            IpVersion::V4 => match (parsed.destination_ip(), self.ctx.own_address4) {
                (IpAddr::V4(destination), Some(own)) => (
                    self.by_address4.get(&destination),
                    parsed.source_ip() == IpAddr::V4(own),
                ),
                _ => (None, false),
            },
        };
        let Some(peer) = slot.and_then(|slot| self.peers.at_mut(*slot)) else {
            self.ctx.dropped.no_route += 1;
            return;
        };
        if !own_source {
            self.ctx.dropped.foreign_source += 1;
            return;
        }
        if packet.len() > usize::from(self.ctx.tunnel_mtu) {
            self.ctx.dropped.too_big += 1;
            peer.stats.too_big += 1;
            // Never fragment outer packets: the sender learns the tunnel MTU
            // (IPv4 without DF is dropped; the kernel fragments those before
            // the TUN, so only forged ones get here).
            let reply = match (parsed.version(), self.ctx.own_address4) {
                (IpVersion::V6, _) => Some(packet::packet_too_big(
                    self.ctx.own_prefix.agent_address().octets(),
                    &parsed,
                    u32::from(self.ctx.tunnel_mtu),
                )),
                // From the peer's address, as an on-path router would: the
                // kernel drops IPv4 from its own address arriving on a
                // non-loopback device.
                (IpVersion::V4, Some(_)) if parsed.dont_fragment() => match parsed.destination_ip()
                {
                    IpAddr::V4(peer) => Some(packet::fragmentation_needed(
                        peer,
                        &parsed,
                        self.ctx.tunnel_mtu,
                    )),
                    IpAddr::V6(_) => None,
                },
                (IpVersion::V4, _) => None,
            };
            self.ctx.tun_out.extend(reply);
            return;
        }
        peer.track_outbound(now, &parsed);
        peer.send(&mut self.ctx, now, packet);
    }

    /// Runs every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_registrations(now);
        // Rendezvous links first, then peers in the order they were added
        // (a fixed order keeps simulations reproducible).
        let rendezvous_slots: Vec<PeerSlot> = self
            .ctx
            .rendezvous
            .iter()
            .filter_map(|link| self.peers.slot_of(&link.id))
            .collect();
        for slot in rendezvous_slots.iter().chain(self.peer_order.iter()) {
            if let Some(peer) = self.peers.at_mut(*slot)
                && peer.next_deadline().is_some_and(|deadline| deadline <= now)
            {
                peer.on_timeout(&mut self.ctx, now);
            }
        }
        if now >= self.next_housekeeping {
            for peer in self.peers.iter_mut() {
                peer.conntrack.expire(now);
                peer.release_idle_memory(now);
            }
            self.pending.expire(now);
            self.cookies.expire(now);
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ctx.transmits.pop_front()
    }

    /// The next IP packet to write to the TUN.
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.ctx.tun_out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.ctx.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|peer| peer.next_deadline())
            .chain(self.ctx.rendezvous.iter().map(|link| link.next_register))
            .chain(
                self.ctx
                    .rendezvous
                    .iter()
                    .filter(|link| link.registered_until.is_some())
                    .filter_map(|link| {
                        link.register_unanswered_since
                            .map(|since| since + REGISTER_TIMEOUT)
                    }),
            )
            .chain(std::iter::once(self.next_housekeeping))
            .min()
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
        let Some(peer) = self.peers.get_mut(id).filter(|peer| !peer.is_rendezvous) else {
            return Err(PingError::UnknownPeer);
        };
        if !peer.is_up(now) {
            peer.start_handshake_if_idle(&mut self.ctx, now);
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
                .filter(|peer| !peer.is_rendezvous)
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
