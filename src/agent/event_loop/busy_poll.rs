//! Busy polling: after a packet, the loop keeps looking for the next one
//! for a bounded window instead of sleeping in `epoll_wait`.
//!
//! A reply usually comes back within a few hundred microseconds of the
//! packet that asked for it (a ping, a request, a TCP ACK). Sleeping in
//! between costs a wake-up when it comes: on a virtual machine an idle vCPU
//! halts, and waking it can take ~100 µs (the project's VM: a
//! `perf bench sched pipe` round trip is 7.4 µs on one vCPU, 215 µs across
//! two), paid at every crossing of every tunnel. Polling keeps the CPU
//! awake through the window. Each turn waits on the loop's `epoll` with a
//! zero timeout, so its other inputs (the quiet inputs, timers) are served
//! exactly as when it sleeps; then, only if nothing was waiting, it yields
//! the CPU to any other runnable thread (so a busy machine loses nothing
//! but a `sched_yield`). Once the window passes without a packet the loop
//! sleeps again: an idle daemon spends no CPU.
//!
//! While packets flow, a turn that follows one which took packets skips
//! the loop's upkeep (a system clock reading and a fresh look at every
//! deadline) and looks again at once: on a machine where both ends of a
//! round trip share a CPU, the peer's reply is usually waiting by then
//! (the send woke the peer, which ran and answered before this loop got
//! the CPU back), and the upkeep, cold after a sleep, cost ~10 µs in front
//! of it. The upkeep then comes at the first turn that takes nothing, after
//! timers ran or a quiet input came, and at least every
//! [`UPKEEP_INTERVAL`] under sustained load, so a deadline that packets
//! moved earlier is seen at most that late (a sleeping loop's `epoll`
//! timeout has millisecond granularity too).
//!
//! A turn that delivered one packet to the TUN and sent the answer the
//! kernel gave within that write (an echo reply, an ACK: `reads_answer`)
//! opens no window: the packet is answered, and what comes next is the
//! peer's next request, after its application has run. Polling then only
//! keeps this CPU busy, and the scheduler wakes a thread on a busy CPU
//! only when no other is idle: with both daemons of a round trip on one
//! machine, the reader of the reply (woken by the other daemon's TUN write
//! on the vCPU both polled on) went to the halted one instead. Interleaved
//! with the build before and fastd, 15 rounds of 100 pings at 10 ms, two
//! runs: from user to user (`ping -U`) 0.232 and 0.249 ms against 0.304
//! and 0.324 with the window (fastd 0.258 and 0.281); ping's own round
//! trip as before (0.231 / 0.226 against 0.238 / 0.216).
//!
//! Likewise after a local program's reply: a turn that polled up only TUN
//! packets after a turn inside the same window delivered the peer's
//! packets to the TUN (a server answering a request) closes the window
//! once they have left. A TCP request/response (a 1-byte Python echo, 10
//! ms apart), interleaved: 0.412–0.424 ms against 0.475–0.488 with the
//! window (fastd 0.483–0.495). A client that sends its next request
//! within the window after a response then sleeps until that one's
//! answer.

use std::time::{Duration, Instant};

/// The longest run of turns without the loop's upkeep.
pub(super) const UPKEEP_INTERVAL: Duration = Duration::from_millis(1);

/// The window after the last packet in which the loop polls, and the runs
/// of turns that skip the upkeep.
#[derive(Debug)]
pub(super) struct BusyPoll {
    window: Duration,
    until: Option<Instant>,
    /// When the current run of turns without upkeep started.
    skipping_since: Option<Instant>,
    /// Something the deadlines depend on changed: the next turn does the
    /// upkeep.
    upkeep_due: bool,
    /// A turn inside the current window delivered packets to the TUN: a
    /// TUN packet polled up next is a local program's reply to them.
    delivered: bool,
}

