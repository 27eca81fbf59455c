//! Protocol behaviour of whole nodes on the deterministic simulated network.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::api::Event;
use agentnet::core::policy::Policy;
use agentnet::core::stats::status::PathKind;
use agentnet::sim::{
    LinkConfig, SimNet, TUNNEL_MTU, tag_of, tcp_packet, tcp4_packet, udp_packet, udp4_packet,
};

fn lossy_reordering_link() -> LinkConfig {
    LinkConfig {
        loss: 0.20,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(30),
        duplicate: 0.05,
    }
}

/// Sends `count` tagged packets from `a` to `b`, one every `spacing`.
fn stream(net: &mut SimNet, a: usize, b: usize, tags: std::ops::Range<u32>, spacing: Duration) {
    let (source, destination) = (net.overlay_address(a), net.overlay_address(b));
    for tag in tags {
        net.send_from_tun(a, &udp_packet(source, destination, 9000, tag, 200));
        net.run_for(spacing);
    }
}

fn delivered_tags(net: &SimNet, host: usize) -> Vec<u32> {
    net.hosts[host]
        .tun
        .iter()
        .filter_map(|packet| tag_of(packet))
        .collect()
}

#[test]
fn handshake_completes_and_data_flows_at_20_percent_loss_with_reordering() {
    for seed in 0..5 {
        let mut net = SimNet::new(seed, lossy_reordering_link(), Instant::now());
        let (a, b) = (net.add_host(1), net.add_host(2));
        net.trust_both(a, b);
        stream(&mut net, a, b, 0..300, Duration::from_millis(20));
        net.run_for(Duration::from_secs(2));
        assert!(net.is_connected(a, b), "seed {seed}: a has no session");
        let tags = delivered_tags(&net, b);
        let unique: HashSet<u32> = tags.iter().copied().collect();
        assert_eq!(
            unique.len(),
            tags.len(),
            "seed {seed}: a packet was delivered twice"
        );
        // Packets queued while handshakes were lost may overflow the queue,
        // but once connected, data flows at the link's 80%.
        assert!(
            tags.len() >= 120,
            "seed {seed}: only {} of 300 delivered",
            tags.len()
        );
        let before = tags.len();
        stream(&mut net, a, b, 1000..1200, Duration::from_millis(20));
        net.run_for(Duration::from_secs(2));
        let tags = delivered_tags(&net, b);
        let unique: HashSet<u32> = tags.iter().copied().collect();
        assert_eq!(
            unique.len(),
            tags.len(),
            "seed {seed}: a packet was delivered twice"
        );
        let connected_phase = tags.len() - before;
        assert!(
            connected_phase >= 140,
            "seed {seed}: only {connected_phase} of 200 delivered once connected"
        );
        let reordered = tags.windows(2).any(|pair| pair[0] > pair[1]);
        assert!(
            reordered,
            "seed {seed}: the link should have reordered packets"
        );
    }
}

#[test]
fn no_packet_is_delivered_twice_under_heavy_duplication() {
    let mut net = SimNet::new(
        7,
        LinkConfig {
            duplicate: 0.5,
            jitter: Duration::from_millis(15),
            ..LinkConfig::default()
        },
        Instant::now(),
    );
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    stream(&mut net, a, b, 0..200, Duration::from_millis(5));
    net.run_for(Duration::from_secs(1));
    let tags = delivered_tags(&net, b);
    let unique: HashSet<u32> = tags.iter().copied().collect();
    assert_eq!(unique.len(), 200, "every packet arrives on a lossless link");
    assert_eq!(tags.len(), 200, "duplicates were delivered");
}

