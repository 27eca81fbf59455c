//! Loss, reordering and duplicates of what a peer sends us, from the
//! counters the replay window sees.
//!
//! Every packet a peer seals carries the next value of the session's 64-bit
//! counter, so on the receiving side the highest counter seen (plus one) is
//! how many packets the peer sent us, and the difference from the number
//! that arrived is how many were lost. A packet below the highest counter
//! arrives late (reordering); one already seen is a duplicate. Counters the
//! sender spends elsewhere (path pings to candidates while hole punching)
//! would look like loss: the sender reports their running count in a
//! `SkippedCounters` control frame before each RTT ping, and the receiver
//! counts them as skipped, not lost. For a peer that does not report them,
//! a jump of more than [`MAX_LOSS_GAP`] is taken for such a burst (birthday
//! probing) and counted as skipped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::push_back_sparing;
use crate::core::noise::replay::ReplayVerdict;

/// The sliding window the loss and reordering rates cover.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A forward jump of the counter by more than this is the sender spending
/// counters on probes sent elsewhere, not loss.
pub const MAX_LOSS_GAP: u64 = 128;
/// Width of one bucket of the rate window.
const BUCKET: Duration = Duration::from_secs(1);
/// Receiving sessions tracked at once (current, previous, next and one
/// spare for a rekey in flight).
const TRACKED_SESSIONS: usize = 4;

/// What the replay window saw of the packets a peer sent us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReceiveTally {
    /// Counters the peer used (highest counter + 1, summed over sessions).
    pub expected: u64,
    /// Packets that arrived and authenticated.
    pub received: u64,
    /// Of those, how many arrived after a higher counter (reordering).
    pub reordered: u64,
    /// Packets that arrived again (dropped as duplicates).
    pub duplicates: u64,
    /// Packets too far behind the window to tell (dropped).
    pub too_old: u64,
    /// Of the expected counters, those the peer spent on datagrams sent
    /// elsewhere (reported, or guessed from jumps over [`MAX_LOSS_GAP`]):
    /// not counted as lost.
    pub skipped: u64,
    /// Of the received packets, control frames that came another way than
    /// the peer's traffic (its probes that did arrive; counted in `skipped`
    /// by a peer that reports them).
    pub arrived_offpath: u64,
}

impl ReceiveTally {
    /// Adds `other` (saturating: counts from a peer may be absurd, and a
    /// counter that sticks at the maximum is better than a panic or a wrap).
    fn add(&mut self, other: &ReceiveTally) {
        self.expected = self.expected.saturating_add(other.expected);
        self.received = self.received.saturating_add(other.received);
        self.reordered = self.reordered.saturating_add(other.reordered);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
        self.too_old = self.too_old.saturating_add(other.too_old);
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.arrived_offpath = self.arrived_offpath.saturating_add(other.arrived_offpath);
    }

    /// Packets sent to us, as far as the counters tell.
    pub fn sent_to_us(&self) -> u64 {
        self.expected.saturating_sub(self.skipped)
    }

    /// Packets sent to us that never arrived (so far).
    pub fn lost(&self) -> u64 {
        let arrived = self.received.saturating_sub(self.arrived_offpath);
        self.sent_to_us().saturating_sub(arrived)
    }

    /// Lost / sent to us, `None` before anything was sent.
    pub fn loss_ratio(&self) -> Option<f64> {
        let sent = self.sent_to_us();
        (sent > 0).then(|| self.lost() as f64 / sent as f64)
    }

    /// Reordered / received, `None` before anything arrived.
    pub fn reorder_ratio(&self) -> Option<f64> {
        (self.received > 0).then(|| self.reordered as f64 / self.received as f64)
    }

    /// Duplicates / (received + duplicates), `None` before anything arrived.
    pub fn duplicate_ratio(&self) -> Option<f64> {
        let seen = self.received.saturating_add(self.duplicates);
        (seen > 0).then(|| self.duplicates as f64 / seen as f64)
    }
}

#[derive(Debug, Clone, Copy)]
struct SessionCounters {
    local_index: u32,
    highest: u64,
    last_used: Instant,
    /// The sender's last `SkippedCounters` total.
    reported: u64,
    /// Counters taken for skipped from jumps, not yet matched by a report.
    guessed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    tally: BucketTally,
}

