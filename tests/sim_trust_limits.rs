//! The abuse limits of trust requests that arrive through a rendezvous
//! (issue #17 item 9): keyed by the sending node the rendezvous names, not by
//! the rendezvous' address, so one sender's garbage cannot block everyone
//! else's requests, and a mailbox delivered in one burst lands whole; and of
//! direct ones from forged sources, which fill only their own share of the
//! pending list.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::address::NodeId;
use agentnet::core::identity::Identity;
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::policy::Policy;
use agentnet::core::rng::{CoreRng, core_rng};
use agentnet::core::trust::pending::{MAX_PENDING_DIRECT, MAX_PENDING_PER_ORIGIN};
use agentnet::core::trust::request::TrustRequest;
use agentnet::core::wire::{TYPE_RELAY, TYPE_TRUST_REQUEST};
use agentnet::sim::{LinkConfig, NatKind, SimNet, UNIX_START};
use rand::RngCore;

/// Sends a trust request from `requester` to `target` through the
/// rendezvous only (no endpoint hint).
fn request_via_rendezvous(net: &mut SimNet, requester: usize, target: usize, justification: &str) {
    net.trust(requester, target, false, Policy::All);
    let now = net.now;
    let target_id = net.id(target);
    net.hosts[requester]
        .node
        .send_trust_request(now, target_id, justification, Policy::All, None, None)
        .expect("request seals");
}

#[test]
fn mailbox_burst_of_sixteen_requests_all_land_in_pending() {
    let mut net = SimNet::new(21, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let target = net.add_host(2);
    let requesters: Vec<usize> = (10..26).map(|seed| net.add_host(seed)).collect();
    for &requester in &requesters {
        net.use_rendezvous(requester);
    }
    net.run_for(Duration::from_secs(1));
    // The target is offline: every request waits in its mailbox.
    for (n, &requester) in requesters.iter().enumerate() {
        request_via_rendezvous(&mut net, requester, target, &format!("request {n}"));
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.rendezvous[0].server.counters().mailbox_stored, 16);
    // It registers: all sixteen arrive at once, from the rendezvous' address.
    net.use_rendezvous(target);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.rendezvous[0].server.counters().mailbox_delivered, 16);
    let pending = net.hosts[target].node.pending_requests(net.now);
    let dropped = net.hosts[target].node.status(net.now).dropped;
    assert_eq!(pending.len(), 16, "{dropped:?}");
    assert!(pending.iter().all(|request| request.via_relay));
}

