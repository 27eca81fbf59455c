//! Peer admin: adding, updating, removing and revoking trusted peers, and
//! their IPv4 routes (who keeps a colliding derived address).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::core::address::{NodePrefix, agent_address4};
use crate::core::api::{Event, Ipv4Route, PeerConfig, PeerSlot};
use crate::core::identity::AgentId;
use crate::core::peer::Peer;
use crate::core::wire::control_frame::ControlFrame;

use super::{Node, revocation_context};

impl Node {
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
    pub(super) fn route_ipv4(&mut self, slot: PeerSlot) {
        let own = self.ctx.own_address4;
        let own_id = self.ctx.own_id;
        let Some(peer) = self.peers.at(slot) else {
            return;
        };
        if peer.is_rendezvous() {
            return;
        }
        let address = peer.address4();
        let conflict = match own {
            None => None,
            Some(own) if own == address => Some(Some(own_id)),
            Some(_) => match self.by_address4.get(&address) {
                Some(holder) if *holder != slot => {
                    Some(self.peers.at(*holder).map(|holder| holder.id()))
                }
                _ => {
                    self.by_address4.insert(address, slot);
                    None
                }
            },
        };
        if let Some(peer) = self.peers.at_mut(slot) {
            peer.set_ipv4_route(own.is_some() && conflict.is_none(), conflict.flatten());
            if let Some(holder) = peer.ipv4_conflict() {
                tracing::warn!(
                    peer = %peer.id(),
                    address = %address,
                    holder = %holder,
                    "two agents derive the same IPv4 address: the later one is reachable over IPv6 only"
                );
            }
        }
    }

    /// How IPv4 reaches a trusted peer (`None`: not a peer).
    pub fn peer_ipv4_route(&self, id: &AgentId) -> Option<Ipv4Route> {
        let peer = self.peers.get(id).filter(|peer| !peer.is_rendezvous())?;
        Some(match (peer.ipv4_routed(), peer.ipv4_conflict()) {
            (true, _) => Ipv4Route::Routed(peer.address4()),
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
            .filter(|peer| !peer.is_rendezvous())
            .map(|peer| peer.id())
    }

    /// The rendezvous servers a peer is looked for on (its own, by
    /// rendezvous hashing of its node ID over the configured servers), best
    /// first; `None` for an unknown peer.
    pub fn peer_rendezvous(&self, id: &AgentId) -> Option<Vec<AgentId>> {
        let peer = self.peers.get(id).filter(|peer| !peer.is_rendezvous())?;
        Some(peer.relay_servers().to_vec())
    }

    /// Adds a trusted peer, or updates its name, endpoint and policy.
    pub fn upsert_peer(&mut self, now: Instant, peer: PeerConfig) {
        if peer.id == self.ctx.own_id {
            return;
        }
        self.known_sources.invalidate();
        if let Some(existing) = self.peers.get_mut(&peer.id) {
            existing.reconfigure(now, peer);
            // A changed policy may show the peer more or fewer services.
            existing.offer_services(&mut self.ctx, now);
            return;
        }
        let ctx = &self.ctx;
        let state = self
            .peers
            .insert(peer.id, |slot| Peer::new(ctx, peer, slot));
        let slot = state.slot();
        // Its handshakes skip the static-static DH from now on.
        self.ctx.noise_static.add_peer(state.noise_public());
        self.by_noise_key.insert(*state.noise_public(), slot);
        self.by_prefix.insert(state.prefix(), slot);
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
        let was_up = peer.has_session();
        peer.clear_sessions(&mut self.ctx);
        peer.forget_learned_services(&mut self.ctx);
        self.by_noise_key.remove(peer.noise_public());
        self.ctx.noise_static.remove_peer(peer.noise_public());
        self.by_prefix.remove(&peer.prefix());
        self.peer_order.retain(|slot| *slot != peer.slot());
        let address4 = peer.address4();
        if self.by_address4.get(&address4) == Some(&peer.slot()) {
            // The address is free: the earliest peer that wanted it gets it.
            self.by_address4.remove(&address4);
            let waiting: Vec<PeerSlot> = self
                .peer_order
                .iter()
                .copied()
                .filter(|slot| {
                    self.peers
                        .at(*slot)
                        .is_some_and(|other| other.address4() == address4)
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
        self.open_wanted_links(now);
    }
}
