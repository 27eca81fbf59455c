//! The node's timers: what `handle_timeout` runs and when `poll_timeout`
//! asks to be called.

use std::time::Instant;

use crate::core::api::PeerSlot;

use super::{HOUSEKEEPING_INTERVAL, Node, REGISTER_TIMEOUT};

impl Node {
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
                peer.expire_connections(now);
                peer.release_idle_memory(now);
            }
            self.pending.expire(now);
            self.cookies.expire(now);
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
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
}
