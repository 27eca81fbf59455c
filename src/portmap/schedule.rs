//! When to ask the gateway again: renewals at half the granted lifetime,
//! retries after failures with a growing wait. Pure arithmetic, so a
//! gateway's answer (a lifetime of 1 s, or of 136 years) cannot make the
//! mapper spin or sleep forever.

use std::time::Duration;

/// The lifetime asked of the gateway (RFC 6886 §3.3 recommends two hours).
pub const REQUESTED_LIFETIME: Duration = Duration::from_secs(7200);
/// The earliest renewal after a grant, whatever lifetime came back.
pub const MIN_RENEW_AFTER: Duration = Duration::from_secs(30);
/// The latest renewal after a grant (a gateway that grants days is still
/// asked daily: it may have rebooted and forgotten).
pub const MAX_RENEW_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The wait after a first failed attempt; it doubles after each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between attempts when no gateway answers.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// The shortest wait before retrying a failed renewal.
pub const MIN_RENEW_RETRY: Duration = Duration::from_secs(10);

/// How long after a grant of `lifetime` to renew: at half of it (RFC 6886
/// §3.3, RFC 6887 §11.2.1), within [`MIN_RENEW_AFTER`] and
/// [`MAX_RENEW_AFTER`].
pub fn renew_after(lifetime: Duration) -> Duration {
    (lifetime / 2).clamp(MIN_RENEW_AFTER, MAX_RENEW_AFTER)
}

/// How long to wait after `failures` failed attempts in a row (1 or more)
/// before mapping again: [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`].
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// After a failed renewal with `remaining` left of the mapping: when to
/// try again (half of what remains, at least [`MIN_RENEW_RETRY`], at most
/// [`MAX_RENEW_AFTER`]), or `None` when the mapping would be gone by then
/// (start over).
pub fn renew_retry_after(remaining: Duration) -> Option<Duration> {
    let wait = (remaining / 2).clamp(MIN_RENEW_RETRY, MAX_RENEW_AFTER);
    (wait < remaining).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_half_the_lifetime() {
        assert_eq!(renew_after(REQUESTED_LIFETIME), Duration::from_secs(3600));
        assert_eq!(
            renew_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn absurd_lifetimes_are_clamped() {
        assert_eq!(renew_after(Duration::ZERO), MIN_RENEW_AFTER);
        assert_eq!(renew_after(Duration::from_secs(1)), MIN_RENEW_AFTER);
        assert_eq!(
            renew_after(Duration::from_secs(u64::from(u32::MAX))),
            MAX_RENEW_AFTER
        );
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(retry_after(0), FIRST_RETRY);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn a_failed_renewal_of_an_endless_mapping_retries_within_a_day() {
        // A lease without an end (Duration::MAX left) once made the retry
        // ~2^63 s away, and adding it to the clock panicked.
        let wait = renew_retry_after(Duration::MAX).expect("retries");
        assert_eq!(wait, MAX_RENEW_AFTER);
        assert!(std::time::Instant::now().checked_add(wait).is_some());
    }

    #[test]
    fn a_failed_renewal_retries_while_the_mapping_lasts() {
        assert_eq!(
            renew_retry_after(Duration::from_secs(3600)),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            renew_retry_after(Duration::from_secs(15)),
            Some(MIN_RENEW_RETRY)
        );
        assert_eq!(renew_retry_after(Duration::from_secs(10)), None);
        assert_eq!(renew_retry_after(Duration::ZERO), None);
    }

    #[test]
    fn renewals_of_a_two_hour_mapping_come_before_it_ends() {
        // Granted 7200 s: renewed at 3600 s; if that fails, at 5400, 6300,
        // 6750, ... always before the end, and never busily.
        let lifetime = REQUESTED_LIFETIME;
        let mut at = renew_after(lifetime);
        let mut attempts = 1;
        while let Some(wait) = renew_retry_after(lifetime - at) {
            assert!(wait >= MIN_RENEW_RETRY);
            at += wait;
            attempts += 1;
            assert!(at < lifetime);
        }
        assert!(attempts <= 12, "{attempts} attempts");
    }
}
