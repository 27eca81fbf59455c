//! Per-packet costs of the data path (issue 7): outer datagram
//! classification, the inner IPv6 parse and route lookup, and whole
//! `Node` calls between two nodes with a session up.

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::address::NodePrefix;
use agentnet::core::api::PeerConfig;
use agentnet::core::identity::AgentId;
use agentnet::core::node::Node;
use agentnet::core::policy::Policy;
use agentnet::core::wire::packet::IpPacket;
use agentnet::core::wire::path::relay_envelope;
use agentnet::core::wire::{self, Datagram};
use agentnet::sim::SimNet;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use support::cpu_time::ThreadCpuTime;
use support::{LARGE, SMALL};

/// Datagrams sealed ahead of a timed run of the receive side.
const CHUNK: u64 = 256;

/// One datagram of every kind the outer dispatch tells apart, as the
/// node's own traffic makes them.
fn datagram_mix(now: Instant) -> Vec<Vec<u8>> {
    let mut world = support::connected_pair(now);
    let b_id = world.id(1);
    let a_id = world.id(0);
    let packet = support::udp_packet(
        support::overlay_address(&a_id),
        support::overlay_address(&b_id),
        LARGE,
    );
    let a = &mut world.hosts[0].node;
    a.handle_tun_packet(now, &packet);
    let data = a.poll_transmit().expect("a sends data").payload;
    // A fresh initiation (and its response) from a third node to b.
    let mut third = support::world(now);
    let (c, b) = (
        support::add_node(&mut third, 3),
        support::add_node(&mut third, 2),
    );
    third.trust_both(c, b);
    third.hosts[c].node.connect(now, &b_id);
    let initiation = third.hosts[c]
        .node
        .poll_transmit()
        .expect("initiation")
        .payload;
    let from = third.hosts[c].address;
    third.hosts[b].node.handle_datagram(now, from, &initiation);
    let response = third.hosts[b]
        .node
        .poll_transmit()
        .expect("response")
        .payload;
    let relay = relay_envelope(agentnet::core::address::NodeId([9; 8]), &data);
    let mut garbage = data.clone();
    garbage[0] = 0x42;
    vec![data, initiation, response, relay, garbage]
}

fn classify(c: &mut Criterion<ThreadCpuTime>) {
    let now = Instant::now();
    let mix = datagram_mix(now);
    let mut group = c.benchmark_group("classify");

    group.throughput(Throughput::Elements(1));
    let data = &mix[0];
    group.bench_function("outer_parse_data", |b| {
        b.iter(|| match Datagram::parse(black_box(data)) {
            Ok(Datagram::Data(data)) => black_box((data.receiver_index(), data.counter())),
            _ => panic!("data"),
        })
    });

    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("outer_parse_mix5", |b| {
        b.iter(|| {
            for datagram in &mix {
                let kind = match Datagram::parse(black_box(datagram)) {
                    Ok(Datagram::Initiation(m)) => u64::from(m.sender_index()),
                    Ok(Datagram::Response(m)) => u64::from(m.receiver_index()),
                    Ok(Datagram::CookieReply(m)) => u64::from(m.receiver_index()),
                    Ok(Datagram::Data(m)) => m.counter(),
                    Ok(Datagram::Relay(m)) => m.inner().len() as u64,
                    Ok(Datagram::TrustRequest(bytes)) => bytes.len() as u64,
                    Err(_) => 0,
                };
                black_box(kind);
            }
        })
    });

    // What `Node::handle_tun_packet` does before sealing: check the IPv6
    // header, take the destination's /112 and look it up among the peers
    // (the same map type as the node's `by_prefix`).
    group.throughput(Throughput::Elements(1));
    for peers in [1u32, 10_000] {
        let ids: Vec<AgentId> = (0..peers)
            .map(|number| support::identity(number).agent_id())
            .collect();
        let by_prefix: HashMap<NodePrefix, AgentId> = ids
            .iter()
            .map(|id| (NodePrefix::of_agent(support::network(), id), *id))
            .collect();
        let source = support::overlay_address(&support::identity(u32::MAX).agent_id());
        let destination = support::overlay_address(&ids[ids.len() / 2]);
        let packet = support::udp_packet(source, destination, LARGE);
        group.bench_function(format!("ipv6_route_lookup_{peers}_peers"), |b| {
            b.iter(|| {
                let parsed = IpPacket::new_checked(black_box(&packet)).expect("ipv6");
                let prefix = NodePrefix::of_octets(&parsed.destination());
                black_box(by_prefix.get(&prefix))
            })
        });
    }
    group.finish();
}

/// Node 0 of a connected pair, its peer's ID and the packet it sends.
struct Pair {
    world: SimNet,
    a_address: SocketAddr,
    packet: Vec<u8>,
}

impl Pair {
    fn new(now: Instant, size: usize) -> Self {
        let world = support::connected_pair(now);
        let (a_id, b_id) = (world.id(0), world.id(1));
        let packet = support::udp_packet(
            support::overlay_address(&a_id),
            support::overlay_address(&b_id),
            size,
        );
        Self {
            a_address: world.hosts[0].address,
            world,
            packet,
        }
    }

    fn nodes(&mut self) -> (&mut Node, &mut Node) {
        let (a, b) = self.world.hosts.split_at_mut(1);
        (&mut a[0].node, &mut b[0].node)
    }
}

