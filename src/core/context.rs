//! What every peer of a node shares: identity, randomness, the session-index
//! table and the output queues. Kept apart from the peer table so a peer can
//! be borrowed mutably together with it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use zeroize::Zeroizing;

use super::address::{NetworkId, NodePrefix};
use super::identity::AgentId;
use super::mac::Mac1Key;
use super::node::{Event, Transmit};
use super::rng::CoreRng;
use super::status::DropCounters;
use super::tai64n::Tai64N;

/// Shared state of a node.
pub struct Context {
    pub network: NetworkId,
    pub own_id: AgentId,
    pub own_prefix: NodePrefix,
    pub name: String,
    pub noise_secret: Zeroizing<[u8; 32]>,
    pub own_mac1: Mac1Key,
    pub tunnel_mtu: u16,
    pub rng: CoreRng,
    /// The monotonic instant that corresponds to `unix_at_start`.
    pub started: Instant,
    /// Wall-clock time when the node started, for TAI64N timestamps.
    pub unix_at_start: Duration,
    /// Local session index → the peer it belongs to.
    pub by_index: HashMap<u32, AgentId>,
    pub transmits: VecDeque<Transmit>,
    pub tun_out: VecDeque<Vec<u8>>,
    pub events: VecDeque<Event>,
    pub dropped: DropCounters,
    pub local_candidates: Vec<SocketAddr>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("own_id", &self.own_id)
            .field("sessions", &self.by_index.len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A fresh random local session index, registered to `peer`.
    pub fn allocate_index(&mut self, peer: AgentId) -> u32 {
        loop {
            let index = self.rng.next_u32();
            if index != 0 && !self.by_index.contains_key(&index) {
                self.by_index.insert(index, peer);
                return index;
            }
        }
    }

    /// Forgets a local session index.
    pub fn release_index(&mut self, index: u32) {
        self.by_index.remove(&index);
    }

    /// Wall-clock time at `now`, as the duration since the Unix epoch.
    pub fn unix_now(&self, now: Instant) -> Duration {
        self.unix_at_start + now.saturating_duration_since(self.started)
    }

    /// The TAI64N label of `now`.
    pub fn timestamp(&self, now: Instant) -> Tai64N {
        Tai64N::from_unix(self.unix_now(now))
    }

    /// Queues a datagram.
    pub fn transmit(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            payload,
        });
    }
}
