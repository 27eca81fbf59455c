//! Which way a peer's packets go: the direct endpoint (confirmed by a round
//! trip, given up when it stops answering), a rendezvous relay, and hole
//! punching towards the peer's candidates.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::api::Event;
use crate::core::peer::context::Context;
use crate::core::stats::status::PathKind;
use crate::core::wire::path::PathAddr;

use super::{
    DIRECT_PATH_TIMEOUT, DIRECT_PROBE_AFTER, PROBE_SCHEDULE, Peer, RELAY_PATH_TIMEOUT,
    RELAY_PROBE_AFTER, RELAY_RETRY_AFTER,
};

impl Peer {
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
    pub(super) fn direct_is_alive(&self, now: Instant) -> bool {
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
    pub(super) fn direct_path(&self) -> Option<PathAddr> {
        self.endpoint.map(|endpoint| match self.endpoint_socket {
            Some(socket) => PathAddr::Probe(socket, endpoint),
            None => PathAddr::Direct(endpoint),
        })
    }

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

    pub(super) fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = self.endpoint.into_iter().collect();
        for candidate in &self.remote_candidates {
            if !targets.contains(candidate) {
                targets.push(*candidate);
            }
        }
        targets
    }

    /// Direct-path liveness and hole punching.
    pub(super) fn run_path_timers(&mut self, ctx: &mut Context, now: Instant) {
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
}