impl BusyPoll {
    /// Polls for `window` after each packet (zero: never).
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window,
            until: None,
            skipping_since: None,
            upkeep_due: false,
            delivered: false,
        }
    }

    /// Whether the turn starting at `now` (after one that took packets)
    /// skips the upkeep and polls at once: the loop polls, no upkeep is
    /// due, and the run of such turns is younger than [`UPKEEP_INTERVAL`].
    /// If so, the window stays open from `now`.
    pub(super) fn skips_upkeep(&mut self, now: Instant) -> bool {
        if self.window.is_zero() || std::mem::take(&mut self.upkeep_due) {
            return false;
        }
        let since = *self.skipping_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= UPKEEP_INTERVAL {
            return false;
        }
        self.on_packet(now);
        true
    }

    /// The upkeep was done: a new run of turns may skip it.
    pub(super) fn upkept(&mut self) {
        self.skipping_since = None;
        self.upkeep_due = false;
    }

    /// The deadlines may have moved (timers ran, a quiet input came): the
    /// next turn does the upkeep.
    pub(super) fn upkeep_now(&mut self) {
        self.upkeep_due = true;
    }

    /// A packet was handled at `now`: poll until `now + window`.
    pub(super) fn on_packet(&mut self, now: Instant) {
        if !self.window.is_zero() {
            self.until = now.checked_add(self.window);
        }
    }

    /// The turn sent the kernel's answer to the one packet it delivered:
    /// the window closes, and the next turn does the upkeep and sleeps
    /// until a packet or a deadline.
    pub(super) fn answered(&mut self) {
        self.until = None;
        self.upkeep_due = true;
        self.delivered = false;
    }

    /// After a turn's flush, what it moved: packets from the peer written
    /// to the TUN (`delivered`), or, in a polling turn, TUN packets and
    /// nothing from the peer (`polled_up_tun_only`). Returns whether the
    /// window closed: TUN packets right after a delivery inside this
    /// window are a local program's reply to it, after which nothing more
    /// is owed (as after the kernel's answer: [`BusyPoll::answered`]).
    pub(super) fn after_flush(&mut self, delivered: bool, polled_up_tun_only: bool) -> bool {
        if delivered {
            self.delivered = true;
            return false;
        }
        let replied = polled_up_tun_only && self.delivered && self.until.is_some();
        if replied {
            self.answered();
        }
        replied
    }

    /// Whether the loop polls rather than sleeps at `now`. Closes the
    /// window once it has passed.
    pub(super) fn is_polling(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => true,
            _ => {
                self.until = None;
                self.delivered = false;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_through_the_window_after_a_packet_then_sleeps() {
        let start = Instant::now();
        let mut busy = BusyPoll::new(Duration::from_micros(500));
        assert!(!busy.is_polling(start), "no packet yet: sleep");
        busy.on_packet(start);
        assert!(busy.is_polling(start + Duration::from_micros(499)));
        assert!(!busy.is_polling(start + Duration::from_micros(500)));
        assert!(
            !busy.is_polling(start + Duration::from_micros(100)),
            "a closed window stays closed until the next packet"
        );
        busy.on_packet(start + Duration::from_millis(10));
        assert!(busy.is_polling(start + Duration::from_millis(10)));
    }

    /// A 200 µs window, opened by a packet at `start`.
    fn window_opened_at(start: Instant) -> BusyPoll {
        let mut busy = BusyPoll::new(Duration::from_micros(200));
        busy.on_packet(start);
        busy
    }

    #[test]
    fn a_zero_window_never_polls() {
        let now = Instant::now();
        let mut busy = BusyPoll::new(Duration::ZERO);
        busy.on_packet(now);
        assert!(!busy.is_polling(now));
        assert!(!busy.skips_upkeep(now), "nor skips the upkeep");
    }

    #[test]
    fn turns_skip_the_upkeep_for_at_most_the_interval() {
        let start = Instant::now();
        let micros = |n| start + Duration::from_micros(n);
        let mut busy = window_opened_at(start);
        assert!(busy.skips_upkeep(micros(10)), "the run starts");
        assert!(busy.skips_upkeep(micros(999 + 10)));
        assert!(
            busy.is_polling(micros(999 + 10 + 199)),
            "a skipping turn keeps the window open"
        );
        assert!(
            !busy.skips_upkeep(micros(1_000 + 10)),
            "a run as old as the interval does the upkeep"
        );
        busy.upkept();
        assert!(busy.skips_upkeep(micros(1_020)), "a new run starts");
    }

    #[test]
    fn an_answered_turn_closes_the_window_and_skips_no_upkeep() {
        let start = Instant::now();
        let mut busy = window_opened_at(start);
        assert!(busy.skips_upkeep(start + Duration::from_micros(10)));
        busy.answered();
        assert!(
            !busy.skips_upkeep(start + Duration::from_micros(20)),
            "the turn after an answer does the upkeep"
        );
        busy.upkept();
        assert!(
            !busy.is_polling(start + Duration::from_micros(30)),
            "and sleeps: the window is closed"
        );
        busy.on_packet(start + Duration::from_micros(40));
        assert!(
            busy.is_polling(start + Duration::from_micros(41)),
            "the next packet opens it again"
        );
    }

    #[test]
    fn a_reply_to_what_the_window_delivered_closes_it() {
        let start = Instant::now();
        let micros = |n| start + Duration::from_micros(n);
        let mut busy = window_opened_at(start);
        assert!(!busy.after_flush(false, true), "nothing was delivered");
        assert!(busy.is_polling(micros(1)));
        assert!(!busy.after_flush(true, false), "a delivery keeps it open");
        assert!(
            !busy.after_flush(false, false),
            "a turn that took nothing from the TUN is no reply"
        );
        assert!(busy.after_flush(false, true), "the local program's reply");
        assert!(!busy.is_polling(micros(2)), "closes the window");
        assert!(!busy.after_flush(false, true), "once");
    }

    #[test]
    fn a_delivery_is_forgotten_once_the_window_has_passed() {
        let start = Instant::now();
        let mut busy = window_opened_at(start);
        assert!(!busy.after_flush(true, false));
        assert!(!busy.is_polling(start + Duration::from_micros(200)));
        busy.on_packet(start + Duration::from_millis(10));
        assert!(
            !busy.after_flush(false, true),
            "a TUN packet after a sleep asks, it does not reply"
        );
        assert!(busy.is_polling(start + Duration::from_millis(10)));
    }

    #[test]
    fn an_upkeep_asked_for_comes_at_the_next_turn() {
        let start = Instant::now();
        let mut busy = window_opened_at(start);
        assert!(busy.skips_upkeep(start));
        busy.upkeep_now();
        assert!(!busy.skips_upkeep(start), "the upkeep is due");
        busy.upkept();
        assert!(busy.skips_upkeep(start), "and then done");
    }
}
