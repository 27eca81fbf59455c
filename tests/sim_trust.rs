//! Trust requests, approval, denial and auto-approval on the simulated network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::api::{AutoApprove, Event, NodeConfig, PeerConfig};
use agentnet::core::identity::Identity;
use agentnet::core::node::Node;
use agentnet::core::policy::Policy;
use agentnet::core::trust::request::Endorsement;
use agentnet::core::trust::store::{DEFAULT_REQUESTED_TTL, TrustEntry};
use agentnet::sim::{LinkConfig, SimNet, tag_of, udp_packet};
use agentnet::state::pending::PendingRecord;

/// The simulated nodes' wall clock at the start (see `agentnet::sim`).
const SIM_UNIX_START: u64 = 1_800_000_000;
/// A day later: when the endorsements of these tests expire.
const ENDORSED_UNTIL: u64 = SIM_UNIX_START + 24 * 3600;

/// `requester` trusts `target` (as "requested": with the policy of a
/// requested entry, as the daemon stores it) and sends it a request.
fn request(
    net: &mut SimNet,
    requester: usize,
    target: usize,
    justification: &str,
    allow: &str,
) -> Vec<u8> {
    let requested = TrustEntry::requested(
        net.id(target),
        format!("host{target}"),
        None,
        SIM_UNIX_START,
        DEFAULT_REQUESTED_TTL,
    );
    net.trust(requester, target, true, requested.allow);
    let now = net.now;
    let target_id = net.id(target);
    let endpoint = net.hosts[target].address;
    let datagram = net.hosts[requester]
        .node
        .send_trust_request(
            now,
            target_id,
            justification,
            allow.parse().expect("policy"),
            Some(endpoint),
            None,
        )
        .expect("request seals");
    net.run_for(Duration::from_millis(100));
    datagram
}

/// The operator of `target` approves the request of `requester`.
fn approve(net: &mut SimNet, target: usize, requester: usize) {
    let requester_id = net.id(requester);
    let now = net.now;
    let pending = net.hosts[target]
        .node
        .take_pending_request(&requester_id)
        .expect("request is pending");
    let node = &mut net.hosts[target].node;
    node.upsert_peer(
        now,
        PeerConfig {
            id: requester_id,
            name: pending.request.name.clone(),
            endpoint: Some(pending.from),
            allow: pending.request.requested.clone(),
        },
    );
    node.connect(now, &requester_id);
}

#[test]
fn request_then_approval_connects_within_one_round_trip() {
    let mut net = SimNet::new(1, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    request(&mut net, a, b, "nightly log summaries", "tcp:8080");
    let pending = net.hosts[b].node.pending_requests(net.now);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, net.id(a));
    assert_eq!(pending[0].name, "host0");
    assert_eq!(pending[0].justification, "nightly log summaries");
    assert_eq!(pending[0].requested, "tcp:8080");
    assert_eq!(pending[0].from, net.hosts[a].address);
    assert!(
        net.hosts[a].received_from.is_empty(),
        "the target answered a trust request"
    );
    assert!(net.hosts[b].events.contains(&Event::TrustRequested {
        id: net.id(a),
        auto_approve: false
    }));

    approve(&mut net, b, a);
    // One round trip on a 10 ms link: 20 ms, plus the confirming keepalive.
    net.run_for(Duration::from_millis(40));
    assert!(net.is_connected(a, b) && net.is_connected(b, a));
    assert!(net.hosts[b].node.pending_requests(net.now).is_empty());
}

#[test]
fn denied_request_leaves_no_trace_and_no_reply() {
    let mut net = SimNet::new(2, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    request(&mut net, a, b, "please", "all");
    let id_a = net.id(a);
    assert!(net.hosts[b].node.take_pending_request(&id_a).is_some());
    let (source, destination) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &udp_packet(source, destination, 80, 1, 10));
    net.run_for(Duration::from_secs(30));
    assert!(
        net.hosts[a].received_from.is_empty(),
        "a denied requester must hear nothing"
    );
    assert!(net.hosts[b].tun.is_empty());
}

