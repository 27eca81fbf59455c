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
    /// Deadlines offered so far (the work done, for tests: one per peer
    /// looked at).
    offers: u64,
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
        self.offers += 1;
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

    /// Deadlines offered so far: how many times a peer was looked at.
    pub(super) fn offers(&self) -> u64 {
        self.offers
    }

    /// Whether `(at, index)` is the slot's live entry.
    fn is_live(&self, at: Instant, index: u32) -> bool {
        self.queued.get(index as usize).copied().flatten() == Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// What a test does to the schedule.
    #[derive(Debug, Clone)]
    enum Step {
        /// The peer in slot `.0` now has deadline `.1` ms (or none).
        Set(u8, Option<u16>),
        /// The peer in slot `.0` is removed.
        Remove(u8),
        /// Time advances to `.0` ms; the due peers run (and get no
        /// deadline).
        RunUntil(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..16, proptest::option::of(0u16..1000)).prop_map(|(s, d)| Step::Set(s, d)),
            (0u8..16).prop_map(Step::Remove),
            (0u16..1000).prop_map(Step::RunUntil),
        ]
    }

    proptest! {
        /// Against a model (the peers' real deadlines): the earliest queued
        /// deadline is never later than any real one, and a run at `now`
        /// pops every peer whose real deadline passed.
        #[test]
        fn no_deadline_is_missed_or_late(steps in proptest::collection::vec(step(), 0..200)) {
            let t0 = Instant::now();
            let at = |ms: u16| t0 + Duration::from_millis(u64::from(ms));
            let mut schedule = Schedule::default();
            let mut real: [Option<Instant>; 16] = [None; 16];
            for step in steps {
                match step {
                    Step::Set(slot, deadline) => {
                        real[usize::from(slot)] = deadline.map(at);
                        let slot = PeerSlot::from_index(u32::from(slot));
                        schedule.touch(slot);
                    }
                    Step::Remove(slot) => {
                        real[usize::from(slot)] = None;
                        schedule.forget(PeerSlot::from_index(u32::from(slot)));
                    }
                    Step::RunUntil(ms) => {
                        let now = at(ms);
                        let mut popped = Vec::new();
                        while let Some(slot) = schedule.pop_due(now) {
                            popped.push(slot.index());
                            // Spurious (early) pops are looked at again.
                            schedule.touch(slot);
                        }
                        for (slot, deadline) in real.iter_mut().enumerate() {
                            if deadline.is_some_and(|deadline| deadline <= now) {
                                prop_assert!(popped.contains(&slot), "slot {slot} missed");
                                *deadline = None;
                            }
                        }
                    }
                }
                // The table's look at the touched peers.
                let mut touched = Vec::new();
                schedule.take_touched(&mut touched);
                for slot in touched {
                    schedule.offer(slot, real[slot.index()]);
                }
                schedule.tidy();
                if let Some(earliest_real) = real.iter().flatten().min() {
                    let earliest = schedule.earliest();
                    prop_assert!(earliest.is_some_and(|queued| queued <= *earliest_real));
                }
                prop_assert!(schedule.heap.len() <= 2 * schedule.live + 64);
            }
        }
    }
}