#[test]
fn untrusted_initiator_gets_no_reply() {
    let mut net = SimNet::new(3, LinkConfig::default(), Instant::now());
    let (b, c) = (net.add_host(2), net.add_host(3));
    // C trusts B and knows its endpoint; B does not trust C.
    net.trust(c, b, true, Policy::All);
    let (source, destination) = (net.overlay_address(c), net.overlay_address(b));
    for tag in 0..20 {
        net.send_from_tun(c, &udp_packet(source, destination, 80, tag, 100));
        net.run_for(Duration::from_secs(3));
    }
    let c_address = net.hosts[c].address;
    assert!(
        net.wire_log
            .iter()
            .filter(|(from, _, _)| *from == c_address)
            .count()
            > 5,
        "C should have sent several initiations"
    );
    assert!(
        net.hosts[c].received_from.is_empty(),
        "B answered an untrusted initiator"
    );
    assert!(net.hosts[b].tun.is_empty());
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert!(
        dropped.untrusted > 0,
        "untrusted initiations are counted: {dropped:?}"
    );
}

#[test]
fn garbage_and_forged_handshakes_get_no_reply() {
    let mut net = SimNet::new(4, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let attacker: SocketAddr = "10.0.0.99:5555".parse().expect("addr");
    let b_address = net.hosts[b].address;
    let mut junk = vec![
        vec![],
        vec![1],
        vec![1, 0, 0, 0],
        vec![4, 0, 0, 0, 1, 2, 3, 4],
        vec![9; 200],
    ];
    for kind in 1..=6u8 {
        let mut datagram = vec![kind, 0, 0, 0];
        datagram.extend((0..300u32).map(|i| (i * 7 + u32::from(kind)) as u8));
        junk.push(datagram);
    }
    for datagram in junk {
        net.inject(attacker, b_address, datagram);
    }
    net.run_for(Duration::from_secs(5));
    let answered_attacker = net.wire_log.iter().any(|(_, to, _)| *to == attacker);
    assert!(!answered_attacker, "B answered garbage");
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert!(
        dropped.malformed + dropped.bad_mac1 + dropped.unknown_session >= 10,
        "{dropped:?}"
    );
}

#[test]
fn replayed_initiation_is_dropped_without_reply() {
    let mut net = SimNet::new(5, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (source, destination) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &udp_packet(source, destination, 80, 1, 10));
    net.run_for(Duration::from_secs(1));
    assert!(net.is_connected(a, b));
    let a_address = net.hosts[a].address;
    let b_address = net.hosts[b].address;
    let initiation = net
        .wire_log
        .iter()
        .find(|(from, _, bytes)| *from == a_address && bytes.first() == Some(&1))
        .map(|(_, _, bytes)| bytes.clone())
        .expect("a sent an initiation");
    let attacker: SocketAddr = "10.0.0.66:7400".parse().expect("addr");
    let sent_before = net.wire_log.len();
    net.inject(attacker, b_address, initiation);
    net.run_for(Duration::from_millis(100));
    // B's own traffic to A (RTT pings while active) may go out meanwhile;
    // no handshake response, and nothing to the attacker.
    assert!(
        net.wire_log[sent_before..]
            .iter()
            .all(|(from, to, bytes)| *from != b_address
                || (*to != attacker && bytes.first() != Some(&2))),
        "B answered a replayed initiation"
    );
    assert_eq!(
        net.hosts[b]
            .node
            .status(net.now)
            .dropped
            .replayed_initiation,
        1
    );
    // The replay did not move B's idea of A's endpoint.
    let endpoint = net.hosts[b].node.status(net.now).peers[0].endpoint;
    assert_eq!(endpoint, Some(a_address));
}

#[test]
fn sessions_rekey_under_steady_traffic_without_loss() {
    let mut net = SimNet::new(6, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    // 10 minutes of one packet a second each way.
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    for tag in 0..600 {
        net.send_from_tun(a, &udp_packet(address_a, address_b, 80, tag, 50));
        net.send_from_tun(b, &udp_packet(address_b, address_a, 80, tag, 50));
        net.run_for(Duration::from_secs(1));
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        delivered_tags(&net, b).len(),
        600,
        "a->b lost packets across rekeys"
    );
    assert_eq!(
        delivered_tags(&net, a).len(),
        600,
        "b->a lost packets across rekeys"
    );
    let handshakes: u64 = [a, b]
        .iter()
        .map(|&host| net.hosts[host].node.status(net.now).peers[0].handshakes)
        .sum();
    assert!(
        handshakes >= 4,
        "10 minutes need a rekey every 2 minutes; saw {handshakes} handshakes"
    );
}

#[test]
fn idle_session_expires_and_traffic_brings_it_back() {
    let mut net = SimNet::new(8, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &udp_packet(address_a, address_b, 80, 1, 10));
    net.run_for(Duration::from_secs(1));
    assert!(net.is_connected(a, b));
    net.run_for(Duration::from_secs(200));
    assert!(
        !net.is_connected(a, b),
        "session outlived REJECT_AFTER_TIME"
    );
    assert!(
        net.hosts[a]
            .events
            .iter()
            .any(|event| matches!(event, Event::PeerDown { .. }))
    );
    net.send_from_tun(a, &udp_packet(address_a, address_b, 80, 2, 10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, b), vec![1, 2]);
}

#[test]
fn only_one_side_needs_the_endpoint() {
    let mut net = SimNet::new(9, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust(a, b, false, Policy::All); // A does not know where B is
    net.trust(b, a, true, Policy::All);
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 1, 10));
    net.run_for(Duration::from_secs(1));
    net.send_from_tun(a, &udp_packet(address_a, address_b, 80, 2, 10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, a), vec![1]);
    assert_eq!(delivered_tags(&net, b), vec![2]);
}

#[test]
fn endpoint_follows_a_roaming_peer() {
    let mut net = SimNet::new(10, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    stream(&mut net, a, b, 0..10, Duration::from_millis(50));
    // A's underlay address changes (NAT rebinding, new network).
    let roamed: SocketAddr = "10.0.9.1:4000".parse().expect("addr");
    net.hosts[a].address = roamed;
    stream(&mut net, a, b, 10..20, Duration::from_millis(50));
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 99, 10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, b).len(), 20);
    assert_eq!(
        delivered_tags(&net, a),
        vec![99],
        "B's reply reached A at its new address"
    );
    assert_eq!(
        net.hosts[b].node.status(net.now).peers[0].endpoint,
        Some(roamed)
    );
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut net = SimNet::new(11, LinkConfig::default(), Instant::now());
    let (a, b, c) = (net.add_host(1), net.add_host(2), net.add_host(3));
    net.trust_both(a, b);
    net.trust_both(b, c);
    // A's TUN carries a packet claiming to come from C's address: A does not
    // send it (and B, were it sent, would drop it as spoofed).
    let spoofed = udp_packet(net.overlay_address(c), net.overlay_address(b), 80, 5, 10);
    net.send_from_tun(a, &spoofed);
    net.run_for(Duration::from_secs(1));
    assert!(
        net.hosts[b].tun.is_empty(),
        "B delivered a packet with a source outside A's prefix"
    );
    assert_eq!(net.hosts[a].node.drop_counters().foreign_source, 1);
}