/// One bucket's counts, in 32 bits each (saturating: a bucket spans one
/// [`BUCKET`]), so that a bucket takes 48 bytes instead of 72: every peer
/// that carried a packet in the last [`RATE_WINDOW`] holds one (issue
/// 16's idle-peer goal).
#[derive(Debug, Clone, Copy, Default)]
struct BucketTally {
    expected: u32,
    received: u32,
    reordered: u32,
    duplicates: u32,
    too_old: u32,
    skipped: u32,
    arrived_offpath: u32,
}

impl BucketTally {
    /// Adds `tally`, each count saturating at `u32::MAX`.
    fn add(&mut self, tally: &ReceiveTally) {
        let add = |count: &mut u32, more: u64| {
            *count = u32::try_from(u64::from(*count).saturating_add(more)).unwrap_or(u32::MAX);
        };
        add(&mut self.expected, tally.expected);
        add(&mut self.received, tally.received);
        add(&mut self.reordered, tally.reordered);
        add(&mut self.duplicates, tally.duplicates);
        add(&mut self.too_old, tally.too_old);
        add(&mut self.skipped, tally.skipped);
        add(&mut self.arrived_offpath, tally.arrived_offpath);
    }

    /// The counts as a [`ReceiveTally`].
    fn widen(&self) -> ReceiveTally {
        ReceiveTally {
            expected: u64::from(self.expected),
            received: u64::from(self.received),
            reordered: u64::from(self.reordered),
            duplicates: u64::from(self.duplicates),
            too_old: u64::from(self.too_old),
            skipped: u64::from(self.skipped),
            arrived_offpath: u64::from(self.arrived_offpath),
        }
    }
}

/// Receive-side statistics of one peer: totals and a sliding window.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    sessions: Vec<SessionCounters>,
    /// Whether the peer reports its off-path counters.
    peer_reports: bool,
    /// Whether the peer's traffic (data, keepalives) last came relayed.
    traffic_relayed: Option<bool>,
    total: ReceiveTally,
    buckets: VecDeque<Bucket>,
}

