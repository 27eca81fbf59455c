//! Registrations with rendezvous servers: the home servers (rendezvous
//! hashing of this agent's node ID) and the on-demand links to peers'
//! servers, refreshing and timing out registrations, and announcing the
//! candidates they reveal.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::address::NodeId;
use crate::core::api::{Event, PeerConfig};
use crate::core::identity::AgentId;
use crate::core::peer::Peer;
use crate::core::peer::context::{LinkRole, MAX_ON_DEMAND_LINKS, ON_DEMAND_LINGER, RendezvousLink};
use crate::core::policy::Policy;
use crate::core::rendezvous::choice::SERVERS_PER_AGENT;
use crate::core::stats::status::{RendezvousRole, RendezvousStatus};
use crate::core::wire::control_frame::ControlFrame;

use super::{Node, REGISTER_TIMEOUT};

/// How often the node looks which on-demand links its peers still need.
pub(super) const LINK_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

impl Node {
    /// Adds a rendezvous server. The agent registers with its own servers
    /// only (rendezvous hashing of its node ID picks
    /// [`SERVERS_PER_AGENT`] of those configured, whatever their order),
    /// learns its reflexive endpoint there and is found there by its
    /// peers; it opens a link to another server when a peer homed there
    /// needs one (see
    /// [`crate::core::peer::context::Context::want_link`]).
    pub fn add_rendezvous(&mut self, now: Instant, id: AgentId, endpoint: SocketAddr) {
        if id == self.ctx.own_id
            || self
                .ctx
                .configured_rendezvous
                .iter()
                .any(|(configured, _)| *configured == id)
        {
            return;
        }
        self.ctx.configured_rendezvous.push((id, endpoint));
        self.choose_home_links(now);
        for peer in self.peers.iter_mut() {
            peer.refresh_relay_servers(&self.ctx);
        }
    }

    /// Registers with every configured rendezvous, not only this agent's
    /// own (`netcheck` checks each server with a throwaway identity).
    pub fn register_with_every_rendezvous(&mut self, now: Instant) {
        self.ctx.register_with_every = true;
        self.choose_home_links(now);
    }

    /// Opens a link to each home server. A link to a server that is no
    /// longer one (a server added that ranks higher) closes at once if it
    /// never registered (servers added one by one at start), else becomes
    /// an on-demand one, kept while peers in use still reach us there.
    fn choose_home_links(&mut self, now: Instant) {
        let homes: Vec<AgentId> = if self.ctx.register_with_every {
            self.ctx
                .configured_rendezvous
                .iter()
                .map(|(id, _)| *id)
                .collect()
        } else {
            self.ctx.servers_of(NodeId::of(&self.ctx.own_id))
        };
        let displaced: Vec<AgentId> = self
            .ctx
            .rendezvous
            .iter()
            .filter(|link| link.is_home() && !homes.contains(&link.id))
            .map(|link| link.id)
            .collect();
        for id in displaced {
            let Some(link) = self.ctx.rendezvous.iter_mut().find(|link| link.id == id) else {
                continue;
            };
            if link.last_registered.is_none() {
                self.close_link(&id);
            } else {
                link.role = LinkRole::OnDemand { wanted_until: now };
            }
        }
        for id in homes {
            if let Some(link) = self.ctx.rendezvous.iter_mut().find(|link| link.id == id) {
                link.role = LinkRole::Home;
            } else {
                self.open_link(now, id, LinkRole::Home);
            }
        }
    }

    /// Opens a link to a configured server: a session with it and
    /// registrations from now on.
    fn open_link(&mut self, now: Instant, id: AgentId, role: LinkRole) {
        let Some(endpoint) = self
            .ctx
            .configured_rendezvous
            .iter()
            .find(|(configured, _)| *configured == id)
            .map(|(_, endpoint)| *endpoint)
        else {
            return;
        };
        self.ctx
            .rendezvous
            .push(RendezvousLink::new(id, endpoint, role, now));
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

    /// Closes the link to a server: no more registrations, its session
    /// and what waited for it go (the server forgets the registration when
    /// it lapses).
    fn close_link(&mut self, id: &AgentId) {
        self.ctx.rendezvous.retain(|link| link.id != *id);
        self.ctx.relay_backlog.retain(|queued| queued.server != *id);
        if self.peers.get(id).is_some_and(Peer::is_rendezvous)
            && let Some(mut server) = self.peers.remove(id)
        {
            server.clear_sessions(&mut self.ctx);
        }
    }

    /// Opens the on-demand links peers asked for (bounded by
    /// [`MAX_ON_DEMAND_LINKS`]) and registers with them at once.
    pub(super) fn open_wanted_links(&mut self, now: Instant) {
        if self.ctx.links_wanted.is_empty() {
            return;
        }
        self.ctx.links_wanted_since = None;
        let wanted = std::mem::take(&mut self.ctx.links_wanted);
        for id in wanted {
            let on_demand = self
                .ctx
                .rendezvous
                .iter()
                .filter(|link| !link.is_home())
                .count();
            if on_demand >= MAX_ON_DEMAND_LINKS || self.ctx.link(&id).is_some() {
                continue;
            }
            tracing::debug!(rendezvous = %id, "opening an on-demand rendezvous link");
            self.open_link(
                now,
                id,
                LinkRole::OnDemand {
                    wanted_until: now + ON_DEMAND_LINGER,
                },
            );
        }
        self.run_registrations(now);
    }

    /// Keeps the on-demand links that peers in use still need and closes
    /// the others.
    pub(super) fn sweep_links(&mut self, now: Instant) {
        self.next_link_sweep = now + LINK_SWEEP_INTERVAL;
        if self.ctx.register_with_every || self.ctx.configured_rendezvous.len() <= SERVERS_PER_AGENT
        {
            return; // every server is a home server
        }
        for peer in self.peers.iter() {
            if peer.needs_relay(now) {
                peer.want_relay_link(&mut self.ctx, now);
            }
        }
        let unwanted: Vec<AgentId> = self
            .ctx
            .rendezvous
            .iter()
            .filter(|link| {
                matches!(link.role, LinkRole::OnDemand { wanted_until } if wanted_until <= now)
            })
            .map(|link| link.id)
            .collect();
        for id in unwanted {
            tracing::debug!(rendezvous = %id, "closing an on-demand rendezvous link no peer needs");
            self.close_link(&id);
        }
        self.open_wanted_links(now);
        // A home link demoted and closed took its reflexive endpoint along.
        if self.ctx.refresh_candidates() {
            self.announce_candidates(now);
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
                role: match link.role {
                    LinkRole::Home => RendezvousRole::Home,
                    LinkRole::OnDemand { .. } => RendezvousRole::OnDemand,
                },
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
        if !was_live {
            self.ctx.flush_relay_backlog(now, rendezvous);
        }
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