#[test]
fn tun_packet_with_foreign_source_is_not_sent_and_is_counted() {
    let mut net = SimNet::new(16, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let destination = net.overlay_address(b);
    // A LAN neighbour routing into the overlay through A, and a source in
    // the overlay's /48 but outside A's node prefix.
    let lan: std::net::Ipv6Addr = "fd12:3456::99".parse().expect("address");
    let mut elsewhere = net.overlay_address(a).segments();
    elsewhere[6] ^= 1;
    for source in [lan, elsewhere.into()] {
        net.send_from_tun(a, &udp_packet(source, destination, 80, 1, 20));
    }
    net.run_for(Duration::from_secs(2));
    assert!(
        net.wire_log.is_empty(),
        "a packet with a foreign source went on the wire (or started a handshake)"
    );
    assert_eq!(net.hosts[a].node.drop_counters().foreign_source, 2);
    let status = serde_json::to_value(net.hosts[a].node.status(net.now)).expect("json");
    assert_eq!(status["dropped"]["foreign_source"], 2);
    // An attached namespace's address (in A's node prefix) is ours.
    let mut attached = net.overlay_address(a).segments();
    attached[7] = 2;
    net.send_from_tun(a, &udp_packet(attached.into(), destination, 80, 7, 20));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, b), vec![7]);
}

