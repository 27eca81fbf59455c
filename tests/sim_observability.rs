//! What `agentnet status` reports about a peer, checked against the known
//! impairments of the simulated link: loss, RTT and jitter, reordering,
//! duplication, drops by reason, handshakes, path changes and `ping`.

use std::time::{Duration, Instant};

use agentnet::core::api::Event;
use agentnet::core::policy::Policy;
use agentnet::core::stats::PingError;
use agentnet::core::stats::status::{PathKind, PeerStatus};
use agentnet::core::wire::path::PathAddr;
use agentnet::sim::{LinkConfig, NatKind, SimNet, TUNNEL_MTU, udp_packet};

const MS: Duration = Duration::from_millis(1);

/// What `host` reports about `peer`.
fn peer_status(net: &SimNet, host: usize, peer: usize) -> PeerStatus {
    let id = net.id(peer);
    net.hosts[host]
        .node
        .status(net.now)
        .peers
        .into_iter()
        .find(|status| status.id == id)
        .expect("peer in status")
}

/// Sends one packet a -> b every `spacing` for `duration`.
fn stream(net: &mut SimNet, a: usize, b: usize, duration: Duration, spacing: Duration) {
    let (source, destination) = (net.overlay_address(a), net.overlay_address(b));
    let until = net.now + duration;
    let mut tag = 0;
    while net.now < until {
        net.send_from_tun(a, &udp_packet(source, destination, 9000, tag, 200));
        tag += 1;
        net.run_for(spacing);
    }
}

