//! When the peers' timers are due: a min-heap of deadlines, so that a wake
//! costs O(log n) in the number of peers instead of a look at every one.
//!
//! A peer's deadline ([`Peer::next_deadline`]) follows from its own state.
//! Anything that changes a peer goes through the table's mutable accessors,
//! which mark it *touched*; before the next deadline is read, each touched
//! peer's deadline is computed again (O(1)) and pushed only when it is
//! *earlier* than the one already queued. A queued deadline may therefore
//! be early, never late: when it comes, the peer is asked again, and if its
//! real deadline is later it is queued for that instead (one spurious pop,
//! at most once per deadline a busy peer moves forward, e.g. a keepalive
//! every 10 s). So a packet costs one deadline computation and no heap
//! push, and idle peers are never looked at.
//!
//! Entries left behind (a peer removed, a deadline replaced by an earlier
//! one) are recognised by not matching the slot's queued deadline and
//! dropped when they reach the top; the heap is rebuilt when they pile up,
//! so it stays within twice the number of peers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::core::api::PeerSlot;

/// Deadlines by slot; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// (deadline, slot index), earliest first.
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Per slot: the deadline its live heap entry holds.
    queued: Vec<Option<Instant>>,
    /// Per slot: whether it is in `touched`.
    is_touched: Vec<bool>,
    /// Slots changed since their deadline was last computed.
    touched: Vec<PeerSlot>,
    /// Slots with a queued deadline (live heap entries).
    live: usize,
}

impl Schedule {
    /// Notes that the peer in `slot` may have a new deadline.
    pub(super) fn touch(&mut self, slot: PeerSlot) {
        let index = slot.index();
        if index >= self.is_touched.len() {
            self.is_touched.resize(index + 1, false);
            self.queued.resize(index + 1, None);
        }
        if !self.is_touched[index] {
            self.is_touched[index] = true;
            self.touched.push(slot);
        }
    }

    /// Forgets the deadline of a slot whose peer is gone.
    pub(super) fn forget(&mut self, slot: PeerSlot) {
        if let Some(queued) = self.queued.get_mut(slot.index())
            && queued.take().is_some()
        {
            self.live -= 1;
        }
    }

    /// Takes the touched slots (to compute their deadlines), leaving the
    /// list empty for reuse.
    pub(super) fn take_touched(&mut self, into: &mut Vec<PeerSlot>) {
        into.clear();
        std::mem::swap(into, &mut self.touched);
        for slot in into.iter() {
            self.is_touched[slot.index()] = false;
        }
    }

    /// The peer in `slot` is due at `deadline` (or never): queues it when
    /// that is earlier than what is queued.
    pub(super) fn offer(&mut self, slot: PeerSlot, deadline: Option<Instant>) {
        let index = slot.index();
        let Some(deadline) = deadline else {
            return;
        };
        let queued = &mut self.queued[index];
        if queued.is_none_or(|queued| deadline < queued) {
            if queued.is_none() {
                self.live += 1;
            }
            *queued = Some(deadline);
            // Slot indexes fit in u32 (the table hands them out as such).
            self.heap.push(Reverse((deadline, index as u32)));
        }
    }

    /// Drops stale entries from the top, and rebuilds the heap when stale
    /// entries make up more than half of it.
    pub(super) fn tidy(&mut self) {
        while let Some(Reverse((at, index))) = self.heap.peek().copied() {
            if self.is_live(at, index) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 64 && self.heap.len() > 2 * self.live {
            self.heap = self
                .queued
                .iter()
                .enumerate()
                .filter_map(|(index, queued)| Some(Reverse(((*queued)?, index as u32))))
                .collect();
        }
    }

    /// The earliest queued deadline (after [`Schedule::tidy`]: a live one).
    pub(super) fn earliest(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next live entry due at or before `now`; its slot has no
    /// queued deadline afterwards (the caller computes a new one).
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<PeerSlot> {
        while let Some(Reverse((at, index))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.is_live(at, index) {
                self.queued[index as usize] = None;
                self.live -= 1;
                return Some(PeerSlot::from_index(index));
            }
        }
        None
    }

    /// Whether `(at, index)` is the slot's live entry.
    fn is_live(&self, at: Instant, index: u32) -> bool {
        self.queued.get(index as usize).copied().flatten() == Some(at)
    }
}
