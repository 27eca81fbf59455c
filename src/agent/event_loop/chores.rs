//! The loop's periodic chores, kept as deadlines beside the node's own:
//! the earliest of them all is the loop's one wait timeout.

use std::time::{Duration, Instant};

/// How often the transports to rendezvous servers are reconsidered and
/// idle probe sockets closed.
const LINK_TICK: Duration = Duration::from_secs(1);
/// How often the local addresses announced to peers are re-read (addresses
/// come and go with DHCP, roaming and interfaces).
const CANDIDATE_REFRESH: Duration = Duration::from_secs(30);

/// When each chore is next due. A chore that comes late runs once, and its
/// next turn counts from then (no burst to catch up).
#[derive(Debug)]
pub(super) struct Chores {
    next_candidates: Instant,
    next_link_tick: Instant,
}

impl Chores {
    /// The candidates are re-read one period after `now` (the loop reads
    /// them as it starts); the link tick is due at once.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next_candidates: now + CANDIDATE_REFRESH,
            next_link_tick: now,
        }
    }

    /// The earliest deadline; the link tick counts only when `links_active`
    /// (an idle daemon without rendezvous or probe sockets sleeps).
    pub(super) fn next(&self, links_active: bool) -> Instant {
        if links_active {
            self.next_candidates.min(self.next_link_tick)
        } else {
            self.next_candidates
        }
    }

    /// Whether the candidates are due at `now`; if so, the next refresh is
    /// one period away.
    pub(super) fn candidates_due(&mut self, now: Instant) -> bool {
        let due = now >= self.next_candidates;
        if due {
            self.next_candidates = now + CANDIDATE_REFRESH;
        }
        due
    }

    /// Whether the link tick is due at `now` (never while `links_active` is
    /// false); if so, the next one is one period away.
    pub(super) fn links_due(&mut self, now: Instant, links_active: bool) -> bool {
        let due = links_active && now >= self.next_link_tick;
        if due {
            self.next_link_tick = now + LINK_TICK;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tick_counts_only_while_links_are_active() {
        let start = Instant::now();
        let mut chores = Chores::new(start);
        assert_eq!(chores.next(false), start + CANDIDATE_REFRESH);
        assert_eq!(chores.next(true), start, "the first tick is due at once");
        assert!(!chores.links_due(start, false));
        assert!(chores.links_due(start, true));
        assert_eq!(chores.next(true), start + LINK_TICK);
        assert!(!chores.links_due(start + LINK_TICK / 2, true));
    }

    #[test]
    fn a_late_chore_runs_once_and_counts_its_period_from_then() {
        let start = Instant::now();
        let mut chores = Chores::new(start);
        assert!(!chores.candidates_due(start + CANDIDATE_REFRESH / 2));
        let late = start + CANDIDATE_REFRESH * 3;
        assert!(chores.candidates_due(late));
        assert!(!chores.candidates_due(late), "once, not three times");
        assert_eq!(chores.next(false), late + CANDIDATE_REFRESH);
        // A link tick left idle for minutes is due at once when links come.
        assert!(chores.links_due(late, true));
        assert_eq!(chores.next(true), late + LINK_TICK);
    }
}
