//! Services advertised among trusted agents (issue 15), on the simulated
//! network: each peer learns only what its policy lets it open, within a
//! second of its session or of a change; strangers learn nothing;
//! revocation forgets; bad frames are dropped; a restarted sender's new
//! list replaces its old one, even with its clock set back, once it kept
//! its last generation.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod agentnet_fuzz;

#[allow(unused_imports)]
use agentnet_fuzz::*;

use std::time::{Duration, Instant};

use agentnet::core::policy::Policy;
use agentnet::core::services::{MAX_SERVICES, Service};
use agentnet::sim::{LinkConfig, SimNet, UNIX_START};
use agentnet_fuzz::node_world::{self, Frame, Op};

const SECOND: Duration = Duration::from_secs(1);

fn service(text: &str, path: Option<&str>) -> Service {
    Service::parse(text, path.map(Into::into), None).expect(text)
}

/// The `KIND:PORT` keys `host` learned from `peer`, if it learned any.
fn learned(net: &SimNet, host: usize, peer: usize) -> Option<Vec<String>> {
    let id = net.id(peer);
    net.hosts[host]
        .node
        .peer_services(net.now)
        .into_iter()
        .find(|services| services.id == id)
        .map(|services| services.learned.services.iter().map(Service::key).collect())
}

fn keys(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|key| key.to_string()).collect())
}

/// B advertises mcp:8000 and a2a:9999. A trusts B fully and B trusts A
/// fully; P may open only tcp:9999 on B; C trusts B, but B does not trust C.
fn world() -> (SimNet, [usize; 4]) {
    let link = LinkConfig {
        delay: Duration::from_millis(20),
        ..LinkConfig::INSTANT
    };
    let mut net = SimNet::new(15, link, Instant::now());
    let [a, b, p, c] = [
        net.add_host(1),
        net.add_host(2),
        net.add_host(3),
        net.add_host(4),
    ];
    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(
            now,
            vec![service("mcp:8000", Some("/mcp")), service("a2a:9999", None)],
        )
        .expect("fits");
    net.trust_both(a, b);
    net.trust(b, p, true, "tcp:9999".parse().expect("policy"));
    net.trust(p, b, true, Policy::All);
    net.trust(c, b, true, Policy::All);
    (net, [a, b, p, c])
}

/// Connects `host` to `peer` and returns when the session came up.
fn connect(net: &mut SimNet, host: usize, peer: usize) -> Instant {
    let now = net.now;
    let id = net.id(peer);
    net.hosts[host].node.connect(now, &id);
    assert!(
        net.run_until_condition(5 * SECOND, |net| net.is_connected(host, peer)),
        "no session {host} -> {peer}"
    );
    net.now
}

#[test]
fn a_trusted_peer_learns_the_services_within_a_second_of_its_session() {
    let (mut net, [a, b, ..]) = world();
    connect(&mut net, a, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b).is_some()));
    assert_eq!(learned(&net, a, b), keys(&["mcp:8000", "a2a:9999"]));
    let services = net.hosts[a].node.peer_services(net.now);
    assert_eq!(
        services[0].learned.services[0].path.as_deref(),
        Some("/mcp")
    );
    assert!(services[0].session_up);
    // B learned nothing from A, which advertises nothing.
    assert_eq!(learned(&net, b, a), Some(Vec::new()));
}

#[test]
fn changes_reach_connected_peers_within_a_second() {
    let (mut net, [a, b, ..]) = world();
    connect(&mut net, a, b);
    net.run_for(2 * SECOND);
    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(now, vec![service("grpc:50051", None)])
        .expect("fits");
    assert!(net.run_until_condition(SECOND, |net| {
        learned(net, a, b) == keys(&["grpc:50051"])
    }));
    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(now, Vec::new())
        .expect("fits");
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b) == Some(Vec::new())));
}

#[test]
fn a_peer_allowed_only_tcp_9999_learns_only_the_a2a_service_until_its_policy_widens() {
    let (mut net, [_, b, p, _]) = world();
    connect(&mut net, p, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, p, b).is_some()));
    assert_eq!(learned(&net, p, b), keys(&["a2a:9999"]));
    net.run_for(2 * SECOND);
    net.trust(b, p, true, "tcp:8000,tcp:9999".parse().expect("policy"));
    assert!(net.run_until_condition(SECOND, |net| {
        learned(net, p, b) == keys(&["mcp:8000", "a2a:9999"])
    }));
    net.trust(b, p, true, Policy::none());
    assert!(net.run_until_condition(SECOND, |net| learned(net, p, b) == Some(Vec::new())));
}

