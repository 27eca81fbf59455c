//! Sealed trust requests (DESIGN.md §4): a one-way `Noise_X` message to the
//! target's static key carrying who asks, why, for which ports, when, and a
//! nonce, all signed with the requester's Ed25519 key. The target never
//! answers; a rendezvous can carry the datagram unchanged (it sees ciphertext).
//!
//! Datagram (type 6): header (4) ‖ Noise_X message ‖ mac1 ‖ mac2 (zero).
//! Sealed content: requester key (32) ‖ target key (32) ‖ unix time (u64) ‖
//! nonce (16) ‖ name (u8 len) ‖ justification (u16 len) ‖ policy text (u16
//! len) ‖ candidates ‖ endorsement flag (u8: 0 none, 2 one) [‖ fleet key
//! (32) ‖ expiry (u64, unix seconds) ‖ cap (u16 len + policy text) ‖ fleet
//! signature (64) over the requester key, network ID, expiry and cap] ‖
//! signature (64) over everything before it, prefixed by the signature
//! label.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::address::NetworkId;
use crate::core::identity::{AgentId, Identity};
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::resolver::SeededResolver;
use crate::core::policy::Policy;
use crate::core::rng::CoreRng;
use crate::core::wire::codec::{Reader, Writer};
use crate::core::wire::path::MAX_CANDIDATES;
use crate::core::wire::{self, MACS_LEN, TYPE_TRUST_REQUEST};

/// Noise pattern of sealed requests.
const NOISE_PARAMS: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// Prologue label; the network ID follows.
const PROLOGUE_LABEL: &[u8] = b"agentnet trust request v1";
/// Label in front of what the requester signs.
const SIGNATURE_LABEL: &[u8] = b"agentnet trust request signature v1";
/// Label in front of what a fleet key signs (the requester's key, the
/// network, the expiry, the cap).
const ENDORSEMENT_LABEL: &[u8] = b"agentnet fleet endorsement v2";
/// The endorsement flag of a request carrying one (v2: bound to network,
/// expiry and cap; the unbound v1, flag 1, is refused).
const ENDORSEMENT_FLAG: u8 = 2;
/// Longest justification accepted.
pub const MAX_JUSTIFICATION_LEN: usize = 1024;

/// Why a justification an operator typed cannot be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JustificationError {
    /// Nothing but white space.
    #[error(
        "the justification is empty: say why this agent asks (the target's operator reads it before approving)"
    )]
    Empty,
    /// Over [`MAX_JUSTIFICATION_LEN`] bytes.
    #[error("the justification is {0} bytes; at most {MAX_JUSTIFICATION_LEN} are sent")]
    TooLong(usize),
}

/// Checks a justification before a request is sealed: not blank, and at
/// most [`MAX_JUSTIFICATION_LEN`] bytes.
pub fn check_justification(text: &str) -> Result<(), JustificationError> {
    if text.trim().is_empty() {
        return Err(JustificationError::Empty);
    }
    if text.len() > MAX_JUSTIFICATION_LEN {
        return Err(JustificationError::TooLong(text.len()));
    }
    Ok(())
}
/// Largest sealed-request datagram accepted.
pub const MAX_REQUEST_DATAGRAM_LEN: usize = 2048;
/// Largest clock difference accepted between requester and target.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Noise_X overhead: e (32), encrypted s (32 + 16), payload tag (16).
const NOISE_X_OVERHEAD: usize = 32 + 48 + 16;

/// Why a trust request was not accepted. All are answered with silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrustRequestError {
    /// Too short or too long a datagram.
    #[error("trust request has a bad length")]
    BadLength,
    /// mac1 did not verify: not for us, or not from our network.
    #[error("trust request mac1 does not verify")]
    BadMac1,
    /// Noise failed to open it.
    #[error("trust request does not decrypt")]
    Noise,
    /// The content is malformed.
    #[error("trust request content is malformed")]
    Malformed,
    /// The claimed name holds control or bidirectional-format characters
    /// (it would forge log lines or drive a terminal).
    #[error("trust request name holds control characters")]
    ControlCharsInName,
    /// The justification is over 1 KiB.
    #[error("justification longer than {MAX_JUSTIFICATION_LEN} bytes")]
    JustificationTooLong,
    /// The signature, the key binding or the target does not check out.
    #[error("trust request signature or key binding is invalid")]
    BadSignature,
    /// The timestamp is more than 5 minutes away from our clock.
    #[error("trust request timestamp is stale")]
    Stale,
}

