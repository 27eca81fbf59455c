//! IPv4 routing decisions that need the node's insides: derived-address
//! collisions, and a peer (running modified software) that forges sources.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::core::address::NetworkId;
use crate::core::address::test_keys::{colliding_identities, identity};
use crate::core::api::PeerConfig;
use crate::core::policy::Policy;
use crate::core::wire::packet::tests::ipv4;
use crate::core::wire::packet::{PROTO_TCP, PROTO_UDP};
use crate::core::wire::{TYPE_INITIATION, TYPE_RESPONSE};
use std::net::IpAddr;

const MTU: u16 = 1408;

fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

/// The wall clock (since the Unix epoch) of the nodes' start.
const STARTED_AT: Duration = Duration::from_secs(1_700_000_000);

fn node(identity: &Identity, now: Instant) -> Node {
    seeded_node(identity, [7; 32], now, STARTED_AT)
}

/// A node with its own randomness, started at `since_epoch` (a restarted
/// agent stamps its initiations later).
fn seeded_node(identity: &Identity, seed: [u8; 32], now: Instant, since_epoch: Duration) -> Node {
    let config = NodeConfig {
        identity: identity.clone(),
        network: network(),
        name: "node".into(),
        tunnel_mtu: MTU,
    };
    Node::new(config, seed, now, since_epoch)
}

fn peer_config(identity: &Identity, endpoint: Option<SocketAddr>) -> PeerConfig {
    PeerConfig {
        id: identity.agent_id(),
        name: "peer".into(),
        endpoint,
        allow: Policy::All,
    }
}

#[test]
fn the_peer_trusted_first_keeps_a_colliding_ipv4_address() {
    let (me, first, second) = colliding_identities(network());
    let shared = agent_address4(network(), &first.agent_id());
    assert_eq!(shared, agent_address4(network(), &second.agent_id()));
    let now = Instant::now();
    let mut node = node(&me, now);
    node.upsert_peer(now, peer_config(&first, None));
    node.upsert_peer(now, peer_config(&second, None));

    let status = node.status(now);
    let (a, b) = (&status.peers[0], &status.peers[1]);
    assert_eq!((a.address4, a.address4_conflict), (Some(shared), None));
    assert_eq!(b.address4, None, "the later peer got an IPv4 route");
    assert_eq!(b.derived_address4, shared);
    assert_eq!(b.address4_conflict, Some(first.agent_id()));
    assert_eq!(
        node.peer_of_address(IpAddr::V4(shared)),
        Some(first.agent_id())
    );
    // IPv6 still names each of them.
    assert_eq!(
        node.peer_of_address(IpAddr::V6(b.address)),
        Some(second.agent_id())
    );
    // Updating the later peer (a policy change) does not move the address.
    node.upsert_peer(now, peer_config(&second, None));
    assert_eq!(node.status(now).peers[1].address4, None);

    // When the holder goes, the waiting peer gets the address.
    assert!(node.remove_peer(&first.agent_id()));
    let status = node.status(now);
    assert_eq!(status.peers[0].id, second.agent_id());
    assert_eq!(status.peers[0].address4, Some(shared));
    assert_eq!(status.peers[0].address4_conflict, None);
    assert_eq!(
        node.peer_of_address(IpAddr::V4(shared)),
        Some(second.agent_id())
    );
}

#[test]
fn a_peer_with_this_agents_ipv4_address_gets_no_ipv4_route() {
    let (_, me, twin) = colliding_identities(network());
    let now = Instant::now();
    let mut node = node(&me, now);
    node.upsert_peer(now, peer_config(&twin, None));
    let status = node.status(now);
    assert_eq!(status.peers[0].address4, None);
    assert_eq!(status.peers[0].address4_conflict, Some(me.agent_id()));
    assert_eq!(
        node.peer_of_address(IpAddr::V4(status.peers[0].derived_address4)),
        None
    );
}

/// Moves datagrams between two nodes until both are quiet.
fn exchange(a: &mut Node, a_at: SocketAddr, b: &mut Node, b_at: SocketAddr, now: Instant) {
    for _ in 0..16 {
        let mut moved = false;
        while let Some(transmit) = a.poll_transmit() {
            moved = true;
            if transmit.destination == b_at {
                b.handle_datagram(now, a_at, &transmit.payload);
            }
        }
        while let Some(transmit) = b.poll_transmit() {
            moved = true;
            if transmit.destination == a_at {
                a.handle_datagram(now, b_at, &transmit.payload);
            }
        }
        if !moved {
            return;
        }
    }
}

