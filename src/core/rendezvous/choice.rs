//! Which rendezvous servers serve an agent: rendezvous (highest random
//! weight) hashing of the agent's node ID over the configured servers
//! (DESIGN.md §5). Every agent that knows a node's ID and the same server
//! list computes the same servers for it, so load spreads over the
//! servers by node ID with no state shared between them, and adding a
//! server moves only the agents that now rank it among their own.
//!
//! The score is part of the protocol: agents that disagree on it look for
//! each other on different servers.

use blake2::{Blake2s256, Digest};

use crate::core::address::NodeId;
use crate::core::identity::AgentId;

/// How many servers an agent registers with when more are configured:
/// two, so that one server going away leaves every agent reachable.
pub const SERVERS_PER_AGENT: usize = 2;

/// Domain separation of the score.
const SCORE_LABEL: &[u8] = b"agentnet rendezvous choice v1";

/// The weight of `server` for `node`: the first 8 bytes of
/// BLAKE2s-256(label ‖ server's key ‖ node ID), big-endian.
pub fn score(server: &AgentId, node: NodeId) -> u64 {
    let digest = Blake2s256::new()
        .chain_update(SCORE_LABEL)
        .chain_update(server.as_bytes())
        .chain_update(node.0)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The (at most) `count` servers of `servers` that serve `node`, highest
/// score first; ties (practically impossible) go to the smaller key, so
/// the answer does not depend on the order of the list. Duplicates in the
/// list count once.
pub fn servers_for(node: NodeId, servers: &[AgentId], count: usize) -> Vec<AgentId> {
    let mut ranked: Vec<(u64, AgentId)> = servers
        .iter()
        .map(|server| (score(server, node), *server))
        .collect();
    ranked.sort_unstable_by(|(a_score, a), (b_score, b)| {
        b_score
            .cmp(a_score)
            .then_with(|| a.as_bytes().cmp(b.as_bytes()))
    });
    ranked.dedup_by(|(_, a), (_, b)| a == b);
    ranked
        .into_iter()
        .take(count)
        .map(|(_, server)| server)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use std::collections::{BTreeSet, HashMap};

    fn agent(number: u32, salt: u8) -> AgentId {
        let mut secret = [salt; 32];
        secret[..4].copy_from_slice(&number.to_le_bytes());
        Identity::from_secret_bytes(&secret)
            .expect("32 bytes are a secret key")
            .agent_id()
    }

    fn servers(count: u32) -> Vec<AgentId> {
        (0..count).map(|number| agent(number, 0x11)).collect()
    }

    fn nodes(count: u32) -> Vec<NodeId> {
        (0..count)
            .map(|number| NodeId::of(&agent(number, 0x22)))
            .collect()
    }

    fn chosen(node: NodeId, servers: &[AgentId]) -> BTreeSet<[u8; 32]> {
        servers_for(node, servers, SERVERS_PER_AGENT)
            .iter()
            .map(|server| *server.as_bytes())
            .collect()
    }

    #[test]
    fn the_choice_is_deterministic_and_ignores_list_order() {
        let list = servers(6);
        let mut reversed = list.clone();
        reversed.reverse();
        for node in nodes(200) {
            let first = servers_for(node, &list, SERVERS_PER_AGENT);
            assert_eq!(first.len(), SERVERS_PER_AGENT);
            assert_eq!(first, servers_for(node, &list, SERVERS_PER_AGENT));
            assert_eq!(first, servers_for(node, &reversed, SERVERS_PER_AGENT));
            // Highest score first, and no unchosen server outranks them.
            let lowest = score(&first[1], node);
            assert!(score(&first[0], node) >= lowest);
            assert!(
                list.iter()
                    .filter(|server| !first.contains(server))
                    .all(|server| score(server, node) <= lowest)
            );
        }
    }

    #[test]
    fn few_servers_serve_everyone_and_duplicates_count_once() {
        let list = servers(2);
        let node = nodes(1)[0];
        assert_eq!(
            servers_for(node, &list[..1], SERVERS_PER_AGENT),
            vec![list[0]]
        );
        assert_eq!(chosen(node, &list).len(), 2);
        let doubled = [list[0], list[0], list[1]];
        assert_eq!(chosen(node, &doubled), chosen(node, &list));
        assert!(servers_for(node, &[], SERVERS_PER_AGENT).is_empty());
    }

    #[test]
    fn the_score_is_a_fixed_function_of_server_and_node() {
        // Pinned (computed independently with Python's hashlib.blake2s and
        // the `cryptography` package's Ed25519 key) so that a change of the
        // score, which would split agents of different versions onto
        // different servers, is seen.
        let server = agent(0, 0x11);
        let node = NodeId([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(score(&server, node), 0x237f_7147_6b16_3ef3);
        assert_ne!(
            score(&server, NodeId([1, 2, 3, 4, 5, 6, 7, 9])),
            0x237f_7147_6b16_3ef3
        );
    }

    #[test]
    fn load_spreads_evenly_over_the_servers() {
        let list = servers(8);
        let agents = 8_000;
        let mut load: HashMap<[u8; 32], usize> = HashMap::new();
        for node in nodes(agents) {
            for server in chosen(node, &list) {
                *load.entry(server).or_default() += 1;
            }
        }
        // Each server serves 2/8 of the agents: 2,000 expected.
        let expected = agents as usize * SERVERS_PER_AGENT / list.len();
        assert_eq!(load.len(), list.len());
        for count in load.values() {
            assert!(
                count.abs_diff(expected) < expected / 10,
                "a server serves {count} agents, {expected} expected"
            );
        }
    }

    #[test]
    fn adding_a_server_moves_only_the_agents_that_now_rank_it() {
        let before = servers(5);
        let mut after = before.clone();
        after.push(agent(99, 0x11));
        let added = *after[5].as_bytes();
        let agents = 10_000;
        let mut moved_registrations: usize = 0;
        for node in nodes(agents) {
            let (old, new) = (chosen(node, &before), chosen(node, &after));
            if old == new {
                continue;
            }
            // The only change: the new server displaced one old one.
            assert!(new.contains(&added), "an old server was reshuffled");
            assert_eq!(old.intersection(&new).count(), SERVERS_PER_AGENT - 1);
            moved_registrations += 1;
        }
        // One registration in n+1 = 6 moves (each moved agent moves one of
        // its two): 10,000 × 2 / 6 ≈ 3,333.
        let expected = agents as usize * SERVERS_PER_AGENT / after.len();
        assert!(
            moved_registrations.abs_diff(expected) < expected / 10,
            "{moved_registrations} registrations moved, {expected} expected"
        );
    }
}