#[test]
fn policy_limits_inbound_but_replies_to_own_connections_pass() {
    let mut net = SimNet::new(12, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    // B lets A open only tcp:80; A lets B open anything.
    net.trust(a, b, true, Policy::All);
    net.trust(b, a, true, "tcp:80".parse().expect("policy"));
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40000, 22, 0x02));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40001, 80, 0x02));
    net.run_for(Duration::from_secs(1));
    let ports: Vec<u16> = net.hosts[b]
        .tun
        .iter()
        .map(|p| u16::from_be_bytes([p[42], p[43]]))
        .collect();
    assert_eq!(ports, vec![80], "only the allowed port got through");
    // B opens a connection to A's port 22; A's reply must pass B's policy.
    net.send_from_tun(b, &tcp_packet(address_b, address_a, 50000, 22, 0x02));
    net.run_for(Duration::from_secs(1));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 22, 50000, 0x12));
    net.run_for(Duration::from_secs(1));
    let from_ports: Vec<u16> = net.hosts[b]
        .tun
        .iter()
        .map(|p| u16::from_be_bytes([p[40], p[41]]))
        .collect();
    assert_eq!(from_ports, vec![40001, 22]);
    assert_eq!(net.hosts[b].node.status(net.now).peers[0].dropped_policy, 1);
}

#[test]
fn oversized_packet_gets_packet_too_big_and_is_not_sent() {
    let mut net = SimNet::new(13, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let big = udp_packet(
        net.overlay_address(a),
        net.overlay_address(b),
        80,
        1,
        usize::from(TUNNEL_MTU),
    );
    assert!(big.len() > usize::from(TUNNEL_MTU));
    net.send_from_tun(a, &big);
    net.run_for(Duration::from_secs(1));
    assert!(
        net.wire_log.is_empty(),
        "nothing may go on the wire for an oversized packet"
    );
    let reply = net.hosts[a].tun.first().expect("an ICMPv6 reply");
    assert_eq!(reply[6], 58, "ICMPv6");
    assert_eq!(reply[40], 2, "Packet Too Big");
    assert_eq!(
        u32::from_be_bytes([reply[44], reply[45], reply[46], reply[47]]),
        u32::from(TUNNEL_MTU)
    );
}

#[test]
fn revoked_peer_is_told_and_its_packets_are_dropped() {
    let mut net = SimNet::new(14, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &udp_packet(address_a, address_b, 80, 1, 10));
    net.run_for(Duration::from_secs(1));
    assert!(net.is_connected(b, a));
    // B sends a packet that is in flight when A revokes B.
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 2, 10));
    let now = net.now;
    let id_b = net.id(b);
    assert!(net.hosts[a].node.revoke_peer(now, &id_b));
    net.run_for(Duration::from_secs(1));
    assert!(
        delivered_tags(&net, a).is_empty(),
        "a packet of the revoked peer was delivered"
    );
    assert!(
        !net.is_connected(b, a),
        "B did not drop the session on the notice"
    );
    // B keeps trying; A stays silent.
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 3, 10));
    let a_address = net.hosts[a].address;
    let sent_before = net.wire_log.len();
    net.run_for(Duration::from_secs(20));
    assert!(
        net.wire_log[sent_before..]
            .iter()
            .all(|(from, _, _)| *from != a_address)
    );
    assert!(delivered_tags(&net, a).is_empty());
}

