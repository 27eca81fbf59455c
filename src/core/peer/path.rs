//! Which way a peer's packets go: the direct endpoint (proven by a round
//! trip, given up when it stops answering) or a rendezvous relay, and when
//! to punch holes towards the peer's candidates (how: `punch.rs`).
//!
//! The direct path's standing is one state, [`PathState`] (kept beside
//! [`Peer`], as hole punching in `punch.rs` changes it too), changed on
//! events: a round trip proves it, silence past [`DIRECT_PATH_TIMEOUT`] or
//! a handshake through a relay unproves it, new candidates start hole
//! punching. A send reads it once ([`Peer::route`]) together with the
//! relay choice ([`RelayState`]: the rendezvous the peer was last heard
//! through, those that failed it).

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::api::Event;
use crate::core::identity::AgentId;
use crate::core::peer::context::{Context, RendezvousLink};
use crate::core::stats::status::PathKind;
use crate::core::wire::path::PathAddr;

use super::{
    DIRECT_PATH_TIMEOUT, DIRECT_PROBE_AFTER, PathState, Peer, RELAY_PATH_TIMEOUT,
    RELAY_PROBE_AFTER, RELAY_RETRY_AFTER, earliest,
};

/// The relay side of a peer's path.
#[derive(Debug, Default)]
pub(super) struct RelayState {
    /// The rendezvous we last heard the peer through.
    heard_via: Option<SocketAddr>,
    /// First relayed send not yet followed by any receive from the peer.
    unanswered_since: Option<Instant>,
    /// Relays that stopped carrying this peer's traffic, and since when
    /// (boxed: most peers never see one fail).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every peer, not 24"
    )]
    failed: Option<Box<Vec<(SocketAddr, Instant)>>>,
}

impl RelayState {
    /// Whether `relay` failed this peer less than [`RELAY_RETRY_AFTER`] ago.
    fn has_failed(&self, now: Instant, relay: SocketAddr) -> bool {
        self.failed
            .iter()
            .flat_map(|failed| failed.iter())
            .any(|(failed, since)| {
                *failed == relay && now.saturating_duration_since(*since) < RELAY_RETRY_AFTER
            })
    }

    /// `relay` carried the peer's traffic: it has not failed.
    fn forget_failure(&mut self, relay: SocketAddr) {
        if let Some(failed) = self.failed.as_mut() {
            failed.retain(|(failed, _)| *failed != relay);
            if failed.is_empty() {
                self.failed = None;
            }
        }
    }

    /// `relay` stopped carrying the peer's traffic at `now`.
    fn note_failure(&mut self, relay: SocketAddr, now: Instant) {
        self.forget_failure(relay);
        self.failed.get_or_insert_default().push((relay, now));
    }
}

/// The way a packet goes now, decided once per send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    /// Where it goes.
    pub(super) path: PathAddr,
    /// Whether a live relay could carry it instead (then a direct send
    /// must be answered to keep the direct path).
    pub(super) relay_alternative: bool,
}

impl Peer {
    /// Notes the path of an authenticated packet. A direct source is the
    /// peer's endpoint from now on (roaming); `proves_round_trip` says the
    /// packet answers something we sent there (pong, response, data sent
    /// only on a proven path), which proves the direct path.
    pub fn observe_path(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        from: PathAddr,
        proves_round_trip: bool,
    ) {
        if self.observe_on_proven_path(now, from, proves_round_trip) {
            return;
        }
        match from {
            PathAddr::Direct(address) | PathAddr::Probe(_, address) => {
                let socket = match from {
                    PathAddr::Probe(socket, _) => Some(socket),
                    _ => None,
                };
                let relay_alternative = self.relay_route(ctx, now).is_some();
                // While a proven endpoint works, an unproven source (a
                // probe to another candidate) does not take its place.
                let same = self.endpoint == Some(address) && self.endpoint_socket == socket;
                let keep_proven = self.direct_proven() && !proves_round_trip && relay_alternative;
                if !same && !keep_proven {
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
                    self.path = PathState::Direct {
                        unanswered_since: None,
                    };
                }
            }
            PathAddr::Relay(rendezvous) => {
                self.relay.heard_via = Some(rendezvous);
                self.relay.forget_failure(rendezvous);
            }
        }
        self.relay.unanswered_since = None;
        self.report_path(ctx, now);
    }

