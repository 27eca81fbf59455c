//! Trust requests received and waiting for an operator (DESIGN.md §4), with
//! the abuse limits around them: per-source and per-requester rate limits, a
//! replay set of nonces, a bounded queue with a TTL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::identity::AgentId;
use super::trust_request::{MAX_CLOCK_SKEW, TrustRequest};

/// Most requests waiting at once; the oldest goes first.
pub const MAX_PENDING: usize = 256;
/// How long a request waits before it expires.
pub const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Requests accepted per requester key or source address per window.
const REQUESTS_PER_WINDOW: u32 = 5;
/// Length of a rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Most rate-limit and nonce entries kept (older ones are swept first).
const MAX_TRACKED: usize = 8192;

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
    /// When it arrived.
    pub received: Instant,
}

/// A pending request as shown to the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// Requester's agent ID.
    pub id: AgentId,
    /// Name the requester claims.
    pub name: String,
    /// Why it asks.
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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    window_start: Instant,
    count: u32,
}

/// Rate limits keyed by something (source address or requester key).
#[derive(Debug)]
struct RateLimiter<K> {
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Copy> RateLimiter<K> {
    fn new() -> Self {
        Self {
            buckets: HashMap::new(),
        }
    }

    /// Counts one event; false when over the limit.
    fn allow(&mut self, now: Instant, key: K) -> bool {
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, bucket| {
                now.saturating_duration_since(bucket.window_start) < RATE_WINDOW
            });
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            window_start: now,
            count: 0,
        });
        if now.saturating_duration_since(bucket.window_start) >= RATE_WINDOW {
            *bucket = Bucket {
                window_start: now,
                count: 0,
            };
        }
        bucket.count += 1;
        bucket.count <= REQUESTS_PER_WINDOW
    }
}

/// Outcome of offering a verified request to the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queued (or replaced an older request from the same requester).
    Queued,
    /// The nonce was seen before.
    Replayed,
    /// The requester is over its rate.
    RateLimited,
}

/// Pending requests and their limits.
#[derive(Debug)]
pub struct PendingRequests {
    requests: Vec<PendingRequest>,
    by_source: RateLimiter<IpAddr>,
    by_requester: RateLimiter<AgentId>,
    nonces: HashMap<(AgentId, [u8; 16]), Instant>,
}

impl Default for PendingRequests {
    fn default() -> Self {
        Self {
            requests: Vec::new(),
            by_source: RateLimiter::new(),
            by_requester: RateLimiter::new(),
            nonces: HashMap::new(),
        }
    }
}

impl PendingRequests {
    /// Cheap check before any cryptography: is this source over its rate?
    pub fn allow_source(&mut self, now: Instant, from: SocketAddr) -> bool {
        self.by_source.allow(now, from.ip())
    }

    /// Checks replay and per-requester rate, remembering the nonce.
    pub fn check(&mut self, now: Instant, request: &TrustRequest) -> Admission {
        let key = (request.requester, request.nonce);
        if self.nonces.contains_key(&key) {
            return Admission::Replayed;
        }
        if !self.by_requester.allow(now, request.requester) {
            return Admission::RateLimited;
        }
        if self.nonces.len() >= MAX_TRACKED {
            // A nonce older than twice the skew cannot come back: its
            // timestamp would be stale.
            self.nonces
                .retain(|_, seen| now.saturating_duration_since(*seen) < 2 * MAX_CLOCK_SKEW);
            if self.nonces.len() >= MAX_TRACKED {
                return Admission::RateLimited;
            }
        }
        self.nonces.insert(key, now);
        Admission::Queued
    }

    /// Queues a verified request, replacing an older one from the same
    /// requester and evicting the oldest when full.
    pub fn insert(
        &mut self,
        now: Instant,
        request: TrustRequest,
        from: SocketAddr,
        via_relay: bool,
    ) {
        self.expire(now);
        self.requests
            .retain(|pending| pending.request.requester != request.requester);
        if self.requests.len() >= MAX_PENDING {
            self.requests.remove(0);
        }
        self.requests.push(PendingRequest {
            request,
            from,
            via_relay,
            received: now,
        });
    }

    /// Drops requests older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        self.requests
            .retain(|pending| now.saturating_duration_since(pending.received) < PENDING_TTL);
    }

    /// Puts back a request saved before a restart (it was verified when it
    /// arrived). Its nonce joins the replay set; the bound and the TTL apply
    /// as to a new one.
    pub fn restore(&mut self, now: Instant, pending: PendingRequest) {
        if now.saturating_duration_since(pending.received) >= PENDING_TTL {
            return;
        }
        if self.nonces.len() < MAX_TRACKED {
            self.nonces.insert(
                (pending.request.requester, pending.request.nonce),
                pending.received,
            );
        }
        self.requests
            .retain(|queued| queued.request.requester != pending.request.requester);
        if self.requests.len() >= MAX_PENDING {
            self.requests.remove(0);
        }
        let position = self
            .requests
            .partition_point(|queued| queued.received <= pending.received);
        self.requests.insert(position, pending);
    }

    /// The waiting requests with all they carry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &PendingRequest> {
        self.requests.iter()
    }

    /// Removes and returns the request of `requester`.
    pub fn take(&mut self, requester: &AgentId) -> Option<PendingRequest> {
        let position = self
            .requests
            .iter()
            .position(|pending| pending.request.requester == *requester)?;
        Some(self.requests.remove(position))
    }

    /// The waiting requests, oldest first.
    pub fn list(&self, now: Instant) -> Vec<PendingStatus> {
        self.requests
            .iter()
            .filter(|pending| now.saturating_duration_since(pending.received) < PENDING_TTL)
            .map(|pending| PendingStatus {
                id: pending.request.requester,
                name: pending.request.name.clone(),
                justification: pending.request.justification.clone(),
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
