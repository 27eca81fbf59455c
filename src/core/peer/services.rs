//! The services exchanged with one peer: what this agent offers it (the
//! node's advertised set filtered by the peer's policy, sent in a
//! `Services` frame and resent until acknowledged) and what the peer
//! advertised here (replaced by newer generations only).
//!
//! Generations are node-wide: each new one is above every generation the
//! node issued (restored from the state directory after a restart) and at
//! least the wall clock in milliseconds.
//!
//! An offer goes out on every new session (the peer may have restarted and
//! forgotten it), at once when the offered set changes (the node's set or
//! the peer's policy), and again after 1, 2, 4 and 8 s while no
//! `ServicesAck` of its generation came back.

use std::time::{Duration, Instant};

use crate::core::peer::context::Context;
use crate::core::policy::{InboundKind, Policy};
use crate::core::services::{LearnedServices, Service};
use crate::core::wire::control_frame::{ControlFrame, SERVICES_VERSION};

use super::Peer;

/// First wait for an acknowledgement; doubled after each resend.
const FIRST_RESEND: Duration = Duration::from_secs(1);
/// Sends of one offer before it waits for the next session or change.
const MAX_SENDS: u8 = 5;

/// Both directions of the services exchange with one peer.
#[derive(Debug, Default)]
pub(super) struct ServicesExchange {
    /// What this agent offers the peer now, and its generation (0: never
    /// offered).
    offered: Vec<Service>,
    generation: u64,
    /// Whether the peer acknowledged `generation`.
    acknowledged: bool,
    /// Sends of the current offer so far.
    sends: u8,
    /// When the offer goes out again unless acknowledged.
    resend_at: Option<Instant>,
    /// What the peer advertised (boxed: most peers advertise nothing).
    learned: Option<Box<LearnedServices>>,
}

impl Peer {
    /// Offers the peer the node's advertised set as its policy filters it
    /// now; sends it at once when that changed and a session is up.
    pub fn offer_services(&mut self, ctx: &mut Context, now: Instant) {
        if self.is_rendezvous {
            return;
        }
        let offered = offered_to(&ctx.advertised, &self.config.allow);
        if self.services.generation != 0 && offered == self.services.offered {
            return;
        }
        self.services.offered = offered;
        self.new_services_generation(ctx, now);
        if self.is_up(now) {
            self.send_services(ctx, now);
        }
    }

    /// A new session is current: the peer gets the offer again (it may
    /// have restarted and forgotten it).
    pub(super) fn offer_services_on_new_session(&mut self, ctx: &mut Context, now: Instant) {
        if self.is_rendezvous {
            return;
        }
        if self.services.generation == 0 {
            self.services.offered = offered_to(&ctx.advertised, &self.config.allow);
            self.new_services_generation(ctx, now);
        }
        self.services.acknowledged = false;
        self.services.sends = 0;
        self.send_services(ctx, now);
    }

    /// A generation newer than any this node issued (to any peer, before
    /// a restart too: see [`Context::last_services_generation`]) and at
    /// least the wall clock in milliseconds, so a restarted agent's offers
    /// replace its old ones even when its clock went back.
    fn new_services_generation(&mut self, ctx: &mut Context, now: Instant) {
        let unix_ms = u64::try_from(ctx.unix_now(now).as_millis()).unwrap_or(u64::MAX);
        let generation = unix_ms.max(ctx.last_services_generation.saturating_add(1));
        ctx.last_services_generation = generation;
        self.services.generation = generation;
        self.services.acknowledged = false;
        self.services.sends = 0;
    }

    fn send_services(&mut self, ctx: &mut Context, now: Instant) {
        let frame = ControlFrame::Services {
            version: SERVICES_VERSION,
            generation: self.services.generation,
            entries: self.services.offered.clone(),
        };
        self.send_quietly(ctx, now, &frame.encode());
        self.services.sends = self.services.sends.saturating_add(1);
        self.services.resend_at = (self.services.sends < MAX_SENDS)
            .then(|| now + FIRST_RESEND * (1 << (self.services.sends - 1)));
        tracing::debug!(
            peer = %self.config.id,
            generation = self.services.generation,
            services = self.services.offered.len(),
            "services offered"
        );
    }

