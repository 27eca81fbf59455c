//! Several rendezvous servers share the agents by node ID (issue 14,
//! DESIGN.md §5): each agent registers with its own two servers only
//! (rendezvous hashing), reaches a peer through the peer's servers
//! (opening a link on demand when it has none there), falls over to the
//! peer's next server when one dies, and the order of the configured list
//! changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use agentnet::core::address::NodeId;
use agentnet::core::identity::AgentId;
use agentnet::core::policy::Policy;
use agentnet::core::rendezvous::choice::{SERVERS_PER_AGENT, servers_for};
use agentnet::core::stats::status::RendezvousRole;
use agentnet::sim::{LinkConfig, NatKind, SimNet};

const SERVERS: u8 = 4;
const AGENTS: u8 = 40;

/// `SERVERS` rendezvous servers and `AGENTS` agents, each behind its own
/// hard NAT (so pairs stay relayed), all registered.
fn world(seed: u64) -> (SimNet, Vec<usize>) {
    let mut net = SimNet::new(seed, LinkConfig::default(), Instant::now());
    for server in 0..SERVERS {
        net.add_rendezvous(100 + server);
    }
    let hosts: Vec<usize> = (1..=AGENTS)
        .map(|key| {
            let nat = net.add_nat(NatKind::Hard);
            let host = net.add_host_behind(key, nat);
            net.use_rendezvous(host);
            host
        })
        .collect();
    net.run_for(Duration::from_secs(2));
    (net, hosts)
}

fn server_ids(net: &SimNet) -> Vec<AgentId> {
    net.rendezvous
        .iter()
        .map(|server| server.server.agent_id())
        .collect()
}

/// The servers an agent registers with, by rendezvous hashing.
fn homes_of(net: &SimNet, host: usize) -> BTreeSet<AgentId> {
    servers_for(
        NodeId::of(&net.id(host)),
        &server_ids(net),
        SERVERS_PER_AGENT,
    )
    .into_iter()
    .collect()
}

/// Each agent trusts its next four (160 pairs), without endpoints.
fn trusting_pairs(net: &mut SimNet, hosts: &[usize]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (index, &a) in hosts.iter().enumerate() {
        for step in 1..=4 {
            let b = hosts[(index + step) % hosts.len()];
            net.trust(a, b, false, Policy::All);
            net.trust(b, a, false, Policy::All);
            pairs.push((a, b));
        }
    }
    pairs
}

/// A tag unique to (round, pair, direction).
fn tag(round: u32, pair: usize, backwards: bool) -> u32 {
    round * 10_000 + pair as u32 * 2 + u32::from(backwards)
}

/// Sends one packet each way on every pair; returns the pairs whose both
/// packets arrived within `wait`.
fn exchange(
    net: &mut SimNet,
    pairs: &[(usize, usize)],
    round: u32,
    wait: Duration,
) -> Vec<(usize, usize)> {
    for (index, &(a, b)) in pairs.iter().enumerate() {
        net.send_tagged(a, b, tag(round, index, false));
        net.send_tagged(b, a, tag(round, index, true));
    }
    net.run_for(wait);
    pairs
        .iter()
        .enumerate()
        .filter(|(index, (a, b))| {
            net.delivered_tags(*b).contains(&tag(round, *index, false))
                && net.delivered_tags(*a).contains(&tag(round, *index, true))
        })
        .map(|(_, pair)| *pair)
        .collect()
}