#[test]
fn a_peer_added_after_a_removal_gets_only_its_own_traffic() {
    // C takes the place B left in A's peer table; B still holds its old
    // session with A and keeps sending on it.
    let mut net = SimNet::new(15, LinkConfig::default(), Instant::now());
    let (a, b, c) = (net.add_host(1), net.add_host(2), net.add_host(3));
    net.trust_both(a, b);
    let (address_a, address_b, address_c) = (
        net.overlay_address(a),
        net.overlay_address(b),
        net.overlay_address(c),
    );
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 1, 10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, a), vec![1]);
    let id_b = net.id(b);
    assert!(net.hosts[a].node.remove_peer(&id_b));
    net.trust_both(a, c);
    net.send_from_tun(c, &udp_packet(address_c, address_a, 80, 2, 10));
    net.run_for(Duration::from_secs(1));
    assert!(net.is_connected(a, c));
    net.send_from_tun(b, &udp_packet(address_b, address_a, 80, 3, 10));
    net.send_from_tun(c, &udp_packet(address_c, address_a, 80, 4, 10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, a), vec![1, 2, 4]);
    let status = net.hosts[a].node.status(net.now);
    let ids: Vec<_> = status.peers.iter().map(|peer| peer.id).collect();
    assert_eq!(ids, vec![net.id(c)]);
    assert_eq!(status.peers[0].rx_packets, 2);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let transcript = |seed| {
        let mut net = SimNet::new(seed, lossy_reordering_link(), Instant::now());
        let (a, b) = (net.add_host(1), net.add_host(2));
        net.trust_both(a, b);
        stream(&mut net, a, b, 0..50, Duration::from_millis(10));
        net.wire_log.clone()
    };
    assert_eq!(transcript(42), transcript(42));
    assert_ne!(transcript(42), transcript(43));
}