/// Why an endorsement does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndorsementError {
    /// The fleet key did not sign this agent in this network.
    #[error("the endorsement is not signed for this agent in this network")]
    BadSignature,
    /// Its time ran out.
    #[error("the endorsement expired at {expired_unix} (seconds since 1970)")]
    Expired {
        /// When it expired.
        expired_unix: u64,
    },
}

/// A fleet key's endorsement of a requester, for auto-approval: bound to
/// the requester, the network and an expiry, and capping what
/// auto-approval may grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// The fleet's public signing key.
    pub fleet_key: AgentId,
    /// When it stops holding (seconds since the Unix epoch).
    pub expires_unix: u64,
    /// The most an auto-approval on its strength grants (`all`: no cap).
    pub cap: Policy,
    /// The fleet key's signature over the requester's key, the network,
    /// the expiry and the cap.
    pub signature: [u8; 64],
}

impl Endorsement {
    /// The fleet key `fleet` endorses `requester` in `network` until
    /// `expires_unix`, for at most `cap`.
    pub fn sign(
        fleet: &Identity,
        requester: &AgentId,
        network: NetworkId,
        expires_unix: u64,
        cap: Policy,
    ) -> Self {
        let signature = fleet.sign(&endorsement_message(requester, network, expires_unix, &cap));
        Self {
            fleet_key: fleet.agent_id(),
            expires_unix,
            cap,
            signature,
        }
    }

    /// Whether the endorsement holds for `requester` in `network` at
    /// `unix_now` (seconds since the Unix epoch).
    pub fn check(
        &self,
        requester: &AgentId,
        network: NetworkId,
        unix_now: u64,
    ) -> Result<(), EndorsementError> {
        let message = endorsement_message(requester, network, self.expires_unix, &self.cap);
        if !self.fleet_key.verify(&message, &self.signature) {
            return Err(EndorsementError::BadSignature);
        }
        if self.expires_unix <= unix_now {
            return Err(EndorsementError::Expired {
                expired_unix: self.expires_unix,
            });
        }
        Ok(())
    }
}

fn endorsement_message(
    requester: &AgentId,
    network: NetworkId,
    expires_unix: u64,
    cap: &Policy,
) -> Vec<u8> {
    let mut message = ENDORSEMENT_LABEL.to_vec();
    message.extend_from_slice(requester.as_bytes());
    message.extend_from_slice(network.as_bytes());
    message.extend_from_slice(&expires_unix.to_le_bytes());
    put_long_str(&mut message, &cap.to_string());
    message
}

/// The content of a trust request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRequest {
    /// Who asks.
    pub requester: AgentId,
    /// Whom it asks.
    pub target: AgentId,
    /// Requester's clock, seconds since the Unix epoch.
    pub unix_time: u64,
    /// Unique per request (replay protection).
    pub nonce: [u8; 16],
    /// The name the requester claims.
    pub name: String,
    /// Why it asks.
    pub justification: String,
    /// Ports it asks to open towards the target.
    pub requested: Policy,
    /// Where the requester may be reached.
    pub candidates: Vec<SocketAddr>,
    /// Optional fleet endorsement.
    pub endorsement: Option<Endorsement>,
}

