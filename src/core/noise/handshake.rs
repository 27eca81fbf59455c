//! The Noise IK handshake (DESIGN.md §2) and the payloads it carries.
//!
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`, prologue "agentnet v1" ‖ network ID.
//! Message 1 carries a TAI64N timestamp, the versions the initiator speaks,
//! its name, candidate endpoints, NAT hint and the transport ciphers it
//! offers; message 2 the chosen version, the responder's name, candidates,
//! NAT hint and the chosen transport cipher (`super::cipher`). Transport
//! keys come from the Noise split.

use std::net::SocketAddr;

use zeroize::Zeroizing;

use crate::core::address::NetworkId;
use crate::core::noise::cipher::{CipherSet, TransportCipher};
use crate::core::noise::mac::Mac1Key;
use crate::core::noise::resolver::SeededResolver;
use crate::core::noise::static_keys::NoiseStatic;
use crate::core::noise::tai64n::Tai64N;
use crate::core::rng::CoreRng;
use crate::core::wire::codec::{Reader, Writer};
use crate::core::wire::path::{MAX_CANDIDATES, NatHint};
use crate::core::wire::{self, MACS_LEN, TYPE_INITIATION, TYPE_RESPONSE};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Prologue label; the network ID follows it.
const PROLOGUE_LABEL: &[u8] = b"agentnet v1";
/// The wire protocol version this build speaks best.
pub const PROTOCOL_VERSION: u8 = 1;
/// Every version this build speaks, best first.
pub const SUPPORTED_VERSIONS: &[u8] = &[PROTOCOL_VERSION];
/// Most versions listed in an initiation.
const MAX_VERSIONS: usize = 16;

/// Why a handshake message was rejected. All are answered with silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// mac1 did not verify (the sender does not know our key or network).
    #[error("mac1 does not verify")]
    BadMac1,
    /// Noise rejected the message (wrong key, wrong network, corrupted).
    #[error("noise handshake failed")]
    Noise,
    /// The decrypted payload is malformed.
    #[error("malformed handshake payload")]
    BadPayload,
    /// No protocol version in common.
    #[error("no common protocol version")]
    NoCommonVersion,
    /// The responder chose a transport cipher the initiator did not offer.
    #[error("transport cipher not offered")]
    CipherNotOffered,
}

impl From<snow::Error> for HandshakeError {
    fn from(_: snow::Error) -> Self {
        HandshakeError::Noise
    }
}

/// What an initiator tells the responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiationPayload {
    /// When the initiation was made (replay protection).
    pub timestamp: Tai64N,
    /// Protocol versions the initiator speaks.
    pub versions: Vec<u8>,
    /// The initiator's own name.
    pub name: String,
    /// Endpoints where the initiator may be reached.
    pub candidates: Vec<SocketAddr>,
    /// What the initiator knows of its NAT and its reflexive endpoints
    /// (trailing, optional on the wire: older peers omit it).
    pub nat: NatHint,
    /// The transport ciphers the initiator offers (trailing, after the NAT
    /// hint; a peer that omits it offers ChaCha20-Poly1305 alone).
    pub ciphers: CipherSet,
}

impl InitiationPayload {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.timestamp.0);
        let versions = &self.versions[..self.versions.len().min(MAX_VERSIONS)];
        out.push(versions.len() as u8);
        out.extend_from_slice(versions);
        out.put_short_str(&self.name);
        out.put_socket_addrs(&self.candidates, MAX_CANDIDATES);
        self.nat.encode_into(&mut out);
        out.push(self.ciphers.to_byte());
        out
    }

    /// Decodes a payload; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        let timestamp = Tai64N(reader.array()?);
        let count = usize::from(reader.u8()?);
        if count > MAX_VERSIONS {
            return None;
        }
        let versions = reader.bytes(count)?.to_vec();
        let name = reader.short_str()?.to_string();
        let candidates = reader.socket_addrs(MAX_CANDIDATES)?;
        // Trailing fields are optional and further bytes allowed: later
        // versions may append fields.
        let (nat, whole) = NatHint::decode_reporting(&mut reader);
        // After a hint this build cannot read whole (more candidates than
        // it allows, say) the offer cannot be found: ChaCha20-Poly1305,
        // which every initiator accepts.
        let ciphers = match reader.u8() {
            Some(byte) if whole => CipherSet::from_byte(byte),
            _ => CipherSet::CHACHA_ONLY,
        };
        Some(Self {
            timestamp,
            versions,
            name,
            candidates,
            nat,
            ciphers,
        })
    }
}

/// What a responder tells the initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePayload {
    /// The version chosen for the session.
    pub version: u8,
    /// The responder's own name.
    pub name: String,
    /// Endpoints where the responder may be reached.
    pub candidates: Vec<SocketAddr>,
    /// What the responder knows of its NAT.
    pub nat: NatHint,
    /// The transport cipher chosen from the initiator's offer (trailing; a
    /// peer that omits it chose ChaCha20-Poly1305).
    pub cipher: TransportCipher,
}

impl ResponsePayload {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.push(self.version);
        out.put_short_str(&self.name);
        out.put_socket_addrs(&self.candidates, MAX_CANDIDATES);
        self.nat.encode_into(&mut out);
        out.push(self.cipher.to_byte());
        out
    }

    /// Decodes a payload; `None` if malformed (a cipher this build does
    /// not know included).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        let name = reader.short_str()?.to_string();
        let candidates = reader.socket_addrs(MAX_CANDIDATES)?;
        let (nat, whole) = NatHint::decode_reporting(&mut reader);
        let cipher = match reader.u8() {
            // After a hint this build cannot read whole the choice cannot
            // be found, and guessing could key the session with the wrong
            // cipher: malformed.
            Some(_) if !whole => return None,
            Some(byte) => TransportCipher::from_byte(byte)?,
            None => TransportCipher::ChaCha20Poly1305,
        };
        Some(Self {
            version,
            name,
            candidates,
            nat,
            cipher,
        })
    }
}

/// Picks the best version both sides speak.
pub fn choose_version(offered: &[u8]) -> Option<u8> {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|version| offered.contains(version))
}

/// The two transport keys a handshake produces, and the cipher they key.
pub struct SessionKeys {
    /// Key for what this side sends.
    pub send: Zeroizing<[u8; 32]>,
    /// Key for what this side receives.
    pub receive: Zeroizing<[u8; 32]>,
    /// The transport cipher the handshake chose.
    pub cipher: TransportCipher,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn prologue(network: NetworkId) -> Vec<u8> {
    let mut prologue = PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(network.as_bytes());
    prologue
}

fn builder<'a>(
    rng: &mut CoreRng,
    prologue: &'a [u8],
    local: &'a NoiseStatic,
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(|_| HandshakeError::Noise)?;
    let resolver = SeededResolver::from_rng(rng).with_statics(local);
    Ok(snow::Builder::with_resolver(params, Box::new(resolver))
        .prologue(prologue)?
        .local_private_key(local.secret())?)
}

/// Wraps a Noise message into a handshake datagram and seals mac1.
fn frame_handshake(message_type: u8, indices: &[u32], noise: &[u8], mac1_key: &Mac1Key) -> Vec<u8> {
    let header_len = wire::HEADER_LEN + 4 * indices.len();
    let mut datagram = vec![0u8; header_len + noise.len() + MACS_LEN];
    wire::write_header(&mut datagram, message_type);
    for (position, index) in indices.iter().enumerate() {
        let at = wire::HEADER_LEN + 4 * position;
        datagram[at..at + 4].copy_from_slice(&index.to_le_bytes());
    }
    datagram[header_len..header_len + noise.len()].copy_from_slice(noise);
    mac1_key.seal(&mut datagram);
    datagram
}

/// An initiation sent and waiting for its response.
pub struct InitiatorHandshake {
    state: snow::HandshakeState,
    local_index: u32,
    /// The transport ciphers the initiation offered.
    offered: CipherSet,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl InitiatorHandshake {
    /// Builds an initiation datagram to the responder with this Noise key,
    /// from this node's static key `local`.
    pub fn start(
        rng: &mut CoreRng,
        network: NetworkId,
        local: &NoiseStatic,
        responder_public: &[u8; 32],
        local_index: u32,
        payload: &InitiationPayload,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let prologue = prologue(network);
        let mut state = builder(rng, &prologue, local)?
            .remote_public_key(responder_public)?
            .build_initiator()?;
        let mut noise = [0u8; wire::MAX_HANDSHAKE_LEN];
        let len = state.write_message(&payload.encode(), &mut noise)?;
        let mac1_key = Mac1Key::for_responder(network, responder_public);
        let datagram = frame_handshake(TYPE_INITIATION, &[local_index], &noise[..len], &mac1_key);
        let offered = payload.ciphers;
        Ok((
            Self {
                state,
                local_index,
                offered,
            },
            datagram,
        ))
    }

    /// The session index this initiation announced.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Completes the handshake with the response's Noise message (mac1
    /// already checked by the caller). A message Noise rejects
    /// ([`HandshakeError::Noise`]: forged, corrupted) leaves the handshake
    /// as it was (snow restores its state on a failed read), so the real
    /// response can still finish it; after any other error, or success, the
    /// handshake is spent and must be dropped.
    pub fn finish(
        &mut self,
        noise: &[u8],
    ) -> Result<(ResponsePayload, SessionKeys), HandshakeError> {
        let mut payload = [0u8; wire::MAX_HANDSHAKE_LEN];
        let len = self.state.read_message(noise, &mut payload)?;
        let payload = ResponsePayload::decode(&payload[..len]).ok_or(HandshakeError::BadPayload)?;
        if !SUPPORTED_VERSIONS.contains(&payload.version) {
            return Err(HandshakeError::NoCommonVersion);
        }
        if !self.offered.contains(payload.cipher) {
            return Err(HandshakeError::CipherNotOffered);
        }
        let (initiator_to_responder, responder_to_initiator) =
            self.state.dangerously_get_raw_split();
        let cipher = payload.cipher;
        Ok((
            payload,
            SessionKeys {
                send: Zeroizing::new(initiator_to_responder),
                receive: Zeroizing::new(responder_to_initiator),
                cipher,
            },
        ))
    }
}

/// An initiation that decrypted; the caller decides (trust, timestamp)
/// whether to answer it.
pub struct ReceivedInitiation {
    state: snow::HandshakeState,
    /// The initiator's Noise static key.
    pub remote_static: [u8; 32],
    /// The initiator's session index.
    pub sender_index: u32,
    /// What the initiator said.
    pub payload: InitiationPayload,
}

impl std::fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

impl ReceivedInitiation {
    /// Decrypts an initiation after checking its mac1 with our own key
    /// (`local`: this node's static key).
    pub fn read(
        rng: &mut CoreRng,
        network: NetworkId,
        local: &NoiseStatic,
        own_mac1_key: &Mac1Key,
        initiation: &wire::Initiation<'_>,
    ) -> Result<Self, HandshakeError> {
        if !own_mac1_key.verify(initiation.bytes()) {
            return Err(HandshakeError::BadMac1);
        }
        let prologue = prologue(network);
        let mut state = builder(rng, &prologue, local)?.build_responder()?;
        let mut payload = [0u8; wire::MAX_HANDSHAKE_LEN];
        let len = state.read_message(initiation.noise(), &mut payload)?;
        let payload =
            InitiationPayload::decode(&payload[..len]).ok_or(HandshakeError::BadPayload)?;
        let remote_static: [u8; 32] = state
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or(HandshakeError::Noise)?;
        Ok(Self {
            state,
            remote_static,
            sender_index: initiation.sender_index(),
            payload,
        })
    }

    /// Answers the initiation: returns the response datagram and the keys
    /// (for `payload.cipher`, which the caller chose from
    /// `self.payload.ciphers`).
    pub fn respond(
        mut self,
        network: NetworkId,
        local_index: u32,
        payload: &ResponsePayload,
    ) -> Result<(Vec<u8>, SessionKeys), HandshakeError> {
        let mut noise = [0u8; wire::MAX_HANDSHAKE_LEN];
        let len = self.state.write_message(&payload.encode(), &mut noise)?;
        let mac1_key = Mac1Key::for_responder(network, &self.remote_static);
        let datagram = frame_handshake(
            TYPE_RESPONSE,
            &[local_index, self.sender_index],
            &noise[..len],
            &mac1_key,
        );
        let (initiator_to_responder, responder_to_initiator) =
            self.state.dangerously_get_raw_split();
        Ok((
            datagram,
            SessionKeys {
                send: Zeroizing::new(responder_to_initiator),
                receive: Zeroizing::new(initiator_to_responder),
                cipher: payload.cipher,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::rng::core_rng;
    use crate::core::wire::Datagram;
    use proptest::prelude::*;
    use std::time::Duration;

    fn payload() -> InitiationPayload {
        InitiationPayload {
            timestamp: Tai64N::from_unix(Duration::from_secs(1_800_000_000)),
            versions: vec![1],
            name: "alice".into(),
            candidates: vec!["192.0.2.1:7400".parse().expect("addr")],
            nat: NatHint::default(),
            ciphers: CipherSet::ALL,
        }
    }

    struct Pair {
        network: NetworkId,
        alice: Identity,
        bob: Identity,
    }

    fn pair() -> Pair {
        Pair {
            network: NetworkId::from_name("agentnet"),
            alice: Identity::from_secret_bytes(&[1; 32]).expect("key"),
            bob: Identity::from_secret_bytes(&[2; 32]).expect("key"),
        }
    }

    fn initiation(pair: &Pair, rng: &mut CoreRng) -> (InitiatorHandshake, Vec<u8>) {
        initiation_with(pair, rng, &payload())
    }

    fn initiation_with(
        pair: &Pair,
        rng: &mut CoreRng,
        payload: &InitiationPayload,
    ) -> (InitiatorHandshake, Vec<u8>) {
        InitiatorHandshake::start(
            rng,
            pair.network,
            &NoiseStatic::new(&pair.alice.noise_secret_key()),
            &pair.bob.agent_id().noise_public_key(),
            11,
            payload,
        )
        .expect("initiation")
    }

    /// Bob reads Alice's initiation datagram.
    fn bob_reads(pair: &Pair, rng: &mut CoreRng, datagram: &[u8]) -> ReceivedInitiation {
        let Ok(Datagram::Initiation(parsed)) = Datagram::parse(datagram) else {
            panic!("not an initiation");
        };
        let bob_mac1 =
            Mac1Key::for_responder(pair.network, &pair.bob.agent_id().noise_public_key());
        ReceivedInitiation::read(
            rng,
            pair.network,
            &NoiseStatic::new(&pair.bob.noise_secret_key()),
            &bob_mac1,
            &parsed,
        )
        .expect("reads")
    }

    fn response_payload(cipher: TransportCipher) -> ResponsePayload {
        ResponsePayload {
            version: 1,
            name: "bob".into(),
            candidates: vec![],
            nat: NatHint::default(),
            cipher,
        }
    }

    #[test]
    fn handshake_completes_with_matching_keys() {
        let pair = pair();
        let mut rng = core_rng([0; 32]);
        let (mut initiator, datagram) = initiation(&pair, &mut rng);
        let Ok(Datagram::Initiation(parsed)) = Datagram::parse(&datagram) else {
            panic!("not an initiation");
        };
        let bob_mac1 =
            Mac1Key::for_responder(pair.network, &pair.bob.agent_id().noise_public_key());
        let received = ReceivedInitiation::read(
            &mut rng,
            pair.network,
            &NoiseStatic::new(&pair.bob.noise_secret_key()),
            &bob_mac1,
            &parsed,
        )
        .expect("reads");
        assert_eq!(
            received.remote_static,
            pair.alice.agent_id().noise_public_key()
        );
        assert_eq!(received.sender_index, 11);
        assert_eq!(received.payload, payload());
        let response_payload = ResponsePayload {
            version: 1,
            name: "bob".into(),
            candidates: vec![],
            nat: NatHint {
                kind: crate::core::wire::path::NatKind::Hard,
                reflexive: vec!["198.51.100.1:4000".parse().expect("addr")],
            },
            cipher: TransportCipher::Aes256Gcm,
        };
        let (response, bob_keys) = received
            .respond(pair.network, 22, &response_payload)
            .expect("responds");
        let Ok(Datagram::Response(parsed)) = Datagram::parse(&response) else {
            panic!("not a response");
        };
        assert_eq!((parsed.sender_index(), parsed.receiver_index()), (22, 11));
        let alice_mac1 =
            Mac1Key::for_responder(pair.network, &pair.alice.agent_id().noise_public_key());
        assert!(alice_mac1.verify(parsed.bytes()));
        // A forged response (anyone on the path sees the index; mac1 keys
        // are public) fails and leaves the handshake for the real one.
        let mut forged = parsed.noise().to_vec();
        forged[40] ^= 1;
        assert_eq!(initiator.finish(&forged).err(), Some(HandshakeError::Noise));
        assert_eq!(
            initiator.finish(&[7u8; 64]).err(),
            Some(HandshakeError::Noise)
        );
        let (back, alice_keys) = initiator.finish(parsed.noise()).expect("finishes");
        assert_eq!(back, response_payload);
        assert_eq!(*alice_keys.send, *bob_keys.receive);
        assert_eq!(*alice_keys.receive, *bob_keys.send);
        assert_ne!(*alice_keys.send, *alice_keys.receive);
        assert_eq!(alice_keys.cipher, TransportCipher::Aes256Gcm);
        assert_eq!(bob_keys.cipher, TransportCipher::Aes256Gcm);
    }

    #[test]
    fn a_response_choosing_a_cipher_not_offered_is_refused() {
        let pair = pair();
        let mut rng = core_rng([0; 32]);
        let offer = InitiationPayload {
            ciphers: CipherSet::CHACHA_ONLY,
            ..payload()
        };
        let (mut initiator, datagram) = initiation_with(&pair, &mut rng, &offer);
        let received = bob_reads(&pair, &mut rng, &datagram);
        assert_eq!(received.payload.ciphers, CipherSet::CHACHA_ONLY);
        // A responder that ignores the offer (a bug, or a peer that wants
        // AES whatever we run fast) gets no session.
        let (response, _) = received
            .respond(
                pair.network,
                22,
                &response_payload(TransportCipher::Aes256Gcm),
            )
            .expect("responds");
        let Ok(Datagram::Response(parsed)) = Datagram::parse(&response) else {
            panic!("not a response");
        };
        assert_eq!(
            initiator.finish(parsed.noise()).err(),
            Some(HandshakeError::CipherNotOffered)
        );
    }

    #[test]
    fn the_chacha_only_exchange_keys_chacha_on_both_sides() {
        let pair = pair();
        let mut rng = core_rng([0; 32]);
        let (mut initiator, datagram) = initiation(&pair, &mut rng);
        let received = bob_reads(&pair, &mut rng, &datagram);
        let cipher = CipherSet::CHACHA_ONLY.choose(received.payload.ciphers);
        let (response, bob_keys) = received
            .respond(pair.network, 22, &response_payload(cipher))
            .expect("responds");
        let Ok(Datagram::Response(parsed)) = Datagram::parse(&response) else {
            panic!("not a response");
        };
        let (_, alice_keys) = initiator.finish(parsed.noise()).expect("finishes");
        assert_eq!(alice_keys.cipher, TransportCipher::ChaCha20Poly1305);
        assert_eq!(bob_keys.cipher, TransportCipher::ChaCha20Poly1305);
    }

    #[test]
    fn payloads_of_older_peers_without_cipher_fields_mean_chacha() {
        // Older builds end both payloads with the NAT hint.
        let mut initiation = payload().encode();
        assert_eq!(initiation.pop(), Some(CipherSet::ALL.to_byte()));
        let decoded = InitiationPayload::decode(&initiation).expect("decodes");
        assert_eq!(decoded.ciphers, CipherSet::CHACHA_ONLY);
        assert_eq!(decoded.nat, payload().nat);
        let mut response = response_payload(TransportCipher::Aes256Gcm).encode();
        assert_eq!(response.pop(), Some(TransportCipher::Aes256Gcm.to_byte()));
        let decoded = ResponsePayload::decode(&response).expect("decodes");
        assert_eq!(decoded.cipher, TransportCipher::ChaCha20Poly1305);
        // A cipher this build does not know is a malformed response.
        response.push(9);
        assert_eq!(ResponsePayload::decode(&response), None);
    }

    #[test]
    fn a_cipher_field_after_a_nat_hint_read_in_part_is_not_guessed() {
        // A hint with more reflexive endpoints than this build reads (a
        // later build, say): where it ends, and so the cipher byte, is
        // unknown.
        let mut too_many = vec![crate::core::wire::path::NatKind::Hard.to_byte()];
        too_many.push(u8::try_from(MAX_CANDIDATES + 1).expect("small"));
        for port in 0..=MAX_CANDIDATES {
            let port = u16::try_from(port).expect("small");
            too_many.put_socket_addr(&SocketAddr::from(([192, 0, 2, 1], port)));
        }
        let mut initiation = payload().encode();
        let nat_at = initiation.len() - 3; // kind, empty list, ciphers
        initiation.truncate(nat_at);
        initiation.extend_from_slice(&too_many);
        initiation.push(CipherSet::ALL.to_byte());
        let decoded = InitiationPayload::decode(&initiation).expect("decodes");
        assert_eq!(decoded.ciphers, CipherSet::CHACHA_ONLY);
        // An address family this build does not know: the byte after the
        // family would read as a valid choice (AES-256-GCM).
        let unknown_family = [crate::core::wire::path::NatKind::Hard.to_byte(), 1, 9];
        let mut response = response_payload(TransportCipher::Aes256Gcm).encode();
        response.truncate(response.len() - 3);
        response.extend_from_slice(&unknown_family);
        response.push(TransportCipher::Aes256Gcm.to_byte());
        assert_eq!(ResponsePayload::decode(&response), None);
    }

    #[test]
    fn wrong_network_fails_at_mac1_and_at_noise() {
        let pair = pair();
        let mut rng = core_rng([0; 32]);
        let (_, datagram) = initiation(&pair, &mut rng);
        let Ok(Datagram::Initiation(parsed)) = Datagram::parse(&datagram) else {
            panic!("not an initiation");
        };
        let other = NetworkId::from_name("other");
        let bob_public = pair.bob.agent_id().noise_public_key();
        let other_mac1 = Mac1Key::for_responder(other, &bob_public);
        assert_eq!(
            ReceivedInitiation::read(
                &mut rng,
                other,
                &NoiseStatic::new(&pair.bob.noise_secret_key()),
                &other_mac1,
                &parsed
            )
            .err(),
            Some(HandshakeError::BadMac1)
        );
        // Even with a forged mac1 the prologue makes Noise fail.
        let mut forged = datagram.clone();
        other_mac1.seal(&mut forged);
        let Ok(Datagram::Initiation(parsed)) = Datagram::parse(&forged) else {
            panic!("not an initiation");
        };
        assert_eq!(
            ReceivedInitiation::read(
                &mut rng,
                other,
                &NoiseStatic::new(&pair.bob.noise_secret_key()),
                &other_mac1,
                &parsed
            )
            .err(),
            Some(HandshakeError::Noise)
        );
    }

    #[test]
    fn initiation_for_someone_else_fails_mac1() {
        let pair = pair();
        let mut rng = core_rng([0; 32]);
        let (_, datagram) = initiation(&pair, &mut rng);
        let Ok(Datagram::Initiation(parsed)) = Datagram::parse(&datagram) else {
            panic!("not an initiation");
        };
        let carol = Identity::from_secret_bytes(&[3; 32]).expect("key");
        let carol_mac1 = Mac1Key::for_responder(pair.network, &carol.agent_id().noise_public_key());
        assert_eq!(
            ReceivedInitiation::read(
                &mut rng,
                pair.network,
                &NoiseStatic::new(&carol.noise_secret_key()),
                &carol_mac1,
                &parsed
            )
            .err(),
            Some(HandshakeError::BadMac1)
        );
    }

    #[test]
    fn version_negotiation_picks_a_common_version() {
        assert_eq!(choose_version(&[7, 1]), Some(1));
        assert_eq!(choose_version(&[7]), None);
    }

    proptest! {
        #[test]
        fn payload_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = InitiationPayload::decode(&bytes);
            let _ = ResponsePayload::decode(&bytes);
        }

        #[test]
        fn initiation_payload_round_trips(name in "[a-z0-9-]{0,63}", port in any::<u16>(), versions in proptest::collection::vec(any::<u8>(), 0..16)) {
            let payload = InitiationPayload {
                timestamp: Tai64N::from_unix(Duration::from_secs(u64::from(port))),
                versions,
                name,
                candidates: vec![SocketAddr::from(([10, 0, 0, 1], port))],
                nat: NatHint::default(),
                ciphers: CipherSet::from_byte(port as u8),
            };
            prop_assert_eq!(InitiationPayload::decode(&payload.encode()), Some(payload));
        }
    }
}
