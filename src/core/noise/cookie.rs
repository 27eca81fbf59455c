//! Cookies (DESIGN.md §2, type 3), as in WireGuard: the defence of a
//! responder against floods of handshake initiations.
//!
//! An initiation with a valid mac1 costs the responder four Diffie-Hellman
//! operations before it even knows who sent it. Whoever knows an agent's
//! public key can make valid mac1s, so under a flood the responder stops
//! doing that work for strangers:
//!
//! - **Under load** (more than [`DEFAULT_LOAD_THRESHOLD`] initiations with a
//!   valid mac1 in one second, and for [`LOAD_HOLD`] after), an initiation
//!   whose mac2 does not verify gets a *cookie reply* instead of an answer:
//!   `[3,0,0,0] ‖ receiver index ‖ 24-byte nonce ‖ XChaCha20-Poly1305(cookie)`,
//!   keyed by a hash of the responder's static key, with the initiation's
//!   mac1 as associated data (so only the sender of that initiation, who
//!   knows the key, can read it, and an observer cannot replay it).
//! - The **cookie** is `BLAKE2s-128(secret, source)`, the secret random and
//!   replaced every [`COOKIE_SECRET_LIFETIME`]: it proves that the initiator
//!   receives packets at the source address it sends from.
//! - The **initiator** keeps the cookie for [`COOKIE_LIFETIME`] and sets
//!   `mac2 = BLAKE2s-128(cookie, message up to mac2)` on its next initiations.
//! - Under load, only initiations with a valid mac2 go on to the handshake,
//!   and at most [`SOURCE_RATE`] per second (burst [`SOURCE_BURST`]) from one
//!   source: a flood from spoofed addresses costs one BLAKE2s and one
//!   XChaCha20 per datagram, never a Diffie-Hellman.
//! - Cookie replies themselves are limited: [`COOKIE_REPLY_RATE`] per
//!   second from each of [`COOKIE_REPLY_BUCKETS`] buckets a source hashes
//!   to. A flood from one address gets a handful of replies, a flood from
//!   spoofed addresses at most ~20,000 a second in all, and the responder
//!   spends its time on the traffic of its peers instead of answering.
//!
//! - A cookie reply goes only where a trusted peer already is (the node
//!   decides, see [`crate::core::node::known_sources`]): a relayed initiation whose
//!   envelope names a trusted peer's node, or a direct one from a trusted
//!   peer's endpoint or candidate. Anything else is dropped without a reply
//!   ([`InitiationVerdict::UnknownSource`]), so a stranger that pushes the
//!   node under load still learns nothing about where the agent is.
//!
//! Without load nothing changes: mac2 is ignored and no cookie reply is ever
//! sent. Responses (type 2) need no cookie: they are matched to one of our
//! own in-flight session indices before any cryptography.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::Blake2sMac;
use blake2::digest::Mac as _;
use blake2::digest::consts::U16;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::core::address::{NetworkId, NodeId};
use crate::core::limit::{KeyedLimiter, Rate, address_key};
use crate::core::noise::mac::{constant_time_eq, responder_key};
use crate::core::wire::path::PathAddr;
use crate::core::wire::{self, COOKIE_REPLY_LEN, MAC_LEN, MACS_LEN, TAG_LEN, TYPE_COOKIE_REPLY};

/// Domain-separation label of the key that seals cookie replies.
const COOKIE_KEY_LABEL: &[u8] = b"agentnet cookie v1";
/// Length of the cookie reply nonce (XChaCha20).
pub const COOKIE_NONCE_LEN: usize = 24;
/// How long one cookie secret is used before a fresh one replaces it.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it received: a little under the
/// secret's lifetime, so a cookie is not used after the secret changed.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120 - 5);
/// Initiations with a valid mac1 per second above which a responder is
/// under load. Legitimate traffic is a few per peer every two minutes; a
/// Diffie-Hellman costs about 30 µs, so this many cost ~2 % of a core.
pub const DEFAULT_LOAD_THRESHOLD: u32 = 128;
/// How long a responder stays under load after the rate last exceeded the
/// threshold.
pub const LOAD_HOLD: Duration = Duration::from_secs(1);
/// The window over which the rate of initiations is counted.
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// Initiations with a valid mac2 processed per second from one source while
/// under load (WireGuard's value).
pub const SOURCE_RATE: f64 = 20.0;
/// Burst allowance of [`SOURCE_RATE`].
pub const SOURCE_BURST: f64 = 5.0;
/// Buckets of the per-source limiter ([`KeyedLimiter`]: fixed memory, O(1)
/// per initiation; sources that hash to one bucket share its rate).
pub const MAX_LIMITED_SOURCES: usize = 4096;
/// Buckets of the cookie-reply limiter. A source (IP address, or relayed
/// node) maps to one by a secret hash; sources that share a bucket share its
/// rate. Fixed size: no state per source, so spoofed addresses cost nothing.
pub const COOKIE_REPLY_BUCKETS: usize = 4096;
/// Cookie replies per second from one bucket (burst as many). A legitimate
/// initiator needs one cookie per two minutes; a flood from one address gets
/// this many replies, and all buckets together bound the replies a spoofed
/// flood gets to 20,480 per second.
pub const COOKIE_REPLY_RATE: f32 = 5.0;