#[test]
fn garbage_relayed_by_one_sender_does_not_block_others_through_that_rendezvous() {
    let mut net = SimNet::new(22, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let target = net.add_host(2);
    let attacker = net.add_host(3);
    let honest = net.add_host(4);
    for host in [target, attacker, honest] {
        net.use_rendezvous(host);
    }
    net.run_for(Duration::from_secs(1));
    let rendezvous = net.rendezvous[0].address;
    let attacker_address = net.hosts[attacker].address;
    let target_node = NodeId::of(&net.id(target));
    let mac1 = Mac1Key::for_responder(net.network, &net.id(target).noise_public_key());
    // The attacker (a registered client) relays garbage "trust requests" to
    // the target: tiny ones, and ones with a valid mac1 that do not open.
    for n in 0..20u8 {
        let mut envelope = vec![TYPE_RELAY, 0, 0, 0];
        envelope.extend_from_slice(&target_node.0);
        if n % 2 == 0 {
            envelope.extend_from_slice(&[TYPE_TRUST_REQUEST, 0, 0, 0]);
        } else {
            let mut inner = vec![n; 400];
            inner[..4].copy_from_slice(&[TYPE_TRUST_REQUEST, 0, 0, 0]);
            mac1.seal(&mut inner);
            envelope.extend_from_slice(&inner);
        }
        net.inject(attacker_address, rendezvous, envelope);
    }
    net.run_for(Duration::from_millis(200));
    // An honest requester asks through the same rendezvous in the same
    // minute, and a second one too.
    request_via_rendezvous(&mut net, honest, target, "honest");
    let second = net.add_host(5);
    net.use_rendezvous(second);
    net.run_for(Duration::from_secs(1));
    request_via_rendezvous(&mut net, second, target, "second");
    net.run_for(Duration::from_secs(1));
    let pending = net.hosts[target].node.pending_requests(net.now);
    let dropped = net.hosts[target].node.status(net.now).dropped;
    assert_eq!(pending.len(), 2, "{dropped:?}");
    assert!(
        dropped.trust_requests_rejected + dropped.malformed >= 10,
        "{dropped:?}"
    );
}

#[test]
fn a_flood_from_one_address_through_a_rendezvous_leaves_others_requests_pending() {
    // Seventy agents behind one NAT (one address, as one flooder making up
    // keys would be) each ask the target through the rendezvous, after an
    // honest requester elsewhere did. The rendezvous tags each relayed
    // request with its source address' tag, so the flood fills only its
    // own origin's share of the target's list.
    let mut net = SimNet::new(23, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let target = net.add_host(2);
    let honest = net.add_host(4);
    let nat = net.add_nat(NatKind::Easy);
    let flood: Vec<usize> = (30..100)
        .map(|seed| net.add_host_behind(seed, nat))
        .collect();
    for &host in [target, honest].iter().chain(&flood) {
        net.use_rendezvous(host);
    }
    net.run_for(Duration::from_secs(1));
    request_via_rendezvous(&mut net, honest, target, "honest");
    net.run_for(Duration::from_millis(200));
    for (n, &host) in flood.iter().enumerate() {
        request_via_rendezvous(&mut net, host, target, &format!("flood {n}"));
    }
    net.run_for(Duration::from_secs(2));
    let pending = net.hosts[target].node.pending_requests(net.now);
    let dropped = net.hosts[target].node.status(net.now).dropped;
    assert_eq!(pending.len(), 1 + MAX_PENDING_PER_ORIGIN, "{dropped:?}");
    let honest_id = net.id(honest);
    assert!(
        pending.iter().any(|request| request.id == honest_id),
        "the honest request was pushed out"
    );
}

/// A request from a fresh key to `target`, sealed as that key's agent
/// would, at the clock of a simulator started at `start`.
fn forged_request(
    net: &SimNet,
    start: Instant,
    key: u32,
    target: usize,
    rng: &mut CoreRng,
) -> Vec<u8> {
    let mut secret = [7u8; 32];
    secret[..4].copy_from_slice(&key.to_be_bytes());
    let requester = Identity::from_secret_bytes(&secret).expect("key");
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    let unix_time = (UNIX_START + net.now.saturating_duration_since(start)).as_secs();
    TrustRequest {
        requester: requester.agent_id(),
        target: net.id(target),
        unix_time,
        nonce,
        name: format!("flood{key}"),
        justification: String::new(),
        requested: Policy::All,
        candidates: Vec::new(),
        endorsement: None,
    }
    .seal(rng, net.network, &requester)
    .expect("seals")
}

#[test]
fn a_flood_of_direct_requests_from_forged_sources_leaves_an_earlier_request_pending() {
    // Direct requests are one-way UDP: a flooder forges a new source (each
    // in a network of its own) and a new key for each, so no per-sender,
    // per-origin or per-network limit applies and up to 200 a second
    // reach the list. An honest request waits from before.
    let start = Instant::now();
    let mut net = SimNet::new(24, LinkConfig::default(), start);
    net.add_rendezvous(100);
    let target = net.add_host(2);
    let honest = net.add_host(4);
    let late = net.add_host(5);
    for host in [target, late] {
        net.use_rendezvous(host);
    }
    net.run_for(Duration::from_secs(1));
    let (target_id, target_address) = (net.id(target), net.hosts[target].address);
    net.trust(honest, target, false, Policy::All);
    let now = net.now;
    net.hosts[honest]
        .node
        .send_trust_request(
            now,
            target_id,
            "honest",
            Policy::All,
            Some(target_address),
            None,
        )
        .expect("seals");
    net.run_for(Duration::from_millis(100));
    let mut rng = core_rng([24; 32]);
    const FLOOD: u32 = 600;
    // 100 a second, under the verification budget: each is verified.
    for key in 0..FLOOD {
        let source = SocketAddr::from(([11, (key >> 8) as u8, key as u8, 1], 7400));
        let datagram = forged_request(&net, start, key, target, &mut rng);
        net.inject(source, target_address, datagram);
        net.run_for(Duration::from_millis(10));
    }
    // Another requester asks now, straight and through the rendezvous:
    // the direct copy finds the direct share full, the relayed one queues.
    net.trust(late, target, false, Policy::All);
    let now = net.now;
    net.hosts[late]
        .node
        .send_trust_request(
            now,
            target_id,
            "late",
            Policy::All,
            Some(target_address),
            None,
        )
        .expect("seals");
    net.run_for(Duration::from_secs(1));
    let pending = net.hosts[target].node.pending_requests(net.now);
    let dropped = net.hosts[target].node.status(net.now).dropped;
    let (honest_id, late_id) = (net.id(honest), net.id(late));
    assert!(
        pending.iter().any(|request| request.id == honest_id),
        "the honest request was pushed out ({} pending, {dropped:?})",
        pending.len()
    );
    assert!(
        pending
            .iter()
            .any(|request| request.id == late_id && request.via_relay),
        "the late request's relayed copy was lost ({dropped:?})"
    );
    let flood_kept = MAX_PENDING_DIRECT - 1;
    assert_eq!(pending.len(), 1 + flood_kept + 1, "{dropped:?}");
    // Every flood request past the share, and the late direct copy.
    assert_eq!(
        dropped.trust_requests_crowded_out,
        u64::from(FLOOD) - flood_kept as u64 + 1,
        "{dropped:?}"
    );
}