    /// The common case of [`Peer::observe_path`], without its route
    /// lookups: a packet from the proven endpoint, on the main socket,
    /// while the direct path is reported and stays in use. It leaves the
    /// state exactly as the full observation would (the endpoint stays, the
    /// path is proven and answered, the relay is not awaited, the reported
    /// path does not change) and returns whether it applied.
    fn observe_on_proven_path(
        &mut self,
        now: Instant,
        from: PathAddr,
        proves_round_trip: bool,
    ) -> bool {
        let PathAddr::Direct(address) = from else {
            return false;
        };
        let PathState::Direct { unanswered_since } = self.path else {
            return false;
        };
        // An unanswered direct path is answered only by a round trip; the
        // full observation decides the rest.
        let stays_alive = unanswered_since.is_none() || proves_round_trip;
        if self.endpoint != Some(address)
            || self.endpoint_socket.is_some()
            || !stays_alive
            || self.reported_path != PathKind::Direct
            || !self.is_up(now)
        {
            return false;
        }
        self.observed_ip = Some((address.ip(), now));
        self.path = PathState::Direct {
            unanswered_since: None,
        };
        self.relay.unanswered_since = None;
        true
    }

    /// Whether a round trip proved the direct path (and it was not given
    /// up since).
    pub(super) fn direct_proven(&self) -> bool {
        matches!(self.path, PathState::Direct { .. })
    }

    /// Notes the path a pong to ping `id` came by, as proven by a round
    /// trip. The pong answers its ping, not what we sent after the ping
    /// left (nor anything, when the ping is not one we remember): sends on
    /// that direct path since then stay awaited. (A pong queued behind a
    /// stream, the last packet through before a cut, would otherwise leave
    /// nothing awaited and the dead path in use until the next send.)
    pub fn observe_pong_path(&mut self, ctx: &mut Context, now: Instant, id: u64, from: PathAddr) {
        let awaited = self.awaited_after_pong(self.ping_sent_at(id), from);
        self.observe_path(ctx, now, from, true);
        if let (Some(since), PathState::Direct { unanswered_since }) = (awaited, &mut self.path) {
            *unanswered_since = Some(since);
        }
    }

    /// Since when sends on the direct path `from` stay unanswered after a
    /// pong to a ping sent at `ping_sent_at` (`None`: not known). Sends
    /// unanswered since before the ping are answered up to the ping; of
    /// those after it only the last one's time is known (`last_sent`),
    /// which counts the path's silence late, never early.
    fn awaited_after_pong(&self, ping_sent_at: Option<Instant>, from: PathAddr) -> Option<Instant> {
        let PathState::Direct {
            unanswered_since: Some(since),
        } = self.path
        else {
            return None;
        };
        if self.direct_path() != Some(from) {
            return None;
        }
        match ping_sent_at {
            None => Some(since),
            Some(sent_at) if since > sent_at => Some(since),
            Some(sent_at) => self.last_sent.filter(|last| *last > sent_at),
        }
    }

    /// The rendezvous to relay through. First the one we last heard the
    /// peer through, if its link is live (the peer is registered there: a
    /// server relays only for registered agents). Else the peer's own
    /// servers (rendezvous hashing of its node ID) that we hold a live link
    /// to, a shared home server first, then in the peer's ranking, so that
    /// the next-ranked one takes over when one is down. A relay that failed
    /// the peer lately is passed over while another is live.
    pub(super) fn relay_route(&self, ctx: &Context, now: Instant) -> Option<SocketAddr> {
        if self.is_rendezvous {
            return None;
        }
        let heard_via = self
            .relay
            .heard_via
            .filter(|via| ctx.relay_is_live(now, *via));
        if let Some(via) = heard_via
            && !self.relay.has_failed(now, via)
        {
            return Some(via);
        }
        let mut live = self
            .ranked_relay_links(ctx)
            .filter(|link| link.is_live(now))
            .map(|link| link.endpoint);
        let first = live.next();
        if let Some(first) = first
            && !self.relay.has_failed(now, first)
        {
            return Some(first);
        }
        live.find(|relay| !self.relay.has_failed(now, *relay))
            .or(first)
            .or(heard_via)
    }

