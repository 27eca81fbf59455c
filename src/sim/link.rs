//! The impairments of the simulated links.

use std::time::Duration;

/// Impairments of the simulated network (every datagram, every path).
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in [0, jitter) (reorders packets).
    pub jitter: Duration,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
}

impl LinkConfig {
    /// A perfect link: no loss, no delay. Everything sent at `now` arrives
    /// at `now` (the benches' and fuzz targets' network).
    pub const INSTANT: Self = Self {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
    };
}

impl Default for LinkConfig {
    /// No loss, 10 ms one way.
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(10),
            ..Self::INSTANT
        }
    }
}
