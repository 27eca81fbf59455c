//! Trust requests received and waiting for an operator (DESIGN.md §4), with
//! the abuse limits around them.
//!
//! In the order a datagram meets them (`Node::handle_trust_request`), after
//! the cheap checks of length and mac1:
//!
//! 1. **Per sender** ([`RequestSender`]): the source address (IPv4, or the
//!    /64 of IPv6) for a direct request; for one through a rendezvous, the
//!    node the rendezvous names as its sender (which it takes from that
//!    sender's authenticated registration), never the rendezvous' own
//!    address, so one sender's garbage cannot block everyone who asks
//!    through the same rendezvous, and a mailbox delivered at once (up to
//!    16 requests from different senders) lands whole.
//! 2. **A global budget** of verifications per second: the Diffie-Hellman
//!    and signature check of a request cost ~100 µs, so a flood from many
//!    addresses costs at most a few percent of a core.
//! 3. After the request verified: the **replay set** of nonces, then **per
//!    requester key**.
//! 4. **Room in the list** ([`PendingRequests::insert`]): per origin, per
//!    network, and a share for direct requests, so that a flood from forged
//!    sources and fresh keys (which passes every limit above but the
//!    budget) cannot push out what waits already.
//!
//! Every limiter is a [`KeyedLimiter`] (fixed hashed buckets, O(1) per
//! datagram); the replay set is a bounded FIFO swept a few entries per
//! insertion; the list keeps its counts as entries come and go
//! ([`list::WaitingList`]). No datagram does work that grows with the
//! number of sources or of waiting requests.

mod list;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::core::address::NodeId;
use crate::core::identity::AgentId;
use crate::core::limit::{KeyedLimiter, Rate, TokenBucket, address_key};
use crate::core::text::escape_untrusted;
use crate::core::trust::request::{MAX_CLOCK_SKEW, TrustRequest};
use crate::core::wire::path::PathAddr;
use list::{NetworkKey, OriginKey, Share};

/// Most requests waiting at once.
pub const MAX_PENDING: usize = 256;
/// Most pending requests from one origin (the source address, IPv4 or the
/// /64 of IPv6; for requests through a rendezvous, that rendezvous and the
/// tag it gave the requester's address): keys cost nothing, and through a
/// rendezvous each new key is a new sender, so without it one flooder
/// could push every other request out of the list within seconds. A
/// request past it replaces its origin's oldest.
pub const MAX_PENDING_PER_ORIGIN: usize = MAX_PENDING / 4;
/// Most pending requests from one address whatever their tags: through
/// one rendezvous. A tag is only as good as the server that wrote it and
/// the source address it came from (which a stranger can spoof), so
/// made-up tags take at most this share, never the direct requests'.
pub const MAX_PENDING_PER_ADDRESS: usize = MAX_PENDING / 2;
/// Most direct requests from one network (an IPv4 /24, an IPv6 /48, the
/// usual site, whose 65,536 /64s one host may use without forging
/// anything): past it a request replaces the oldest of its network's
/// largest origin, so a flooder at one site fills a quarter of the direct
/// share at most.
pub const MAX_PENDING_PER_NETWORK: usize = MAX_PENDING / 8;
/// Most direct requests the auto-approval rules do not approve, waiting at
/// once: half the list. Their source is one-way UDP, forged at will, so a
/// flood with a new source and key each time passes every cap above; past
/// this share such a request is refused (`trust_requests_crowded_out`)
/// instead of pushing out one that waits, and requests through a
/// rendezvous and approved ones keep the other half.
pub const MAX_PENDING_DIRECT: usize = MAX_PENDING / 2;
/// How long a request waits before it expires.
pub const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Requests accepted per requester key or sender per minute (and at once).
pub const REQUESTS_PER_MINUTE: u32 = 5;
/// Buckets of each keyed limiter (8 bytes each, allocated on first use).
pub const LIMITER_BUCKETS: usize = 16_384;
/// Requests verified per second at most, over all senders: the budget of
/// the expensive checks (Noise_X and Ed25519, ~100 µs together).
pub const VERIFICATIONS_PER_SECOND: u32 = 200;
/// Most nonces remembered (a request's nonce is kept as long as its
/// timestamp could pass the skew check: [`NONCE_LIFETIME`]).
pub const MAX_NONCES: usize = 8192;
/// How long a nonce is remembered: a request is stale once its timestamp is
/// more than [`MAX_CLOCK_SKEW`] off, so a replay later than twice that is
/// refused as stale anyway.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW.as_secs());
/// Expired nonces forgotten per insertion at most (more than one, so the
/// set drains faster than it fills; a constant, so no insertion sweeps).
const NONCE_SWEEP_STEPS: usize = 4;