impl ReceiveStats {
    /// An authenticated packet with `counter` arrived on the session with
    /// our index `local_index` (call after the replay window marked it).
    pub fn on_accepted(&mut self, now: Instant, local_index: u32, counter: u64) {
        let mut tally = ReceiveTally {
            received: 1,
            ..ReceiveTally::default()
        };
        match self
            .sessions
            .iter_mut()
            .find(|session| session.local_index == local_index)
        {
            Some(session) => {
                session.last_used = now;
                if counter > session.highest {
                    let jump = counter - session.highest;
                    tally.expected = jump;
                    if jump > MAX_LOSS_GAP {
                        tally.skipped = jump - 1;
                        session.guessed = session.guessed.saturating_add(jump - 1);
                    }
                    session.highest = counter;
                } else {
                    tally.reordered = 1;
                }
            }
            None => {
                // Counters start at 0: everything below the first one seen
                // was sent before it.
                tally.expected = counter.saturating_add(1);
                let guessed = if counter >= MAX_LOSS_GAP { counter } else { 0 };
                tally.skipped = guessed;
                if self.sessions.len() >= TRACKED_SESSIONS
                    && let Some(oldest) = self
                        .sessions
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, session)| session.last_used)
                        .map(|(position, _)| position)
                {
                    self.sessions.swap_remove(oldest);
                }
                if self.sessions.capacity() == 0 {
                    // Room for one: an idle peer keeps the session it was
                    // confirmed on, and only a rekey brings a second.
                    self.sessions.reserve_exact(1);
                }
                self.sessions.push(SessionCounters {
                    local_index,
                    highest: counter,
                    last_used: now,
                    reported: 0,
                    guessed,
                });
            }
        }
        self.record(now, &tally);
    }

    /// Notes the way the packet just accepted came: traffic shows the
    /// peer's path in use; a control frame that came another way is one the
    /// peer counts as off its path (a probe, a pong to our probe).
    pub fn on_arrival_path(&mut self, now: Instant, relayed: bool, control: bool) {
        if !control {
            self.traffic_relayed = Some(relayed);
        } else if self.peer_reports
            && self
                .traffic_relayed
                .is_some_and(|traffic| traffic != relayed)
        {
            let tally = ReceiveTally {
                arrived_offpath: 1,
                ..ReceiveTally::default()
            };
            self.record(now, &tally);
        }
    }

    /// The peer reports `count` counters of the session with our index
    /// `local_index` spent on datagrams sent elsewhere (running total).
    pub fn on_skipped_report(&mut self, now: Instant, local_index: u32, count: u64) {
        let Some(session) = self
            .sessions
            .iter_mut()
            .find(|session| session.local_index == local_index)
        else {
            return;
        };
        self.peer_reports = true;
        let new = count.saturating_sub(session.reported);
        session.reported = session.reported.max(count);
        // What a jump already made us guess is not counted twice.
        let known = new.min(session.guessed);
        session.guessed -= known;
        let tally = ReceiveTally {
            skipped: new - known,
            ..ReceiveTally::default()
        };
        self.record(now, &tally);
    }

    /// A packet was refused by the replay window.
    pub fn on_refused(&mut self, now: Instant, verdict: ReplayVerdict) {
        let tally = match verdict {
            ReplayVerdict::Duplicate => ReceiveTally {
                duplicates: 1,
                ..ReceiveTally::default()
            },
            ReplayVerdict::TooOld | ReplayVerdict::Fresh => ReceiveTally {
                too_old: 1,
                ..ReceiveTally::default()
            },
        };
        self.record(now, &tally);
    }

    fn record(&mut self, now: Instant, tally: &ReceiveTally) {
        self.total.add(tally);
        let fresh = self
            .buckets
            .back()
            .is_none_or(|bucket| now >= bucket.start + BUCKET);
        if fresh {
            let bucket = Bucket {
                start: now,
                tally: BucketTally::default(),
            };
            push_back_sparing(&mut self.buckets, bucket);
            while self
                .buckets
                .front()
                .is_some_and(|bucket| bucket.start + RATE_WINDOW <= now)
            {
                self.buckets.pop_front();
            }
        }
        if let Some(bucket) = self.buckets.back_mut() {
            bucket.tally.add(tally);
        }
    }

    /// Frees the rate window once all its buckets are older than
    /// [`RATE_WINDOW`] (they count for nothing then, and [`Self::record`]
    /// would drop them at the next packet): an idle peer keeps no buckets.
    pub fn release_expired(&mut self, now: Instant) {
        if self
            .buckets
            .back()
            .is_some_and(|bucket| bucket.start + RATE_WINDOW <= now)
        {
            self.buckets = VecDeque::new();
        }
    }

    /// Everything since the peer was added.
    pub fn total(&self) -> ReceiveTally {
        self.total
    }

    /// The last [`RATE_WINDOW`] (at bucket granularity).
    pub fn window(&self, now: Instant) -> ReceiveTally {
        let mut tally = ReceiveTally::default();
        for bucket in &self.buckets {
            if bucket.start + RATE_WINDOW > now {
                tally.add(&bucket.tally.widen());
            }
        }
        tally
    }
}