#[test]
fn replayed_altered_and_foreign_requests_are_dropped() {
    let mut net = SimNet::new(3, LinkConfig::default(), Instant::now());
    let (a, b, c) = (net.add_host(1), net.add_host(2), net.add_host(3));
    let datagram = request(&mut net, a, b, "first", "all");
    let id_a = net.id(a);
    assert!(net.hosts[b].node.take_pending_request(&id_a).is_some());
    let attacker: SocketAddr = "10.0.0.77:7400".parse().expect("addr");
    let b_address = net.hosts[b].address;
    // Replay of the same datagram.
    net.inject(attacker, b_address, datagram.clone());
    // Altered copies.
    for position in [8, 40, datagram.len() / 2, datagram.len() - 33] {
        let mut altered = datagram.clone();
        altered[position] ^= 0x01;
        net.inject(attacker, b_address, altered);
    }
    // The same request delivered to someone else.
    let c_address = net.hosts[c].address;
    net.inject(attacker, c_address, datagram);
    net.run_for(Duration::from_secs(1));
    assert!(net.hosts[b].node.pending_requests(net.now).is_empty());
    assert!(net.hosts[c].node.pending_requests(net.now).is_empty());
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert_eq!(dropped.trust_requests_replayed, 1, "{dropped:?}");
    assert_eq!(
        dropped.trust_requests_rejected + dropped.bad_mac1,
        4,
        "{dropped:?}"
    );
    assert!(
        net.wire_log.iter().all(|(_, to, _)| *to != attacker),
        "nobody answers"
    );
}

#[test]
fn requests_are_rate_limited_per_source() {
    let mut net = SimNet::new(4, LinkConfig::default(), Instant::now());
    let b = net.add_host(2);
    let requesters: Vec<usize> = (10..20).map(|seed| net.add_host(seed)).collect();
    for &requester in &requesters {
        request(&mut net, requester, b, "hi", "all");
    }
    // All ten come from different addresses: all queue.
    assert_eq!(net.hosts[b].node.pending_requests(net.now).len(), 10);
    // One source sending many distinct requesters' datagrams is limited.
    let attacker: SocketAddr = "10.0.0.88:7400".parse().expect("addr");
    let b_address = net.hosts[b].address;
    let b_id = net.id(b);
    for seed in 30..40u8 {
        let requester = net.add_host(seed);
        let now = net.now;
        let datagram = net.hosts[requester]
            .node
            .send_trust_request(now, b_id, "flood", Policy::All, None, None)
            .expect("seals");
        net.inject(attacker, b_address, datagram);
    }
    net.run_for(Duration::from_secs(1));
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert_eq!(dropped.trust_requests_rate_limited, 5, "{dropped:?}");
    assert_eq!(net.hosts[b].node.pending_requests(net.now).len(), 15);
}