/// The rate of each sender and each requester.
const REQUEST_RATE: Rate = Rate::per(
    REQUESTS_PER_MINUTE,
    Duration::from_secs(60),
    REQUESTS_PER_MINUTE,
);

/// A request waiting for approval.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    /// The verified request.
    pub request: TrustRequest,
    /// Where the datagram came from (a rendezvous when `via_relay`).
    pub from: SocketAddr,
    /// Whether it came through a rendezvous (then `from` is not the
    /// requester's endpoint).
    pub via_relay: bool,
    /// The tag the rendezvous gave the requester's address
    /// ([`crate::core::wire::Relay::source_tag`]; 0 when direct, or from a
    /// server that tags none).
    pub source_tag: u32,
    /// When it arrived.
    pub received: Instant,
}

impl PendingRequest {
    /// Where it came from.
    pub fn origin(&self) -> RequestOrigin {
        RequestOrigin {
            from: self.from,
            via_relay: self.via_relay,
            source_tag: self.source_tag,
        }
    }
}

/// Where a request came from, as [`PendingRequests::insert`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOrigin {
    /// The datagram's source (a rendezvous when `via_relay`).
    pub from: SocketAddr,
    /// Whether it came through a rendezvous.
    pub via_relay: bool,
    /// The rendezvous' tag of the requester's address (0: none).
    pub source_tag: u32,
}

impl RequestOrigin {
    /// Straight from `from`.
    pub fn direct(from: SocketAddr) -> Self {
        Self {
            from,
            via_relay: false,
            source_tag: 0,
        }
    }
}

/// A pending request as shown to the operator. What the requester wrote
/// (`name`, `justification`) is escaped already
/// ([`crate::core::text::escape_untrusted`]): the control socket hands it
/// to terminals, JSON readers and language models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// Requester's agent ID.
    pub id: AgentId,
    /// Name the requester claims, escaped.
    pub name: String,
    /// Why it asks, escaped.
    pub justification: String,
    /// Ports it asks for.
    pub requested: String,
    /// Seconds since it arrived.
    pub age_s: f64,
    /// Where it came from.
    pub from: SocketAddr,
    /// Whether it came through a rendezvous.
    pub via_relay: bool,
    /// Fleet key that endorsed it, if any.
    pub endorsed_by: Option<AgentId>,
}

/// Who sent a trust request, as something the sender cannot share with
/// others: what the per-sender limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestSender {
    /// Straight from this address (IPv4; the /64 of IPv6; ports are free).
    Address(IpAddr),
    /// Through the rendezvous at `relay`, from the node it named.
    RelayedNode {
        /// The rendezvous.
        relay: SocketAddr,
        /// The sending node, as the rendezvous stamped it.
        node: NodeId,
    },
}

impl RequestSender {
    /// The sender of a request that arrived along `path` (`relayed_by`: the
    /// node a rendezvous named).
    pub fn of_path(path: PathAddr, relayed_by: Option<NodeId>) -> Self {
        match (path, relayed_by) {
            (PathAddr::Relay(relay), Some(node)) => RequestSender::RelayedNode { relay, node },
            (path, _) => RequestSender::Address(address_key(path.underlay().ip())),
        }
    }
}

/// Why a request was refused before verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Its sender is over its rate.
    Sender,
    /// The global verification budget is spent for now.
    Budget,
}

/// Outcome of offering a verified request to the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queued (or replaced an older request from the same requester).
    Queued,
    /// The nonce was seen before.
    Replayed,
    /// The requester is over its rate (or the replay set is full).
    RateLimited,
    /// No room: the direct share ([`MAX_PENDING_DIRECT`]) is full and the
    /// request's origin and network are under their caps.
    Crowded,
}

/// A nonce of a request seen recently, as the shell saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenNonce {
    /// Who sent the request.
    pub requester: AgentId,
    /// Its nonce.
    pub nonce: [u8; 16],
    /// How much longer it must be remembered.
    pub remaining: Duration,
}

type NonceKey = (AgentId, [u8; 16]);

/// The replay set: nonces with their expiry, in a FIFO that insertions
/// sweep a few entries at a time (expiries are nearly in insertion order;
/// one out of order only delays the forgetting behind it).
#[derive(Debug, Default)]
struct SeenNonces {
    order: VecDeque<(NonceKey, Instant)>,
    expiry: HashMap<NonceKey, Instant>,
    /// Entries looked at by sweeps so far (the work done, for tests).
    sweep_steps: u64,
}

impl SeenNonces {
    fn contains(&self, key: &NonceKey) -> bool {
        self.expiry.contains_key(key)
    }

    /// Forgets at most `steps` expired nonces from the front.
    fn sweep(&mut self, now: Instant, steps: usize) {
        for _ in 0..steps {
            match self.order.front() {
                Some((key, expires)) if *expires <= now => {
                    self.expiry.remove(key);
                    self.order.pop_front();
                    self.sweep_steps = self.sweep_steps.saturating_add(1);
                }
                _ => break,
            }
        }
    }

