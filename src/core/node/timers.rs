//! The node's timers: what `handle_timeout` runs and when `poll_timeout`
//! asks to be called.

use std::time::Instant;

use super::{HOUSEKEEPING_INTERVAL, Node, REGISTER_TIMEOUT};

impl Node {
    /// Runs every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Links first: closing one may announce new candidates to peers,
        // whose timers then run below.
        if now >= self.next_link_sweep {
            self.sweep_links(now);
        }
        self.run_registrations(now);
        // Only the peers whose deadline passed (a heap: O(log n) each);
        // rendezvous links first, then by slot (a fixed order keeps
        // simulations reproducible).
        let mut due = std::mem::take(&mut self.due_scratch);
        self.peers.due(now, &mut due);
        due.sort_by_key(|slot| {
            !self
                .peers
                .at(*slot)
                .is_some_and(|peer| peer.is_rendezvous())
        });
        for slot in &due {
            if let Some(peer) = self.peers.at_mut(*slot) {
                peer.on_timeout(&mut self.ctx, now);
            }
        }
        self.due_scratch = due;
        if now >= self.next_housekeeping {
            for peer in self.peers.iter_mut() {
                peer.expire_connections(now);
                peer.release_idle_memory(now);
            }
            self.pending.expire(now);
            self.cookies.expire(now);
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        self.open_wanted_links(now);
    }

    /// When [`Node::handle_timeout`] must be called next (O(log peers):
    /// the peers changed since the last call are looked at, no other).
    /// It may be a little early; calling then is cheap and harmless.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.peers
            .next_deadline()
            .into_iter()
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
            .chain([self.next_housekeeping, self.next_link_sweep])
            .chain(self.ctx.links_wanted_since)
            .min()
    }
}
