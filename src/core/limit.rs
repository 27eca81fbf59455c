//! One keyed, bounded rate limiter for every table a stranger can reach
//! before authentication (trust requests, cookies, the rendezvous' relay).
//!
//! A [`KeyedLimiter`] is a fixed array of token buckets; a key (a source
//! address, a relayed node, a requester key) picks its bucket by a hash
//! keyed with a secret drawn from the core's RNG on first use. So:
//!
//! - **O(1) work per datagram**: one hash and one bucket, whatever the
//!   number of sources. There is no per-source entry to insert, look up,
//!   sweep or evict, so a flood from spoofed addresses costs what one
//!   datagram costs.
//! - **Bounded memory**, allocated on first use: [`KeyedLimiter::buckets`]
//!   times 8 bytes.
//! - Keys that share a bucket share its rate. The secret makes the bucket of
//!   a key unpredictable, so a flooder cannot aim at a victim's bucket; a
//!   flood spread over many addresses drains many buckets (and its victims
//!   in them), which is the limit of any per-source scheme.
//!
//! Each bucket is one number, GCRA's *theoretical arrival time*: a bucket
//! allows an event at `now` if its time is at most `burst - 1` intervals
//! ahead of `now`, and the event moves it one interval on. That is a token
//! bucket of `burst` tokens refilled at `rate` per second, kept in 8 bytes.
//! Time is passed in (`now`), as everywhere in the core.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use rand::RngCore;

/// A rate: events per period, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time one event costs (the refill interval of one token).
    interval: Duration,
    /// Events allowed at once from a full bucket.
    burst: u32,
}

impl Rate {
    /// `events` per `period`, at most `burst` at once (at least 1).
    pub const fn per(events: u32, period: Duration, burst: u32) -> Self {
        let events = if events == 0 { 1 } else { events };
        let nanos = period.as_nanos() / events as u128;
        let nanos = if nanos > u64::MAX as u128 {
            u64::MAX
        } else {
            nanos as u64
        };
        Self {
            interval: Duration::from_nanos(nanos),
            burst: if burst == 0 { 1 } else { burst },
        }
    }

    /// `per_second` events a second, at most `burst` at once.
    pub const fn per_second(per_second: u32, burst: u32) -> Self {
        Self::per(per_second, Duration::from_secs(1), burst)
    }

    /// The interval in nanoseconds (at least 1).
    fn interval_nanos(&self) -> u64 {
        u64::try_from(self.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// How far ahead of `now` a bucket's time may be and still allow an
    /// event: `burst - 1` intervals.
    fn tolerance_nanos(&self) -> u64 {
        self.interval_nanos()
            .saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }

    /// Events allowed at once from a full bucket.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// One GCRA cell: the theoretical arrival time, in nanoseconds since the
/// limiter's epoch. Zero (or anything in the past) is a full bucket.
fn take_cell(cell: &mut u64, now_nanos: u64, rate: &Rate) -> bool {
    let arrival = (*cell).max(now_nanos);
    if arrival - now_nanos > rate.tolerance_nanos() {
        return false;
    }
    *cell = arrival.saturating_add(rate.interval_nanos());
    true
}

/// Nanoseconds from `epoch` to `now` (zero for an earlier `now`).
fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The part of a source address a limiter keys on: an IPv4 address
/// (IPv4-mapped IPv6 included), or the /64 of an IPv6 address, since one
/// host commonly holds a whole /64 and picks addresses in it freely.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        },
    }
}

/// A single token bucket (a global budget, not keyed).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    epoch: Option<Instant>,
    cell: u64,
}

impl TokenBucket {
    /// A full bucket of `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            epoch: None,
            cell: 0,
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let epoch = *self.epoch.get_or_insert(now);
        take_cell(&mut self.cell, nanos_since(epoch, now), &self.rate)
    }
}

/// The allocated part of a [`KeyedLimiter`].
struct Buckets {
    /// Secret of the hash that maps keys to buckets.
    secret: [u8; 16],
    /// Time zero of the cells.
    epoch: Instant,
    cells: Box<[u64]>,
}

/// Token buckets in a fixed array, a key's bucket chosen by a secret hash.
/// See the module documentation.
pub struct KeyedLimiter {
    rate: Rate,
    bucket_count: usize,
    buckets: Option<Buckets>,
    /// Buckets read or written so far (the work done, for tests and
    /// benches: one per call).
    cells_touched: u64,
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("rate", &self.rate)
            .field("buckets", &self.buckets())
            .finish_non_exhaustive()
    }
}

impl KeyedLimiter {
    /// A limiter of `bucket_count` buckets (at least 1) of `rate` each.
    /// Nothing is allocated until the first call of [`Self::take`].
    pub fn new(rate: Rate, bucket_count: usize) -> Self {
        Self {
            rate,
            bucket_count: bucket_count.max(1),
            buckets: None,
            cells_touched: 0,
        }
    }

    /// The rate of each bucket.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Buckets allocated (0 before the first use, then the fixed count).
    pub fn buckets(&self) -> usize {
        self.buckets
            .as_ref()
            .map_or(0, |buckets| buckets.cells.len())
    }

    /// Buckets read or written since the limiter was made: the work done.
    /// Exactly one per [`Self::take`], whatever the number of keys seen.
    pub fn cells_touched(&self) -> u64 {
        self.cells_touched
    }

