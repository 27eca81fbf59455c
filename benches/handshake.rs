//! Noise IK handshakes (issue 7: ≥ 10,000 completed handshakes per second
//! per core). Each iteration is one completed handshake, so
//! handshakes/s = 1e9 / (ns per iteration).
//!
//! - `handshake/ik_complete`: initiator creates, responder checks mac1,
//!   consumes and responds, initiator checks mac1 and consumes: both sides
//!   on one core.
//! - `handshake/responder_only`: what a responder spends per handshake
//!   (same initiation, answered again and again: the core keeps no
//!   replay state at this level), with the initiator's static-static
//!   secret precomputed as a node keeps it for trusted peers;
//!   `responder_only_not_precomputed` the same without it (a stranger's
//!   initiation costs this much).
//! - `handshake/node_rekey_complete`: a rekey through two `Node`s, with
//!   every table, timer and queue they keep (plus one 64-byte packet).
//! - `x25519/*`: the primitives that bound it: curve25519-dalek's ladder
//!   (`dh_ladder`) against AWS-LC's (`dh_aws_lc`, the one handshakes use).

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentnet::core::identity::AgentId;
use agentnet::core::noise::cipher::{CipherSet, TransportCipher};
use agentnet::core::noise::handshake::{
    InitiationPayload, InitiatorHandshake, ReceivedInitiation, ResponsePayload,
};
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::rng::core_rng;
use agentnet::core::wire::Datagram;
use agentnet::core::wire::path::NatHint;
use agentnet::sim::SimNet;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::montgomery::MontgomeryPoint;
use support::cpu_time::ThreadCpuTime;

/// Virtual time between two node-level handshakes: just past the age at
/// which the initiator rekeys on send.
const REKEY_STEP: Duration = Duration::from_secs(121);

/// Handshakes node 0 of the world completed with `peer`.
fn completed_handshakes(world: &SimNet, peer: AgentId) -> u64 {
    world.hosts[0]
        .node
        .status(world.now)
        .peers
        .iter()
        .find(|status| status.id == peer)
        .map_or(0, |status| status.handshakes)
}

fn initiation_payload() -> InitiationPayload {
    InitiationPayload {
        timestamp: Tai64N::from_unix(support::UNIX_START),
        versions: vec![1],
        name: "alice".into(),
        candidates: vec!["192.0.2.1:7400".parse().expect("address")],
        nat: NatHint::default(),
        ciphers: CipherSet::ALL,
    }
}

fn response_payload() -> ResponsePayload {
    ResponsePayload {
        version: 1,
        name: "bob".into(),
        candidates: vec!["198.51.100.1:7400".parse().expect("address")],
        nat: NatHint::default(),
        cipher: TransportCipher::Aes256Gcm,
    }
}

