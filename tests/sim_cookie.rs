//! Cookies (DESIGN.md §2, type 3) on the simulated network: they engage only
//! under load, a flood of valid-mac1 initiations costs the responder no
//! Diffie-Hellman once they do, a stranger never gets a reply of any kind
//! (cookie replies go only to trusted peers' addresses and nodes), and a
//! trusted peer still connects through the flood (directly and through a
//! relay).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::cookie::{
    CookieReplyKey, DEFAULT_LOAD_THRESHOLD, InitiatorCookie, SOURCE_BURST, SOURCE_RATE,
};
use agentnet::core::noise::handshake::{InitiationPayload, InitiatorHandshake};
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::policy::Policy;
use agentnet::core::rng::{CoreRng, core_rng};
use agentnet::core::wire::path::NatHint;
use agentnet::core::wire::{COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY, TYPE_RESPONSE};
use agentnet::sim::{LinkConfig, NatKind, SimNet, udp_packet};

const ATTACKER: &str = "10.0.9.9:4444";

fn attacker() -> SocketAddr {
    ATTACKER.parse().expect("addr")
}

/// An initiation with a valid mac1 to `target` from a key it does not trust.
fn stranger_initiation(
    net: &SimNet,
    rng: &mut CoreRng,
    stranger: &Identity,
    target: &AgentId,
    index: u32,
) -> (InitiatorHandshake, Vec<u8>) {
    let payload = InitiationPayload {
        timestamp: Tai64N::from_unix(Duration::from_secs(1_800_000_000 + u64::from(index))),
        versions: vec![1],
        name: "stranger".into(),
        candidates: Vec::new(),
        nat: NatHint::default(),
        ciphers: CipherSet::ALL,
    };
    InitiatorHandshake::start(
        rng,
        net.network,
        &NoiseStatic::new(&stranger.noise_secret_key()),
        &target.noise_public_key(),
        index,
        &payload,
    )
    .expect("initiation")
}

/// A pool of distinct valid-mac1 initiations from untrusted keys.
fn flood_pool(net: &SimNet, target: &AgentId, size: u32) -> Vec<Vec<u8>> {
    let mut rng = core_rng([77; 32]);
    (0..size)
        .map(|i| {
            let stranger =
                Identity::from_secret_bytes(&[200u8.wrapping_add(i as u8); 32]).expect("32 bytes");
            stranger_initiation(net, &mut rng, &stranger, target, 1000 + i).1
        })
        .collect()
}

/// Datagrams of `kind` that `from` put on the wire to `to`.
fn sent(net: &SimNet, from: SocketAddr, to: SocketAddr, kind: u8) -> usize {
    net.wire_log
        .iter()
        .filter(|(f, t, bytes)| *f == from && *t == to && bytes.first() == Some(&kind))
        .count()
}

fn connect(net: &mut SimNet, a: usize, b: usize) {
    let packet = udp_packet(net.overlay_address(a), net.overlay_address(b), 80, 1, 20);
    net.send_from_tun(a, &packet);
}