    /// Counts one event of `key` at `now`; false when its bucket is empty.
    /// `rng` gives the hash's secret on first use.
    pub fn take<K: Hash + ?Sized>(
        &mut self,
        now: Instant,
        key: &K,
        rng: &mut impl RngCore,
    ) -> bool {
        let count = self.bucket_count;
        let buckets = self.buckets.get_or_insert_with(|| {
            let mut secret = [0u8; 16];
            rng.fill_bytes(&mut secret);
            Buckets {
                secret,
                epoch: now,
                cells: vec![0u64; count].into_boxed_slice(),
            }
        });
        let index = bucket_of(&buckets.secret, key, buckets.cells.len());
        let now_nanos = nanos_since(buckets.epoch, now);
        self.cells_touched = self.cells_touched.saturating_add(1);
        match buckets.cells.get_mut(index) {
            Some(cell) => take_cell(cell, now_nanos, &self.rate),
            None => false,
        }
    }
}

/// A hash of `key` keyed with `secret`. The secret goes first, so the
/// whole computation depends on it (SipHash over secret ‖ key), and the
/// hash of a key cannot be predicted without it.
pub fn keyed_hash<K: Hash + ?Sized>(secret: &[u8; 16], key: &K) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// The bucket of `key`: its [`keyed_hash`], modulo `count`.
fn bucket_of<K: Hash + ?Sized>(secret: &[u8; 16], key: &K, count: usize) -> usize {
    // `count` fits in u64 on every supported target, and the remainder is
    // below `count`.
    (keyed_hash(secret, key) % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rng::core_rng;

    #[test]
    fn bucket_allows_its_burst_then_its_rate() {
        let mut rng = core_rng([1; 32]);
        let mut limiter = KeyedLimiter::new(Rate::per_second(10, 3), 64);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limiter.take(t0, "a", &mut rng)).count();
        assert_eq!(allowed, 3);
        // One interval later, one more; another key is untouched.
        assert!(!limiter.take(t0 + Duration::from_millis(99), "a", &mut rng));
        assert!(limiter.take(t0 + Duration::from_millis(100), "a", &mut rng));
        assert!(!limiter.take(t0 + Duration::from_millis(100), "a", &mut rng));
        // Long idle: full again, never more than the burst.
        let later = t0 + Duration::from_secs(3600);
        let allowed = (0..10)
            .filter(|_| limiter.take(later, "a", &mut rng))
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn slow_rates_refill_by_the_interval() {
        let mut rng = core_rng([1; 32]);
        let mut limiter = KeyedLimiter::new(Rate::per(5, Duration::from_secs(60), 5), 16);
        let t0 = Instant::now();
        assert_eq!(
            (0..10)
                .filter(|_| limiter.take(t0, &7u32, &mut rng))
                .count(),
            5
        );
        assert!(!limiter.take(t0 + Duration::from_secs(11), &7u32, &mut rng));
        assert!(limiter.take(t0 + Duration::from_secs(12), &7u32, &mut rng));
    }

    #[test]
    fn nothing_is_allocated_before_first_use() {
        let mut rng = core_rng([1; 32]);
        let mut limiter = KeyedLimiter::new(Rate::per_second(1, 1), 1024);
        assert_eq!(limiter.buckets(), 0);
        limiter.take(Instant::now(), &1u8, &mut rng);
        assert_eq!(limiter.buckets(), 1024);
    }

    #[test]
    fn a_flood_of_new_sources_costs_one_bucket_each_and_others_still_pass() {
        let mut rng = core_rng([2; 32]);
        let mut limiter = KeyedLimiter::new(Rate::per(5, Duration::from_secs(60), 5), 16_384);
        let t0 = Instant::now();
        // Fill: 100,000 distinct sources, then 100,000 more, all new.
        for i in 0..200_000u32 {
            limiter.take(t0, &IpAddr::from(i.to_be_bytes()), &mut rng);
        }
        let before = limiter.cells_touched();
        for i in 200_000..300_000u32 {
            limiter.take(t0, &IpAddr::from(i.to_be_bytes()), &mut rng);
        }
        assert_eq!(limiter.cells_touched() - before, 100_000);
        assert_eq!(limiter.buckets(), 16_384);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut rng = core_rng([1; 32]);
        let mut limiter = KeyedLimiter::new(Rate::per_second(1, 1), 4);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.take(t0, &1u8, &mut rng));
        assert!(!limiter.take(t0 - Duration::from_secs(5), &1u8, &mut rng));
        let mut global = TokenBucket::new(Rate::per_second(1, 2));
        assert!(global.take(t0));
        assert!(global.take(t0 - Duration::from_secs(5)));
        assert!(!global.take(t0));
    }

    #[test]
    fn address_keys_fold_mapped_ipv4_and_ipv6_interface_ids() {
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(address_key(v4), address_key(mapped));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
    }

    #[test]
    fn secret_decides_the_bucket() {
        let keys: Vec<u32> = (0..64).collect();
        let spread = |secret: [u8; 16]| -> Vec<usize> {
            keys.iter()
                .map(|key| bucket_of(&secret, key, 1024))
                .collect()
        };
        assert_ne!(spread([1; 16]), spread([2; 16]));
    }
}