/// Alice and Bob trust each other with endpoints (no session yet).
struct TwoNodes {
    a: Node,
    b: Node,
    a_at: SocketAddr,
    b_at: SocketAddr,
    now: Instant,
}

fn two_nodes() -> TwoNodes {
    let (alice, bob) = (identity(1), identity(2));
    let (a_at, b_at): (SocketAddr, SocketAddr) = (
        "10.0.0.1:7400".parse().expect("addr"),
        "10.0.0.2:7400".parse().expect("addr"),
    );
    let now = Instant::now();
    let (mut a, mut b) = (node(&alice, now), node(&bob, now));
    a.upsert_peer(now, peer_config(&bob, Some(b_at)));
    b.upsert_peer(now, peer_config(&alice, Some(a_at)));
    TwoNodes {
        a,
        b,
        a_at,
        b_at,
        now,
    }
}

/// A UDP packet from Alice's IPv4 address to Bob's, sent through the
/// handshake it starts: the session is up when this returns.
fn first_packet_through(nodes: &mut TwoNodes) -> Vec<u8> {
    let TwoNodes {
        a,
        b,
        a_at,
        b_at,
        now,
    } = nodes;
    let (a4, b4) = (a.address4().expect("on"), b.address4().expect("on"));
    let datagram = ipv4(a4, b4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
    a.handle_tun_packet(*now, &datagram);
    exchange(a, *a_at, b, *b_at, *now);
    assert_eq!(b.poll_tun_packet(), Some(datagram.clone()));
    datagram
}

#[test]
fn ipv4_packets_with_forged_sources_from_a_peer_are_dropped_and_counted() {
    let TwoNodes {
        mut a,
        mut b,
        a_at,
        b_at,
        now,
    } = two_nodes();
    let (alice, carol) = (identity(1), identity(3));
    b.upsert_peer(now, peer_config(&carol, None));
    let (a4, b4) = (a.address4().expect("on"), b.address4().expect("on"));
    let c4 = agent_address4(network(), &carol.agent_id());

    let genuine = ipv4(a4, b4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
    a.handle_tun_packet(now, &genuine);
    exchange(&mut a, a_at, &mut b, b_at, now);
    assert_eq!(b.poll_tun_packet(), Some(genuine.clone()));

    // Alice's modified software seals what its own node would refuse to:
    // a source of another trusted agent, of the LAN, and a packet to an
    // address that is not Bob's.
    let forged = [
        ipv4(c4, b4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]),
        ipv4(
            Ipv4Addr::new(192, 168, 1, 2),
            b4,
            PROTO_UDP,
            &[0, 1, 0, 2, 0, 8, 0, 0],
        ),
        ipv4(a4, c4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]),
    ];
    let slot = *a.by_prefix.values().next().expect("bob");
    for packet in &forged {
        let peer = a.peers.at_mut(slot).expect("bob");
        peer.send(&mut a.ctx, now, packet);
    }
    exchange(&mut a, a_at, &mut b, b_at, now);
    assert_eq!(
        b.poll_tun_packet(),
        None,
        "a forged IPv4 packet was delivered"
    );
    let from_alice = &b.status(now).peers[0];
    assert_eq!(from_alice.id, alice.agent_id());
    assert_eq!(from_alice.dropped_spoofed, 3);
}

#[test]
fn a_delivered_tcp_packet_carries_what_the_check_read_of_its_segment() {
    let TwoNodes {
        mut a,
        mut b,
        a_at,
        b_at,
        now,
    } = two_nodes();
    let (a4, b4) = (a.address4().expect("on"), b.address4().expect("on"));
    // TCP: ports 4000 → 80, seq 7, ack 9, data offset 5, ACK, then 3 bytes.
    let mut tcp = vec![0x0f, 0xa0, 0, 80, 0, 0, 0, 7, 0, 0, 0, 9, 0x50, 0x10];
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0, b'a', b'b', b'c']);
    let segment = ipv4(a4, b4, PROTO_TCP, &tcp);
    let datagram = ipv4(a4, b4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
    a.handle_tun_packet(now, &segment);
    exchange(&mut a, a_at, &mut b, b_at, now);
    a.handle_tun_packet(now, &datagram);
    exchange(&mut a, a_at, &mut b, b_at, now);

    let delivered = b.poll_tun_delivery().expect("the TCP packet");
    assert_eq!(delivered.buffer, segment);
    let info = delivered.tcp_segment.expect("read while checking");
    assert_eq!(
        (info.flow.source_port, info.flow.destination_port),
        (4000, 80)
    );
    assert_eq!((info.seq, info.ack, info.payload_len), (7, 9, 3));
    assert_eq!(info.header_len, 40);
    let delivered = b.poll_tun_delivery().expect("the UDP packet");
    assert_eq!(delivered.buffer, datagram);
    assert_eq!(delivered.tcp_segment, None);
}