/// Loss, reordering and duplicates of the packets the peer sent us.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReceiveReport {
    /// Length of the window the rates cover, in seconds.
    pub window_s: f64,
    /// Fraction of the peer's packets lost in the window (0..1).
    pub loss: Option<f64>,
    /// Fraction of received packets that arrived out of order in the window.
    pub reordering: Option<f64>,
    /// Fraction of arrivals that were duplicates in the window.
    pub duplication: Option<f64>,
    /// Counts in the window.
    pub window: ReceiveTally,
    /// Counts since the peer was added.
    pub total: ReceiveTally,
    /// Fraction lost since the peer was added.
    pub loss_total: Option<f64>,
    /// Packets lost since the peer was added.
    pub lost_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_counts_from_a_peer_saturate_instead_of_overflowing() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        // A peer reports absurd skipped totals on two sessions, and a first
        // packet with the highest counter there is.
        stats.on_accepted(now, 1, 0);
        stats.on_accepted(now, 2, 0);
        stats.on_skipped_report(now, 1, u64::MAX);
        stats.on_skipped_report(now, 2, u64::MAX);
        stats.on_accepted(now, 3, u64::MAX);
        stats.on_accepted(now, 4, u64::MAX);
        let total = stats.total();
        assert_eq!(total.skipped, u64::MAX);
        assert_eq!(total.expected, u64::MAX);
        // A one-second bucket of the window counts to 2^32 - 1.
        assert_eq!(stats.window(now).skipped, u64::from(u32::MAX));
        assert_eq!(stats.window(now).expected, u64::from(u32::MAX));
    }

    #[test]
    fn gaps_are_loss_and_late_arrivals_are_reordering() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        // 0..10 sent; 3 and 7 lost; 5 arrives after 6.
        for counter in [0, 1, 2, 4, 6, 5, 8, 9] {
            stats.on_accepted(now, 1, counter);
        }
        stats.on_refused(now, ReplayVerdict::Duplicate);
        let total = stats.total();
        assert_eq!(total.expected, 10);
        assert_eq!(total.received, 8);
        assert_eq!(total.lost(), 2);
        assert_eq!(total.reordered, 1);
        assert_eq!(total.duplicates, 1);
        assert_eq!(total.loss_ratio(), Some(0.2));
        assert_eq!(stats.window(now), total);
    }

    #[test]
    fn sessions_count_separately_and_bursts_elsewhere_are_skipped() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        stats.on_accepted(now, 1, 0);
        stats.on_accepted(now, 1, 1);
        // A new session starts at 0 again: no loss, no reordering.
        stats.on_accepted(now, 2, 0);
        stats.on_accepted(now, 2, 1);
        // 500 counters spent on birthday probes to other addresses.
        stats.on_accepted(now, 2, 502);
        let total = stats.total();
        assert_eq!(total.lost(), 0, "{total:?}");
        assert_eq!(total.reordered, 0);
        assert_eq!(total.skipped, 500);
        // The report of those 500 (and 3 more) does not count them twice.
        stats.on_accepted(now, 2, 506);
        stats.on_skipped_report(now, 2, 503);
        let total = stats.total();
        assert_eq!((total.skipped, total.lost()), (503, 0), "{total:?}");
    }

    #[test]
    fn reported_probes_are_not_loss() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        // 0..20, of which 5, 6, 7 went to candidates that did not answer
        // and 12 was lost.
        for counter in (0..20).filter(|c| ![5, 6, 7, 12].contains(c)) {
            stats.on_accepted(now, 9, counter);
        }
        assert_eq!(stats.total().lost(), 4);
        stats.on_skipped_report(now, 9, 3);
        stats.on_skipped_report(now, 9, 3);
        let total = stats.total();
        assert_eq!((total.lost(), total.skipped), (1, 3), "{total:?}");
        assert_eq!(total.loss_ratio(), Some(1.0 / 17.0));
        // Traffic comes relayed; a probe of the peer's arrives directly (and
        // was reported as skipped): still one lost.
        stats.on_accepted(now, 9, 20);
        stats.on_arrival_path(now, true, false);
        stats.on_accepted(now, 9, 21);
        stats.on_arrival_path(now, false, true);
        stats.on_skipped_report(now, 9, 4);
        assert_eq!(stats.total().lost(), 1, "{:?}", stats.total());
    }

    #[test]
    fn releasing_an_expired_window_changes_no_report() {
        let start = Instant::now();
        let mut kept = ReceiveStats::default();
        for counter in [0, 2, 3] {
            kept.on_accepted(start, 1, counter);
        }
        let mut released = kept.clone();
        released.release_expired(start + RATE_WINDOW - BUCKET);
        assert_eq!(released.buckets.len(), 1, "still in the window");
        let idle = start + RATE_WINDOW;
        released.release_expired(idle);
        assert_eq!(released.buckets.capacity(), 0);
        for at in [idle, idle + BUCKET / 2, idle + RATE_WINDOW] {
            kept.on_accepted(at, 1, 10);
            released.on_accepted(at, 1, 10);
            kept.on_refused(at, ReplayVerdict::Duplicate);
            released.on_refused(at, ReplayVerdict::Duplicate);
            assert_eq!(kept.window(at), released.window(at));
            assert_eq!(kept.total(), released.total());
        }
    }

    #[test]
    fn the_window_forgets_old_loss() {
        let start = Instant::now();
        let mut stats = ReceiveStats::default();
        for counter in (0..100).step_by(2) {
            stats.on_accepted(start, 1, counter);
        }
        let later = start + RATE_WINDOW + BUCKET;
        for counter in 99..150 {
            stats.on_accepted(later, 1, counter);
        }
        assert_eq!(stats.window(later).loss_ratio(), Some(0.0));
        assert!(stats.total().loss_ratio().is_some_and(|loss| loss > 0.3));
    }
}
