//! Services among trusted agents (DESIGN.md §8): the set this agent
//! advertises, offered to each peer as its policy filters it, and what the
//! peers advertised here. The exchange itself is the peers'
//! (`core::peer::services`); the node keeps the last generation issued,
//! which the shell saves and restores across restarts.

use std::time::Instant;

use crate::core::services::{PeerServices, Service, ServiceError, check_set};

use super::Node;

impl Node {
    /// Sets the services this agent advertises (checked: at most
    /// `MAX_SERVICES`, one frame's size). Every peer with a session gets
    /// its filtered set at once if it changed for it; the others get it
    /// when their session comes up.
    pub fn set_advertised_services(
        &mut self,
        now: Instant,
        services: Vec<Service>,
    ) -> Result<(), ServiceError> {
        check_set(&services)?;
        if self.ctx.advertised == services {
            return Ok(());
        }
        self.ctx.advertised = services;
        for index in 0..self.peer_order.len() {
            if let Some(peer) = self.peers.at_mut(self.peer_order[index]) {
                peer.offer_services(&mut self.ctx, now);
            }
        }
        Ok(())
    }

    /// Restores the last generation of a `Services` offer this agent
    /// issued before it restarted (kept by the shell): every later offer
    /// gets a higher one, so peers replace what they learned before even
    /// if the wall clock went back. A lower value than the node's own is
    /// ignored. Call it before the first session comes up.
    pub fn restore_services_generation(&mut self, last_issued: u64) {
        self.ctx.last_services_generation = self.ctx.last_services_generation.max(last_issued);
    }

    /// The last generation of a `Services` offer issued (0: none yet):
    /// what the shell keeps for [`Node::restore_services_generation`]
    /// after a restart. Cheap: compare it on every wake.
    pub fn last_services_generation(&self) -> u64 {
        self.ctx.last_services_generation
    }

    /// The services this agent advertises.
    pub fn advertised_services(&self) -> &[Service] {
        &self.ctx.advertised
    }

    /// A count that moves whenever what a peer advertised here was
    /// replaced or forgotten (a newer set, a revocation, the peer
    /// removed): compared with the value seen last, it says in O(1)
    /// whether [`Node::peer_services`] has anything new.
    pub fn learned_services_changes(&self) -> u64 {
        self.ctx.learned_services_changes
    }

    /// What each peer advertised to this agent (peers that advertised
    /// nothing yet are left out), in the order the peers were added.
    pub fn peer_services(&self, now: Instant) -> Vec<PeerServices> {
        self.peer_order
            .iter()
            .filter_map(|slot| self.peers.at(*slot))
            .filter(|peer| !peer.is_rendezvous())
            .filter_map(|peer| {
                let learned = peer.learned_services()?;
                Some(PeerServices {
                    id: peer.id(),
                    name: peer.config().name.clone(),
                    learned: learned.clone(),
                    last_seen: peer.last_seen().unwrap_or(learned.received_at),
                    session_up: peer.is_up(now),
                })
            })
            .collect()
    }
}