#[test]
fn a_wake_for_one_packet_looks_at_that_peer_only() {
    let mut nodes = two_nodes();
    for number in 0..2_000u32 {
        let idle = identity(1_000 + number);
        nodes.b.upsert_peer(nodes.now, peer_config(&idle, None));
    }
    let datagram = first_packet_through(&mut nodes);
    let TwoNodes {
        mut a,
        mut b,
        a_at,
        now,
        ..
    } = nodes;
    let _ = b.poll_timeout();
    let before = b.peers.deadline_looks();

    let later = now + Duration::from_millis(5);
    a.handle_tun_packet(later, &datagram);
    let sealed = a.poll_transmit().expect("sealed");
    b.handle_datagram(later, a_at, &sealed.payload);
    assert_eq!(b.poll_tun_packet(), Some(datagram));
    let next = b.poll_timeout();
    assert!(next.is_some(), "the session's timers are scheduled");
    assert_eq!(
        b.peers.deadline_looks() - before,
        1,
        "one packet from one peer looks at that peer's deadline only"
    );
    // Idle peers never get looked at by a timer either.
    let before = b.peers.deadline_looks();
    b.handle_timeout(now + Duration::from_secs(1));
    let _ = b.poll_timeout();
    assert!(b.peers.deadline_looks() - before <= 2);
}

#[test]
fn a_sealed_packet_goes_out_in_a_buffer_the_shell_gave_back() {
    let mut nodes = two_nodes();
    let datagram = first_packet_through(&mut nodes);
    let (alice, bob, now) = (&mut nodes.a, &mut nodes.b, nodes.now);

    // The shell sent a datagram and hands its buffer back: the next packet
    // is sealed into that same allocation, not a new one.
    let mut payload = Vec::with_capacity(2048);
    payload.resize(1500, 0xa5);
    let (address, capacity) = (payload.as_ptr(), payload.capacity());
    let mut sent = vec![Transmit {
        destination: nodes.b_at,
        payload,
        source: None,
    }];
    alice.recycle_sent(&mut sent);
    assert!(sent.is_empty());
    alice.handle_tun_packet(now, &datagram);
    let sealed = alice.poll_transmit().expect("sealed");
    assert_eq!(sealed.payload.as_ptr(), address, "a fresh allocation");
    assert!(sealed.payload.capacity() >= capacity);
    bob.handle_datagram(now, nodes.a_at, &sealed.payload);
    assert_eq!(
        bob.poll_tun_packet(),
        Some(datagram),
        "the reused buffer held stale bytes"
    );
}