impl TrustRequest {
    fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.justification.len());
        out.extend_from_slice(self.requester.as_bytes());
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(&self.unix_time.to_le_bytes());
        out.extend_from_slice(&self.nonce);
        out.put_short_str(&self.name);
        put_long_str(&mut out, &self.justification);
        put_long_str(&mut out, &self.requested.to_string());
        out.put_socket_addrs(&self.candidates, MAX_CANDIDATES);
        match &self.endorsement {
            None => out.push(0),
            Some(endorsement) => {
                out.push(ENDORSEMENT_FLAG);
                out.extend_from_slice(endorsement.fleet_key.as_bytes());
                out.extend_from_slice(&endorsement.expires_unix.to_le_bytes());
                put_long_str(&mut out, &endorsement.cap.to_string());
                out.extend_from_slice(&endorsement.signature);
            }
        }
        out
    }

    fn signed_message(unsigned: &[u8]) -> Vec<u8> {
        let mut message = SIGNATURE_LABEL.to_vec();
        message.extend_from_slice(unsigned);
        message
    }

    /// Signs and seals the request into a type-6 datagram for `target`.
    pub fn seal(
        &self,
        rng: &mut CoreRng,
        network: NetworkId,
        requester: &Identity,
    ) -> Result<Vec<u8>, TrustRequestError> {
        if self.justification.len() > MAX_JUSTIFICATION_LEN {
            return Err(TrustRequestError::JustificationTooLong);
        }
        if crate::core::text::has_control_chars(&self.name) {
            return Err(TrustRequestError::ControlCharsInName);
        }
        let mut content = self.encode_unsigned();
        let signature = requester.sign(&Self::signed_message(&content));
        content.extend_from_slice(&signature);

        let prologue = prologue(network);
        let target_public = self.target.noise_public_key();
        let params = NOISE_PARAMS.parse().map_err(|_| TrustRequestError::Noise)?;
        let secret = requester.noise_secret_key();
        let mut state =
            snow::Builder::with_resolver(params, Box::new(SeededResolver::from_rng(rng)))
                .prologue(&prologue)
                .and_then(|builder| builder.local_private_key(&*secret))
                .and_then(|builder| builder.remote_public_key(&target_public))
                .and_then(|builder| builder.build_initiator())
                .map_err(|_| TrustRequestError::Noise)?;
        let mut noise = vec![0u8; content.len() + NOISE_X_OVERHEAD];
        let len = state
            .write_message(&content, &mut noise)
            .map_err(|_| TrustRequestError::Noise)?;
        let mut datagram = vec![0u8; wire::HEADER_LEN + len + MACS_LEN];
        if datagram.len() > MAX_REQUEST_DATAGRAM_LEN {
            return Err(TrustRequestError::BadLength);
        }
        wire::write_header(&mut datagram, TYPE_TRUST_REQUEST);
        datagram[wire::HEADER_LEN..wire::HEADER_LEN + len].copy_from_slice(&noise[..len]);
        Mac1Key::for_responder(network, &target_public).seal(&mut datagram);
        Ok(datagram)
    }

    /// The cheap checks of a type-6 datagram, before any table or
    /// cryptography: its length, and mac1 (one BLAKE2s).
    pub fn check_envelope(datagram: &[u8], own_mac1: &Mac1Key) -> Result<(), TrustRequestError> {
        if datagram.len() < wire::HEADER_LEN + NOISE_X_OVERHEAD + MACS_LEN
            || datagram.len() > MAX_REQUEST_DATAGRAM_LEN
        {
            return Err(TrustRequestError::BadLength);
        }
        if !own_mac1.verify(datagram) {
            return Err(TrustRequestError::BadMac1);
        }
        Ok(())
    }

    /// Opens a type-6 datagram addressed to `own` and checks everything but
    /// freshness of the nonce (the caller keeps the replay set).
    pub fn open(
        datagram: &[u8],
        network: NetworkId,
        own: &Identity,
        own_mac1: &Mac1Key,
        unix_now: Duration,
    ) -> Result<Self, TrustRequestError> {
        Self::check_envelope(datagram, own_mac1)?;
        let prologue = prologue(network);
        let params = NOISE_PARAMS.parse().map_err(|_| TrustRequestError::Noise)?;
        let secret = own.noise_secret_key();
        let mut state = snow::Builder::new(params)
            .prologue(&prologue)
            .and_then(|builder| builder.local_private_key(&*secret))
            .and_then(|builder| builder.build_responder())
            .map_err(|_| TrustRequestError::Noise)?;
        let noise = &datagram[wire::HEADER_LEN..datagram.len() - MACS_LEN];
        let mut content = vec![0u8; noise.len()];
        let len = state
            .read_message(noise, &mut content)
            .map_err(|_| TrustRequestError::Noise)?;
        content.truncate(len);
        let sender_static: [u8; 32] = state
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or(TrustRequestError::Noise)?;

        let (request, signed_len) = Self::decode(&content)?;
        let signature: [u8; 64] = content[signed_len..]
            .try_into()
            .map_err(|_| TrustRequestError::Malformed)?;
        // The Noise sender must be the requester (one key), the request must
        // be for us, and the requester must have signed all of it.
        if request.requester.noise_public_key() != sender_static
            || request.target != own.agent_id()
            || !request
                .requester
                .verify(&Self::signed_message(&content[..signed_len]), &signature)
        {
            return Err(TrustRequestError::BadSignature);
        }
        let skew = Duration::from_secs(request.unix_time.abs_diff(unix_now.as_secs()));
        if skew > MAX_CLOCK_SKEW {
            return Err(TrustRequestError::Stale);
        }
        Ok(request)
    }

    /// Decodes the unsigned part; returns it and its length.
    fn decode(content: &[u8]) -> Result<(Self, usize), TrustRequestError> {
        let malformed = TrustRequestError::Malformed;
        let mut reader = Reader::new(content);
        let requester =
            AgentId::from_bytes(reader.array().ok_or(malformed)?).map_err(|_| malformed)?;
        let target =
            AgentId::from_bytes(reader.array().ok_or(malformed)?).map_err(|_| malformed)?;
        let unix_time = reader.u64().ok_or(malformed)?;
        let nonce = reader.array().ok_or(malformed)?;
        let name = reader.short_str().ok_or(malformed)?.to_string();
        if crate::core::text::has_control_chars(&name) {
            return Err(TrustRequestError::ControlCharsInName);
        }
        let justification_len = usize::from(reader.u16().ok_or(malformed)?);
        if justification_len > MAX_JUSTIFICATION_LEN {
            return Err(TrustRequestError::JustificationTooLong);
        }
        let justification = std::str::from_utf8(reader.bytes(justification_len).ok_or(malformed)?)
            .map_err(|_| malformed)?
            .to_string();
        let policy_len = usize::from(reader.u16().ok_or(malformed)?);
        let requested = std::str::from_utf8(reader.bytes(policy_len).ok_or(malformed)?)
            .map_err(|_| malformed)?
            .parse()
            .map_err(|_| malformed)?;
        let candidates = reader.socket_addrs(MAX_CANDIDATES).ok_or(malformed)?;
        let endorsement = match reader.u8().ok_or(malformed)? {
            0 => None,
            ENDORSEMENT_FLAG => {
                let fleet_key =
                    AgentId::from_bytes(reader.array().ok_or(malformed)?).map_err(|_| malformed)?;
                let expires_unix = reader.u64().ok_or(malformed)?;
                let cap_len = usize::from(reader.u16().ok_or(malformed)?);
                let cap = std::str::from_utf8(reader.bytes(cap_len).ok_or(malformed)?)
                    .map_err(|_| malformed)?
                    .parse()
                    .map_err(|_| malformed)?;
                Some(Endorsement {
                    fleet_key,
                    expires_unix,
                    cap,
                    signature: reader.array().ok_or(malformed)?,
                })
            }
            _ => return Err(malformed),
        };
        let signed_len = content.len() - reader.remaining();
        Ok((
            Self {
                requester,
                target,
                unix_time,
                nonce,
                name,
                justification,
                requested,
                candidates,
                endorsement,
            },
            signed_len,
        ))
    }
}

