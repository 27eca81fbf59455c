//! A Linux router's connection tracking as `masquerade` without an inbound
//! firewall sees it (the NAT lab's `EasyNoFirewall`, measured with
//! `conntrack -L` there): each flow (private endpoint, remote endpoint) gets
//! its own public port, the private port when that is free for the remote;
//! a datagram from a remote that matches no flow is delivered to the router
//! itself and leaves an entry of its own (remote → public port), which
//! blocks that port for that remote until it expires. Entries expire 30 s
//! after their last datagram, 120 s once the flow was answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Lifetime of an entry that saw traffic one way only
/// (`nf_conntrack_udp_timeout`).
pub const UNREPLIED_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of an answered flow (`nf_conntrack_udp_timeout_stream`).
pub const REPLIED_TIMEOUT: Duration = Duration::from_secs(120);

/// Who holds a (remote, public port) tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// A flow from this private endpoint.
    Flow(SocketAddr),
    /// The router itself: an unsolicited datagram was delivered to it.
    Router,
}

/// One conntrack entry, keyed by (remote endpoint, public port).
#[derive(Debug, Clone, Copy)]
struct Entry {
    holder: Holder,
    last_seen: Instant,
    replied: bool,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        let lifetime = if self.replied {
            REPLIED_TIMEOUT
        } else {
            UNREPLIED_TIMEOUT
        };
        now.saturating_duration_since(self.last_seen) >= lifetime
    }
}

/// The connection table of one router.
#[derive(Debug, Default)]
pub struct Conntrack {
    /// (private, remote) → public port of the flow.
    flows: HashMap<(SocketAddr, SocketAddr), u16>,
    /// (remote, public port) → the entry holding it.
    entries: HashMap<(SocketAddr, u16), Entry>,
}

impl Conntrack {
    /// The entry for (remote, port) if it has not expired (an expired one
    /// is removed, as the kernel does on lookup).
    fn live(&mut self, now: Instant, remote: SocketAddr, port: u16) -> Option<&mut Entry> {
        let key = (remote, port);
        if self
            .entries
            .get(&key)
            .is_some_and(|entry| entry.expired(now))
        {
            if let Some(Entry {
                holder: Holder::Flow(private),
                ..
            }) = self.entries.remove(&key)
            {
                self.flows.remove(&(private, remote));
            }
            return None;
        }
        self.entries.get_mut(&key)
    }

    /// The public port of a datagram from `private` to `remote`: its flow's,
    /// or for a new flow the private port unless that is taken for this
    /// remote (then a random free one).
    pub fn outbound(
        &mut self,
        rng: &mut ChaCha20Rng,
        now: Instant,
        private: SocketAddr,
        remote: SocketAddr,
    ) -> u16 {
        if let Some(&port) = self.flows.get(&(private, remote))
            && let Some(entry) = self.live(now, remote, port)
        {
            entry.last_seen = now;
            return port;
        }
        let mut port = private.port();
        while self.live(now, remote, port).is_some() {
            port = rng.gen_range(1024..=u16::MAX);
        }
        self.flows.insert((private, remote), port);
        self.entries.insert(
            (remote, port),
            Entry {
                holder: Holder::Flow(private),
                last_seen: now,
                replied: false,
            },
        );
        port
    }

    /// Where a datagram from `remote` to public `port` goes: the private
    /// endpoint of the flow it answers, or nowhere (the router keeps an
    /// entry of its own for it).
    pub fn inbound(&mut self, now: Instant, remote: SocketAddr, port: u16) -> Option<SocketAddr> {
        if let Some(entry) = self.live(now, remote, port) {
            entry.last_seen = now;
            return match entry.holder {
                Holder::Flow(private) => {
                    entry.replied = true;
                    Some(private)
                }
                Holder::Router => None,
            };
        }
        self.entries.insert(
            (remote, port),
            Entry {
                holder: Holder::Router,
                last_seen: now,
                replied: false,
            },
        );
        None
    }

    /// Entries the router holds for itself (unsolicited datagrams) that
    /// have not expired.
    pub fn router_entries(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.holder == Holder::Router && !entry.expired(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    /// The lab's measurement, step by step: B's datagram reaches A's router
    /// first and stays there; A's own flow to B then gets another port.
    #[test]
    fn an_unsolicited_datagram_moves_the_flow_to_another_port() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::now();
        let mut router = Conntrack::default();
        let (agent, peer) = (addr("10.77.1.2:7400"), addr("198.18.0.2:7400"));
        assert_eq!(router.inbound(now, peer, 7400), None);
        assert_eq!(router.router_entries(now), 1);
        let port = router.outbound(&mut rng, now, agent, peer);
        assert_ne!(port, 7400, "the port is taken for that peer");
        // The peer's datagrams to 7400 keep reaching the router only.
        assert_eq!(router.inbound(now, peer, 7400), None);
        // Other remotes still see the private port.
        let other = addr("198.18.0.9:3478");
        assert_eq!(router.outbound(&mut rng, now, agent, other), 7400);
        // 30 s of silence: the router's entry and the unanswered flow are
        // gone, and the port is the private one again.
        let later = now + UNREPLIED_TIMEOUT;
        assert_eq!(router.router_entries(later), 0);
        assert_eq!(router.outbound(&mut rng, later, agent, peer), 7400);
    }
}