/// All datagrams `node` wants to send now.
fn drain_transmits(node: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

/// Crossed handshakes whose messages arrive in an unlucky order leave both
/// sides on the session the other initiated, which neither rekeys as an
/// initiator would: the side that sends on it rekeys it itself before it
/// expires, so traffic both ways for 200 s never sees the peer go down.
#[test]
fn sessions_neither_side_initiated_are_rekeyed_before_they_expire() {
    let TwoNodes {
        mut a,
        mut b,
        a_at,
        b_at,
        now: start,
    } = two_nodes();
    // L has the lower ID: both keep L's session when handshakes cross.
    let swap = a.ctx.own_id > b.ctx.own_id;
    let (l, h, l_at, h_at) = if swap {
        (&mut b, &mut a, b_at, a_at)
    } else {
        (&mut a, &mut b, a_at, b_at)
    };
    let (l_id, h_id) = (l.ctx.own_id, h.ctx.own_id);
    let is_type = |transmit: &Transmit, kind: u8| transmit.payload.first() == Some(&kind);

    // L initiates; H answers (its `next` is L's session) and L takes it as
    // current, but L's confirmation is lost.
    l.connect(start, &h_id);
    for transmit in drain_transmits(l).iter().filter(|t| is_type(t, 1)) {
        h.handle_datagram(start, l_at, &transmit.payload);
    }
    for transmit in drain_transmits(h).iter().filter(|t| is_type(t, 2)) {
        l.handle_datagram(start, h_at, &transmit.payload);
    }
    drain_transmits(l);
    // H, which saw L is up, retries its own handshake soon; L answers (its
    // `next` is now H's newer session) and H takes it as current.
    let now = start + Duration::from_millis(1500);
    h.handle_timeout(now);
    l.handle_timeout(now);
    drain_transmits(l);
    let initiations: Vec<Transmit> = drain_transmits(h)
        .into_iter()
        .filter(|t| is_type(t, 1))
        .collect();
    assert!(!initiations.is_empty(), "H did not retry its own handshake");
    for transmit in &initiations {
        l.handle_datagram(now, h_at, &transmit.payload);
    }
    for transmit in drain_transmits(l).iter().filter(|t| is_type(t, 2)) {
        h.handle_datagram(now, l_at, &transmit.payload);
    }
    // H's confirmation on its session is held back while L's data on L's
    // session reaches H (which moves to L's session, as the higher ID does);
    // then H's confirmation reaches L (whose own session is older: it moves
    // to H's). Each side is now on the session the other initiated.
    let held: Vec<Transmit> = drain_transmits(h);
    let (l4, h4) = (l.address4().expect("on"), h.address4().expect("on"));
    l.handle_tun_packet(now, &ipv4(l4, h4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]));
    for transmit in drain_transmits(l) {
        h.handle_datagram(now, l_at, &transmit.payload);
    }
    drain_transmits(h);
    for transmit in &held {
        l.handle_datagram(now, h_at, &transmit.payload);
    }
    drain_transmits(l);
    while l.poll_event().is_some() {}
    while h.poll_event().is_some() {}

    // Traffic both ways, a packet a second each, for 200 s.
    let mut now = now;
    for _ in 0..200 {
        now += Duration::from_secs(1);
        l.handle_timeout(now);
        h.handle_timeout(now);
        l.handle_tun_packet(now, &ipv4(l4, h4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]));
        h.handle_tun_packet(now, &ipv4(h4, l4, PROTO_UDP, &[0, 2, 0, 1, 0, 8, 0, 0]));
        exchange(l, l_at, h, h_at, now);
        for (node, peer) in [(&mut *l, h_id), (&mut *h, l_id)] {
            while let Some(event) = node.poll_event() {
                assert!(
                    !matches!(event, Event::PeerDown { id } if id == peer),
                    "the session went down at {:?}",
                    now - start
                );
            }
        }
    }
    for node in [&*l, &*h] {
        let status = &node.status(now).peers[0];
        assert!(status.session_established, "no session at the end");
        assert!(
            status.handshakes >= 3,
            "never rekeyed: {} handshakes",
            status.handshakes
        );
    }
}