/// A cookie: what mac2 is keyed with.
pub type Cookie = [u8; MAC_LEN];

type Blake2sMac128 = Blake2sMac<U16>;

fn keyed_mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes, always valid for BLAKE2s.
    let Ok(mut mac) = <Blake2sMac128 as blake2::digest::KeyInit>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    for part in parts {
        mac.update(part);
    }
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// The key cookie replies *from* the agent with this Noise static key are
/// sealed with. Public knowledge for whoever knows the key, like mac1's.
#[derive(Clone)]
pub struct CookieReplyKey([u8; 32]);

impl std::fmt::Debug for CookieReplyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieReplyKey(..)")
    }
}

impl CookieReplyKey {
    /// The reply key of the responder with this Noise static public key.
    pub fn for_responder(network: NetworkId, noise_public_key: &[u8; 32]) -> Self {
        Self(responder_key(COOKIE_KEY_LABEL, network, noise_public_key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// mac1 of a whole handshake message (the cookie reply's associated data).
fn mac1_of(message: &[u8]) -> Option<&[u8]> {
    let at = message.len().checked_sub(MACS_LEN)?;
    message.get(at..at + MAC_LEN)
}

/// mac2 of a handshake message under `cookie`: over everything before mac2.
pub fn compute_mac2(cookie: &Cookie, message: &[u8]) -> Option<[u8; MAC_LEN]> {
    let covered = message.get(..message.len().checked_sub(MAC_LEN)?)?;
    Some(keyed_mac(cookie, &[covered]))
}

/// Where an initiation came from, as far as cookies are concerned: the
/// address the cookie proves the initiator receives at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeSource {
    /// Straight from this underlay endpoint.
    Direct(SocketAddr),
    /// Through a rendezvous relay, from the node the relay named.
    Relayed {
        /// The relay's endpoint.
        relay: SocketAddr,
        /// The sending node.
        node: NodeId,
    },
}

/// What the per-source limiter counts: an IP address as [`address_key`]
/// folds it (ports are free to choose, and so are the addresses in one's
/// IPv6 /64), or a relayed node (the relay already limits its source IPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LimiterKey {
    Ip(IpAddr),
    Node(NodeId),
}

impl HandshakeSource {
    /// The source of a datagram that arrived along `path` (`relayed_by`: the
    /// node a relay named as its sender).
    pub fn of_path(path: PathAddr, relayed_by: Option<NodeId>) -> Self {
        match (path, relayed_by) {
            (PathAddr::Relay(relay), node) => HandshakeSource::Relayed {
                relay,
                node: node.unwrap_or(NodeId([0; 8])),
            },
            (PathAddr::Direct(address) | PathAddr::Probe(_, address), _) => {
                HandshakeSource::Direct(address)
            }
        }
    }

    /// The bytes a cookie is computed over.
    fn cookie_input(&self) -> Vec<u8> {
        fn put_endpoint(out: &mut Vec<u8>, address: &SocketAddr) {
            let ip = match address.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(&address.port().to_le_bytes());
        }
        let mut out = Vec::with_capacity(1 + 18 + 8);
        match self {
            HandshakeSource::Direct(address) => {
                out.push(0);
                put_endpoint(&mut out, address);
            }
            HandshakeSource::Relayed { relay, node } => {
                out.push(1);
                put_endpoint(&mut out, relay);
                out.extend_from_slice(&node.0);
            }
        }
        out
    }

    fn limiter_key(&self) -> LimiterKey {
        match self {
            HandshakeSource::Direct(address) => LimiterKey::Ip(address_key(address.ip())),
            HandshakeSource::Relayed { node, .. } => LimiterKey::Node(*node),
        }
    }
}

/// What a responder does with an initiation whose mac1 verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiationVerdict {
    /// Go on with the handshake.
    Process,
    /// Under load and no valid mac2: send this cookie reply, do nothing else.
    SendCookie(Vec<u8>),
    /// Under load, valid mac2, but the source is over its rate: drop.
    RateLimited,
    /// Under load, no valid mac2, and the source got its share of cookie
    /// replies: drop without a reply (a flood is not answered at its rate).
    CookieRateLimited,
    /// Under load, no valid mac2, and the source is no trusted peer's
    /// address or node: drop without a reply (a reply would tell a stranger
    /// that this address holds the agent).
    UnknownSource,
}

/// The responder side: load detection, cookie secret, mac2 checks, cookie
/// replies and the per-source limiter. Memory is bounded: both limiters are
/// fixed arrays of hashed buckets ([`KeyedLimiter`]), so no initiation does
/// work that grows with the number of sources.
pub struct CookieResponder {
    reply_key: CookieReplyKey,
    secret: Option<(Zeroizing<[u8; 32]>, Instant)>,
    threshold: u32,
    window_start: Option<Instant>,
    window_count: u32,
    under_load_until: Option<Instant>,
    sources: KeyedLimiter,
    replies: KeyedLimiter,
}

impl std::fmt::Debug for CookieResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieResponder")
            .field("threshold", &self.threshold)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl CookieResponder {
    /// The responder of the agent with this Noise static public key.
    pub fn new(network: NetworkId, own_noise_public_key: &[u8; 32]) -> Self {
        Self {
            reply_key: CookieReplyKey::for_responder(network, own_noise_public_key),
            secret: None,
            threshold: DEFAULT_LOAD_THRESHOLD,
            window_start: None,
            window_count: 0,
            under_load_until: None,
            sources: KeyedLimiter::new(
                // Whole numbers: the casts are exact.
                Rate::per_second(SOURCE_RATE as u32, SOURCE_BURST as u32),
                MAX_LIMITED_SOURCES,
            ),
            replies: KeyedLimiter::new(
                Rate::per_second(COOKIE_REPLY_RATE as u32, COOKIE_REPLY_RATE as u32),
                COOKIE_REPLY_BUCKETS,
            ),
        }
    }

    /// Sets how many initiations per second mean "under load" (0: always
    /// under load, for tests; `u32::MAX`: never).
    pub fn set_load_threshold(&mut self, per_second: u32) {
        self.threshold = per_second;
    }

    /// Whether the responder is under load at `now`.
    pub fn is_under_load(&self, now: Instant) -> bool {
        self.threshold == 0 || self.under_load_until.is_some_and(|until| now < until)
    }

    /// Buckets of the per-source limiter allocated (0 until first used
    /// under load, then [`MAX_LIMITED_SOURCES`]).
    pub fn tracked_sources(&self) -> usize {
        self.sources.buckets()
    }

    /// Counts one initiation with a valid mac1 towards the load.
    fn count_initiation(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < LOAD_WINDOW => {
                self.window_count = self.window_count.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.window_count = 1;
            }
        }
        if self.window_count > self.threshold {
            self.under_load_until = Some(now + LOAD_HOLD);
        }
    }