#[test]
fn an_untrusted_agent_learns_nothing() {
    let (mut net, [_, b, _, c]) = world();
    let now = net.now;
    let id = net.id(b);
    net.hosts[c].node.connect(now, &id);
    net.run_for(10 * SECOND);
    assert!(!net.is_connected(c, b));
    assert_eq!(learned(&net, c, b), None);
    assert!(net.hosts[c].node.peer_services(net.now).is_empty());
}

#[test]
fn revoking_forgets_the_services_on_either_side() {
    let (mut net, [a, b, p, _]) = world();
    connect(&mut net, a, b);
    connect(&mut net, p, b);
    assert!(net.run_until_condition(SECOND, |net| {
        learned(net, a, b).is_some() && learned(net, p, b).is_some()
    }));
    // A revokes B: B's services are gone with B.
    let (now, id) = (net.now, net.id(b));
    assert!(net.hosts[a].node.revoke_peer(now, &id));
    assert!(net.hosts[a].node.peer_services(net.now).is_empty());
    // B revokes P: P forgets B's services when the notice arrives.
    let (now, id) = (net.now, net.id(p));
    assert!(net.hosts[b].node.revoke_peer(now, &id));
    assert!(net.run_until_condition(SECOND, |net| learned(net, p, b).is_none()));
}

#[test]
fn a_lost_advertisement_is_sent_again_until_acknowledged() {
    let link = LinkConfig {
        loss: 0.3,
        delay: Duration::from_millis(20),
        ..LinkConfig::INSTANT
    };
    let mut net = SimNet::new(7, link, Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.trust_both(a, b);
    connect(&mut net, a, b);
    for round in 0..10u16 {
        let now = net.now;
        net.hosts[b]
            .node
            .set_advertised_services(now, vec![service(&format!("http:{}", 1000 + round), None)])
            .expect("fits");
        let want = keys(&[&format!("http:{}", 1000 + round)]);
        assert!(
            net.run_until_condition(20 * SECOND, |net| learned(net, a, b) == want),
            "round {round} never arrived"
        );
    }
}

#[test]
fn a_restarted_agent_s_services_replace_what_it_advertised_before() {
    let (mut net, [a, b, ..]) = world();
    connect(&mut net, a, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b).is_some()));
    net.run_for(5 * SECOND);
    net.restart_host(b, [42; 32]);
    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(now, vec![service("http:80", None)])
        .expect("fits");
    net.trust(b, a, true, Policy::All);
    connect(&mut net, b, a);
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b) == keys(&["http:80"])));
}

/// B advertises to A, restarts with its wall clock an hour behind (and,
/// if `restored`, the last generation it issued before, as the daemon
/// keeps it in the state directory), advertises http:80 and reconnects:
/// what A holds from B two seconds later.
fn learned_after_restart_with_clock_back(restored: bool) -> Option<Vec<String>> {
    let (mut net, [a, b, ..]) = world();
    connect(&mut net, a, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b).is_some()));
    net.run_for(5 * SECOND);
    let last_issued = net.hosts[b].node.last_services_generation();
    assert!(
        last_issued >= UNIX_START.as_millis() as u64,
        "{last_issued}"
    );
    net.restart_host_with_clock(b, [42; 32], UNIX_START - Duration::from_secs(3600));
    assert_eq!(net.hosts[b].node.last_services_generation(), 0);
    if restored {
        net.hosts[b].node.restore_services_generation(last_issued);
    }
    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(now, vec![service("http:80", None)])
        .expect("fits");
    net.trust(b, a, true, Policy::All);
    connect(&mut net, b, a);
    net.run_for(2 * SECOND);
    if restored {
        assert!(net.hosts[b].node.last_services_generation() > last_issued);
    }
    learned(&net, a, b)
}

#[test]
fn a_sender_restarted_with_its_clock_back_replaces_its_old_services_with_the_kept_generation() {
    assert_eq!(
        learned_after_restart_with_clock_back(true),
        keys(&["http:80"])
    );
    assert_eq!(
        learned_after_restart_with_clock_back(false),
        keys(&["mcp:8000", "a2a:9999"]),
        "without the kept generation the peer holds on to the old list"
    );
}

