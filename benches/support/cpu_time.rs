//! A criterion measurement of the benchmark thread's CPU time instead of
//! wall time: on a machine shared with builds and fuzzers, time spent
//! preempted does not count, so ns per operation stays "ns of one core".
//! Byte throughputs are shown in Gbit/s, as the issue states its goals.

use std::time::Duration;

use criterion::Throughput;
use criterion::measurement::{Measurement, ValueFormatter};

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn now() -> Duration {
    agentnet::sys::calls::thread_cpu_time().expect("Linux has CLOCK_THREAD_CPUTIME_ID")
}

/// The measurement: CPU time of the benchmark thread.
pub struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }

    fn end(&self, started: Duration) -> Duration {
        now().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Nanoseconds scaled as usual; bytes and bits per second as Gbit/s.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        for value in values {
            *value *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iteration, unit) = match *throughput {
            Throughput::Bytes(bytes) | Throughput::BytesDecimal(bytes) => {
                (bytes as f64 * 8.0 / 1e9, "Gbit/s")
            }
            Throughput::Bits(bits) => (bits as f64 / 1e9, "Gbit/s"),
            Throughput::Elements(elements) => (elements as f64 / 1e3, "K/s"),
        };
        for value in values {
            *value = per_iteration * 1e9 / *value;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
