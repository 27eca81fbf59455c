//! TAI64N timestamps in handshake initiations: a responder drops any
//! initiation whose timestamp is not newer than the last one it accepted from
//! that peer, so a recorded initiation cannot be replayed.

use std::time::Duration;

/// Offset of TAI64 labels: 2^62, plus the 10 s TAI-UTC offset of 1972.
const TAI64_EPOCH: u64 = (1 << 62) + 10;

/// A 12-byte TAI64N label: big-endian seconds then nanoseconds, so byte-wise
/// comparison orders it in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// The label of a time given as the duration since the Unix epoch.
    pub fn from_unix(since_epoch: Duration) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&(TAI64_EPOCH + since_epoch.as_secs()).to_be_bytes());
        bytes[8..].copy_from_slice(&since_epoch.subsec_nanos().to_be_bytes());
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_times_compare_greater() {
        let earlier = Tai64N::from_unix(Duration::new(1_700_000_000, 999_999_999));
        let later = Tai64N::from_unix(Duration::new(1_700_000_001, 0));
        assert!(later > earlier);
        assert!(Tai64N::from_unix(Duration::new(5, 2)) > Tai64N::from_unix(Duration::new(5, 1)));
    }
}
