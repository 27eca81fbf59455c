//! The clock the datapath reads right after a wake-up: the CPU's
//! time-stamp counter, counted from the last reading of the system clock.
//!
//! After a sleep the first `Instant::now()` of a wake is dear: the vDSO's
//! code and data pages are cold, and on the project's VM a cold
//! `clock_gettime` took 3,200–5,700 cycles (1.3–2.3 µs) against ~100
//! warm, once for each daemon a packet crosses after idle. The
//! counter's instruction sits in the loop's own code and takes ~50
//! cycles cold. So the loop reads the system clock before it sleeps (off
//! the packet's path, [`WakeClock::anchor`]) and, after the wake,
//! [`WakeClock::now`] adds the ticks counted since, converted at a rate
//! measured against the system clock itself.
//!
//! Used only where the kernel itself keeps time with the counter (its
//! clocksource is `tsc`: invariant, synchronised across CPUs), only once
//! two rate measurements in a row, each over at least
//! [`CALIBRATION_SPAN`], agree within [`RATE_AGREEMENT`] (one skewed by a
//! preemption between an anchor's two readings does not agree with its
//! neighbour), and only for sleeps up to [`MAX_ESTIMATE`]. The rate used
//! is [`LOW_BIAS`] slower than measured, so that an estimate errs early
//! (at most ~200 µs after a second's sleep: a timer fires a turn later)
//! rather than ahead of the system clock, and what the clock hands out
//! never goes back. Anything else reads the system clock, as before.

use std::time::{Duration, Instant};

/// The shortest span the rate is measured over.
pub const CALIBRATION_SPAN: Duration = Duration::from_millis(200);
/// The longest sleep bridged with the counter; after a longer one the
/// system clock is read.
pub const MAX_ESTIMATE: Duration = Duration::from_secs(1);
/// How close two rate measurements in a row must be to be used.
pub const RATE_AGREEMENT: f64 = 1e-4;
/// How much slower than measured the rate used runs.
pub const LOW_BIAS: f64 = 1e-4;
/// Rates (nanoseconds per tick) outside this range mean the counter is
/// not what it seems: 0.1 to 10 GHz.
const PLAUSIBLE_RATE: std::ops::RangeInclusive<f64> = 0.1..=10.0;

/// A counter reading beside a system clock reading.
#[derive(Debug, Clone, Copy)]
struct Reading {
    instant: Instant,
    ticks: u64,
}

/// See the module's documentation.
#[derive(Debug)]
pub struct WakeClock {
    counter_usable: bool,
    /// The last system clock reading and the counter beside it.
    anchor: Option<Reading>,
    /// Where the current rate measurement started.
    calibration_start: Option<Reading>,
    /// The last rate measured (nanoseconds per tick).
    measured: Option<f64>,
    /// The rate used, once two measurements agreed.
    nanos_per_tick: Option<f64>,
    /// The latest time handed out.
    latest: Option<Instant>,
}

impl WakeClock {
    /// A clock that uses the counter when the kernel's clocksource is
    /// `tsc`.
    pub fn new() -> Self {
        Self::with_counter(kernel_trusts_counter())
    }

    /// A clock that uses the counter only if `counter_usable`.
    pub fn with_counter(counter_usable: bool) -> Self {
        Self {
            counter_usable: counter_usable && read_counter().is_some(),
            anchor: None,
            calibration_start: None,
            measured: None,
            nanos_per_tick: None,
            latest: None,
        }
    }

    /// Notes a system clock reading `now`, taken just before (with the
    /// counter read here, just after), and measures the rate over the
    /// readings noted so far.
    pub fn anchor(&mut self, now: Instant) {
        if !self.counter_usable {
            return;
        }
        if let Some(ticks) = read_counter() {
            self.note(Reading {
                instant: now,
                ticks,
            });
        }
    }

    fn note(&mut self, reading: Reading) {
        let Reading {
            instant: now,
            ticks,
        } = reading;
        self.anchor = Some(reading);
        let Some(start) = self.calibration_start else {
            self.calibration_start = Some(reading);
            return;
        };
        let span = now.saturating_duration_since(start.instant);
        if span < CALIBRATION_SPAN {
            return;
        }
        let counted = ticks.wrapping_sub(start.ticks);
        // Precision: u64 → f64 loses nothing that matters at these spans.
        #[expect(clippy::cast_precision_loss, reason = "see above")]
        let rate = span.as_nanos() as f64 / counted as f64;
        if counted == 0 || !PLAUSIBLE_RATE.contains(&rate) {
            // A counter that stood still or ran wild: not a clock.
            self.counter_usable = false;
            self.nanos_per_tick = None;
            return;
        }
        let agrees = self
            .measured
            .is_some_and(|last| (rate - last).abs() <= last * RATE_AGREEMENT);
        self.nanos_per_tick = agrees.then_some(rate * (1.0 - LOW_BIAS));
        self.measured = Some(rate);
        self.calibration_start = Some(reading);
    }

    /// The time now: the last anchor plus the ticks counted since, or the
    /// system clock when that cannot be trusted (no rate yet, a counter
    /// that went backwards, a sleep longer than [`MAX_ESTIMATE`]); never
    /// earlier than a time handed out before.
    pub fn now(&mut self) -> Instant {
        let now = self.estimate().unwrap_or_else(Instant::now);
        let now = self.latest.map_or(now, |latest| latest.max(now));
        self.latest = Some(now);
        now
    }

