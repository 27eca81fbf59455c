//! The peers of a node: a slab of boxed peers addressed by [`PeerSlot`],
//! and the lookup by agent ID.
//!
//! The node's other tables (session index, node prefix, Noise key) name a
//! slot rather than the 32-byte agent ID: each entry is 28 bytes smaller,
//! and a packet costs one hash lookup, not a second one by ID (issue 7).

use std::collections::HashMap;

use crate::core::api::PeerSlot;
use crate::core::identity::AgentId;
use crate::core::peer::Peer;

/// The peers, by slot and by agent ID.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Boxed: a `Peer` is about a kilobyte, and the slab keeps up to half
    /// its length in spare capacity.
    slots: Vec<Option<Box<Peer>>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<PeerSlot>,
    by_id: HashMap<AgentId, PeerSlot>,
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

    /// The peer in a slot, to change.
    pub fn at_mut(&mut self, slot: PeerSlot) -> Option<&mut Peer> {
        self.slots.get_mut(slot.index())?.as_deref_mut()
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
        self.slots[slot.index()].insert(Box::new(make(slot)))
    }

    /// Removes the peer with this ID; its slot is free for the next one.
    pub fn remove(&mut self, id: &AgentId) -> Option<Box<Peer>> {
        let slot = self.by_id.remove(id)?;
        let peer = self.slots.get_mut(slot.index())?.take();
        self.free.push(slot);
        peer
    }

    /// Every peer, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.slots.iter().filter_map(Option::as_deref)
    }

    /// Every peer, in slot order, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.slots.iter_mut().filter_map(Option::as_deref_mut)
    }
}