    /// Forgets `key` if it is the nonce remembered last (a request just
    /// checked and then refused for want of room: its copy through a
    /// rendezvous, with the same nonce, may still queue).
    fn forget_last(&mut self, key: &NonceKey) {
        if self.order.back().is_some_and(|(last, _)| last == key) {
            self.order.pop_back();
            self.expiry.remove(key);
        }
    }

    /// Remembers `key` until `expires`. A full set forgets its oldest
    /// nonce: a flood of validly signed requests from fresh keys then
    /// shortens how long a nonce is remembered (a replay of a request older
    /// than that could queue it again while the flood lasts) instead of
    /// locking every requester out.
    fn insert(&mut self, now: Instant, key: NonceKey, expires: Instant) {
        self.sweep(now, NONCE_SWEEP_STEPS);
        if self.expiry.contains_key(&key) {
            return;
        }
        if self.order.len() >= MAX_NONCES
            && let Some((oldest, _)) = self.order.pop_front()
        {
            self.expiry.remove(&oldest);
        }
        self.order.push_back((key, expires));
        self.expiry.insert(key, expires);
    }

    fn iter(&self, now: Instant) -> impl Iterator<Item = SeenNonce> + '_ {
        self.order
            .iter()
            .filter(move |(_, expires)| *expires > now)
            .map(move |((requester, nonce), expires)| SeenNonce {
                requester: *requester,
                nonce: *nonce,
                remaining: expires.saturating_duration_since(now),
            })
    }
}

/// Pending requests and their limits.
#[derive(Debug)]
pub struct PendingRequests {
    requests: list::WaitingList,
    by_sender: KeyedLimiter,
    verifications: TokenBucket,
    by_requester: KeyedLimiter,
    nonces: SeenNonces,
}

impl Default for PendingRequests {
    fn default() -> Self {
        Self {
            requests: list::WaitingList::default(),
            by_sender: KeyedLimiter::new(REQUEST_RATE, LIMITER_BUCKETS),
            verifications: TokenBucket::new(Rate::per_second(
                VERIFICATIONS_PER_SECOND,
                VERIFICATIONS_PER_SECOND,
            )),
            by_requester: KeyedLimiter::new(REQUEST_RATE, LIMITER_BUCKETS),
            nonces: SeenNonces::default(),
        }
    }
}

impl PendingRequests {
    /// Before any cryptography (after the cheap checks of length and mac1):
    /// may a request of `sender` be verified now? Counts it against the
    /// sender's rate, then the global budget. O(1).
    pub fn allow_verification(
        &mut self,
        now: Instant,
        sender: &RequestSender,
        rng: &mut impl RngCore,
    ) -> Result<(), Throttled> {
        if !self.by_sender.take(now, sender, rng) {
            return Err(Throttled::Sender);
        }
        if !self.verifications.take(now) {
            return Err(Throttled::Budget);
        }
        Ok(())
    }

    /// Checks replay and per-requester rate of a verified request,
    /// remembering its nonce.
    pub fn check(
        &mut self,
        now: Instant,
        request: &TrustRequest,
        rng: &mut impl RngCore,
    ) -> Admission {
        let key = (request.requester, request.nonce);
        if self.nonces.contains(&key) {
            return Admission::Replayed;
        }
        if !self.by_requester.take(now, &request.requester, rng) {
            return Admission::RateLimited;
        }
        self.nonces.insert(now, key, now + NONCE_LIFETIME);
        Admission::Queued
    }