    fn cookie_for(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        source: &HandshakeSource,
    ) -> Cookie {
        let stale = self
            .secret
            .as_ref()
            .is_none_or(|(_, born)| now.saturating_duration_since(*born) >= COOKIE_SECRET_LIFETIME);
        if stale {
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut secret[..]);
            self.secret = Some((secret, now));
        }
        match &self.secret {
            Some((secret, _)) => keyed_mac(&secret[..], &[&source.cookie_input()]),
            None => [0; MAC_LEN],
        }
    }

    /// Decides about an initiation (`message`: the whole datagram) whose mac1
    /// the caller verified. Counts it towards the load; under load, checks
    /// mac2 and the source's rate, or builds the cookie reply. A cookie
    /// reply may go to any source: the node uses
    /// [`CookieResponder::admit_replying_only_to`] instead.
    pub fn admit(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        source: &HandshakeSource,
        message: &[u8],
        sender_index: u32,
    ) -> InitiationVerdict {
        self.admit_replying_only_to(now, rng, source, message, sender_index, || true)
    }

    /// [`CookieResponder::admit`], but a cookie reply goes back only when
    /// `may_reply` (asked only then) says its source belongs to a trusted
    /// identity; otherwise the initiation is dropped without any reply
    /// ([`InitiationVerdict::UnknownSource`]), before it costs a reply token.
    pub fn admit_replying_only_to(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        source: &HandshakeSource,
        message: &[u8],
        sender_index: u32,
        may_reply: impl FnOnce() -> bool,
    ) -> InitiationVerdict {
        self.count_initiation(now);
        if !self.is_under_load(now) {
            return InitiationVerdict::Process;
        }
        // An all-zero mac2 is "no cookie": a flood without cookies costs
        // one hash for its bucket here, and no BLAKE2s at all.
        let received_mac2 = message
            .get(message.len().saturating_sub(MAC_LEN)..)
            .filter(|mac2| mac2.len() == MAC_LEN && mac2.iter().any(|byte| *byte != 0));
        let mac2_valid = received_mac2.is_some_and(|received| {
            let cookie = self.cookie_for(now, rng, source);
            compute_mac2(&cookie, message)
                .is_some_and(|expected| constant_time_eq(&expected, received))
        });
        if !mac2_valid {
            if !may_reply() {
                return InitiationVerdict::UnknownSource;
            }
            if !self.take_reply_token(now, rng, source) {
                return InitiationVerdict::CookieRateLimited;
            }
            let cookie = self.cookie_for(now, rng, source);
            return match self.cookie_reply(rng, &cookie, message, sender_index) {
                Some(reply) => InitiationVerdict::SendCookie(reply),
                None => InitiationVerdict::CookieRateLimited,
            };
        }
        if self.sources.take(now, &source.limiter_key(), rng) {
            InitiationVerdict::Process
        } else {
            InitiationVerdict::RateLimited
        }
    }

    fn cookie_reply(
        &self,
        rng: &mut impl RngCore,
        cookie: &Cookie,
        message: &[u8],
        sender_index: u32,
    ) -> Option<Vec<u8>> {
        let mac1 = mac1_of(message)?;
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut sealed = *cookie;
        let tag = self
            .reply_key
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut sealed)
            .ok()?;
        let mut reply = Vec::with_capacity(COOKIE_REPLY_LEN);
        reply.extend_from_slice(&[TYPE_COOKIE_REPLY, 0, 0, 0]);
        reply.extend_from_slice(&sender_index.to_le_bytes());
        reply.extend_from_slice(&nonce);
        reply.extend_from_slice(&sealed);
        reply.extend_from_slice(&tag);
        Some(reply)
    }

    fn take_reply_token(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        source: &HandshakeSource,
    ) -> bool {
        self.replies.take(now, &source.limiter_key(), rng)
    }

    /// Housekeeping: nothing to forget any more (the limiters are fixed
    /// arrays); kept so callers need not know.
    pub fn expire(&mut self, _now: Instant) {}
}

