//! Relay forwarding in the rendezvous server (issue 7: one core forwards
//! ≥ 1 Gbit/s). One iteration: a relay envelope from a registered client
//! to another goes in through `handle_datagram` (parse, source lookup,
//! token bucket, destination lookup, copy, node rewrite, queue) and comes
//! out of `poll_transmit`. Throughput counts the inner packet bytes, so
//! criterion's bytes/s for the 1420-byte case is the goodput of 1420-byte
//! tunnel packets.

mod support;

use std::hint::black_box;
use std::time::Instant;

use agentnet::core::address::NodeId;
use agentnet::core::rendezvous::ClientAddr;
use agentnet::core::wire::DATA_OVERHEAD;
use agentnet::core::wire::path::relay_envelope;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::cpu_time::ThreadCpuTime;
use support::{LARGE, SMALL};

fn relay(c: &mut Criterion<ThreadCpuTime>) {
    let now = Instant::now();
    let mut world = support::registered_pair(now);
    let from = ClientAddr::Udp(world.hosts[0].address);
    let destination = NodeId::of(&world.id(1));
    let server = &mut world.rendezvous[0].server;
    let mut group = c.benchmark_group("relay");
    for size in [LARGE, SMALL] {
        // The server never looks inside: any data datagram of the right
        // size (header, sealed packet, tag) will do.
        let mut inner = vec![0x77u8; size + DATA_OVERHEAD];
        inner[..4].copy_from_slice(&[4, 0, 0, 0]);
        let envelope = relay_envelope(destination, &inner);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("forward_{size}B"), |b| {
            b.iter(|| {
                server.handle_datagram(now, from, black_box(&envelope));
                black_box(server.poll_transmit().expect("forwarded"))
            })
        });
    }
    group.finish();
    assert_eq!(
        server.counters().dropped_rate_limited,
        0,
        "the bench measured forwarding, not the rate limit"
    );
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = relay
}
criterion_main!(benches);
