//! A full mesh on real hosts (issue 14): 30 agents on one bridge, each in
//! its own namespace, all trusting each other with endpoints, brought up one
//! after another in a random order with random pauses. Every ordered pair
//! must ping over the overlay within 10 s of the last `up`.
//!
//! Needs root (namespaces, TUN) and fping. Without them it says why and
//! passes as skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI). All traffic
//! stays inside the lab's namespaces.

mod support;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::agent::Identity;
use support::{Agent, Lab, step};

/// Programs the test runs inside the namespaces.
const TOOLS: &[&str] = &["fping", "cat"];

/// Agents in the mesh (30 debug daemons fit a 2-core machine).
const AGENTS: usize = 30;

/// Every ordered pair answers a ping this soon after the last `up`.
const CONVERGENCE: Duration = Duration::from_secs(10);

/// Longest pause between two `up`s.
const MAX_PAUSE_MS: u64 = 300;

/// Underlay subnet: `10.79.0.0/24`.
const UNDERLAY: [u8; 2] = [79, 0];

/// Env var: the seed of the order and the pauses (default: from the clock).
const SEED_ENV: &str = "AGENTNET_MESH_SEED";

fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Pings every address in `targets` from `agent`'s namespace, all at once
/// and again for those that did not answer, until each answered or
/// `deadline`. Returns, for each target in order, how long after `since` it
/// first answered (`None`: never).
fn ping_all(
    lab: &Lab,
    agent: &Agent,
    targets: &[String],
    since: Instant,
    deadline: Instant,
) -> Vec<Option<Duration>> {
    let mut answered: Vec<Option<Duration>> = vec![None; targets.len()];
    while answered.iter().any(Option::is_none) && Instant::now() < deadline {
        let mut args = vec!["fping", "-a", "-q", "-r", "0", "-t", "500", "-i", "1"];
        let left: Vec<usize> = (0..targets.len())
            .filter(|i| answered[*i].is_none())
            .collect();
        args.extend(left.iter().map(|i| targets[*i].as_str()));
        // fping exits non-zero while some target is unreachable: what
        // answered is on stdout either way.
        let alive = match lab.exec(&agent.host.ns, &args) {
            Ok(out) => out.stdout,
            Err(e) => panic!("{}: fping: {e}", agent.name),
        };
        let at = since.elapsed();
        for line in alive.lines() {
            if let Some(i) = left.iter().find(|i| targets[**i] == line.trim()) {
                answered[*i] = Some(at);
            }
        }
    }
    answered
}

#[test]
fn thirty_agents_brought_up_in_random_order_all_reach_each_other() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    // On stderr, so a failing run can be repeated with the same order.
    support::say(&format!(
        "netns_mesh: seed {seed} (repeat with {SEED_ENV}={seed})"
    ));
    let mut rng = StdRng::seed_from_u64(seed);

    let lab = Lab::new().expect("lab");
    let roles: Vec<String> = (0..AGENTS).map(|i| format!("m{i}")).collect();
    let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    step(&format!(
        "lab {}: {AGENTS} hosts on one bridge",
        lab.prefix()
    ));
    let hosts = must(lab.bridge_segment(UNDERLAY, &role_refs));
    must(lab.static_neighbours(&hosts));
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| must(Agent::new(&lab, h, &format!("mesh-{}", h.role))))
        .collect();

    step("init, and every agent trusts every other with its endpoint");
    let ids: Vec<Identity> = agents
        .iter()
        .map(|agent| {
            must(agent.init());
            must(agent.id())
        })
        .collect();
    // Written to each state directory before `up`, so each daemon connects
    // to all the others as it starts; one thread per agent (each edits only
    // its own trust store).
    std::thread::scope(|scope| {
        for (i, agent) in agents.iter().enumerate() {
            let (agents, ids) = (&agents, &ids);
            scope.spawn(move || {
                for (j, peer) in agents.iter().enumerate() {
                    if i != j {
                        must(agent.trust_add(&ids[j], &peer.name, Some(peer.endpoint())));
                    }
                }
            });
        }
    });

    let mut order: Vec<usize> = (0..AGENTS).collect();
    order.shuffle(&mut rng);
    step(&format!(
        "up, in the order {order:?}, 0-{MAX_PAUSE_MS} ms apart"
    ));
    for (n, &i) in order.iter().enumerate() {
        must(agents[i].up());
        if n + 1 < order.len() {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..=MAX_PAUSE_MS)));
        }
    }
    let last_up = Instant::now();
    let deadline = last_up + CONVERGENCE;

    step("every agent pings all others at once, until each answered");
    let addresses: Vec<String> = ids.iter().map(|id| id.address.to_string()).collect();
    let results: Vec<Vec<Option<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                let targets: Vec<String> = addresses
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, a)| a.clone())
                    .collect();
                let lab = &lab;
                scope.spawn(move || ping_all(lab, agent, &targets, last_up, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pinger"))
            .collect()
    });

    let mut slowest = Duration::ZERO;
    let mut unanswered = Vec::new();
    for (i, answered) in results.iter().enumerate() {
        let peers = (0..AGENTS).filter(|j| *j != i);
        for (j, at) in peers.zip(answered) {
            match at {
                Some(at) => slowest = slowest.max(*at),
                None => unanswered.push(format!("{} -> {}", agents[i].name, agents[j].name)),
            }
        }
    }
    step(&format!(
        "{} of {} ordered pairs answered; the last {:.2} s after the last up",
        AGENTS * (AGENTS - 1) - unanswered.len(),
        AGENTS * (AGENTS - 1),
        slowest.as_secs_f64()
    ));
    if !unanswered.is_empty() {
        for agent in &agents {
            if let Ok(status) = agent.status() {
                let up = status["peers"].as_array().map_or(0, |p| {
                    p.iter()
                        .filter(|p| p["session_established"] == true)
                        .count()
                });
                eprintln!(
                    "{}: {up} sessions, dropped {}",
                    agent.name, status["dropped"]
                );
            }
        }
    }
    assert!(
        unanswered.is_empty(),
        "seed {seed}: {} ordered pairs did not answer within {CONVERGENCE:?} of the last up: {}",
        unanswered.len(),
        unanswered.join(", ")
    );
}