/// The initiator side, one per peer: the cookie last received from it and
/// the mac1 of the initiation in flight (a cookie reply answers that one).
#[derive(Default)]
pub struct InitiatorCookie {
    cookie: Option<(Cookie, Instant)>,
    in_flight: Option<(u32, [u8; MAC_LEN])>,
}

impl std::fmt::Debug for InitiatorCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorCookie")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a cookie reply was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieReplyError {
    /// It does not answer the initiation in flight.
    #[error("cookie reply for no initiation in flight")]
    NotInFlight,
    /// It did not decrypt (wrong key, tampered, or for another initiation).
    #[error("cookie reply does not decrypt")]
    Decrypt,
}

impl InitiatorCookie {
    /// Whether a cookie is held and fresh at `now`.
    pub fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.fresh_cookie(now).is_some()
    }

    fn fresh_cookie(&self, now: Instant) -> Option<&Cookie> {
        self.cookie
            .as_ref()
            .filter(|(_, received)| now.saturating_duration_since(*received) < COOKIE_LIFETIME)
            .map(|(cookie, _)| cookie)
    }

    /// Prepares an initiation datagram (mac1 already sealed) for sending:
    /// sets mac2 with a fresh cookie (else leaves it zero), and remembers its
    /// mac1 for the cookie reply that may answer it.
    pub fn stamp(&mut self, now: Instant, local_index: u32, datagram: &mut [u8]) {
        let Some(mac1) = mac1_of(datagram).and_then(|mac1| <[u8; MAC_LEN]>::try_from(mac1).ok())
        else {
            return;
        };
        self.in_flight = Some((local_index, mac1));
        if let Some(mac2) = self
            .fresh_cookie(now)
            .and_then(|cookie| compute_mac2(cookie, datagram))
        {
            let at = datagram.len() - MAC_LEN;
            datagram[at..].copy_from_slice(&mac2);
        }
    }

    /// Takes the cookie from a reply (`body`: nonce and sealed cookie) to the
    /// initiation with `local_index`, sealed by the responder's `key`.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        local_index: u32,
        body: &[u8],
        key: &CookieReplyKey,
    ) -> Result<(), CookieReplyError> {
        let Some((index, mac1)) = self.in_flight else {
            return Err(CookieReplyError::NotInFlight);
        };
        if index != local_index {
            return Err(CookieReplyError::NotInFlight);
        }
        if body.len() != COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN {
            return Err(CookieReplyError::Decrypt);
        }
        let (nonce, rest) = body.split_at(COOKIE_NONCE_LEN);
        let (sealed, tag) = rest.split_at(MAC_LEN);
        let mut cookie = [0u8; MAC_LEN];
        cookie.copy_from_slice(sealed);
        key.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &mac1,
                &mut cookie,
                Tag::from_slice(tag),
            )
            .map_err(|_| CookieReplyError::Decrypt)?;
        self.cookie = Some((cookie, now));
        // One cookie per initiation: a replayed reply changes nothing.
        self.in_flight = None;
        Ok(())
    }
}