#[test]
fn each_server_holds_only_the_agents_that_rank_it_and_every_pair_talks() {
    let (mut net, hosts) = world(1);
    let ids = server_ids(&net);
    // Registrations: two per agent, each on a server the agent ranks in
    // its top two; no server holds everyone.
    let mut expected: HashMap<AgentId, usize> = HashMap::new();
    for &host in &hosts {
        for server in homes_of(&net, host) {
            *expected.entry(server).or_default() += 1;
        }
        let status = net.hosts[host].node.status(net.now);
        let registered: BTreeSet<AgentId> = status
            .rendezvous
            .iter()
            .filter(|link| link.registered && link.role == RendezvousRole::Home)
            .map(|link| link.id)
            .collect();
        assert_eq!(
            registered,
            homes_of(&net, host),
            "host {host} registers with its own servers"
        );
        assert_eq!(
            status.rendezvous.len(),
            SERVERS_PER_AGENT,
            "no other link before any traffic"
        );
    }
    let held: Vec<usize> = net
        .rendezvous
        .iter()
        .map(|server| server.server.usage().registrations)
        .collect();
    println!("registrations per server: {held:?}");
    assert_eq!(held.iter().sum::<usize>(), SERVERS_PER_AGENT * hosts.len());
    for (index, count) in held.iter().enumerate() {
        assert_eq!(*count, expected.get(&ids[index]).copied().unwrap_or(0));
        assert!(*count < hosts.len(), "server {index} holds every agent");
    }

    let pairs = trusting_pairs(&mut net, &hosts);
    let disjoint = pairs
        .iter()
        .filter(|(a, b)| homes_of(&net, *a).is_disjoint(&homes_of(&net, *b)))
        .count();
    println!(
        "{} pairs, {disjoint} with no home server in common",
        pairs.len()
    );
    assert!(disjoint > 0, "the test needs pairs homed apart");
    // The first packets wait for the handshakes (and on-demand links).
    let talked = exchange(&mut net, &pairs, 1, Duration::from_secs(6));
    assert_eq!(
        talked.len(),
        pairs.len(),
        "pairs that could not talk: {:?}",
        {
            let mut silent = pairs.clone();
            silent.retain(|pair| !talked.contains(pair));
            silent
        }
    );
    for &(a, b) in &pairs {
        assert_eq!(
            net.path(a, b),
            "relay",
            "hard NATs on both sides keep the relay"
        );
        // Relayed through one of the peer's servers, or one of ours that
        // the peer came through.
        let relay = net.peer_status(a, b).and_then(|status| status.relay);
        let relay_id = net
            .rendezvous
            .iter()
            .find(|server| Some(server.address) == relay)
            .map(|server| server.server.agent_id())
            .expect("relayed through a rendezvous");
        assert!(homes_of(&net, a).contains(&relay_id) || homes_of(&net, b).contains(&relay_id));
    }
    // On-demand links show as such; home registrations stay where they were.
    let on_demand: usize = hosts
        .iter()
        .map(|&host| {
            net.hosts[host]
                .node
                .status(net.now)
                .rendezvous
                .iter()
                .filter(|link| link.role == RendezvousRole::OnDemand)
                .count()
        })
        .sum();
    println!("on-demand links: {on_demand}");
    assert!(on_demand > 0, "pairs homed apart need on-demand links");
}

#[test]
fn losing_one_of_four_servers_moves_its_pairs_to_the_next_ranked_one() {
    let (mut net, hosts) = world(2);
    let pairs = trusting_pairs(&mut net, &hosts);
    let talked = exchange(&mut net, &pairs, 1, Duration::from_secs(6));
    assert_eq!(talked.len(), pairs.len());
    // Kill the server that relays the most pairs.
    let relay_of = |net: &SimNet, (a, b): (usize, usize)| {
        net.peer_status(a, b).and_then(|status| status.relay)
    };
    let mut load: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for &pair in &pairs {
        if let Some(relay) = relay_of(&net, pair) {
            *load.entry(relay).or_default() += 1;
        }
    }
    let (victim_address, used_by) = load
        .iter()
        .max_by_key(|(address, count)| (**count, **address))
        .map(|(address, count)| (*address, *count))
        .expect("some pair is relayed");
    let victim = net
        .rendezvous
        .iter()
        .position(|server| server.address == victim_address)
        .expect("a server");
    println!(
        "server {victim} dies; it relayed {used_by} of {} pairs",
        pairs.len()
    );
    net.rendezvous[victim].up = false;
    // Traffic keeps flowing; every pair talks again within a bound.
    let killed_at = net.now;
    let bound = Duration::from_secs(10);
    let mut round = 2;
    let mut all_back = None;
    while net.now - killed_at < bound + Duration::from_secs(5) {
        let talked = exchange(&mut net, &pairs, round, Duration::from_millis(500));
        round += 1;
        if talked.len() == pairs.len() {
            all_back = Some(net.now - killed_at);
            break;
        }
    }
    let took = all_back.expect("every pair talks again");
    println!("every pair talks again {took:?} after the server died");
    assert!(took <= bound, "recovery took {took:?}");
    // And keeps talking, none of it through the dead server.
    let talked = exchange(&mut net, &pairs, round, Duration::from_secs(1));
    assert_eq!(talked.len(), pairs.len());
    let victim_id = net.rendezvous[victim].server.agent_id();
    for &(a, b) in &pairs {
        let relay = relay_of(&net, (a, b)).expect("relayed");
        assert_ne!(relay, victim_address);
        // One of the pair's own servers took over: the next-ranked.
        let relay_id = net
            .rendezvous
            .iter()
            .find(|server| server.address == relay)
            .map(|server| server.server.agent_id())
            .expect("a rendezvous");
        assert_ne!(relay_id, victim_id);
        assert!(homes_of(&net, a).contains(&relay_id) || homes_of(&net, b).contains(&relay_id));
    }
}

