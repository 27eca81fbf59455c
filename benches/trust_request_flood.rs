//! A flood of trust requests (type 6) from new source addresses (issue #17
//! item 1): before the fix, once 8,192 sources were tracked every datagram
//! from a new one swept the whole table. One iteration: one datagram from a
//! source never seen before goes into `Node::handle_datagram`, with the
//! per-sender limiter long full and the verification budget spent. Its cost
//! must not grow with the sources seen (O(1): one hash, one bucket).
//!
//! - `tiny_4B`: the 4-byte type-6 datagram the wire parser accepts; it stops
//!   at the length check and touches no table.
//! - `mac1_400B`: a type-6 datagram with a valid mac1 (someone who knows the
//!   agent's key) but no valid request inside: length, mac1, the sender's
//!   bucket, the global budget, then dropped before any Diffie-Hellman.

mod support;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::wire::TYPE_TRUST_REQUEST;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::cpu_time::ThreadCpuTime;

/// The `n`th source address (distinct for every `n` below 2^32).
fn source(n: u32) -> SocketAddr {
    SocketAddr::from((n.to_be_bytes(), 7400))
}

fn trust_request_flood(c: &mut Criterion<ThreadCpuTime>) {
    let now = Instant::now();
    let mut node = support::node(1, now);
    let id = support::identity(1).agent_id();
    let tiny = vec![TYPE_TRUST_REQUEST, 0, 0, 0];
    let mut with_mac1 = vec![0x5a; 400];
    with_mac1[..4].copy_from_slice(&[TYPE_TRUST_REQUEST, 0, 0, 0]);
    Mac1Key::for_responder(support::network(), &id.noise_public_key()).seal(&mut with_mac1);
    // Fill the limiter: far more sources than the old table held, all at
    // once, so nothing has aged out.
    for n in 0..100_000u32 {
        node.handle_datagram(now, source(n), &with_mac1);
    }
    let mut group = c.benchmark_group("trust_request_flood");
    group.throughput(Throughput::Elements(1));
    for (name, datagram) in [("tiny_4B", &tiny), ("mac1_400B", &with_mac1)] {
        let mut next = 1_000_000u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = next.wrapping_add(1);
                node.handle_datagram(now, source(next), black_box(datagram));
            })
        });
    }
    group.finish();
    let dropped = node.status(now + Duration::from_millis(1)).dropped;
    assert!(
        dropped.trust_requests_rate_limited > 0 && node.pending_requests(now).is_empty(),
        "the bench measured the limits, not verification: {dropped:?}"
    );
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = trust_request_flood
}
criterion_main!(benches);