#[test]
fn fleet_endorsed_request_is_flagged_for_auto_approval() {
    let mut net = SimNet::new(5, LinkConfig::default(), Instant::now());
    let (a, b, c) = (net.add_host(1), net.add_host(2), net.add_host(3));
    let (d, e) = (net.add_host(4), net.add_host(6));
    let fleet = Identity::from_secret_bytes(&[77; 32]).expect("key");
    net.hosts[b].node.set_auto_approve(AutoApprove {
        agents: vec![],
        fleet_keys: vec![fleet.agent_id()],
    });
    let network = net.network;
    let in_a_day = ENDORSED_UNTIL;
    let endorse = |net: &SimNet, host: usize, network, expires| {
        Endorsement::sign(&fleet, &net.id(host), network, expires, Policy::All)
    };
    // A carries the fleet's endorsement; C carries an endorsement of A
    // (stolen); D one for another network; E an expired one.
    let endorsement_a = endorse(&net, a, network, in_a_day);
    let other_network = agentnet::core::address::NetworkId::from_name("elsewhere");
    let endorsements = [
        (a, endorsement_a.clone()),
        (c, endorsement_a),
        (d, endorse(&net, d, other_network, in_a_day)),
        (e, endorse(&net, e, network, SIM_UNIX_START - 1)),
    ];
    for (requester, endorsement) in endorsements {
        net.trust(requester, b, true, Policy::none());
        let now = net.now;
        let (b_id, endpoint) = (net.id(b), net.hosts[b].address);
        net.hosts[requester]
            .node
            .send_trust_request(
                now,
                b_id,
                "fleet member",
                Policy::All,
                Some(endpoint),
                Some(endorsement),
            )
            .expect("seals");
    }
    net.run_for(Duration::from_millis(100));
    let events = &net.hosts[b].events;
    assert!(events.contains(&Event::TrustRequested {
        id: net.id(a),
        auto_approve: true
    }));
    for (host, why) in [(c, "stolen"), (d, "another network's"), (e, "expired")] {
        assert!(
            events.contains(&Event::TrustRequested {
                id: net.id(host),
                auto_approve: false
            }),
            "a request with an {why} endorsement was auto-approved or lost"
        );
    }
}