    /// The nonces still remembered (of waiting, approved and denied
    /// requests alike), for the shell to save across restarts.
    pub fn seen_nonces(&self, now: Instant) -> impl Iterator<Item = SeenNonce> + '_ {
        self.nonces.iter(now)
    }

    /// Remembers a nonce saved before a restart (for what remains of its
    /// lifetime, at most [`NONCE_LIFETIME`]).
    pub fn restore_seen_nonce(&mut self, now: Instant, seen: SeenNonce) {
        if seen.remaining.is_zero() {
            return;
        }
        let expires = now + seen.remaining.min(NONCE_LIFETIME);
        self.nonces
            .insert(now, (seen.requester, seen.nonce), expires);
    }

    /// Sweep steps of the replay set so far (work done, for tests).
    pub fn nonce_sweep_steps(&self) -> u64 {
        self.nonces.sweep_steps
    }

    /// Buckets the per-sender limiter touched so far (work done, for tests
    /// and benches).
    pub fn sender_buckets_touched(&self) -> u64 {
        self.by_sender.cells_touched()
    }

    /// Queues a verified request, replacing an older one from the same
    /// requester. Room is made by dropping, in this order: the oldest of
    /// its origin when that holds [`MAX_PENDING_PER_ORIGIN`]; the oldest of
    /// its network's largest origin when the network (a rendezvous' address
    /// over all its tags, or a direct source's /24 or /48) holds
    /// [`MAX_PENDING_PER_ADDRESS`] or [`MAX_PENDING_PER_NETWORK`]; none
    /// when it is direct and the direct share holds [`MAX_PENDING_DIRECT`]:
    /// then this request is refused ([`Admission::Crowded`]) and its nonce
    /// forgotten; else, when the list is full, the oldest outside the direct
    /// share. A flood from forged direct sources therefore replaces only
    /// itself or nothing, never what waited before it.
    pub fn insert(
        &mut self,
        now: Instant,
        request: TrustRequest,
        origin: RequestOrigin,
    ) -> Admission {
        let share = if origin.via_relay {
            Share::Other
        } else {
            Share::Direct
        };
        self.queue(now, request, origin, share)
    }

    /// Queues a verified request that the auto-approval rules approve, as
    /// [`Self::insert`] but outside the direct share, so that a flood of
    /// direct requests never crowds it out.
    pub fn insert_approved(
        &mut self,
        now: Instant,
        request: TrustRequest,
        origin: RequestOrigin,
    ) -> Admission {
        self.queue(now, request, origin, Share::Other)
    }

    fn queue(
        &mut self,
        now: Instant,
        request: TrustRequest,
        origin: RequestOrigin,
        share: Share,
    ) -> Admission {
        self.expire(now);
        // The requester's earlier request goes, unless this one is
        // crowded out: then the earlier one keeps waiting.
        let earlier = self.requests.slot_of(&request.requester).and_then(|slot| {
            let share = self.requests.share_of(slot)?;
            Some((self.requests.remove(slot)?, share))
        });
        let key = OriginKey::of(&origin);
        let network = key.network();
        let network_cap = match network {
            NetworkKey::Rendezvous(_) => MAX_PENDING_PER_ADDRESS,
            NetworkKey::Prefix(_) => MAX_PENDING_PER_NETWORK,
        };
        let victim = if self.requests.origin_len(&key) >= MAX_PENDING_PER_ORIGIN {
            self.requests.oldest_of_origin(&key)
        } else if self.requests.network_len(&network) >= network_cap {
            self.requests.oldest_of_largest_origin(&network)
        } else if share == Share::Direct && self.requests.direct_len() >= MAX_PENDING_DIRECT {
            self.nonces.forget_last(&(request.requester, request.nonce));
            if let Some((pending, share)) = earlier {
                // Back in its place: its slot is its arrival time.
                self.requests.push(pending, share);
            }
            return Admission::Crowded;
        } else if self.requests.len() >= MAX_PENDING {
            self.requests
                .oldest_other()
                .or_else(|| self.requests.oldest())
        } else {
            None
        };
        if let Some(slot) = victim {
            self.requests.remove(slot);
        }
        let pending = PendingRequest {
            request,
            from: origin.from,
            via_relay: origin.via_relay,
            source_tag: origin.source_tag,
            received: now,
        };
        self.requests.push(pending, share);
        Admission::Queued
    }

    /// Drops requests older than the TTL and forgets expired nonces
    /// (housekeeping; each request and nonce is dropped once, from the
    /// front, so this is O(1) amortised).
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.requests.oldest()
            && now.saturating_duration_since(oldest.0) >= PENDING_TTL
        {
            self.requests.remove(oldest);
        }
        self.nonces.sweep(now, MAX_NONCES);
    }

    /// Puts back a request saved before a restart (it was verified when it
    /// arrived), in its place by arrival. Its nonce joins the replay set;
    /// the bound and the TTL apply as to a new one (the oldest goes when
    /// the list is full).
    pub fn restore(&mut self, now: Instant, pending: PendingRequest) {
        if now.saturating_duration_since(pending.received) >= PENDING_TTL {
            return;
        }
        // Its nonce matters while its timestamp could still pass.
        let nonce_expires = pending.received + NONCE_LIFETIME;
        if nonce_expires > now {
            self.nonces.insert(
                now,
                (pending.request.requester, pending.request.nonce),
                nonce_expires,
            );
        }
        if let Some(earlier) = self.requests.slot_of(&pending.request.requester) {
            self.requests.remove(earlier);
        }
        if self.requests.len() >= MAX_PENDING
            && let Some(oldest) = self.requests.oldest()
        {
            self.requests.remove(oldest);
        }
        let share = if pending.via_relay {
            Share::Other
        } else {
            Share::Direct
        };
        self.requests.push(pending, share);
    }

    /// The waiting requests with all they carry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &PendingRequest> {
        self.requests.iter()
    }

    /// Removes and returns the request of `requester`.
    pub fn take(&mut self, requester: &AgentId) -> Option<PendingRequest> {
        let slot = self.requests.slot_of(requester)?;
        self.requests.remove(slot)
    }

    /// The waiting requests, oldest first.
    pub fn list(&self, now: Instant) -> Vec<PendingStatus> {
        self.requests
            .iter()
            .filter(|pending| now.saturating_duration_since(pending.received) < PENDING_TTL)
            .map(|pending| PendingStatus {
                id: pending.request.requester,
                name: escape_untrusted(&pending.request.name),
                justification: escape_untrusted(&pending.request.justification),
                requested: pending.request.requested.to_string(),
                age_s: now
                    .saturating_duration_since(pending.received)
                    .as_secs_f64(),
                from: pending.from,
                via_relay: pending.via_relay,
                endorsed_by: pending
                    .request
                    .endorsement
                    .as_ref()
                    .map(|endorsement| endorsement.fleet_key),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::policy::Policy;
    use crate::core::rng::core_rng;

    fn direct(i: u32) -> RequestSender {
        RequestSender::of_path(
            PathAddr::Direct(SocketAddr::from((i.to_be_bytes(), 7400))),
            None,
        )
    }

    fn request(seed: u8, nonce: u8) -> TrustRequest {
        TrustRequest {
            requester: Identity::from_secret_bytes(&[seed; 32])
                .expect("key")
                .agent_id(),
            target: Identity::from_secret_bytes(&[1; 32])
                .expect("key")
                .agent_id(),
            unix_time: 1_800_000_000,
            nonce: [nonce; 16],
            name: "r".into(),
            justification: String::new(),
            requested: Policy::All,
            candidates: Vec::new(),
            endorsement: None,
        }
    }

    #[test]
    fn one_origin_cannot_push_the_others_requests_out() {
        let mut pending = PendingRequests::default();
        let t0 = Instant::now();
        let operator_waits_for: SocketAddr = "198.51.100.7:7400".parse().expect("addr");
        pending.insert(t0, request(1, 1), RequestOrigin::direct(operator_waits_for));
        // Someone else's request through the same rendezvous as the flood,
        // from another address (another tag).
        let rendezvous: SocketAddr = "192.0.2.1:7400".parse().expect("addr");
        let relayed = |source_tag| RequestOrigin {
            from: rendezvous,
            via_relay: true,
            source_tag,
        };
        let other = request(4, 1);
        let other_requester = other.requester;
        pending.insert(t0, other, relayed(0x0a_0b0c));
        // The rendezvous relays requests from 10,000 fresh keys at one
        // address.
        for i in 0..10_000u32 {
            let mut flood = request(2, 1);
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&(i as u16).to_be_bytes());
            key[2] = 3;
            flood.requester = Identity::from_secret_bytes(&key).expect("key").agent_id();
            let at = t0 + Duration::from_millis(u64::from(i));
            pending.insert(at, flood, relayed(0x66_6666));
        }
        let listed = pending.list(t0 + Duration::from_secs(10));
        assert_eq!(listed.len(), 2 + MAX_PENDING_PER_ORIGIN);
        assert_eq!(listed[0].from, operator_waits_for, "still there");
        assert_eq!(listed[1].id, other_requester, "still there");
        assert!(listed[2..].iter().all(|status| status.from == rendezvous));
    }

    #[test]
    fn made_up_tags_take_at_most_one_addresss_share() {
        // A stranger spoofing a rendezvous' address, or a bad rendezvous,
        // writes a new tag on each request: together they hold at most
        // MAX_PENDING_PER_ADDRESS, and the direct requests stay.
        let mut pending = PendingRequests::default();
        let t0 = Instant::now();
        // From 100 networks (one network takes MAX_PENDING_PER_NETWORK).
        let direct: Vec<SocketAddr> = (1..=100u8)
            .map(|i| SocketAddr::from(([198, 51, i, 7], 7400)))
            .collect();
        for (i, from) in direct.iter().enumerate() {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&(i as u16).to_be_bytes());
            key[2] = 5;
            let mut asks = request(2, 1);
            asks.requester = Identity::from_secret_bytes(&key).expect("key").agent_id();
            pending.insert(t0, asks, RequestOrigin::direct(*from));
        }
        let rendezvous: SocketAddr = "192.0.2.1:7400".parse().expect("addr");
        for i in 0..10_000u32 {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&(i as u16).to_be_bytes());
            key[2] = 6;
            let mut flood = request(2, 1);
            flood.requester = Identity::from_secret_bytes(&key).expect("key").agent_id();
            let origin = RequestOrigin {
                from: rendezvous,
                via_relay: true,
                source_tag: i + 1,
            };
            pending.insert(t0 + Duration::from_millis(u64::from(i)), flood, origin);
        }
        let listed = pending.list(t0 + Duration::from_secs(10));
        let relayed = listed
            .iter()
            .filter(|status| status.from == rendezvous)
            .count();
        assert_eq!(relayed, MAX_PENDING_PER_ADDRESS);
        assert_eq!(listed.len(), direct.len() + MAX_PENDING_PER_ADDRESS);
        for from in &direct {
            assert!(
                listed.iter().any(|status| status.from == *from),
                "{from} pushed out"
            );
        }
    }

    /// A verified request from the `n`th fresh key (`kind` keeps sets of
    /// keys apart).
    fn fresh(kind: u8, n: u32) -> TrustRequest {
        let mut key = [kind; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let mut request = request(2, 1);
        request.requester = Identity::from_secret_bytes(&key).expect("key").agent_id();
        request.nonce[..4].copy_from_slice(&n.to_be_bytes());
        request
    }

    /// A direct source in the `n`th network (IPv4 /24).
    fn forged(n: u32) -> RequestOrigin {
        let [_, a, b, c] = n.to_be_bytes();
        RequestOrigin::direct(SocketAddr::from(([a.wrapping_add(11), b, c, 1], 7400)))
    }

    #[test]
    fn a_flood_from_forged_direct_sources_leaves_what_waited_before() {
        let mut pending = PendingRequests::default();
        let t0 = Instant::now();
        let honest = request(1, 1);
        let honest_id = honest.requester;
        let honest_from: SocketAddr = "198.51.100.7:7400".parse().expect("addr");
        let queued = pending.insert(t0, honest, RequestOrigin::direct(honest_from));
        assert_eq!(queued, Admission::Queued);
        // 10,000 requests, each with a fresh key from a forged source in a
        // network of its own: no per-origin or per-network cap applies.
        let flood = 10_000u32;
        let mut crowded = 0;
        for n in 0..flood {
            let at = t0 + Duration::from_millis(u64::from(n) * 5);
            if pending.insert(at, fresh(3, n), forged(n)) == Admission::Crowded {
                crowded += 1;
            }
        }
        let later = t0 + Duration::from_secs(60);
        let listed = pending.list(later);
        assert_eq!(listed.len(), MAX_PENDING_DIRECT);
        assert_eq!(listed[0].id, honest_id, "the honest request was pushed out");
        assert_eq!(crowded, flood as usize - (MAX_PENDING_DIRECT - 1));
        // The other half stays open: through a rendezvous, and approved.
        let rendezvous: SocketAddr = "192.0.2.1:7400".parse().expect("addr");
        let relayed = RequestOrigin {
            from: rendezvous,
            via_relay: true,
            source_tag: 7,
        };
        assert_eq!(
            pending.insert(later, request(4, 1), relayed),
            Admission::Queued
        );
        assert_eq!(
            pending.insert_approved(later, request(5, 1), forged(flood)),
            Admission::Queued
        );
        assert_eq!(
            pending.insert(later, request(6, 1), forged(flood + 1)),
            Admission::Crowded
        );
        assert_eq!(pending.list(later).len(), MAX_PENDING_DIRECT + 2);
    }

    #[test]
    fn a_request_crowded_out_leaves_its_nonce_to_its_copy_through_a_rendezvous() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for n in 0..MAX_PENDING_DIRECT as u32 {
            pending.insert(t0, fresh(3, n), forged(n));
        }
        let honest = request(1, 1);
        let direct_copy = RequestOrigin::direct("198.51.100.7:7400".parse().expect("addr"));
        assert_eq!(pending.check(t0, &honest, &mut rng), Admission::Queued);
        assert_eq!(
            pending.insert(t0, honest.clone(), direct_copy),
            Admission::Crowded
        );
        // The same request, relayed by the target's rendezvous.
        let relayed_copy = RequestOrigin {
            from: "192.0.2.1:7400".parse().expect("addr"),
            via_relay: true,
            source_tag: 7,
        };
        assert_eq!(pending.check(t0, &honest, &mut rng), Admission::Queued);
        assert_eq!(
            pending.insert(t0, honest.clone(), relayed_copy),
            Admission::Queued
        );
        // Queued now: a third copy is a replay.
        assert_eq!(pending.check(t0, &honest, &mut rng), Admission::Replayed);
    }

    #[test]
    fn a_crowded_out_request_leaves_its_requesters_earlier_one_waiting() {
        let mut pending = PendingRequests::default();
        let t0 = Instant::now();
        let relayed = RequestOrigin {
            from: "192.0.2.1:7400".parse().expect("addr"),
            via_relay: true,
            source_tag: 7,
        };
        assert_eq!(
            pending.insert(t0, request(1, 1), relayed),
            Admission::Queued
        );
        for n in 0..MAX_PENDING_DIRECT as u32 {
            pending.insert(t0, fresh(3, n), forged(n));
        }
        // The same requester asks again, straight, with a new nonce: the
        // direct share is full, so the new request is refused, and the one
        // that came through the rendezvous still waits.
        let again = RequestOrigin::direct("198.51.100.7:7400".parse().expect("addr"));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pending.insert(t1, request(1, 2), again), Admission::Crowded);
        let listed = pending.list(t1);
        assert_eq!(listed.len(), MAX_PENDING_DIRECT + 1);
        let requester = request(1, 1).requester;
        assert!(
            listed
                .iter()
                .any(|waiting| waiting.id == requester && waiting.via_relay),
            "the relayed request waits"
        );
        pending.requests.assert_counts();
    }

    #[test]
    fn one_network_takes_at_most_its_share_of_the_direct_requests() {
        // One site floods without forging anything: from 10,000 addresses
        // of its IPv4 /24, or 10,000 /64s of its IPv6 /48.
        for (site, address) in [
            (
                "203.0.113.0/24",
                (|n: u32| SocketAddr::from(([203, 0, 113, n as u8], 7400)))
                    as fn(u32) -> SocketAddr,
            ),
            ("2001:db8:1::/48", |n: u32| {
                let [_, _, a, b] = n.to_be_bytes();
                let ip = std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    1,
                    u16::from_be_bytes([a, b]),
                    0,
                    0,
                    0,
                    1,
                );
                SocketAddr::from((ip, 7400))
            }),
        ] {
            let mut pending = PendingRequests::default();
            let t0 = Instant::now();
            let honest = request(1, 1);
            let honest_id = honest.requester;
            pending.insert(t0, honest, forged(1_000_000));
            for n in 0..10_000u32 {
                let at = t0 + Duration::from_millis(u64::from(n));
                let queued = pending.insert(at, fresh(3, n), RequestOrigin::direct(address(n)));
                assert_eq!(queued, Admission::Queued, "{site}: replaces its own");
            }
            let later = t0 + Duration::from_secs(60);
            let listed = pending.list(later);
            assert_eq!(listed.len(), 1 + MAX_PENDING_PER_NETWORK, "{site}");
            assert_eq!(listed[0].id, honest_id, "{site}");
            // Others still find room.
            assert_eq!(
                pending.insert(later, request(4, 1), forged(2_000_000)),
                Admission::Queued,
                "{site}"
            );
        }
    }

    #[test]
    fn the_lists_counts_follow_any_mix_of_arrivals_and_removals() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([9; 32]);
        let t0 = Instant::now();
        let rendezvous: SocketAddr = "192.0.2.1:7400".parse().expect("addr");
        let (mut crowded, mut full) = (0, false);
        for step in 0..3_000u32 {
            let now = t0 + Duration::from_secs(u64::from(step) * 300);
            // Few keys, origins and networks, so every rule gets its turn
            // (and the TTL too: the clock moves 5 minutes a step).
            let key = rng.next_u32() % 400;
            let origin = match rng.next_u32() % 4 {
                0 => RequestOrigin {
                    from: rendezvous,
                    via_relay: true,
                    source_tag: rng.next_u32() % 80,
                },
                1 => forged(rng.next_u32() % 300),
                _ => forged(rng.next_u32() % 8 * 256 + rng.next_u32() % 4),
            };
            let admission = match rng.next_u32() % 8 {
                0 => {
                    pending.take(&fresh(4, key).requester);
                    Admission::Queued
                }
                1 => pending.insert_approved(now, fresh(4, key), origin),
                _ => pending.insert(now, fresh(4, key), origin),
            };
            crowded += usize::from(admission == Admission::Crowded);
            pending.requests.assert_counts();
            assert!(pending.requests.len() <= MAX_PENDING);
            full |= pending.requests.len() == MAX_PENDING;
        }
        assert!(full && crowded > 0, "{crowded}");
    }

    #[test]
    fn the_list_escapes_what_the_requester_wrote() {
        let mut pending = PendingRequests::default();
        let t0 = Instant::now();
        let mut hostile = request(2, 1);
        hostile.justification = "nightly logs\n\u{1b}[2J\u{9b}31m\u{202e}".into();
        let from = "192.0.2.1:7400".parse().expect("addr");
        pending.insert(t0, hostile, RequestOrigin::direct(from));
        let listed = pending.list(t0);
        assert_eq!(
            listed[0].justification,
            "nightly logs\\u{a}\\u{1b}[2J\\u{9b}31m\\u{202e}"
        );
        assert_eq!(listed[0].name, "r");
    }

    #[test]
    fn new_source_is_admitted_while_many_fresh_sources_are_tracked() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let _ = pending.allow_verification(t0, &direct(i), &mut rng);
        }
        // The global budget is spent by now; a second later a newcomer goes.
        let later = t0 + Duration::from_secs(1);
        let newcomer = RequestSender::Address("198.51.100.7".parse().expect("ip"));
        assert_eq!(
            pending.allow_verification(later, &newcomer, &mut rng),
            Ok(())
        );
    }

    #[test]
    fn flood_of_new_sources_costs_one_bucket_per_datagram() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        // Fill far past the old 8,192-entry table, then 100,000 more.
        for i in 0..50_000u32 {
            let _ = pending.allow_verification(t0, &direct(i), &mut rng);
        }
        let before = pending.sender_buckets_touched();
        for i in 50_000..150_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            let _ = pending.allow_verification(now, &direct(i), &mut rng);
        }
        assert_eq!(pending.sender_buckets_touched() - before, 100_000);
        assert_eq!(pending.by_sender.buckets(), LIMITER_BUCKETS);
    }

    #[test]
    fn one_sender_is_limited_and_the_global_budget_caps_verifications() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let one = direct(1);
        let passed = (0..20)
            .filter(|_| pending.allow_verification(t0, &one, &mut rng).is_ok())
            .count();
        assert_eq!(passed, REQUESTS_PER_MINUTE as usize);
        // Many senders at one instant: at most the budget is verified.
        let passed = (100..10_000)
            .filter(|i| {
                pending
                    .allow_verification(t0, &direct(*i), &mut rng)
                    .is_ok()
            })
            .count();
        assert!(passed <= VERIFICATIONS_PER_SECOND as usize, "{passed}");
        assert!(passed >= VERIFICATIONS_PER_SECOND as usize - 10, "{passed}");
    }

    #[test]
    fn relayed_senders_are_told_apart_by_node_not_by_rendezvous() {
        let relay: SocketAddr = "10.0.2.1:7400".parse().expect("addr");
        let a = RequestSender::of_path(PathAddr::Relay(relay), Some(NodeId([1; 8])));
        let b = RequestSender::of_path(PathAddr::Relay(relay), Some(NodeId([2; 8])));
        assert_ne!(a, b);
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        while pending.allow_verification(t0, &a, &mut rng).is_ok() {}
        assert_eq!(pending.allow_verification(t0, &b, &mut rng), Ok(()));
    }

    #[test]
    fn replay_set_is_bounded_and_swept_a_few_entries_at_a_time() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let mut queued = 0;
        for i in 0..(MAX_NONCES as u32 + 100) {
            let mut request = request(2, 0);
            request.nonce[..4].copy_from_slice(&i.to_be_bytes());
            request.requester = Identity::from_secret_bytes(&[(i % 251) as u8 + 2; 32])
                .expect("key")
                .agent_id();
            // Each requester's own rate: spread over time.
            let now = t0 + Duration::from_millis(u64::from(i) * 50);
            if pending.check(now, &request, &mut rng) == Admission::Queued {
                queued += 1;
            }
        }
        assert!(pending.nonces.order.len() <= MAX_NONCES);
        assert!(pending.nonces.expiry.len() <= MAX_NONCES);
        assert!(queued > 0);
        // A full set does not lock the next requester out.
        let next = t0 + Duration::from_millis(u64::from(MAX_NONCES as u32 + 100) * 50);
        assert_eq!(pending.nonces.order.len(), MAX_NONCES);
        assert_eq!(
            pending.check(next, &request(77, 9), &mut rng),
            Admission::Queued,
            "a full replay set refused a fresh request"
        );
        assert_eq!(pending.nonces.order.len(), MAX_NONCES);
        // Long after, every insertion sweeps at most a few entries.
        let later = t0 + Duration::from_secs(3600);
        let before = pending.nonce_sweep_steps();
        pending.check(later, &request(99, 1), &mut rng);
        assert!(pending.nonce_sweep_steps() - before <= NONCE_SWEEP_STEPS as u64);
        pending.expire(later);
        assert_eq!(pending.nonces.order.len(), 1);
    }

    #[test]
    fn seen_nonces_survive_a_restart() {
        let mut pending = PendingRequests::default();
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let approved = request(3, 7);
        assert_eq!(pending.check(t0, &approved, &mut rng), Admission::Queued);
        // The operator approves: the request leaves the queue, its nonce
        // stays; the shell saves it.
        let saved: Vec<SeenNonce> = pending.seen_nonces(t0).collect();
        assert_eq!(saved.len(), 1);
        let mut restarted = PendingRequests::default();
        let t1 = t0 + Duration::from_secs(1);
        for seen in saved {
            restarted.restore_seen_nonce(t1, seen);
        }
        assert_eq!(
            restarted.check(t1, &approved, &mut rng),
            Admission::Replayed
        );
        assert!(restarted.seen_nonces(t1 + NONCE_LIFETIME).next().is_none());
    }
}