fn put_long_str(out: &mut Vec<u8>, text: &str) {
    let len = text.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..len]);
}

fn prologue(network: NetworkId) -> Vec<u8> {
    let mut prologue = PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(network.as_bytes());
    prologue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rng::core_rng;
    use proptest::prelude::*;

    #[test]
    fn blank_and_oversized_justifications_are_refused() {
        assert_eq!(check_justification("nightly log summaries"), Ok(()));
        assert_eq!(check_justification(" \t\n"), Err(JustificationError::Empty));
        assert_eq!(check_justification(""), Err(JustificationError::Empty));
        let long = "x".repeat(MAX_JUSTIFICATION_LEN + 1);
        assert_eq!(
            check_justification(&long),
            Err(JustificationError::TooLong(MAX_JUSTIFICATION_LEN + 1))
        );
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    struct World {
        network: NetworkId,
        alice: Identity,
        bob: Identity,
        bob_mac1: Mac1Key,
    }

    fn world() -> World {
        let network = NetworkId::from_name("agentnet");
        let bob = Identity::from_secret_bytes(&[2; 32]).expect("key");
        World {
            network,
            alice: Identity::from_secret_bytes(&[1; 32]).expect("key"),
            bob_mac1: Mac1Key::for_responder(network, &bob.agent_id().noise_public_key()),
            bob,
        }
    }

    fn request(world: &World) -> TrustRequest {
        TrustRequest {
            requester: world.alice.agent_id(),
            target: world.bob.agent_id(),
            unix_time: NOW.as_secs(),
            nonce: [7; 16],
            name: "alice".into(),
            justification: "I summarize your logs every night".into(),
            requested: "tcp:8080".parse().expect("policy"),
            candidates: vec!["10.0.0.1:7400".parse().expect("addr")],
            endorsement: None,
        }
    }

    fn open(world: &World, datagram: &[u8]) -> Result<TrustRequest, TrustRequestError> {
        TrustRequest::open(datagram, world.network, &world.bob, &world.bob_mac1, NOW)
    }

    #[test]
    fn sealed_request_opens_for_the_target_only() {
        let world = world();
        let mut rng = core_rng([0; 32]);
        let datagram = request(&world)
            .seal(&mut rng, world.network, &world.alice)
            .expect("seals");
        assert_eq!(datagram[0], TYPE_TRUST_REQUEST);
        assert_eq!(open(&world, &datagram), Ok(request(&world)));
        let carol = Identity::from_secret_bytes(&[3; 32]).expect("key");
        let carol_mac1 =
            Mac1Key::for_responder(world.network, &carol.agent_id().noise_public_key());
        assert_eq!(
            TrustRequest::open(&datagram, world.network, &carol, &carol_mac1, NOW),
            Err(TrustRequestError::BadMac1)
        );
    }

    #[test]
    fn altered_request_is_rejected() {
        let world = world();
        let mut rng = core_rng([0; 32]);
        let datagram = request(&world)
            .seal(&mut rng, world.network, &world.alice)
            .expect("seals");
        for position in [10, 60, datagram.len() - 40] {
            let mut altered = datagram.clone();
            altered[position] ^= 0x20;
            assert!(
                open(&world, &altered).is_err(),
                "byte {position} altered but accepted"
            );
        }
    }

    #[test]
    fn request_signed_by_someone_else_is_rejected() {
        // Mallory seals (Noise sender = Mallory) a request claiming to be Alice.
        let world = world();
        let mallory = Identity::from_secret_bytes(&[9; 32]).expect("key");
        let mut rng = core_rng([0; 32]);
        let datagram = request(&world)
            .seal(&mut rng, world.network, &mallory)
            .expect("seals");
        assert_eq!(
            open(&world, &datagram),
            Err(TrustRequestError::BadSignature)
        );
    }

    #[test]
    fn claimed_names_with_control_characters_are_refused_at_intake() {
        let world = world();
        let mut hostile = request(&world);
        for name in [
            "alice\nINFO trust added peer=mallory",
            "a\x1b[2Jb",
            "nul\0",
            "\u{202e}exe",
        ] {
            hostile.name = name.into();
            // A sender that skips our own check is refused by the receiver.
            let decoded = TrustRequest::decode(&hostile.encode_unsigned()).map(|(r, _)| r);
            assert_eq!(
                decoded,
                Err(TrustRequestError::ControlCharsInName),
                "{name:?}"
            );
            let mut rng = core_rng([0; 32]);
            assert_eq!(
                hostile.seal(&mut rng, world.network, &world.alice),
                Err(TrustRequestError::ControlCharsInName)
            );
        }
        // A justification may hold newlines: it is escaped where shown.
        let mut wordy = request(&world);
        wordy.justification = "line one\nline two".into();
        let (decoded, _) = TrustRequest::decode(&wordy.encode_unsigned()).expect("decodes");
        assert_eq!(decoded.justification, "line one\nline two");
    }

    #[test]
    fn stale_and_oversized_requests_are_rejected() {
        let world = world();
        let mut rng = core_rng([0; 32]);
        let mut stale = request(&world);
        stale.unix_time -= 301;
        let datagram = stale
            .seal(&mut rng, world.network, &world.alice)
            .expect("seals");
        assert_eq!(open(&world, &datagram), Err(TrustRequestError::Stale));
        let mut long = request(&world);
        long.justification = "x".repeat(MAX_JUSTIFICATION_LEN + 1);
        assert_eq!(
            long.seal(&mut rng, world.network, &world.alice),
            Err(TrustRequestError::JustificationTooLong)
        );
    }

    #[test]
    fn fleet_endorsement_holds_only_for_its_requester_network_and_time() {
        let world = world();
        let fleet = Identity::from_secret_bytes(&[5; 32]).expect("key");
        let expires = NOW.as_secs() + 3600;
        let cap: Policy = "tcp:8080".parse().expect("policy");
        let alice = world.alice.agent_id();
        let endorsement = Endorsement::sign(&fleet, &alice, world.network, expires, cap);
        let now = NOW.as_secs();
        assert_eq!(endorsement.check(&alice, world.network, now), Ok(()));
        assert_eq!(
            endorsement.check(&world.bob.agent_id(), world.network, now),
            Err(EndorsementError::BadSignature)
        );
        let other_network = NetworkId::from_name("another");
        assert_eq!(
            endorsement.check(&alice, other_network, now),
            Err(EndorsementError::BadSignature),
            "an endorsement for another network was accepted"
        );
        assert_eq!(
            endorsement.check(&alice, world.network, expires),
            Err(EndorsementError::Expired {
                expired_unix: expires
            }),
            "an expired endorsement was accepted"
        );
        // Neither the expiry nor the cap can be changed without the key.
        let mut extended = endorsement.clone();
        extended.expires_unix += 3600;
        assert_eq!(
            extended.check(&alice, world.network, now),
            Err(EndorsementError::BadSignature)
        );
        let mut widened = endorsement.clone();
        widened.cap = Policy::All;
        assert_eq!(
            widened.check(&alice, world.network, now),
            Err(EndorsementError::BadSignature)
        );

        let mut endorsed = request(&world);
        endorsed.endorsement = Some(endorsement.clone());
        let mut rng = core_rng([0; 32]);
        let datagram = endorsed
            .seal(&mut rng, world.network, &world.alice)
            .expect("seals");
        assert_eq!(
            open(&world, &datagram).map(|r| r.endorsement),
            Ok(Some(endorsement))
        );
    }

    proptest! {
        #[test]
        fn opening_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let world = world();
            let mut datagram = vec![TYPE_TRUST_REQUEST, 0, 0, 0];
            datagram.extend(tail);
            let _ = open(&world, &datagram);
        }

        #[test]
        fn decoding_garbage_never_panics(content in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = TrustRequest::decode(&content);
        }
    }
}