#[test]
fn handshakes_without_load_see_no_cookie() {
    let mut net = SimNet::new(1, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    connect(&mut net, a, b);
    net.run_for(Duration::from_secs(2));
    assert!(net.is_connected(a, b));
    assert!(
        net.wire_log
            .iter()
            .all(|(_, _, bytes)| bytes.first() != Some(&TYPE_COOKIE_REPLY)),
        "a cookie reply without load"
    );
    assert!(!net.hosts[b].node.is_under_handshake_load(net.now));
    assert_eq!(net.hosts[b].node.status(net.now).dropped.needs_cookie, 0);
}

#[test]
fn trusted_peer_connects_through_a_responder_under_load_with_a_cookie() {
    let mut net = SimNet::new(2, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    net.hosts[b].node.set_handshake_load_threshold(0); // always under load
    connect(&mut net, a, b);
    let (a_address, b_address) = (net.hosts[a].address, net.hosts[b].address);
    assert!(
        net.run_until_condition(Duration::from_secs(5), |net| net.is_connected(a, b)),
        "no session through a responder under load"
    );
    // First a cookie for the initiation without mac2, then the answer to
    // the retry that carried it.
    let replies: Vec<u8> = net
        .wire_log
        .iter()
        .filter(|(from, to, _)| *from == b_address && *to == a_address)
        .filter_map(|(_, _, bytes)| bytes.first().copied())
        .collect();
    assert_eq!(
        replies.first(),
        Some(&TYPE_COOKIE_REPLY),
        "B answered {replies:?}"
    );
    assert!(replies.contains(&TYPE_RESPONSE), "B answered {replies:?}");
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert_eq!(dropped.needs_cookie, 1, "{dropped:?}");
    assert_eq!(
        net.hosts[a].node.status(net.now).dropped.bad_cookie_reply,
        0
    );
    // Traffic flows.
    let packet = udp_packet(net.overlay_address(a), net.overlay_address(b), 80, 2, 20);
    net.send_from_tun(a, &packet);
    net.run_for(Duration::from_millis(100));
    assert!(!net.hosts[b].tun.is_empty());
}

#[test]
fn flood_of_valid_mac1_initiations_costs_no_handshakes_and_peer_still_connects() {
    let mut net = SimNet::new(3, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let target = net.id(b);
    let pool = flood_pool(&net, &target, 32);
    let b_address = net.hosts[b].address;
    // 5 initiations per ms (5,000/s) for 4 s; A starts connecting after 0.5 s.
    let mut flooded = 0usize;
    let mut connected_after = None;
    for ms in 0..4_000u32 {
        for i in 0..5 {
            net.inject(
                attacker(),
                b_address,
                pool[(flooded + i) % pool.len()].clone(),
            );
        }
        flooded += 5;
        if ms == 500 {
            connect(&mut net, a, b);
        }
        net.run_for(Duration::from_millis(1));
        if ms > 500 && connected_after.is_none() && net.is_connected(a, b) {
            connected_after = Some(ms - 500);
        }
    }
    // Let the last datagrams of the flood arrive.
    net.run_for(Duration::from_millis(50));
    let connected_after = connected_after.expect("A connected to B during the flood");
    println!("connected {connected_after} ms into a flood of {flooded} initiations");
    assert!(connected_after <= 3_000, "took {connected_after} ms");
    assert!(net.hosts[b].node.is_under_handshake_load(net.now));
    let dropped = net.hosts[b].node.status(net.now).dropped;
    // Only the initiations before the load was detected cost a DH.
    let handshakes = dropped.untrusted + dropped.handshake_failed + dropped.replayed_initiation;
    assert!(
        handshakes <= u64::from(DEFAULT_LOAD_THRESHOLD) + 1,
        "{handshakes} initiations were processed: {dropped:?}"
    );
    assert!(
        (dropped.needs_cookie + dropped.cookie_rate_limited + dropped.under_load_unknown_source)
            as usize
            >= flooded - DEFAULT_LOAD_THRESHOLD as usize - 1,
        "{dropped:?}"
    );
    // The flooder is a stranger: not one datagram goes back to it.
    assert!(dropped.under_load_unknown_source > 0, "{dropped:?}");
    assert_eq!(
        net.wire_log
            .iter()
            .filter(|(_, to, _)| *to == attacker())
            .count(),
        0,
        "B answered the flooder"
    );
    assert!(
        net.wire_log
            .iter()
            .filter(|(from, _, _)| *from == b_address)
            .all(|(_, _, bytes)| bytes.first() != Some(&TYPE_COOKIE_REPLY)
                || bytes.len() == COOKIE_REPLY_LEN)
    );
    // Load ends with the flood: the next handshake needs no cookie.
    net.run_for(Duration::from_secs(2));
    assert!(!net.hosts[b].node.is_under_handshake_load(net.now));
}

#[test]
fn garbage_flood_does_not_engage_cookies() {
    let mut net = SimNet::new(4, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let b_address = net.hosts[b].address;
    let valid_shape = flood_pool(&net, &net.id(b), 1).remove(0);
    for ms in 0..1_000u32 {
        for i in 0..10u8 {
            // Right length and type, wrong mac1.
            let mut junk = valid_shape.clone();
            let at = junk.len() - 40;
            junk[at] ^= i.wrapping_add(1);
            junk[8] = ms as u8;
            net.inject(attacker(), b_address, junk);
        }
        net.run_for(Duration::from_millis(1));
    }
    net.run_for(Duration::from_millis(50));
    assert!(!net.hosts[b].node.is_under_handshake_load(net.now));
    assert_eq!(
        net.wire_log
            .iter()
            .filter(|(_, to, _)| *to == attacker())
            .count(),
        0,
        "B answered garbage"
    );
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert_eq!(dropped.bad_mac1, 10_000, "{dropped:?}");
    connect(&mut net, a, b);
    net.run_for(Duration::from_secs(1));
    assert!(net.is_connected(a, b));
    assert_eq!(
        sent(&net, b_address, net.hosts[a].address, TYPE_COOKIE_REPLY),
        0
    );
}

#[test]
fn valid_mac2_flood_from_one_source_is_rate_limited() {
    let mut net = SimNet::new(5, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    net.hosts[b].node.set_handshake_load_threshold(0);
    let target = net.id(b);
    let b_address = net.hosts[b].address;
    // The flood comes from a trusted peer's address (the peer itself gone
    // bad, or someone who reads its traffic), the only kind of source that
    // can get a cookie.
    let source = net.hosts[a].address;
    let stranger = Identity::from_secret_bytes(&[99; 32]).expect("32 bytes");
    let mut rng = core_rng([5; 32]);
    let mut jar = InitiatorCookie::default();
    let (_, mut first) = stranger_initiation(&net, &mut rng, &stranger, &target, 1);
    jar.stamp(net.now, 1, &mut first);
    net.inject(source, b_address, first);
    net.run_for(Duration::from_millis(50));
    let reply = net
        .wire_log
        .iter()
        .find(|(from, to, bytes)| {
            *from == b_address && *to == source && bytes.first() == Some(&TYPE_COOKIE_REPLY)
        })
        .map(|(_, _, bytes)| bytes.clone())
        .expect("a cookie reply");
    let key = CookieReplyKey::for_responder(net.network, &target.noise_public_key());
    jar.handle_reply(net.now, 1, &reply[8..], &key)
        .expect("the cookie opens");
    // Now 2 s of valid-mac2 initiations, 1 per ms.
    let pool: Vec<Vec<u8>> = (0..16)
        .map(|i| stranger_initiation(&net, &mut rng, &stranger, &target, 10 + i).1)
        .collect();
    let start = net.now;
    for ms in 0..2_000usize {
        let mut initiation = pool[ms % pool.len()].clone();
        jar.stamp(net.now, 10 + (ms % 16) as u32, &mut initiation);
        net.inject(source, b_address, initiation);
        net.run_for(Duration::from_millis(1));
    }
    let elapsed = (net.now - start).as_secs_f64();
    let dropped = net.hosts[b].node.status(net.now).dropped;
    let processed = dropped.untrusted + dropped.replayed_initiation + dropped.handshake_failed;
    let allowed = SOURCE_BURST + SOURCE_RATE * elapsed;
    assert!(
        processed as f64 <= allowed + 1.0,
        "{processed} processed, at most {allowed} allowed: {dropped:?}"
    );
    assert!(dropped.handshake_rate_limited >= 1_900, "{dropped:?}");
}

#[test]
fn forged_cookie_reply_is_ignored_and_not_answered() {
    let mut net = SimNet::new(6, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    net.hosts[b].node.set_handshake_load_threshold(0);
    connect(&mut net, a, b);
    let (a_address, b_address) = (net.hosts[a].address, net.hosts[b].address);
    // Forged replies for the index of A's real initiation and for others,
    // from B's address and from elsewhere.
    let index = net
        .wire_log
        .iter()
        .find(|(from, _, bytes)| *from == a_address && bytes.first() == Some(&1))
        .map(|(_, _, bytes)| [bytes[4], bytes[5], bytes[6], bytes[7]])
        .expect("A initiated");
    for (from, index) in [(b_address, index), (attacker(), index), (b_address, [1; 4])] {
        let mut forged = vec![TYPE_COOKIE_REPLY, 0, 0, 0];
        forged.extend_from_slice(&index);
        forged.resize(COOKIE_REPLY_LEN, 0x5a);
        net.inject(from, a_address, forged);
    }
    // They arrive (10 ms) before B's real cookie reply (20 ms).
    net.run_for(Duration::from_millis(15));
    let dropped = net.hosts[a].node.status(net.now).dropped;
    assert_eq!(dropped.bad_cookie_reply, 3, "{dropped:?}");
    assert!(
        net.wire_log.iter().all(|(_, to, _)| *to != attacker()),
        "A answered a forged cookie reply"
    );
    // The real cookie still arrives and A connects.
    assert!(net.run_until_condition(Duration::from_secs(5), |net| net.is_connected(a, b)));
}

#[test]
fn relayed_handshake_under_load_gets_its_cookie_through_the_relay() {
    let mut net = SimNet::new(7, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    let (nat_a, nat_b) = (net.add_nat(NatKind::Hard), net.add_nat(NatKind::Hard));
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
    net.hosts[b].node.set_handshake_load_threshold(0);
    connect(&mut net, a, b);
    assert!(
        net.run_until_condition(Duration::from_secs(6), |net| net.is_connected(a, b)),
        "no relayed session through a responder under load"
    );
    assert_eq!(net.path(a, b), "relay");
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert!(dropped.needs_cookie >= 1, "{dropped:?}");
    assert_eq!(
        net.hosts[a].node.status(net.now).dropped.bad_cookie_reply,
        0
    );
}

#[test]
fn stranger_under_load_gets_nothing_while_trusted_peer_gets_cookie_and_session() {
    let mut net = SimNet::new(8, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    let (a_address, b_address) = (net.hosts[a].address, net.hosts[b].address);
    let pool = flood_pool(&net, &net.id(b), 32);
    // Past the load threshold in 100 ms, then more while under load.
    let threshold = DEFAULT_LOAD_THRESHOLD as usize;
    for (sent_so_far, initiation) in pool.iter().cycle().take(threshold + 200).enumerate() {
        net.inject(attacker(), b_address, initiation.clone());
        if sent_so_far % 4 == 0 {
            net.run_for(Duration::from_millis(1));
        }
    }
    net.run_for(Duration::from_millis(20));
    assert!(net.hosts[b].node.is_under_handshake_load(net.now));
    let dropped = net.hosts[b].node.status(net.now).dropped;
    assert!(dropped.under_load_unknown_source >= 190, "{dropped:?}");
    assert_eq!(dropped.needs_cookie, 0, "{dropped:?}");
    // A spoofer of the trusted peer's address makes B answer the peer, not
    // itself.
    net.inject(a_address, b_address, pool[0].clone());
    // The trusted peer, at its known endpoint, gets a cookie, then a session.
    connect(&mut net, a, b);
    net.hosts[b].node.set_handshake_load_threshold(0); // the load goes on
    assert!(
        net.run_until_condition(Duration::from_secs(5), |net| net.is_connected(a, b)),
        "the trusted peer did not connect under load"
    );
    assert!(sent(&net, b_address, a_address, TYPE_COOKIE_REPLY) >= 1);
    assert!(sent(&net, b_address, a_address, TYPE_RESPONSE) >= 1);
    assert_eq!(
        net.wire_log
            .iter()
            .filter(|(_, to, _)| *to == attacker())
            .count(),
        0,
        "B sent something to the stranger"
    );
}
