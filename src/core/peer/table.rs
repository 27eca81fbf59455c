//! The peers of a node: a slab of boxed peers addressed by [`PeerSlot`],
//! and the lookup by agent ID.
//!
//! The node's other tables (session index, node prefix, Noise key) name a
//! slot rather than the 32-byte agent ID: each entry is 28 bytes smaller,
//! and a packet costs one hash lookup, not a second one by ID (issue 7).

use std::collections::HashMap;
use std::time::Instant;

use crate::core::api::PeerSlot;
use crate::core::identity::AgentId;
use crate::core::peer::Peer;

use super::schedule::Schedule;

/// The peers, by slot and by agent ID.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Boxed: a `Peer` is about a kilobyte, and the slab keeps up to half
    /// its length in spare capacity.
    slots: Vec<Option<Box<Peer>>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<PeerSlot>,
    by_id: HashMap<AgentId, PeerSlot>,
    /// When each peer's timers are due ([`Schedule`]): every mutable
    /// access to a peer marks it for a fresh look at its deadline.
    schedule: Schedule,
    /// Reused list of the slots to look at.
    scratch: Vec<PeerSlot>,
}

impl PeerTable {
    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a peer has this ID.
    pub fn contains(&self, id: &AgentId) -> bool {
        self.by_id.contains_key(id)
    }

    /// The slot of the peer with this ID.
    pub fn slot_of(&self, id: &AgentId) -> Option<PeerSlot> {
        self.by_id.get(id).copied()
    }

    /// The peer with this ID.
    pub fn get(&self, id: &AgentId) -> Option<&Peer> {
        self.slot_of(id).and_then(|slot| self.at(slot))
    }

    /// The peer with this ID, to change.
    pub fn get_mut(&mut self, id: &AgentId) -> Option<&mut Peer> {
        self.slot_of(id).and_then(|slot| self.at_mut(slot))
    }

    /// The peer in a slot.
    pub fn at(&self, slot: PeerSlot) -> Option<&Peer> {
        self.slots.get(slot.index())?.as_deref()
    }

    /// The peer in a slot, to change (its deadline is looked at again
    /// before the next [`PeerTable::next_deadline`]).
    pub fn at_mut(&mut self, slot: PeerSlot) -> Option<&mut Peer> {
        let peer = self.slots.get_mut(slot.index())?.as_deref_mut()?;
        self.schedule.touch(slot);
        Some(peer)
    }

    /// Adds a peer with an ID not in the table, built by `make` for the slot
    /// it gets.
    pub fn insert(&mut self, id: AgentId, make: impl FnOnce(PeerSlot) -> Peer) -> &mut Peer {
        debug_assert!(!self.contains(&id), "peer {id} added twice");
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // More than 4 billion peers would not fit in memory first.
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 peers");
                self.slots.push(None);
                PeerSlot::from_index(index)
            }
        };
        self.by_id.insert(id, slot);
        self.schedule.touch(slot);
        self.slots[slot.index()].insert(Box::new(make(slot)))
    }

    /// Removes the peer with this ID; its slot is free for the next one.
    pub fn remove(&mut self, id: &AgentId) -> Option<Box<Peer>> {
        let slot = self.by_id.remove(id)?;
        let peer = self.slots.get_mut(slot.index())?.take();
        self.schedule.forget(slot);
        self.free.push(slot);
        peer
    }

    /// Every peer, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.slots.iter().filter_map(Option::as_deref)
    }

    /// Every peer, in slot order, to change (all of them get their
    /// deadlines looked at again: O(peers), for rare events only).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.is_some() {
                // Indexes were handed out as u32 (see `insert`).
                self.schedule.touch(PeerSlot::from_index(index as u32));
            }
        }
        self.slots.iter_mut().filter_map(Option::as_deref_mut)
    }

    /// Looks again at the deadlines of the peers changed since the last
    /// look: O(changed · log peers).
    fn refresh_deadlines(&mut self) {
        let mut touched = std::mem::take(&mut self.scratch);
        self.schedule.take_touched(&mut touched);
        for slot in &touched {
            if let Some(peer) = self.slots.get(slot.index()).and_then(Option::as_deref) {
                self.schedule.offer(*slot, peer.next_deadline());
            }
        }
        touched.clear();
        self.scratch = touched;
        self.schedule.tidy();
    }

    /// The earliest time some peer's timers are due (possibly a little
    /// early: asking again then costs one look at that peer).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.refresh_deadlines();
        self.schedule.earliest()
    }

    /// How many times a peer's deadline was computed (for tests: the work
    /// a wake did).
    pub fn deadline_looks(&self) -> u64 {
        self.schedule.offers()
    }

    /// Puts into `due` the peers whose timers are due at `now`, in slot
    /// order. Each is looked at again after (their deadlines move).
    pub fn due(&mut self, now: Instant, due: &mut Vec<PeerSlot>) {
        due.clear();
        self.refresh_deadlines();
        while let Some(slot) = self.schedule.pop_due(now) {
            let Some(peer) = self.slots.get(slot.index()).and_then(Option::as_deref) else {
                continue;
            };
            if peer.next_deadline().is_some_and(|deadline| deadline <= now) {
                due.push(slot);
            }
            self.schedule.touch(slot);
        }
        due.sort_unstable_by_key(|slot| slot.index());
    }
}
