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

use std::time::{Duration, Instant};

/// The window after the last packet in which the loop polls.
#[derive(Debug)]
pub(super) struct BusyPoll {
    window: Duration,
    until: Option<Instant>,
}

impl BusyPoll {
    /// Polls for `window` after each packet (zero: never).
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window,
            until: None,
        }
    }

    /// A packet was handled at `now`: poll until `now + window`.
    pub(super) fn on_packet(&mut self, now: Instant) {
        if !self.window.is_zero() {
            self.until = now.checked_add(self.window);
        }
    }

    /// Whether the loop polls rather than sleeps at `now`. Closes the
    /// window once it has passed.
    pub(super) fn is_polling(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => true,
            _ => {
                self.until = None;
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

    #[test]
    fn a_zero_window_never_polls() {
        let now = Instant::now();
        let mut busy = BusyPoll::new(Duration::ZERO);
        busy.on_packet(now);
        assert!(!busy.is_polling(now));
    }
}