/// The length check of a type-3 datagram, for callers holding raw bytes.
pub fn is_cookie_reply(datagram: &[u8]) -> bool {
    datagram.len() == COOKIE_REPLY_LEN && datagram.first() == Some(&wire::TYPE_COOKIE_REPLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::noise::mac::Mac1Key;
    use crate::core::rng::core_rng;
    use crate::core::wire::Datagram;

    const NETWORK_NAME: &str = "agentnet";

    fn network() -> NetworkId {
        NetworkId::from_name(NETWORK_NAME)
    }

    fn responder_key() -> [u8; 32] {
        [9; 32]
    }

    /// A mac1-sealed initiation-shaped message to the responder.
    fn initiation(fill: u8) -> Vec<u8> {
        let mut message = vec![fill; 8 + wire::MIN_NOISE_INITIATION_LEN + 40 + MACS_LEN];
        message[..4].copy_from_slice(&[wire::TYPE_INITIATION, 0, 0, 0]);
        Mac1Key::for_responder(network(), &responder_key()).seal(&mut message);
        message
    }

    fn source() -> HandshakeSource {
        HandshakeSource::Direct("192.0.2.7:7400".parse().expect("addr"))
    }

    fn body_of(reply: &[u8]) -> &[u8] {
        match Datagram::parse(reply) {
            Ok(Datagram::CookieReply(reply)) => reply.body(),
            other => panic!("not a cookie reply: {other:?}"),
        }
    }

    #[test]
    fn no_load_means_no_cookie_and_mac2_is_ignored() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for i in 0..DEFAULT_LOAD_THRESHOLD {
            let verdict = responder.admit(t0, &mut rng, &source(), &initiation(1), i);
            assert_eq!(verdict, InitiationVerdict::Process);
        }
        assert!(!responder.is_under_load(t0));
    }

    #[test]
    fn over_threshold_answers_with_cookie_then_accepts_mac2() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(4);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(
                responder.admit(t0, &mut rng, &source(), &initiation(1), i),
                InitiationVerdict::Process
            );
        }
        let mut initiator = InitiatorCookie::default();
        let mut message = initiation(2);
        initiator.stamp(t0, 77, &mut message);
        let InitiationVerdict::SendCookie(reply) =
            responder.admit(t0, &mut rng, &source(), &message, 77)
        else {
            panic!("under load an initiation without mac2 gets a cookie");
        };
        assert!(is_cookie_reply(&reply));
        assert_eq!(
            u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]),
            77
        );
        let key = CookieReplyKey::for_responder(network(), &responder_key());
        initiator
            .handle_reply(t0, 77, body_of(&reply), &key)
            .expect("cookie reply opens");
        assert!(initiator.has_fresh_cookie(t0));

        let mut retry = initiation(3);
        initiator.stamp(t0, 78, &mut retry);
        assert_eq!(
            responder.admit(t0, &mut rng, &source(), &retry, 78),
            InitiationVerdict::Process
        );
        // The cookie is bound to the source address.
        let elsewhere = HandshakeSource::Direct("192.0.2.8:7400".parse().expect("addr"));
        assert!(matches!(
            responder.admit(t0, &mut rng, &elsewhere, &retry, 78),
            InitiationVerdict::SendCookie(_)
        ));
    }

    #[test]
    fn load_ends_after_the_hold_time() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(2);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for i in 0..3 {
            responder.admit(t0, &mut rng, &source(), &initiation(1), i);
        }
        assert!(responder.is_under_load(t0));
        assert!(responder.is_under_load(t0 + LOAD_HOLD - Duration::from_millis(1)));
        assert!(!responder.is_under_load(t0 + LOAD_HOLD));
        assert_eq!(
            responder.admit(t0 + LOAD_HOLD * 2, &mut rng, &source(), &initiation(1), 9),
            InitiationVerdict::Process
        );
    }

    #[test]
    fn cookie_reply_only_opens_for_its_initiation() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let key = CookieReplyKey::for_responder(network(), &responder_key());
        let mut initiator = InitiatorCookie::default();
        let mut first = initiation(1);
        initiator.stamp(t0, 5, &mut first);
        let InitiationVerdict::SendCookie(reply) =
            responder.admit(t0, &mut rng, &source(), &first, 5)
        else {
            panic!("always under load");
        };
        // A newer initiation is in flight: the old reply no longer fits.
        let mut second = initiation(2);
        initiator.stamp(t0, 6, &mut second);
        assert_eq!(
            initiator.handle_reply(t0, 5, body_of(&reply), &key),
            Err(CookieReplyError::NotInFlight)
        );
        // Same index but other mac1 (associated data): does not decrypt.
        let mut third = initiation(3);
        initiator.stamp(t0, 5, &mut third);
        assert_eq!(
            initiator.handle_reply(t0, 5, body_of(&reply), &key),
            Err(CookieReplyError::Decrypt)
        );
        // Wrong responder key.
        let other = CookieReplyKey::for_responder(network(), &[8; 32]);
        let InitiationVerdict::SendCookie(reply) =
            responder.admit(t0, &mut rng, &source(), &third, 5)
        else {
            panic!("always under load");
        };
        assert_eq!(
            initiator.handle_reply(t0, 5, body_of(&reply), &other),
            Err(CookieReplyError::Decrypt)
        );
        assert!(!initiator.has_fresh_cookie(t0));
        initiator
            .handle_reply(t0, 5, body_of(&reply), &key)
            .expect("right key, right initiation");
        assert!(initiator.has_fresh_cookie(t0));
        assert!(!initiator.has_fresh_cookie(t0 + COOKIE_LIFETIME));
    }

    /// An initiator that sent initiation 1 to a responder always under
    /// load and opened the cookie reply it got.
    fn fetch_cookie(
        responder: &mut CookieResponder,
        rng: &mut crate::core::rng::CoreRng,
        t0: Instant,
    ) -> InitiatorCookie {
        let key = CookieReplyKey::for_responder(network(), &responder_key());
        let mut initiator = InitiatorCookie::default();
        let mut message = initiation(1);
        initiator.stamp(t0, 1, &mut message);
        let InitiationVerdict::SendCookie(reply) = responder.admit(t0, rng, &source(), &message, 1)
        else {
            panic!("always under load");
        };
        initiator
            .handle_reply(t0, 1, body_of(&reply), &key)
            .expect("opens");
        initiator
    }

    #[test]
    fn secret_rotates_and_old_cookies_stop_working() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let mut initiator = fetch_cookie(&mut responder, &mut rng, t0);
        // The initiator uses its cookie only while fresh; force one past the
        // secret's lifetime to see the responder no longer accepts it.
        let later = t0 + COOKIE_SECRET_LIFETIME;
        let mut stale = initiation(2);
        initiator.stamp(t0, 2, &mut stale);
        assert!(matches!(
            responder.admit(later, &mut rng, &source(), &stale, 2),
            InitiationVerdict::SendCookie(_)
        ));
    }

    #[test]
    fn per_source_rate_limits_valid_mac2_under_load() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let mut initiator = fetch_cookie(&mut responder, &mut rng, t0);
        let mut processed = 0;
        for i in 0..100 {
            let mut retry = initiation(2);
            initiator.stamp(t0, i, &mut retry);
            if responder.admit(t0, &mut rng, &source(), &retry, i) == InitiationVerdict::Process {
                processed += 1;
            }
        }
        assert_eq!(processed, SOURCE_BURST as usize);
        // One second later the bucket holds the burst again.
        let mut retry = initiation(2);
        initiator.stamp(t0, 200, &mut retry);
        assert_eq!(
            responder.admit(
                t0 + Duration::from_secs(1),
                &mut rng,
                &source(),
                &retry,
                200
            ),
            InitiationVerdict::Process
        );
    }

    #[test]
    fn limiter_memory_is_bounded_and_work_per_source_constant() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            responder.sources.take(t0, &LimiterKey::Ip(ip), &mut rng);
        }
        assert_eq!(responder.tracked_sources(), MAX_LIMITED_SOURCES);
        assert_eq!(responder.sources.cells_touched(), 100_000);
        // The flood drained the buckets at once; a moment later a newcomer
        // is served again (no table to sweep, nothing to wait for).
        let later = t0 + Duration::from_secs(1);
        assert!(
            responder
                .sources
                .take(later, &LimiterKey::Ip([10, 0, 0, 1].into()), &mut rng)
        );
    }

    #[test]
    fn cookie_reply_has_the_wire_length() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let InitiationVerdict::SendCookie(reply) =
            responder.admit(Instant::now(), &mut rng, &source(), &initiation(1), 1)
        else {
            panic!("always under load");
        };
        assert_eq!(reply.len(), COOKIE_REPLY_LEN);
        assert!(matches!(
            Datagram::parse(&reply),
            Ok(Datagram::CookieReply(_))
        ));
    }

    #[test]
    fn cookie_replies_to_one_source_are_limited_and_others_still_get_theirs() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let replies = |responder: &mut CookieResponder, rng: &mut _, at, source| {
            (0..100)
                .filter(|i| {
                    matches!(
                        responder.admit(at, rng, &source, &initiation(1), *i),
                        InitiationVerdict::SendCookie(_)
                    )
                })
                .count()
        };
        let flooder = source();
        assert_eq!(
            replies(&mut responder, &mut rng, t0, flooder),
            COOKIE_REPLY_RATE as usize
        );
        let other = HandshakeSource::Direct("198.51.100.1:7400".parse().expect("addr"));
        assert!(replies(&mut responder, &mut rng, t0, other) >= 1);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            replies(&mut responder, &mut rng, later, flooder),
            COOKIE_REPLY_RATE as usize
        );
    }

    #[test]
    fn spoofed_flood_gets_a_bounded_number_of_cookie_replies() {
        let mut responder = CookieResponder::new(network(), &responder_key());
        responder.set_load_threshold(0);
        let mut rng = core_rng([1; 32]);
        let t0 = Instant::now();
        let message = initiation(1);
        let mut replies = 0;
        for i in 0..60_000u32 {
            let source = HandshakeSource::Direct(SocketAddr::from((i.to_be_bytes(), 7400)));
            if matches!(
                responder.admit(t0, &mut rng, &source, &message, i),
                InitiationVerdict::SendCookie(_)
            ) {
                replies += 1;
            }
        }
        assert!(
            replies <= COOKIE_REPLY_BUCKETS * COOKIE_REPLY_RATE as usize,
            "{replies} replies"
        );
        assert!(replies > COOKIE_REPLY_BUCKETS, "{replies} replies");
    }

    #[test]
    fn ipv4_mapped_sources_and_one_ipv6_slash_64_share_a_limiter_entry() {
        let key = |at: &str| HandshakeSource::Direct(at.parse().expect("addr")).limiter_key();
        assert_eq!(key("192.0.2.1:1"), key("[::ffff:192.0.2.1]:2"));
        assert_eq!(key("[2001:db8:0:1::1]:1"), key("[2001:db8:0:1:ab::2]:2"));
        assert_ne!(key("[2001:db8:0:1::1]:1"), key("[2001:db8:0:2::1]:1"));
    }
}
