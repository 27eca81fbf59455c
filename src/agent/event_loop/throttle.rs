//! Warnings that would repeat at packet rate (a send failing for every
//! datagram) are logged once per interval, with the count of those left out.

use std::time::{Duration, Instant};

use crate::core::limit::{Rate, TokenBucket};

/// Least time between two warnings about the same kind of send failure.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Allows a warning once per [`WARN_INTERVAL`], counting the rest: a token
/// bucket of one token (`core::limit`) and a count of what it refused.
#[derive(Debug)]
pub(super) struct Throttle {
    bucket: TokenBucket,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            bucket: TokenBucket::new(Rate::per(1, WARN_INTERVAL, 1)),
            suppressed: 0,
        }
    }
}

impl Throttle {
    /// Returns how many warnings were suppressed since the last one if a
    /// warning may be logged now.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.bucket.take(now) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_then_the_count_of_the_rest() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            throttle.allow(t0 + WARN_INTERVAL - Duration::from_millis(1)),
            None
        );
        assert_eq!(throttle.allow(t0 + WARN_INTERVAL), Some(2));
        assert_eq!(throttle.allow(t0 + WARN_INTERVAL), None);
        // A long quiet spell allows one, not a burst.
        let later = t0 + 100 * WARN_INTERVAL;
        assert_eq!(throttle.allow(later), Some(1));
        assert_eq!(throttle.allow(later), None);
    }
}