    /// The links we hold to the peer's servers: shared home servers first,
    /// then on-demand ones, each in the peer's ranking.
    fn ranked_relay_links<'c>(
        &'c self,
        ctx: &'c Context,
    ) -> impl Iterator<Item = &'c RendezvousLink> + 'c {
        let links = |home: bool| {
            self.relay_servers
                .iter()
                .filter_map(|id| ctx.link(id))
                .filter(move |link| link.is_home() == home)
        };
        links(true).chain(links(false))
    }

    /// Every live relay an initiation goes through (in parallel with the
    /// direct path): where the peer was last heard and the peer's servers.
    pub(super) fn initiation_relays(&self, ctx: &Context, now: Instant) -> Vec<SocketAddr> {
        if self.is_rendezvous {
            return Vec::new();
        }
        let mut relays: Vec<SocketAddr> = self
            .relay
            .heard_via
            .filter(|via| ctx.relay_is_live(now, *via))
            .into_iter()
            .collect();
        for link in self.ranked_relay_links(ctx) {
            if link.is_live(now) && !relays.contains(&link.endpoint) {
                relays.push(link.endpoint);
            }
        }
        relays
    }

    /// The server this peer needs a link to: the relay in use when it
    /// works for the peer, else the peer's best server (shared home first)
    /// that is neither down nor failed for the peer, else its first.
    pub(super) fn wanted_server(&self, ctx: &Context, now: Instant) -> Option<AgentId> {
        if self.is_rendezvous {
            return None;
        }
        if let Some(relay) = self.relay_route(ctx, now)
            && !self.relay.has_failed(now, relay)
        {
            return ctx.link_id(relay);
        }
        let usable = |id: &AgentId| match ctx.link(id) {
            Some(link) => !link.is_down(now) && !self.relay.has_failed(now, link.endpoint),
            None => true,
        };
        let homes = self
            .relay_servers
            .iter()
            .filter(|id| ctx.link(id).is_some_and(RendezvousLink::is_home));
        homes
            .chain(self.relay_servers.iter())
            .find(|id| usable(id))
            .or(self.relay_servers.first())
            .copied()
    }

    /// Whether the peer may need a relay now: a session is up or a
    /// handshake is under way.
    pub fn needs_relay(&self, now: Instant) -> bool {
        !self.is_rendezvous && (self.is_up(now) || self.retry.is_some())
    }

    /// Asks for the link this peer needs (see [`Peer::wanted_server`]);
    /// the node opens it, or keeps it open.
    pub fn want_relay_link(&self, ctx: &mut Context, now: Instant) {
        if let Some(server) = self.wanted_server(ctx, now) {
            ctx.want_link(now, server);
        }
    }

    /// Whether the direct path is usable: proven and not silent for longer
    /// than [`DIRECT_PATH_TIMEOUT`] while we send on it.
    fn direct_is_alive(&self, now: Instant) -> bool {
        match self.path {
            PathState::Direct { unanswered_since } => unanswered_since
                .is_none_or(|since| now.saturating_duration_since(since) < DIRECT_PATH_TIMEOUT),
            PathState::Unproven { .. } => false,
        }
    }

    /// The way packets go now: the direct path while it is alive (or when
    /// no relay is live), else the relay.
    pub(super) fn route(&self, ctx: &Context, now: Instant) -> Option<Route> {
        let relay = self.relay_route(ctx, now);
        let path = match (self.direct_path(), relay) {
            (Some(direct), Some(relay)) => {
                if self.direct_is_alive(now) {
                    direct
                } else {
                    PathAddr::Relay(relay)
                }
            }
            (Some(direct), None) => direct,
            (None, Some(relay)) => PathAddr::Relay(relay),
            (None, None) => return None,
        };
        Some(Route {
            path,
            relay_alternative: relay.is_some(),
        })
    }

    /// The path packets take now.
    pub fn send_path(&self, ctx: &Context, now: Instant) -> Option<PathAddr> {
        self.route(ctx, now).map(|route| route.path)
    }

    /// Notes a packet with a payload sent along `route`: from now on an
    /// answer is awaited on that path.
    pub(super) fn note_sent_on(&mut self, now: Instant, route: Route) {
        match route.path {
            PathAddr::Direct(_) | PathAddr::Probe(..) => {
                if route.relay_alternative
                    && let PathState::Direct { unanswered_since } = &mut self.path
                    && unanswered_since.is_none()
                {
                    *unanswered_since = Some(now);
                }
            }
            PathAddr::Relay(_) => {
                if self.relay.unanswered_since.is_none() {
                    self.relay.unanswered_since = Some(now);
                }
            }
        }
    }

    /// The direct path in use or to be proven (main or probe socket).
    fn direct_path(&self) -> Option<PathAddr> {
        self.endpoint.map(|endpoint| match self.endpoint_socket {
            Some(socket) => PathAddr::Probe(socket, endpoint),
            None => PathAddr::Direct(endpoint),
        })
    }

    /// Learns the peer's NAT kind and reflexive endpoints.
    pub fn set_remote_nat(&mut self, hint: crate::core::wire::path::NatHint) {
        self.remote_nat = hint.kind;
        self.remote_reflexive = hint.reflexive;
    }

    /// Where a hole-punching round pings: the endpoint, then every
    /// candidate the peer announced.
    pub(super) fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = self.endpoint.into_iter().collect();
        for candidate in &self.remote_candidates {
            if !targets.contains(candidate) {
                targets.push(*candidate);
            }
        }
        targets
    }

    /// Emits a path-change event when the path differs from the last one
    /// reported.
    pub(super) fn report_path(&mut self, ctx: &mut Context, now: Instant) {
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

    /// Direct, relay or none (no usable session), as status reports it.
    pub(super) fn path_kind(&self, ctx: &Context, now: Instant) -> PathKind {
        if !self.is_up(now) {
            return PathKind::None;
        }
        match self.send_path(ctx, now) {
            Some(PathAddr::Direct(_) | PathAddr::Probe(..)) => PathKind::Direct,
            Some(PathAddr::Relay(_)) => PathKind::Relay,
            None => PathKind::None,
        }
    }

    /// A handshake came through a relay: the direct path is not proven for
    /// the new session, so probe it again before using it.
    pub fn forget_direct_path(&mut self, now: Instant) {
        if self.direct_proven() {
            self.path = PathState::Unproven { probing: None };
            self.start_probing(now);
        }
    }

    /// Data (not a control frame: those may go off the path in use) came
    /// through the relay. The peer routes data there only while its direct
    /// path is unproven or given up, and it gives one up after its own
    /// sends went unanswered for [`DIRECT_PATH_TIMEOUT`]. When nothing came
    /// here directly for as long either, the direct path is dead both ways:
    /// follow the peer to the relay now, instead of after our next send
    /// goes unanswered as long. That next send can be late: a TCP sender
    /// whose window is full sends nothing until its retransmission timer.
    pub fn note_relayed_data(&mut self, ctx: &mut Context, now: Instant) {
        let direct_silent = self
            .observed_ip
            .is_none_or(|(_, at)| now.saturating_duration_since(at) >= DIRECT_PATH_TIMEOUT);
        if self.direct_proven() && direct_silent {
            tracing::debug!(peer = %self.config.id, "the peer moved to the relay and the direct path is silent; following");
            self.forget_direct_path(now);
            self.report_path(ctx, now);
        }
    }

    /// Pings the proven direct path as if traffic on it had gone
    /// unanswered: without an answer it is given up after
    /// [`DIRECT_PATH_TIMEOUT`].
    pub(super) fn check_direct_path(&mut self, ctx: &mut Context, now: Instant) {
        let direct = self.direct_path();
        if let PathState::Direct { unanswered_since } = &mut self.path
            && let Some(direct) = direct
        {
            if unanswered_since.is_none() {
                *unanswered_since = Some(now);
            }
            self.send_ping(ctx, now, direct, true);
        }
    }

    /// Learns the peer's candidate endpoints (from a handshake or update).
    /// A candidate not known before (a new port mapping, roaming) is
    /// pinged at once when the direct path is not proven, rather than at
    /// the next round of a schedule that may be seconds away.
    pub fn set_remote_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        if candidates != self.remote_candidates {
            let new = candidates
                .iter()
                .any(|candidate| !self.remote_candidates.contains(candidate));
            self.remote_candidates = candidates;
            if let PathState::Unproven {
                probing: Some(probe),
            } = &mut self.path
                && new
            {
                probe.at = probe.at.min(now);
            }
            if !self.direct_proven() {
                self.start_probing(now);
            }
        }
    }

    /// The earliest time the path timers have work to do (while a session
    /// is up): a probing round, a relay or direct path to check or give up.
    pub(super) fn path_deadline(&self) -> Option<Instant> {
        let mut deadline = None;
        if let PathState::Unproven {
            probing: Some(probe),
        } = self.path
        {
            deadline = Some(probe.at);
        }
        if let Some(since) = self.relay.unanswered_since {
            deadline = earliest(deadline, Some(since + RELAY_PATH_TIMEOUT));
            if self.last_ping_sent.is_none_or(|ping| ping < since) {
                deadline = earliest(deadline, Some(since + RELAY_PROBE_AFTER));
            }
        }
        if let PathState::Direct {
            unanswered_since: Some(since),
        } = self.path
        {
            let probe_at = since + DIRECT_PROBE_AFTER;
            let probe_due = self.last_ping_sent.is_none_or(|ping| ping < since);
            deadline = earliest(deadline, Some(since + DIRECT_PATH_TIMEOUT));
            if probe_due {
                deadline = earliest(deadline, Some(probe_at));
            }
        }
        deadline
    }

    /// Direct-path liveness, relay liveness and hole punching.
    pub(super) fn run_path_timers(&mut self, ctx: &mut Context, now: Instant) {
        if !self.is_up(now) || self.is_rendezvous {
            return;
        }
        if let PathState::Direct {
            unanswered_since: Some(since),
        } = self.path
        {
            let silent = now.saturating_duration_since(since);
            if silent >= DIRECT_PATH_TIMEOUT {
                tracing::debug!(peer = %self.config.id, "direct path stopped answering; using the relay");
                self.path = PathState::Unproven { probing: None };
                self.start_probing(now);
                // Tell the peer at once: a keepalive through the relay makes
                // it follow (`note_relayed_data`) when the direct path is
                // silent its way too, instead of waiting until a send of its
                // own has gone unanswered as long (a stalled TCP sender's
                // next send can come a retransmission timeout later).
                self.seal_and_transmit(ctx, now, &[]);
            } else if silent >= DIRECT_PROBE_AFTER
                && self.last_ping_sent.is_none_or(|ping| ping < since)
                && let Some(direct) = self.direct_path()
            {
                // Traffic went out and nothing came back yet: ask.
                self.send_ping(ctx, now, direct, true);
            }
        }
        if self.relay.unanswered_since.is_some()
            && !matches!(self.send_path(ctx, now), Some(PathAddr::Relay(_)))
        {
            // No relay carries the peer's traffic any more (the link to it
            // closed or lapsed): there is nothing left to watch.
            self.relay.unanswered_since = None;
        }
        if let Some(since) = self.relay.unanswered_since
            && let Some(PathAddr::Relay(relay)) = self.send_path(ctx, now)
        {
            let silent = now.saturating_duration_since(since);
            if silent >= RELAY_PATH_TIMEOUT {
                // This relay stopped carrying the peer's traffic (server
                // gone, or the peer registered elsewhere): try the next.
                tracing::debug!(peer = %self.config.id, %relay, "relay stopped answering; trying another");
                self.relay.note_failure(relay, now);
                if self.relay.heard_via == Some(relay) {
                    self.relay.heard_via = None;
                }
                self.relay.unanswered_since = None;
                // The peer's next server may need a link of its own.
                self.want_relay_link(ctx, now);
            } else if silent >= RELAY_PROBE_AFTER
                && self.last_ping_sent.is_none_or(|ping| ping < since)
            {
                self.send_ping(ctx, now, PathAddr::Relay(relay), true);
            }
        }
        self.run_probe_round(ctx, now);
        self.report_path(ctx, now);
    }
}