fn handshake(c: &mut Criterion<ThreadCpuTime>) {
    let network = support::network();
    let (alice, bob) = (support::identity(1), support::identity(2));
    let alice_public = alice.agent_id().noise_public_key();
    let bob_public = bob.agent_id().noise_public_key();
    // Each side's static key with the other's static-static secret
    // precomputed, as a node keeps them for its trusted peers.
    let alice_secret = NoiseStatic::new(&alice.noise_secret_key());
    alice_secret.add_peer(&bob_public);
    let bob_secret = NoiseStatic::new(&bob.noise_secret_key());
    bob_secret.add_peer(&alice_public);
    // A responder that has nothing precomputed for the initiator.
    let bob_uncached = NoiseStatic::new(&bob.noise_secret_key());
    let alice_mac1 = Mac1Key::for_responder(network, &alice_public);
    let bob_mac1 = Mac1Key::for_responder(network, &bob_public);
    let initiation_payload = initiation_payload();
    let response_payload = response_payload();
    let mut rng = core_rng([3; 32]);

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ik_complete", |b| {
        b.iter(|| {
            let (mut initiator, initiation) = InitiatorHandshake::start(
                &mut rng,
                network,
                &alice_secret,
                &bob_public,
                11,
                &initiation_payload,
            )
            .expect("initiation");
            let Ok(Datagram::Initiation(initiation)) = Datagram::parse(&initiation) else {
                panic!("initiation");
            };
            let received =
                ReceivedInitiation::read(&mut rng, network, &bob_secret, &bob_mac1, &initiation)
                    .expect("responder reads");
            let (response, responder_keys) = received
                .respond(network, 22, &response_payload)
                .expect("responds");
            let Ok(Datagram::Response(response)) = Datagram::parse(&response) else {
                panic!("response");
            };
            assert!(alice_mac1.verify(response.bytes()), "mac1 of the response");
            let (_, initiator_keys) = initiator.finish(response.noise()).expect("finishes");
            black_box((initiator_keys, responder_keys))
        })
    });

    let (_, initiation) = InitiatorHandshake::start(
        &mut rng,
        network,
        &alice_secret,
        &bob_public,
        11,
        &initiation_payload,
    )
    .expect("initiation");
    group.bench_function("responder_only", |b| {
        b.iter(|| {
            let Ok(Datagram::Initiation(initiation)) = Datagram::parse(&initiation) else {
                panic!("initiation");
            };
            let received =
                ReceivedInitiation::read(&mut rng, network, &bob_secret, &bob_mac1, &initiation)
                    .expect("responder reads");
            black_box(
                received
                    .respond(network, 22, &response_payload)
                    .expect("responds"),
            )
        })
    });

    group.bench_function("responder_only_not_precomputed", |b| {
        b.iter(|| {
            let Ok(Datagram::Initiation(initiation)) = Datagram::parse(&initiation) else {
                panic!("initiation");
            };
            let received =
                ReceivedInitiation::read(&mut rng, network, &bob_uncached, &bob_mac1, &initiation)
                    .expect("responder reads");
            black_box(
                received
                    .respond(network, 22, &response_payload)
                    .expect("responds"),
            )
        })
    });

    group.bench_function("initiator_start_only", |b| {
        b.iter(|| {
            black_box(
                InitiatorHandshake::start(
                    &mut rng,
                    network,
                    &alice_secret,
                    &bob_public,
                    11,
                    &initiation_payload,
                )
                .expect("initiation"),
            )
        })
    });

    // Through whole nodes: a rekey. Virtual time moves past the rekey age
    // (120 s) of the initiator's session, one small packet goes out on it
    // and starts the handshake; the packet, the initiation, the response
    // and the confirming keepalive are delivered.
    let mut world = support::connected_pair(Instant::now());
    let (a_id, b_id) = (world.id(0), world.id(1));
    let packet = support::udp_packet(
        support::overlay_address(&a_id),
        support::overlay_address(&b_id),
        support::SMALL,
    );
    let handshakes_before = completed_handshakes(&world, b_id);
    let mut rekeys = 0u64;
    group.bench_function("node_rekey_complete", |b| {
        b.iter(|| {
            world.now += REKEY_STEP;
            let now = world.now;
            world.hosts[0]
                .node
                .handle_tun_packet(now, black_box(&packet));
            world.settle();
            rekeys += 1;
        })
    });
    assert_eq!(
        completed_handshakes(&world, b_id) - handshakes_before,
        rekeys,
        "every iteration completed one handshake"
    );
    group.finish();

    let mut group = c.benchmark_group("x25519");
    group.throughput(Throughput::Elements(1));
    let point = MontgomeryPoint(bob_public);
    let scalar = *alice_secret.secret();
    // Variable base: the Montgomery ladder (each DH of Noise).
    group.bench_function("dh_ladder", |b| {
        b.iter(|| black_box(black_box(point).mul_clamped(black_box(scalar))))
    });
    // The same DH with AWS-LC's X25519, which the handshake uses
    // (core::noise::static_keys).
    let aws_key =
        aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, &scalar)
            .expect("key");
    group.bench_function("dh_aws_lc", |b| {
        b.iter(|| {
            let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(
                &aws_lc_rs::agreement::X25519,
                black_box(&bob_public),
            );
            black_box(aws_lc_rs::agreement::agree(&aws_key, peer, (), |shared| {
                Ok::<_, ()>(shared[0])
            }))
        })
    });
    // Fixed base through the Edwards basepoint table (curve25519-dalek).
    group.bench_function("public_key_mul_base", |b| {
        b.iter(|| black_box(MontgomeryPoint::mul_base_clamped(black_box(scalar))))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = handshake
}
criterion_main!(benches);