#[test]
fn status_reports_direct_path_and_counters() {
    let mut net = SimNet::new(15, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    stream(&mut net, a, b, 0..10, Duration::from_millis(10));
    net.run_for(Duration::from_secs(1));
    let status = net.hosts[a].node.status(net.now);
    let peer = &status.peers[0];
    assert_eq!(peer.path, PathKind::Direct);
    assert_eq!(peer.tx_packets, 10);
    assert!(peer.tx_bytes >= 10 * 200);
    assert!(peer.last_handshake_age_s.is_some_and(|age| age < 2.0));
    assert_eq!(status.address, net.overlay_address(a));
}

#[test]
fn forged_response_does_not_kill_the_handshake_in_flight() {
    use agentnet::core::noise::mac::Mac1Key;
    use agentnet::core::wire::{MACS_LEN, TYPE_INITIATION, TYPE_RESPONSE};
    let mut net = SimNet::new(17, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (address_a, address_b) = (net.hosts[a].address, net.hosts[b].address);
    net.send_from_tun(
        a,
        &udp_packet(net.overlay_address(a), net.overlay_address(b), 80, 1, 20),
    );
    // A relay on the path saw A's initiation: it knows A's index, and mac1
    // keys are public. Its garbage response arrives before B's real one.
    let index = net
        .wire_log
        .iter()
        .find(|(from, _, bytes)| *from == address_a && bytes.first() == Some(&TYPE_INITIATION))
        .map(|(_, _, bytes)| [bytes[4], bytes[5], bytes[6], bytes[7]])
        .expect("A initiated");
    let mut forged = vec![TYPE_RESPONSE, 0, 0, 0, 9, 9, 9, 9];
    forged.extend_from_slice(&index);
    forged.extend_from_slice(&[0x5a; 32 + 16 + 40]);
    forged.extend_from_slice(&[0; MACS_LEN]);
    Mac1Key::for_responder(net.network, &net.id(a).noise_public_key()).seal(&mut forged);
    net.inject(address_b, address_a, forged);
    // The first exchange takes 20 ms; the first retry would come after ~1 s.
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.hosts[a].node.drop_counters().handshake_failed, 1);
    assert!(
        net.is_connected(a, b),
        "the real response did not complete the handshake"
    );
    let initiations = net
        .wire_log
        .iter()
        .filter(|(from, _, bytes)| *from == address_a && bytes.first() == Some(&TYPE_INITIATION))
        .count();
    assert_eq!(initiations, 1, "the session needed a retry");
    assert_eq!(delivered_tags(&net, b), vec![1]);
}

#[test]
fn narrowing_policy_closes_old_inbound_flows_but_keeps_own() {
    let mut net = SimNet::new(18, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust(a, b, true, Policy::All);
    net.trust(b, a, true, "tcp:22".parse().expect("policy"));
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));
    let ports_delivered_to_b = |net: &SimNet| -> Vec<(u16, u16)> {
        net.hosts[b]
            .tun
            .iter()
            .map(|p| {
                (
                    u16::from_be_bytes([p[40], p[41]]),
                    u16::from_be_bytes([p[42], p[43]]),
                )
            })
            .collect()
    };
    // A opens B's ssh (allowed); B answers; A goes on.
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40000, 22, 0x02));
    net.run_for(Duration::from_secs(1));
    net.send_from_tun(b, &tcp_packet(address_b, address_a, 22, 40000, 0x12));
    net.run_for(Duration::from_millis(100));
    // B opens a connection of its own to A's port 9000.
    net.send_from_tun(b, &tcp_packet(address_b, address_a, 50000, 9000, 0x02));
    net.run_for(Duration::from_millis(100));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 9000, 50000, 0x12));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40000, 22, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        ports_delivered_to_b(&net),
        vec![(40000, 22), (9000, 50000), (40000, 22)]
    );
    // B narrows A's policy to tcp:8080 while the ssh connection is open.
    net.trust(b, a, true, "tcp:8080".parse().expect("policy"));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40000, 22, 0x10));
    // B's own connection keeps working both ways.
    net.send_from_tun(b, &tcp_packet(address_b, address_a, 50000, 9000, 0x10));
    net.run_for(Duration::from_millis(100));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 9000, 50000, 0x10));
    // B's server still answering on the old connection opens nothing.
    net.send_from_tun(b, &tcp_packet(address_b, address_a, 22, 40000, 0x10));
    net.run_for(Duration::from_millis(100));
    net.send_from_tun(a, &tcp_packet(address_a, address_b, 40000, 22, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        ports_delivered_to_b(&net),
        vec![(40000, 22), (9000, 50000), (40000, 22), (9000, 50000)],
        "the old ssh connection stayed open after the policy was narrowed"
    );
    assert_eq!(net.hosts[b].node.status(net.now).peers[0].dropped_policy, 2);
}

#[test]
fn ipv4_packets_ride_the_same_sessions_both_ways() {
    let mut net = SimNet::new(41, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (a4, b4) = (net.overlay_address4(a), net.overlay_address4(b));
    assert_ne!(a4, b4);
    net.send_from_tun(a, &udp4_packet(a4, b4, 9000, 1, 100));
    net.send_from_tun(
        a,
        &udp_packet(net.overlay_address(a), net.overlay_address(b), 9000, 2, 100),
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, b), vec![1, 2]);
    assert_eq!(net.hosts[b].tun[0], udp4_packet(a4, b4, 9000, 1, 100));
    net.send_from_tun(b, &udp4_packet(b4, a4, 40000, 3, 100));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered_tags(&net, a), vec![3]);
    let status = net.hosts[a].node.status(net.now);
    assert_eq!(status.address4, Some(a4));
    assert_eq!(status.peers[0].address4, Some(b4));
    assert_eq!(status.peers[0].address4_conflict, None);
}

