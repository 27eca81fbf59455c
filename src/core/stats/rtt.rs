//! Round-trip time: the estimator (RFC 6298) and the schedule of the
//! periodic RTT ping, which runs only while IP traffic flows.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How often a path ping measures the RTT while IP traffic flows.
pub const RTT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// A peer is active (and pinged for RTT) this long after the last IP packet
/// either way; idle peers stay silent.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(10);

/// A smoothed round-trip time as TCP keeps it (RFC 6298: gain 1/8 for the
/// mean, 1/4 for the variation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RttEstimator {
    smoothed: Duration,
    variation: Duration,
    last: Duration,
    min: Duration,
    max: Duration,
    samples: u64,
    last_at: Option<Instant>,
}

impl RttEstimator {
    /// Adds one measurement.
    pub fn sample(&mut self, now: Instant, rtt: Duration) {
        if self.samples == 0 {
            self.smoothed = rtt;
            self.variation = rtt / 2;
            self.min = rtt;
            self.max = rtt;
        } else {
            let error = self.smoothed.abs_diff(rtt);
            self.variation = self.variation.saturating_mul(3).saturating_add(error) / 4;
            self.smoothed = self.smoothed.saturating_mul(7).saturating_add(rtt) / 8;
            self.min = self.min.min(rtt);
            self.max = self.max.max(rtt);
        }
        self.last = rtt;
        self.samples = self.samples.saturating_add(1);
        self.last_at = Some(now);
    }

    /// The smoothed RTT, if anything was measured.
    pub fn smoothed(&self) -> Option<Duration> {
        (self.samples > 0).then_some(self.smoothed)
    }

    /// A snapshot for status, `None` before the first sample.
    pub fn report(&self, now: Instant) -> Option<RttReport> {
        let last_at = self.last_at?;
        Some(RttReport {
            last_ms: millis(self.last),
            smoothed_ms: millis(self.smoothed),
            variation_ms: millis(self.variation),
            min_ms: millis(self.min),
            max_ms: millis(self.max),
            samples: self.samples,
            age_s: now.saturating_duration_since(last_at).as_secs_f64(),
        })
    }
}

pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Round-trip times of one path, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RttReport {
    /// The last measurement.
    pub last_ms: f64,
    /// Smoothed mean (EWMA, gain 1/8).
    pub smoothed_ms: f64,
    /// Mean deviation (EWMA, gain 1/4).
    pub variation_ms: f64,
    /// Smallest measurement.
    pub min_ms: f64,
    /// Largest measurement.
    pub max_ms: f64,
    /// Measurements so far.
    pub samples: u64,
    /// Seconds since the last measurement.
    pub age_s: f64,
}

/// Decides when to send the periodic RTT ping: every
/// [`RTT_PING_INTERVAL`] while IP traffic flowed in the last
/// [`ACTIVE_WINDOW`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RttPinger {
    last_ping: Option<Instant>,
    traffic_seen: u64,
    active_until: Option<Instant>,
}

impl RttPinger {
    pub(super) fn deadline(&self, traffic: u64, session_start: Instant) -> Option<Instant> {
        let next = self
            .last_ping
            .map_or(session_start, |at| at + RTT_PING_INTERVAL);
        if traffic != self.traffic_seen {
            return Some(next);
        }
        self.active_until
            .filter(|until| next < *until)
            .map(|_| next)
    }

    /// Whether to ping now. Always moves the state on, so a deadline that
    /// passed never fires twice.
    pub(super) fn due(&mut self, now: Instant, traffic: u64) -> bool {
        if traffic != self.traffic_seen {
            self.traffic_seen = traffic;
            self.active_until = Some(now + ACTIVE_WINDOW);
        }
        if self.active_until.is_none_or(|until| now >= until) {
            self.active_until = None;
            return false;
        }
        if self
            .last_ping
            .is_some_and(|at| now < at + RTT_PING_INTERVAL)
        {
            return false;
        }
        self.last_ping = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rtt_estimator_follows_rfc_6298() {
        let now = Instant::now();
        let mut rtt = RttEstimator::default();
        assert!(rtt.report(now).is_none());
        rtt.sample(now, 100 * MS);
        assert_eq!(rtt.smoothed(), Some(100 * MS));
        rtt.sample(now, 20 * MS);
        // 7/8 * 100 + 1/8 * 20 = 90; variation 3/4 * 50 + 1/4 * 80 = 57.5
        let report = rtt.report(now).expect("sampled");
        assert!((report.smoothed_ms - 90.0).abs() < 1e-6, "{report:?}");
        assert!((report.variation_ms - 57.5).abs() < 1e-6, "{report:?}");
        assert_eq!(
            (report.min_ms, report.max_ms, report.last_ms),
            (20.0, 100.0, 20.0)
        );
        assert_eq!(report.samples, 2);
    }

    #[test]
    fn rtt_pings_only_while_traffic_flows_and_never_spin() {
        let start = Instant::now();
        let mut pinger = RttPinger::default();
        assert_eq!(pinger.deadline(0, start), None, "idle: no ping");
        assert_eq!(pinger.deadline(5, start), Some(start));
        assert!(pinger.due(start, 5));
        assert!(!pinger.due(start, 5), "one ping per interval");
        let next = pinger.deadline(5, start).expect("active");
        assert_eq!(next, start + RTT_PING_INTERVAL);
        // No traffic since: pings continue for the active window, then stop.
        let mut now = next;
        let mut pings = 1;
        while let Some(deadline) = pinger.deadline(5, start) {
            assert!(deadline >= now, "a deadline in the past would spin");
            now = deadline;
            if pinger.due(now, 5) {
                pings += 1;
            }
            assert!(pings < 100);
        }
        assert_eq!(pings, 10);
        // A late wake-up after the window ends does not leave a stale deadline.
        let mut pinger = RttPinger::default();
        assert!(pinger.due(start, 1));
        assert!(!pinger.due(start + ACTIVE_WINDOW * 2, 1));
        assert_eq!(pinger.deadline(1, start), None);
    }
}