    fn estimate(&self) -> Option<Instant> {
        self.estimate_at(read_counter()?)
    }

    /// The time at counter reading `ticks`, if it can be trusted.
    fn estimate_at(&self, ticks: u64) -> Option<Instant> {
        let anchor = self.anchor?;
        let rate = self.nanos_per_tick?;
        let counted = ticks.checked_sub(anchor.ticks)?;
        #[expect(clippy::cast_precision_loss, reason = "ticks of a sleep ≤ 1 s")]
        let nanos = counted as f64 * rate;
        if !(0.0..=MAX_ESTIMATE.as_nanos() as f64).contains(&nanos) {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 ≤ nanos ≤ MAX_ESTIMATE, checked above"
        )]
        let nanos = nanos as u64;
        anchor.instant.checked_add(Duration::from_nanos(nanos))
    }
}

impl Default for WakeClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the kernel keeps time with the time-stamp counter: it checked
/// that the counter is invariant and in step across CPUs, and watches it.
fn kernel_trusts_counter() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|name| name.trim() == "tsc")
}

/// The time-stamp counter (x86_64 only).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn read_counter() -> Option<u64> {
    // SAFETY: `rdtsc` reads a register; it has no memory effects and is
    // present on every x86_64 CPU.
    Some(unsafe { std::arch::x86_64::_rdtsc() })
}

#[cfg(not(target_arch = "x86_64"))]
fn read_counter() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock fed readings by hand: the counter ticks once a nanosecond.
    fn clock_with_readings(start: Instant, at_millis: &[u64]) -> WakeClock {
        let mut clock = WakeClock::with_counter(true);
        for &millis in at_millis {
            let nanos = millis * 1_000_000;
            clock.note(Reading {
                instant: start + Duration::from_nanos(nanos),
                ticks: 1_000 + nanos,
            });
        }
        clock
    }

    #[test]
    fn without_the_counter_it_is_the_system_clock() {
        let mut clock = WakeClock::with_counter(false);
        let before = Instant::now();
        clock.anchor(before);
        assert!(clock.estimate().is_none());
        assert!(clock.now() >= before);
    }

    #[test]
    fn a_rate_is_used_once_two_measurements_agree() {
        let start = Instant::now();
        let clock = clock_with_readings(start, &[0, 100]);
        assert!(clock.nanos_per_tick.is_none(), "shorter than the span");
        let clock = clock_with_readings(start, &[0, 200]);
        assert!(clock.nanos_per_tick.is_none(), "one measurement");
        let clock = clock_with_readings(start, &[0, 200, 400]);
        let rate = clock.nanos_per_tick.expect("two that agree");
        assert!((rate - (1.0 - LOW_BIAS)).abs() < 1e-9, "{rate}");
        // 5 ms after the last anchor, the estimate errs early, by the bias.
        let anchor = start + Duration::from_millis(400);
        let estimate = clock.estimate_at(1_000 + 405_000_000).expect("an estimate");
        let early = (anchor + Duration::from_millis(5)) - estimate;
        assert!(
            early > Duration::ZERO && early <= Duration::from_micros(1),
            "{early:?}"
        );
    }

    #[test]
    fn a_skewed_measurement_is_not_used() {
        let start = Instant::now();
        let mut clock = clock_with_readings(start, &[0, 200, 400]);
        // An anchor whose counter was read 2 ms after its clock (the
        // thread was preempted in between).
        clock.note(Reading {
            instant: start + Duration::from_millis(600),
            ticks: 1_000 + 602_000_000,
        });
        assert!(clock.nanos_per_tick.is_none());
        assert!(clock.estimate_at(1_000 + 603_000_000).is_none());
    }

    #[test]
    fn long_sleeps_and_a_counter_that_went_back_read_the_system_clock() {
        let start = Instant::now();
        let clock = clock_with_readings(start, &[0, 200, 400]);
        let last = 1_000 + 400_000_000;
        assert!(clock.estimate_at(last + 500_000_000).is_some());
        assert!(
            clock.estimate_at(last + 2_000_000_000).is_none(),
            "2 s > MAX_ESTIMATE"
        );
        assert!(
            clock.estimate_at(last - 1).is_none(),
            "the counter went back"
        );
    }

    #[test]
    fn what_it_hands_out_never_goes_back() {
        let mut clock = WakeClock::with_counter(false);
        let ahead = Instant::now() + Duration::from_secs(1);
        clock.latest = Some(ahead);
        assert_eq!(clock.now(), ahead);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn with_the_real_counter_it_follows_the_system_clock() {
        let mut clock = WakeClock::with_counter(true);
        let start = Instant::now();
        clock.anchor(start);
        // Anchors one span apart until two measurements agree (a loaded
        // machine may preempt the thread between an anchor's readings).
        let mut last = start;
        while clock.nanos_per_tick.is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "no rate in 10 s");
            while last.elapsed() < CALIBRATION_SPAN {
                std::hint::spin_loop();
            }
            last = Instant::now();
            clock.anchor(last);
        }
        std::thread::sleep(Duration::from_millis(5));
        let before = Instant::now();
        let estimate = clock.estimate().expect("an estimate within MAX_ESTIMATE");
        let after = Instant::now();
        // Rates that agree within 100 ppm, over a 5 ms sleep: off by far
        // less than this margin.
        let margin = Duration::from_micros(500);
        assert!(estimate + margin >= before, "{estimate:?} vs {before:?}");
        assert!(estimate <= after + margin, "{estimate:?} vs {after:?}");
    }
}