#[test]
fn on_demand_links_close_once_no_peer_needs_them() {
    let (mut net, hosts) = world(5);
    let pairs = trusting_pairs(&mut net, &hosts);
    let talked = exchange(&mut net, &pairs, 1, Duration::from_secs(6));
    assert_eq!(talked.len(), pairs.len());
    let links = |net: &SimNet| -> usize {
        hosts
            .iter()
            .map(|&host| net.hosts[host].node.status(net.now).rendezvous.len())
            .sum()
    };
    assert!(links(&net) > SERVERS_PER_AGENT * hosts.len());
    // The pairs part: no peer needs a link any more. On-demand links
    // linger (120 s) and close; the servers' registrations of them lapse
    // (90 s).
    for &(a, b) in &pairs {
        let (id_a, id_b) = (net.id(a), net.id(b));
        net.hosts[a].node.remove_peer(&id_b);
        net.hosts[b].node.remove_peer(&id_a);
    }
    net.run_for(Duration::from_secs(140));
    assert_eq!(links(&net), SERVERS_PER_AGENT * hosts.len());
    net.run_for(Duration::from_secs(100));
    let held: usize = net
        .rendezvous
        .iter()
        .map(|server| server.server.usage().registrations)
        .sum();
    assert_eq!(held, SERVERS_PER_AGENT * hosts.len());
    // Trusted again, traffic brings them back.
    let pairs = trusting_pairs(&mut net, &hosts);
    let talked = exchange(&mut net, &pairs, 2, Duration::from_secs(6));
    assert_eq!(talked.len(), pairs.len());
}

#[test]
fn the_order_of_the_configured_servers_does_not_matter() {
    let mut net = SimNet::new(3, LinkConfig::default(), Instant::now());
    for server in 0..SERVERS {
        net.add_rendezvous(100 + server);
    }
    let forward: Vec<(AgentId, std::net::SocketAddr)> = net
        .rendezvous
        .iter()
        .map(|server| (server.server.agent_id(), server.address))
        .collect();
    let mut reversed = forward.clone();
    reversed.reverse();
    let mut rotated = forward.clone();
    rotated.rotate_left(1);
    // Three agents behind hard NATs, each given the list in another order.
    let mut hosts = Vec::new();
    for (key, list) in [(1u8, &forward), (2, &reversed), (3, &rotated)] {
        let nat = net.add_nat(NatKind::Hard);
        let host = net.add_host_behind(key, nat);
        let now = net.now;
        for (id, address) in list {
            net.hosts[host].node.add_rendezvous(now, *id, *address);
        }
        hosts.push(host);
    }
    for &a in &hosts {
        for &b in &hosts {
            if a != b {
                net.trust(a, b, false, Policy::All);
            }
        }
    }
    net.run_for(Duration::from_secs(2));
    for &a in &hosts {
        let homes: BTreeSet<AgentId> = net.hosts[a]
            .node
            .status(net.now)
            .rendezvous
            .iter()
            .filter(|link| link.role == RendezvousRole::Home)
            .map(|link| link.id)
            .collect();
        assert_eq!(homes, homes_of(&net, a));
        for &b in &hosts {
            if a == b {
                continue;
            }
            // Where `a` looks for `b` is where `b` registers, whatever
            // order each was given the list in.
            let looked_up = net.hosts[a]
                .node
                .peer_rendezvous(&net.id(b))
                .expect("a peer");
            assert_eq!(
                looked_up,
                servers_for(NodeId::of(&net.id(b)), &server_ids(&net), SERVERS_PER_AGENT)
            );
            assert_eq!(
                looked_up.into_iter().collect::<BTreeSet<_>>(),
                homes_of(&net, b)
            );
        }
    }
    let pairs = vec![
        (hosts[0], hosts[1]),
        (hosts[1], hosts[2]),
        (hosts[0], hosts[2]),
    ];
    let talked = exchange(&mut net, &pairs, 1, Duration::from_secs(6));
    assert_eq!(talked.len(), pairs.len());
}

#[test]
fn a_trust_request_goes_through_the_targets_own_servers() {
    let (mut net, hosts) = world(4);
    // A requester and a target with no home server in common: the
    // requester holds no link where the target registers.
    let (a, b) = hosts
        .iter()
        .flat_map(|&a| hosts.iter().map(move |&b| (a, b)))
        .find(|(a, b)| a != b && homes_of(&net, *a).is_disjoint(&homes_of(&net, *b)))
        .expect("a pair homed apart");
    net.trust(a, b, false, Policy::All);
    let now = net.now;
    let b_id = net.id(b);
    net.hosts[a]
        .node
        .send_trust_request(now, b_id, "homed apart", Policy::All, None, None)
        .expect("seals");
    net.run_for(Duration::from_secs(2));
    let pending = net.hosts[b].node.pending_requests(net.now);
    assert_eq!(
        pending.len(),
        1,
        "the request waited for a link to the target's server"
    );
    assert_eq!(pending[0].justification, "homed apart");
    assert!(pending[0].via_relay);
}