#[test]
fn trusted_peers_get_a_precomputed_static_secret_that_goes_with_them() {
    let TwoNodes {
        mut a,
        mut b,
        a_at,
        b_at,
        now,
    } = two_nodes();
    assert_eq!(a.ctx.noise_static.precomputed_peers(), 1);
    // Handshakes with the precomputed secret complete (the values match
    // the uncached ones: tested in core::noise::static_keys).
    let bob = identity(2).agent_id();
    let (a4, b4) = (a.address4().expect("on"), b.address4().expect("on"));
    let packet = ipv4(a4, b4, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
    a.handle_tun_packet(now, &packet);
    exchange(&mut a, a_at, &mut b, b_at, now);
    assert_eq!(b.poll_tun_packet(), Some(packet), "no session");
    assert!(a.status(now).peers[0].session_established);
    assert!(a.remove_peer(&bob));
    assert_eq!(a.ctx.noise_static.precomputed_peers(), 0);
}

/// Packets from the proven endpoint take a short way through the path
/// bookkeeping (no route lookups); it must not hide what the full one sees:
/// the same endpoint changes nothing, a new one is followed at once.
#[test]
fn packets_from_the_proven_endpoint_change_nothing_and_a_new_endpoint_is_followed() {
    let mut nodes = two_nodes();
    let datagram = first_packet_through(&mut nodes);
    let (alice, bob, now) = (&mut nodes.a, &mut nodes.b, nodes.now);
    while bob.poll_event().is_some() {}

    alice.handle_tun_packet(now, &datagram);
    let sealed = alice.poll_transmit().expect("sealed");
    bob.handle_datagram(now, nodes.a_at, &sealed.payload);
    assert_eq!(bob.poll_tun_packet(), Some(datagram.clone()));
    assert!(bob.poll_event().is_none(), "the same endpoint is no news");

    let roamed: SocketAddr = "10.0.0.3:7400".parse().expect("addr");
    alice.handle_tun_packet(now, &datagram);
    let sealed = alice.poll_transmit().expect("sealed");
    bob.handle_datagram(now, roamed, &sealed.payload);
    assert_eq!(bob.poll_tun_packet(), Some(datagram.clone()));
    let events: Vec<Event> = std::iter::from_fn(|| bob.poll_event()).collect();
    let alice_id = alice.agent_id();
    assert!(
        events.iter().any(|event| matches!(
            event,
            Event::EndpointChanged { id, endpoint } if *id == alice_id && *endpoint == roamed
        )),
        "the roam was not reported: {events:?}"
    );
    let (a4, b4) = (alice.address4().expect("on"), bob.address4().expect("on"));
    bob.handle_tun_packet(now, &ipv4(b4, a4, PROTO_UDP, &[0, 2, 0, 1, 0, 8, 0, 0]));
    let reply = bob.poll_transmit().expect("a reply");
    assert_eq!(
        reply.destination, roamed,
        "the reply goes to the new endpoint"
    );
}

/// A peer that initiates again and again (its answers lost on the way, or
/// a flood) gets every initiation answered, but no initiation of ours while
/// it keeps going: it is handshaking on its own. Once it stops, our retry
/// comes within a first retry, to heal a lost confirmation as before.
#[test]
fn a_peer_that_keeps_initiating_gets_answers_and_no_initiation_of_ours_until_it_stops() {
    let (alice, bob) = (identity(1), identity(2));
    let (alice_at, bob_at): (SocketAddr, SocketAddr) = (
        "10.0.0.1:7400".parse().expect("addr"),
        "10.0.0.2:7400".parse().expect("addr"),
    );
    let start = Instant::now();
    let mut bob_node = node(&bob, start);
    bob_node.upsert_peer(start, peer_config(&alice, Some(alice_at)));
    let kind = |transmit: &Transmit| transmit.payload.first().copied();

    // Alice restarts every 200 ms (a fresh node, a newer timestamp), and
    // each start sends an initiation; none of Bob's answers reach her.
    let mut now = start;
    let mut last_initiation = start;
    for restart in 0..15u8 {
        now = start + Duration::from_millis(200) * u32::from(restart);
        let mut alice_node = seeded_node(&alice, [restart; 32], now, STARTED_AT + (now - start));
        alice_node.upsert_peer(now, peer_config(&bob, Some(bob_at)));
        alice_node.connect(now, &bob.agent_id());
        let initiations: Vec<Transmit> = drain_transmits(&mut alice_node)
            .into_iter()
            .filter(|t| kind(t) == Some(TYPE_INITIATION))
            .collect();
        assert_eq!(initiations.len(), 1, "restart {restart}");
        bob_node.handle_timeout(now);
        let before: Vec<Option<u8>> = drain_transmits(&mut bob_node).iter().map(kind).collect();
        assert!(
            !before.contains(&Some(TYPE_INITIATION)),
            "Bob initiated while Alice kept initiating (restart {restart})"
        );
        bob_node.handle_datagram(now, alice_at, &initiations[0].payload);
        let answers: Vec<Option<u8>> = drain_transmits(&mut bob_node).iter().map(kind).collect();
        assert_eq!(answers, [Some(TYPE_RESPONSE)], "restart {restart}");
        last_initiation = now;
    }
    assert!(
        now - start >= Duration::from_secs(2),
        "longer than a first retry"
    );

    // Alice stops: Bob's own handshake follows within a first retry.
    let mut bob_initiated_at = None;
    while now < last_initiation + Duration::from_secs(2) && bob_initiated_at.is_none() {
        now += Duration::from_millis(50);
        bob_node.handle_timeout(now);
        if drain_transmits(&mut bob_node)
            .iter()
            .any(|t| kind(t) == Some(TYPE_INITIATION))
        {
            bob_initiated_at = Some(now);
        }
    }
    let waited = bob_initiated_at.expect("Bob never retried once Alice stopped") - last_initiation;
    assert!(
        waited >= Duration::from_millis(750) && waited <= Duration::from_millis(1250),
        "Bob retried {waited:?} after Alice's last initiation"
    );
}