#[test]
fn ipv4_policy_is_the_ipv6_policy() {
    let mut net = SimNet::new(42, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust(a, b, true, Policy::All);
    net.trust(b, a, true, "tcp:8080".parse().expect("policy"));
    let (a4, b4) = (net.overlay_address4(a), net.overlay_address4(b));
    net.send_from_tun(a, &tcp4_packet(a4, b4, 40000, 8080, 0x02));
    net.send_from_tun(a, &tcp4_packet(a4, b4, 40001, 22, 0x02));
    net.send_from_tun(a, &udp4_packet(a4, b4, 8080, 9, 20));
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.hosts[b].tun,
        vec![tcp4_packet(a4, b4, 40000, 8080, 0x02)]
    );
    assert_eq!(net.hosts[b].node.status(net.now).peers[0].dropped_policy, 2);
    // B's own connection to A's port 22 over IPv4 gets its replies.
    net.send_from_tun(b, &tcp4_packet(b4, a4, 50000, 22, 0x02));
    net.run_for(Duration::from_secs(1));
    net.send_from_tun(a, &tcp4_packet(a4, b4, 22, 50000, 0x12));
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.hosts[b].tun.len(),
        2,
        "the reply to B's own flow passed"
    );
}

#[test]
fn oversized_ipv4_with_df_gets_fragmentation_needed_and_nothing_goes_out() {
    let mut net = SimNet::new(43, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (a4, b4) = (net.overlay_address4(a), net.overlay_address4(b));
    let big = udp4_packet(a4, b4, 9000, 5, usize::from(TUNNEL_MTU));
    net.send_from_tun(a, &big);
    net.run_for(Duration::from_secs(1));
    assert!(net.wire_log.is_empty(), "an oversized packet went out");
    let [reply] = net.hosts[a].tun.as_slice() else {
        panic!("expected one ICMP reply, got {:?}", net.hosts[a].tun.len());
    };
    let parsed = etherparse::SlicedPacket::from_ip(reply).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &parsed.net else {
        panic!("not IPv4");
    };
    // From the peer's address (the kernel drops IPv4 from its own address
    // arriving on the TUN), to the sender.
    assert_eq!(ip.header().source_addr(), b4);
    assert_eq!(ip.header().destination_addr(), a4);
    match parsed.transport {
        Some(etherparse::TransportSlice::Icmpv4(icmp)) => assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: TUNNEL_MTU
                }
            )
        ),
        other => panic!("not ICMPv4: {other:?}"),
    }
    assert_eq!(net.hosts[a].node.drop_counters().too_big, 1);
}

#[test]
fn ipv4_from_a_foreign_source_or_to_an_unknown_address_is_not_sent() {
    let mut net = SimNet::new(44, LinkConfig::default(), Instant::now());
    let (a, b, c) = (net.add_host(1), net.add_host(2), net.add_host(3));
    net.trust_both(a, b);
    let (a4, b4, c4) = (
        net.overlay_address4(a),
        net.overlay_address4(b),
        net.overlay_address4(c),
    );
    // A LAN address and an untrusted agent's address as source; an
    // untrusted agent's address as destination.
    net.send_from_tun(
        a,
        &udp4_packet("192.168.1.9".parse().expect("ip"), b4, 80, 1, 20),
    );
    net.send_from_tun(a, &udp4_packet(c4, b4, 80, 2, 20));
    net.send_from_tun(a, &udp4_packet(a4, c4, 80, 3, 20));
    net.run_for(Duration::from_secs(1));
    assert!(net.wire_log.is_empty());
    let dropped = net.hosts[a].node.drop_counters();
    assert_eq!((dropped.foreign_source, dropped.no_route), (2, 1));
}

#[test]
fn ipv4_off_carries_ipv6_only() {
    let mut net = SimNet::new(45, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    net.hosts[b].node.set_ipv4(false);
    let (a4, b4) = (net.overlay_address4(a), net.overlay_address4(b));
    net.send_from_tun(a, &udp4_packet(a4, b4, 9000, 1, 20));
    net.send_from_tun(
        a,
        &udp_packet(net.overlay_address(a), net.overlay_address(b), 9000, 2, 20),
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        delivered_tags(&net, b),
        vec![2],
        "B took IPv4 with IPv4 off"
    );
    let status = net.hosts[b].node.status(net.now);
    assert_eq!(status.address4, None);
    assert_eq!(status.peers[0].address4, None);
    assert_eq!(status.peers[0].dropped_spoofed, 1);
}