    /// When the offer must go out again, if it waits for an answer.
    pub(super) fn services_deadline(&self) -> Option<Instant> {
        if self.services.acknowledged || self.current.is_none() {
            return None;
        }
        self.services.resend_at
    }

    /// Resends an unacknowledged offer whose time came.
    pub(super) fn run_services_timer(&mut self, ctx: &mut Context, now: Instant) {
        if self
            .services_deadline()
            .is_some_and(|resend_at| resend_at <= now)
            && self.is_up(now)
        {
            self.send_services(ctx, now);
        }
    }

    /// The peer acknowledged an offer.
    pub fn services_acknowledged(&mut self, generation: u64) {
        if generation == self.services.generation {
            self.services.acknowledged = true;
            self.services.resend_at = None;
        }
    }

    /// The peer advertised `entries` (checked when decoded): kept unless a
    /// newer generation is already here, and acknowledged either way.
    pub fn learn_services(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        generation: u64,
        entries: Vec<Service>,
    ) {
        if self.is_rendezvous {
            return;
        }
        match &mut self.services.learned {
            Some(learned) if generation < learned.generation => {}
            Some(learned) if generation == learned.generation => learned.received_at = now,
            learned => {
                tracing::debug!(
                    peer = %self.config.id,
                    generation,
                    services = entries.len(),
                    "services learned"
                );
                *learned = Some(Box::new(LearnedServices {
                    generation,
                    services: entries,
                    received_at: now,
                }));
                ctx.note_learned_services_changed();
            }
        }
        let ack = ControlFrame::ServicesAck { generation }.encode();
        self.send_quietly(ctx, now, &ack);
    }

    /// Seals a frame on the path in use without counting it as traffic:
    /// an advertisement keeps no RTT pings, keepalives or rekeys going
    /// (its acknowledgement, and resends, stand in for all of that).
    fn send_quietly(&mut self, ctx: &mut Context, now: Instant, payload: &[u8]) {
        if let Some(path) = self.send_path(ctx, now) {
            self.seal_to(ctx, now, path, payload);
        }
    }

    /// What the peer advertised, if anything.
    pub fn learned_services(&self) -> Option<&LearnedServices> {
        self.services.learned.as_deref()
    }

    /// Forgets what the peer advertised (it revoked its trust, or it is
    /// being removed).
    pub fn forget_learned_services(&mut self, ctx: &mut Context) {
        if self.services.learned.take().is_some() {
            ctx.note_learned_services_changed();
        }
    }

    /// When anything authenticated last came from the peer.
    pub fn last_seen(&self) -> Option<Instant> {
        self.last_received
            .max(self.services.learned.as_ref().map(|l| l.received_at))
    }
}

/// The services a peer with policy `allow` (what it may open here) may
/// open: the others are not shown to it.
pub fn offered_to(services: &[Service], allow: &Policy) -> Vec<Service> {
    services
        .iter()
        .filter(|service| allow.allows(InboundKind::Tcp(service.port)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> Service {
        Service::parse(text, None, None).expect(text)
    }

    #[test]
    fn a_peer_is_offered_only_the_ports_its_policy_opens() {
        let set = vec![service("mcp:8000"), service("a2a:9999")];
        let only_a2a: Policy = "tcp:9999".parse().expect("policy");
        assert_eq!(offered_to(&set, &only_a2a), vec![service("a2a:9999")]);
        assert_eq!(offered_to(&set, &Policy::All), set);
        assert!(offered_to(&set, &Policy::none()).is_empty());
        assert!(offered_to(&set, &"udp:8000,icmp".parse().expect("policy")).is_empty());
    }
}