#[test]
fn auto_approval_grants_the_request_within_the_endorsement_cap() {
    let mut net = SimNet::new(9, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    let fleet = Identity::from_secret_bytes(&[77; 32]).expect("key");
    let rules = AutoApprove {
        agents: vec![],
        fleet_keys: vec![fleet.agent_id()],
    };
    net.hosts[b].node.set_auto_approve(rules.clone());
    let cap: Policy = "tcp:8000-8100,icmp".parse().expect("policy");
    let endorsement = Endorsement::sign(&fleet, &net.id(a), net.network, ENDORSED_UNTIL, cap);
    net.trust(a, b, true, Policy::none());
    let now = net.now;
    let (b_id, endpoint) = (net.id(b), net.hosts[b].address);
    net.hosts[a]
        .node
        .send_trust_request(
            now,
            b_id,
            "more than the cap",
            "tcp:22,tcp:8080,udp:53".parse().expect("policy"),
            Some(endpoint),
            Some(endorsement),
        )
        .expect("seals");
    net.run_for(Duration::from_millis(100));
    let id_a = net.id(a);
    let pending = net.hosts[b]
        .node
        .pending_request_details()
        .find(|pending| pending.request.requester == id_a)
        .expect("pending")
        .request
        .clone();
    let grant = rules
        .grant(&pending, net.network, SIM_UNIX_START)
        .expect("approved");
    assert_eq!(grant.to_string(), "tcp:8080");
    // Past the endorsement's expiry the rules no longer grant anything.
    assert_eq!(rules.grant(&pending, net.network, ENDORSED_UNTIL), None);
    // A listed agent gets what it asked for.
    let listed = AutoApprove {
        agents: vec![id_a],
        fleet_keys: vec![],
    };
    assert_eq!(
        listed.grant(&pending, net.network, SIM_UNIX_START),
        Some(pending.requested.clone())
    );
}

#[test]
fn approved_policy_limits_what_the_requester_may_open() {
    let mut net = SimNet::new(6, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    request(&mut net, a, b, "web only", "udp:8080");
    approve(&mut net, b, a);
    net.run_for(Duration::from_millis(100));
    let (source, destination) = (net.overlay_address(a), net.overlay_address(b));
    net.send_from_tun(a, &udp_packet(source, destination, 8080, 1, 10));
    net.send_from_tun(a, &udp_packet(source, destination, 22, 2, 10));
    net.run_for(Duration::from_millis(100));
    let tags: Vec<u32> = net.hosts[b].tun.iter().filter_map(|p| tag_of(p)).collect();
    assert_eq!(tags, vec![1]);
}

/// A UDP packet from `source`:`source_port` to `destination`:40000, the
/// reply direction of a [`udp_packet`] (whose source port is 40000).
fn udp_reply(
    source: std::net::Ipv6Addr,
    destination: std::net::Ipv6Addr,
    source_port: u16,
    tag: u32,
) -> Vec<u8> {
    let mut packet = udp_packet(source, destination, 40000, tag, 10);
    packet[40..42].copy_from_slice(&source_port.to_be_bytes());
    packet
}

#[test]
fn requested_target_cannot_open_ports_on_the_requester_but_answers_its_flows() {
    let mut net = SimNet::new(8, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    request(&mut net, a, b, "web only", "udp:8080");
    // B trusts A (an approval, or a `trust add` without one): a session forms.
    approve(&mut net, b, a);
    net.run_for(Duration::from_millis(100));
    assert!(net.is_connected(a, b) && net.is_connected(b, a));
    let (address_a, address_b) = (net.overlay_address(a), net.overlay_address(b));

    // B opens flows towards A: A asked B for access, not the other way.
    net.send_from_tun(b, &udp_packet(address_b, address_a, 22, 1, 10));
    net.send_from_tun(b, &udp_packet(address_b, address_a, 8080, 2, 10));
    net.run_for(Duration::from_millis(100));
    assert!(
        net.hosts[a]
            .tun
            .iter()
            .filter_map(|p| tag_of(p))
            .next()
            .is_none(),
        "the target opened a flow on the requester"
    );

    // A's own flow to B works, and B's replies on it reach A.
    net.send_from_tun(a, &udp_packet(address_a, address_b, 8080, 3, 10));
    net.run_for(Duration::from_millis(100));
    let at_b: Vec<u32> = net.hosts[b].tun.iter().filter_map(|p| tag_of(p)).collect();
    assert_eq!(at_b, vec![3]);
    net.send_from_tun(b, &udp_reply(address_b, address_a, 8080, 4));
    net.run_for(Duration::from_millis(100));
    let at_a: Vec<u32> = net.hosts[a].tun.iter().filter_map(|p| tag_of(p)).collect();
    assert_eq!(at_a, vec![4]);
}

#[test]
fn pending_request_saved_and_restored_across_a_restart_is_approvable_and_not_replayable() {
    let mut net = SimNet::new(7, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    let datagram = request(&mut net, a, b, "survives restarts", "tcp:8080");
    // Saved the way the daemon saves them: as records with wall-clock times.
    let now = net.now;
    let unix = Duration::from_secs(1_800_000_000);
    let records: Vec<PendingRecord> = net.hosts[b]
        .node
        .pending_request_details()
        .map(|pending| PendingRecord::of(pending, now, unix))
        .collect();
    assert_eq!(records.len(), 1);

    // B restarts: a fresh node with the same key, the requests put back.
    let mut fresh = Node::new(
        NodeConfig {
            identity: net.hosts[b].identity.clone(),
            network: net.network,
            name: "host1".into(),
            tunnel_mtu: agentnet::sim::TUNNEL_MTU,
        },
        [9; 32],
        now,
        unix,
    );
    for record in &records {
        let pending = record.restore(net.id(b), now, unix).expect("not expired");
        fresh.restore_pending_request(now, pending);
    }
    net.hosts[b].node = fresh;
    let pending = net.hosts[b].node.pending_requests(net.now);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, net.id(a));
    assert_eq!(pending[0].justification, "survives restarts");
    assert_eq!(pending[0].requested, "tcp:8080");

    // The original datagram, replayed to the restarted node, is a replay.
    let b_address = net.hosts[b].address;
    net.inject("10.0.0.77:7400".parse().expect("addr"), b_address, datagram);
    net.run_for(Duration::from_millis(100));
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert_eq!(dropped.trust_requests_replayed, 1, "{dropped:?}");

    approve(&mut net, b, a);
    net.run_for(Duration::from_millis(40));
    assert!(net.is_connected(a, b) && net.is_connected(b, a));
}