fn node_size(group: &mut BenchmarkGroup<'_, ThreadCpuTime>, size: usize) {
    let now = Instant::now();
    group.throughput(Throughput::Bytes(size as u64));

    // TUN → UDP: parse, route, seal, queue; then take the datagram.
    let mut pair = Pair::new(now, size);
    group.bench_function(format!("send_tun_to_udp_{size}B"), |b| {
        let packet = pair.packet.clone();
        let (a, _) = pair.nodes();
        b.iter(|| {
            a.handle_tun_packet(now, black_box(&packet));
            black_box(a.poll_transmit().expect("sealed datagram"))
        })
    });

    // UDP → TUN: classify, find the session, check, decrypt, mark, check
    // the inner addresses, queue; then take the packet. The datagrams are
    // sealed by the peer outside the timed part.
    let mut pair = Pair::new(now, size);
    group.bench_function(format!("receive_udp_to_tun_{size}B"), |b| {
        let packet = pair.packet.clone();
        let from = pair.a_address;
        let (a, node_b) = pair.nodes();
        b.iter_custom(|iters| time_receives(a, node_b, now, from, &packet, iters, |_| {}))
    });

    // Both ends on one core: TUN → a → wire → b → TUN.
    let mut pair = Pair::new(now, size);
    group.bench_function(format!("tun_to_tun_{size}B"), |b| {
        let packet = pair.packet.clone();
        let from = pair.a_address;
        let (a, node_b) = pair.nodes();
        b.iter(|| {
            a.handle_tun_packet(now, black_box(&packet));
            let datagram = a.poll_transmit().expect("sealed datagram");
            node_b.handle_datagram(now, from, &datagram.payload);
            let packet = node_b.poll_tun_packet().expect("delivered to the TUN");
            node_b.recycle_buffer(black_box(packet));
        })
    });
}

fn node(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("node");
    node_size(&mut group, LARGE);
    node_size(&mut group, SMALL);

    // Drops before any cryptography beyond one BLAKE2s: an initiation
    // whose mac1 does not verify (a stranger), and an unknown type.
    let now = Instant::now();
    let mut pair = Pair::new(now, SMALL);
    let from: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 4000));
    let mut bad_mac1 = vec![0x33u8; 148];
    wire::write_header(&mut bad_mac1, wire::TYPE_INITIATION);
    let mut unknown = vec![0x33u8; 148];
    unknown[..4].copy_from_slice(&[0x42, 0, 0, 0]);
    group.throughput(Throughput::Elements(1));
    let (_, node_b) = pair.nodes();
    group.bench_function("drop_initiation_bad_mac1", |b| {
        b.iter(|| node_b.handle_datagram(now, from, black_box(&bad_mac1)))
    });
    group.bench_function("drop_unknown_type", |b| {
        b.iter(|| node_b.handle_datagram(now, from, black_box(&unknown)))
    });

    // One wake of a node with 10,000 trusted peers for one packet: the
    // datagram in, the packet out to the TUN, and the next timer asked for,
    // as the daemon's loop does. The other peers are idle: the wake should
    // not touch them.
    let mut pair = Pair::new(now, SMALL);
    let (_, node_b) = pair.nodes();
    for number in 0..IDLE_PEERS {
        node_b.upsert_peer(
            now,
            PeerConfig {
                id: support::identity(1_000 + number).agent_id(),
                name: format!("idle{number}"),
                endpoint: Some(support::endpoint(1_000 + number)),
                allow: Policy::All,
            },
        );
    }
    let packet = pair.packet.clone();
    let from = pair.a_address;
    let (a, node_b) = pair.nodes();
    group.bench_function(format!("wake_one_packet_{IDLE_PEERS}_idle_peers"), |b| {
        b.iter_custom(|iters| {
            time_receives(a, node_b, now, from, &packet, iters, |node| {
                black_box(node.poll_timeout());
            })
        })
    });
    group.finish();
}

/// Times `iters` receives by `receiver` of `packet` sealed by `sender`
/// (sealed in chunks outside the timed part): each datagram in, the packet
/// out to the TUN and its buffer given back, as the daemon does, then
/// `after_each` (timed too).
fn time_receives(
    sender: &mut Node,
    receiver: &mut Node,
    now: Instant,
    from: SocketAddr,
    packet: &[u8],
    iters: u64,
    mut after_each: impl FnMut(&mut Node),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let chunk = left.min(CHUNK);
        let sealed: Vec<Vec<u8>> = (0..chunk)
            .map(|_| {
                sender.handle_tun_packet(now, packet);
                sender.poll_transmit().expect("sealed datagram").payload
            })
            .collect();
        let start = support::cpu_time::now();
        for datagram in &sealed {
            receiver.handle_datagram(now, from, black_box(datagram));
            let packet = receiver.poll_tun_packet().expect("delivered to the TUN");
            receiver.recycle_buffer(black_box(packet));
            after_each(receiver);
        }
        elapsed += support::cpu_time::now().saturating_sub(start);
        left -= chunk;
    }
    elapsed
}

/// Idle peers of the wake bench.
const IDLE_PEERS: u32 = 10_000;

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = classify, node
}
criterion_main!(benches);
