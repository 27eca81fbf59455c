//! Registrations with rendezvous servers: adding them, refreshing and
//! timing out registrations, and announcing the candidates they reveal.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::api::{Event, PeerConfig};
use crate::core::identity::AgentId;
use crate::core::peer::Peer;
use crate::core::peer::context::RendezvousLink;
use crate::core::policy::Policy;
use crate::core::stats::status::RendezvousStatus;
use crate::core::wire::control_frame::ControlFrame;

use super::{Node, REGISTER_TIMEOUT};

impl Node {
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
                Peer::new_rendezvous(ctx, config, slot)
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

    pub(super) fn run_registrations(&mut self, now: Instant) {
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

    pub(super) fn handle_registered(
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
    pub(super) fn announce_candidates(&mut self, now: Instant) {
        let frame = ControlFrame::Candidates {
            candidates: self.ctx.local_candidates.clone(),
            nat: self.ctx.nat_hint(),
        }
        .encode();
        for peer in self.peers.iter_mut() {
            if !peer.is_rendezvous() && peer.is_up(now) {
                peer.send(&mut self.ctx, now, &frame);
            }
        }
    }
}