fn connected_pair(seed: u64, link: LinkConfig) -> (SimNet, usize, usize) {
    let mut net = SimNet::new(seed, link, Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    // a starts the handshake; wait (virtual time) until both sides are up.
    let (id, now) = (net.id(b), net.now);
    net.hosts[a].node.connect(now, &id);
    assert!(
        net.run_until_condition(Duration::from_secs(30), |net| net.is_connected(a, b)
            && net.is_connected(b, a)),
        "no session within 30 s"
    );
    (net, a, b)
}

#[test]
fn loss_and_rtt_are_reported_within_tolerance_at_5_percent_loss_and_10_ms_jitter() {
    // One way: 10 ms +- 5 ms (5 ms base + uniform 0..10 ms), so the RTT
    // averages 20 ms; 5 % of datagrams lost each way.
    let link = LinkConfig {
        loss: 0.05,
        delay: 5 * MS,
        jitter: 10 * MS,
        duplicate: 0.0,
    };
    for seed in 1..=3 {
        let (mut net, a, b) = connected_pair(seed, link);
        // 200 packets/s for 20 s: the 10 s window holds ~2000 of them.
        stream(&mut net, a, b, Duration::from_secs(20), 5 * MS);
        let at_b = peer_status(&net, b, a);
        let receive = at_b.stats.receive;
        let loss = receive.loss.expect("loss measured");
        let loss_total = receive.loss_total.expect("loss measured");
        println!(
            "seed {seed}: loss {:.2}% (window of {} expected), {:.2}% overall; reordering {:.1}%",
            loss * 100.0,
            receive.window.expected,
            loss_total * 100.0,
            receive.reordering.unwrap_or(0.0) * 100.0
        );
        assert!(receive.window.expected > 1500, "seed {seed}: {receive:?}");
        assert!(
            (loss - 0.05).abs() <= 0.02,
            "seed {seed}: window loss {loss}"
        );
        assert!(
            (loss_total - 0.05).abs() <= 0.02,
            "seed {seed}: total loss {loss_total}"
        );
        for (host, peer) in [(a, b), (b, a)] {
            let status = peer_status(&net, host, peer);
            assert_eq!(status.path, PathKind::Direct);
            let rtt = status.stats.rtt.expect("RTT measured on the current path");
            println!(
                "seed {seed}: host {host}: rtt smoothed {:.2} ms over {} pings (min {:.1}, max {:.1}); ping loss {:?}",
                rtt.smoothed_ms, rtt.samples, rtt.min_ms, rtt.max_ms, status.stats.pings.loss
            );
            assert!(
                rtt.samples >= 15,
                "seed {seed}: one RTT ping a second: {rtt:?}"
            );
            assert!(
                (rtt.smoothed_ms - 20.0).abs() <= 4.0,
                "seed {seed}: {rtt:?}"
            );
            assert!(
                rtt.min_ms >= 10.0 && rtt.max_ms <= 30.0,
                "seed {seed}: {rtt:?}"
            );
        }
    }
}

#[test]
fn reordering_is_reported_when_the_link_reorders_and_only_then() {
    let steady = LinkConfig {
        delay: 10 * MS,
        ..LinkConfig::default()
    };
    let (mut net, a, b) = connected_pair(7, steady);
    stream(&mut net, a, b, Duration::from_secs(3), 2 * MS);
    net.run_for(Duration::from_millis(100));
    let receive = peer_status(&net, b, a).stats.receive;
    assert_eq!(receive.reordering, Some(0.0), "{receive:?}");
    assert_eq!(receive.loss, Some(0.0), "{receive:?}");
    assert_eq!(receive.total.reordered, 0);

    let reordering = LinkConfig {
        delay: 10 * MS,
        jitter: 20 * MS,
        ..LinkConfig::default()
    };
    let (mut net, a, b) = connected_pair(7, reordering);
    stream(&mut net, a, b, Duration::from_secs(3), 2 * MS);
    net.run_for(Duration::from_millis(100));
    let receive = peer_status(&net, b, a).stats.receive;
    println!("reordering link: {receive:?}");
    assert!(
        receive.reordering.is_some_and(|ratio| ratio > 0.1),
        "{receive:?}"
    );
    assert!(receive.total.reordered > 100, "{receive:?}");
    // Late is not lost: everything arrived in the end.
    assert_eq!(receive.loss, Some(0.0), "{receive:?}");
}

#[test]
fn duplicates_are_counted_not_delivered_and_not_mistaken_for_loss() {
    let link = LinkConfig {
        delay: 10 * MS,
        duplicate: 0.05,
        ..LinkConfig::default()
    };
    let (mut net, a, b) = connected_pair(3, link);
    let delivered_before = net.hosts[b].tun.len();
    stream(&mut net, a, b, Duration::from_secs(10), 5 * MS);
    net.run_for(Duration::from_millis(100));
    let status = peer_status(&net, b, a);
    let receive = status.stats.receive;
    let duplication = receive.duplication.expect("measured");
    println!("duplication {:.2}%: {receive:?}", duplication * 100.0);
    assert!((duplication - 0.05).abs() <= 0.02, "{receive:?}");
    assert_eq!(receive.loss, Some(0.0), "{receive:?}");
    assert_eq!(status.stats.drops.replay, status.dropped_replay);
    assert!(status.dropped_replay >= receive.window.duplicates);
    assert_eq!(
        net.hosts[b].tun.len() - delivered_before,
        2000,
        "each packet delivered once"
    );
}

#[test]
fn drops_are_counted_by_reason_per_peer() {
    let (mut net, a, b) = connected_pair(4, LinkConfig::default());
    // MTU: an oversized packet is answered with Packet Too Big locally.
    let big = udp_packet(
        net.overlay_address(a),
        net.overlay_address(b),
        9000,
        1,
        usize::from(TUNNEL_MTU),
    );
    net.send_from_tun(a, &big);
    assert_eq!(peer_status(&net, a, b).stats.drops.mtu, 1);
    // Decrypt: a data datagram of a to b with another counter; then the
    // original again, which is a duplicate.
    stream(&mut net, a, b, Duration::from_millis(50), 10 * MS);
    let (from, to) = (net.hosts[a].address, net.hosts[b].address);
    let original = net
        .wire_log
        .iter()
        .rev()
        .find(|(f, t, bytes)| {
            *f == from && *t == to && bytes.first() == Some(&4) && bytes.len() > 100
        })
        .map(|(_, _, bytes)| bytes.clone())
        .expect("a data datagram on the wire");
    // A fresh counter (header bytes 8..16) passes the replay window, and
    // then fails authentication.
    let mut forged = original.clone();
    forged[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    net.inject(from, to, forged);
    net.inject(from, to, original);
    net.run_for(Duration::from_millis(100));
    let status = peer_status(&net, b, a);
    assert_eq!(status.stats.drops.decrypt, 1, "{:?}", status.stats.drops);
    assert_eq!(status.stats.receive.total.duplicates, 1);
    assert_eq!(status.stats.drops.replay, 1);
    assert_eq!(net.hosts[b].node.status(net.now).dropped.decrypt_failed, 1);
}

#[test]
fn handshakes_report_their_duration() {
    let link = LinkConfig {
        delay: 10 * MS,
        ..LinkConfig::default()
    };
    let (net, a, b) = connected_pair(5, link);
    let initiator = peer_status(&net, a, b).stats.handshake;
    let responder = peer_status(&net, b, a).stats.handshake;
    println!("initiator {initiator:?}\nresponder {responder:?}");
    assert_eq!(initiator.completed, 1);
    assert_eq!(initiator.initiations_sent, 1);
    // One round trip each: initiation -> response; response -> confirmation.
    let duration = initiator.last_duration_ms.expect("measured");
    assert!((19.0..=25.0).contains(&duration), "{initiator:?}");
    let duration = responder.last_duration_ms.expect("measured");
    assert!((19.0..=25.0).contains(&duration), "{responder:?}");
    assert!(initiator.last_unix_s.is_some_and(|at| at > 1.0e9));
}

#[test]
fn lost_initiations_show_up_as_retries_and_a_longer_handshake() {
    let mut net = SimNet::new(6, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust(a, b, true, Policy::All);
    // b does not trust a yet: the first initiations go unanswered.
    let id = net.id(b);
    let now = net.now;
    net.hosts[a].node.connect(now, &id);
    net.run_for(Duration::from_millis(2500));
    net.trust(b, a, true, Policy::All);
    assert!(net.run_until_condition(Duration::from_secs(10), |net| net.is_connected(a, b)));
    let handshake = peer_status(&net, a, b).stats.handshake;
    println!("{handshake:?}");
    assert!(handshake.initiations_sent >= 3, "{handshake:?}");
    assert!(
        handshake.last_duration_ms.is_some_and(|ms| ms > 2500.0),
        "{handshake:?}"
    );
}

#[test]
fn rtt_pings_run_only_while_traffic_flows() {
    let (mut net, a, b) = connected_pair(8, LinkConfig::default());
    let idle = peer_status(&net, a, b).stats.pings.sent;
    net.run_for(Duration::from_secs(30));
    assert_eq!(
        peer_status(&net, a, b).stats.pings.sent,
        idle,
        "an idle peer is not pinged"
    );
    stream(&mut net, a, b, Duration::from_secs(5), 100 * MS);
    let active = peer_status(&net, a, b).stats.pings.sent;
    assert!(
        (4..=6).contains(&(active - idle)),
        "about one a second: {}",
        active - idle
    );
    net.run_for(Duration::from_secs(60));
    let after = peer_status(&net, a, b).stats.pings.sent;
    assert!(
        after - active <= 11,
        "pings stop {} s after the traffic",
        10
    );
    net.run_for(Duration::from_secs(60));
    assert_eq!(peer_status(&net, a, b).stats.pings.sent, after);
}

#[test]
fn a_peer_that_stops_answering_is_reported_silent_until_it_answers_again() {
    let (mut net, a, b) = connected_pair(9, LinkConfig::default());
    // One-way traffic to a live peer is answered (pongs, keepalives).
    stream(&mut net, a, b, Duration::from_secs(40), 100 * MS);
    let live = peer_status(&net, a, b);
    assert_eq!(live.silent_s, None, "a live peer answers: {live:?}");
    assert_eq!(live.path, PathKind::Direct);

    net.stop_host(b);
    stream(&mut net, a, b, Duration::from_secs(10), 100 * MS);
    assert_eq!(
        peer_status(&net, a, b).silent_s,
        None,
        "10 s is within a live peer's keepalive"
    );
    stream(&mut net, a, b, Duration::from_secs(10), 100 * MS);
    let stopped = peer_status(&net, a, b);
    let silent = stopped
        .silent_s
        .expect("silent after 20 s without an answer");
    assert!((19.0..=21.0).contains(&silent), "silent for {silent} s");
    // The session has not expired: only `silent_s` tells the peer is gone.
    assert!(stopped.session_established, "{stopped:?}");

    net.restart_host(b, [7; 32]);
    net.trust(b, a, true, Policy::All);
    stream(&mut net, a, b, Duration::from_secs(10), 100 * MS);
    let back = peer_status(&net, a, b);
    assert!(back.session_established, "{back:?}");
    assert_eq!(back.silent_s, None, "answered again: {back:?}");
}

#[test]
fn ping_reports_the_rtt_and_the_path_of_each_reply() {
    let link = LinkConfig {
        delay: 15 * MS,
        ..LinkConfig::default()
    };
    let mut net = SimNet::new(9, link, Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let id = net.id(b);
    // No session yet: the ping starts one and says so.
    let now = net.now;
    assert_eq!(net.hosts[a].node.ping(now, &id), Err(PingError::NoSession));
    assert!(net.run_until_condition(Duration::from_secs(5), |net| net.is_connected(a, b)));
    let (own, now) = (net.id(b), net.now);
    assert_eq!(
        net.hosts[b].node.ping(now, &own),
        Err(PingError::UnknownPeer)
    );
    let mut replies = Vec::new();
    for _ in 0..5 {
        let now = net.now;
        let (ping, sent_on) = net.hosts[a].node.ping(now, &id).expect("ping sent");
        assert_eq!(sent_on, PathAddr::Direct(net.hosts[b].address));
        net.run_for(Duration::from_millis(200));
        let reply = net.hosts[a].events.iter().find_map(|event| match event {
            Event::PingReply {
                id: peer,
                ping: answered,
                rtt,
                path,
            } if *peer == id && *answered == ping => Some((*rtt, *path)),
            _ => None,
        });
        replies.push(reply.expect("a reply within 200 ms"));
    }
    for (rtt, path) in replies {
        assert_eq!(rtt, 30 * MS);
        assert_eq!(path, PathAddr::Direct(net.hosts[b].address));
    }
    let pings = peer_status(&net, a, b).stats.pings;
    assert!(pings.answered >= 5 && pings.loss == Some(0.0), "{pings:?}");
}

#[test]
fn path_changes_are_recorded_with_the_relay_and_the_endpoint() {
    let mut net = SimNet::new(10, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let nat_a = net.add_nat(NatKind::Easy);
    let nat_b = net.add_nat(NatKind::Easy);
    let a = net.add_host_behind(1, nat_a);
    let b = net.add_host_behind(2, nat_b);
    for host in [a, b] {
        let address = net.hosts[host].address;
        net.hosts[host].node.set_local_candidates(vec![address]);
        net.use_rendezvous(host);
    }
    net.trust(a, b, false, Policy::All);
    net.trust(b, a, false, Policy::All);
    net.run_for(Duration::from_secs(1));
    let rendezvous = (
        net.rendezvous[0].server.agent_id(),
        net.rendezvous[0].address,
    );
    let keep_sending =
        |net: &mut SimNet, seconds: u64| stream(net, a, b, Duration::from_secs(seconds), 100 * MS);
    keep_sending(&mut net, 5);
    let status = peer_status(&net, a, b);
    assert_eq!(
        status.path,
        PathKind::Direct,
        "{:?}",
        status.stats.path_history
    );
    let history: Vec<(PathKind, Option<std::net::SocketAddr>)> = status
        .stats
        .path_history
        .iter()
        .map(|change| (change.path, change.via))
        .collect();
    assert_eq!(
        history[0],
        (PathKind::Relay, Some(rendezvous.1)),
        "{history:?}"
    );
    assert_eq!(
        history.last().map(|(path, _)| *path),
        Some(PathKind::Direct),
        "{history:?}"
    );
    assert_eq!(status.stats.path_changes, history.len() as u64);
    assert!(
        status
            .stats
            .path_history
            .windows(2)
            .all(|pair| pair[0].at_unix_s <= pair[1].at_unix_s)
    );
    // Cut the direct path: the traffic falls back to the relay.
    net.set_cut(nat_a, nat_b, true);
    keep_sending(&mut net, 6);
    let status = peer_status(&net, a, b);
    assert_eq!(status.path, PathKind::Relay);
    assert_eq!(status.stats.relay_id, Some(rendezvous.0));
    assert_eq!(status.relay, Some(rendezvous.1));
    let last = status.stats.path_history.last().expect("history");
    assert_eq!((last.path, last.via), (PathKind::Relay, Some(rendezvous.1)));
    assert!(
        status.stats.rtt_relay.is_some(),
        "RTT measured through the relay too"
    );
    assert!(
        status
            .stats
            .rtt
            .is_some_and(|rtt| Some(rtt) == status.stats.rtt_relay)
    );
}

#[test]
fn probes_that_never_arrive_are_not_reported_as_loss() {
    // Two easy NATs whose direct path is cut: the traffic stays relayed
    // while both sides keep punching (path pings to candidates that never
    // arrive, each spending a counter of the session).
    let mut net = SimNet::new(11, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let nat_a = net.add_nat(NatKind::Easy);
    let nat_b = net.add_nat(NatKind::Easy);
    let a = net.add_host_behind(1, nat_a);
    let b = net.add_host_behind(2, nat_b);
    for host in [a, b] {
        let address = net.hosts[host].address;
        net.hosts[host].node.set_local_candidates(vec![address]);
        net.use_rendezvous(host);
    }
    net.set_cut(nat_a, nat_b, true);
    net.trust(a, b, false, Policy::All);
    net.trust(b, a, false, Policy::All);
    net.run_for(Duration::from_secs(1));
    // Two packets a second for a minute: a few probes would be a lot of loss.
    stream(&mut net, a, b, Duration::from_secs(60), 500 * MS);
    let status = peer_status(&net, b, a);
    assert_eq!(status.path, PathKind::Relay);
    let receive = status.stats.receive;
    println!("relayed while punching: {receive:?}");
    assert!(
        receive.total.skipped > 0,
        "the probes were reported: {receive:?}"
    );
    assert_eq!(receive.lost_total, 0, "{receive:?}");
    assert_eq!(receive.loss, Some(0.0), "{receive:?}");
}