#[test]
fn oversize_and_garbage_frames_are_dropped_and_a_valid_one_still_counts() {
    let entry = |kind: &str, port: u16, path: &str| {
        (kind.to_string(), port, path.to_string(), String::new())
    };
    let too_many: Vec<_> = (1..=MAX_SERVICES as u16 + 1)
        .map(|port| entry("http", port, ""))
        .collect();
    let too_big: Vec<_> = (1..=10)
        .map(|port| entry("http", port, &format!("/{}", "p".repeat(127))))
        .collect();
    let bad = vec![entry("MCP", 0, "no-slash\n")];
    let frame = |generation, entries| Op::PeerFrame {
        relayed: false,
        frame: Frame::Services {
            generation,
            entries,
        },
    };
    let world = node_world::run(vec![
        Op::PeerInitiate {
            relayed: false,
            shape: Default::default(),
        },
        frame(10, too_many),
        frame(11, too_big),
        frame(12, bad),
        Op::PeerFrame {
            relayed: false,
            frame: Frame::Raw(vec![0x07, 1, 0xff, 0xff]),
        },
    ]);
    assert!(world.node().peer_services(world.now()).is_empty());
    let world = node_world::run(vec![
        Op::PeerInitiate {
            relayed: false,
            shape: Default::default(),
        },
        frame(20, vec![entry("mcp", 8000, "/mcp")]),
        frame(19, vec![entry("a2a", 9999, "")]),
        frame(21, too_many_again()),
    ]);
    let services = world.node().peer_services(world.now());
    assert_eq!(services.len(), 1);
    let keys: Vec<String> = services[0]
        .learned
        .services
        .iter()
        .map(Service::key)
        .collect();
    assert_eq!(keys, ["mcp:8000"], "the older generation 19 was ignored");
    assert_eq!(services[0].learned.generation, 20);
}

fn too_many_again() -> Vec<(String, u16, String, String)> {
    (1..=40)
        .map(|port| ("x".to_string(), port, String::new(), String::new()))
        .collect()
}

/// The shell rebuilds its DNS-SD records when this count moves, so it
/// must move on every change of what a peer advertised here, and only then.
#[test]
fn the_change_count_moves_when_learned_services_are_replaced_or_forgotten() {
    let (mut net, [a, b, p, c]) = world();
    let count = |net: &SimNet, host: usize| net.hosts[host].node.learned_services_changes();
    let before = count(&net, a);
    connect(&mut net, a, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, a, b).is_some()));
    let learned_once = count(&net, a);
    assert_ne!(learned_once, before, "first set learned");

    // Repeats of the same generation (resends, a new session) change nothing.
    net.run_for(10 * SECOND);
    assert_eq!(count(&net, a), learned_once, "nothing new was learned");

    let now = net.now;
    net.hosts[b]
        .node
        .set_advertised_services(now, vec![service("grpc:50051", None)])
        .expect("fits");
    assert!(net.run_until_condition(SECOND, |net| {
        learned(net, a, b) == keys(&["grpc:50051"])
    }));
    let replaced = count(&net, a);
    assert_ne!(replaced, learned_once, "a newer set replaced the old one");

    // B revokes P: P's count moves when the notice arrives.
    connect(&mut net, p, b);
    assert!(net.run_until_condition(SECOND, |net| learned(net, p, b).is_some()));
    let before_revocation = count(&net, p);
    let (now, id) = (net.now, net.id(p));
    assert!(net.hosts[b].node.revoke_peer(now, &id));
    assert!(net.run_until_condition(SECOND, |net| learned(net, p, b).is_none()));
    assert_ne!(count(&net, p), before_revocation, "revocation forgot them");

    // A removes B: what B advertised goes with it.
    let id = net.id(b);
    assert!(net.hosts[a].node.remove_peer(&id));
    assert_ne!(count(&net, a), replaced, "removal forgot them");
    // A peer that advertised nothing here leaves the count alone.
    net.trust(a, c, true, Policy::All);
    let removed = count(&net, a);
    let id = net.id(c);
    assert!(net.hosts[a].node.remove_peer(&id));
    assert_eq!(count(&net, a), removed);
}

/// A revocation notice costs an Ed25519 verification: a peer's notices are
/// checked at most once a second, so one that sends false ones in every
/// datagram costs one verification a second; its true notice counts once
/// that second has passed.
#[test]
fn a_peers_revocation_notices_are_checked_at_most_once_a_second() {
    let revoked = |valid| Op::PeerFrame {
        relayed: false,
        frame: Frame::Revoked { valid },
    };
    let session_up = |ops: Vec<Op>| {
        let world = node_world::run(ops);
        world.node().status(world.now()).peers[0].session_established
    };
    let flood = || {
        let mut ops = vec![Op::PeerInitiate {
            relayed: false,
            shape: Default::default(),
        }];
        ops.extend((0..50).map(|_| revoked(false)));
        ops
    };
    assert!(session_up(flood()), "false notices end nothing");
    let mut ops = flood();
    ops.push(revoked(true));
    assert!(
        session_up(ops),
        "checked within the second of the last check"
    );
    let later = || {
        let mut ops = flood();
        ops.push(Op::Advance { millis: 1_000 });
        ops
    };
    assert!(session_up(later()), "a second alone ends nothing");
    let mut ops = later();
    ops.push(revoked(true));
    assert!(!session_up(ops), "a second later the true notice ends it");
}
