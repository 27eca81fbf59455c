//! Shared pieces of the fuzz targets: fixed identities, and a remote agent
//! built from the library's own handshake and session types, so the targets
//! that drive a whole `Node` or `RendezvousServer` get past the
//! cryptography and reach the code behind it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentnet::core::identity::Identity;
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::cookie::{CookieReplyKey, InitiatorCookie};
use agentnet::core::noise::handshake::{
    InitiationPayload, InitiatorHandshake, ReceivedInitiation, ResponsePayload,
};
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::noise::session::Session;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::rng::{CoreRng, core_rng};
use agentnet::core::wire::Datagram;
use agentnet::core::wire::path::{NatHint, NatKind};

pub mod node_world;
pub mod targets;

/// Decodes `data` into `T` the way libFuzzer's `fuzz_target!(|input: T| …)`
/// does (`arbitrary_take_rest`) and runs `body` on it; inputs that do not
/// decode are skipped, as there.
pub fn structured<T>(data: &[u8], body: impl FnOnce(T))
where
    T: for<'a> arbitrary::Arbitrary<'a>,
{
    if let Ok(input) = T::arbitrary_take_rest(arbitrary::Unstructured::new(data)) {
        body(input);
    }
}

// The simulator's fixed network, identities and start of the wall clock.
pub use agentnet::sim::{UNIX_START, identity, network};

/// A NAT kind from a byte.
pub fn nat_kind(byte: u8) -> NatKind {
    NatKind::from_byte(byte)
}

/// What the fuzzer may put in an initiation it makes the remote agent send.
#[derive(Debug, Clone, Default, arbitrary::Arbitrary)]
pub struct InitiationShape {
    /// Seconds added to (or taken from) the agent's clock for the timestamp.
    pub timestamp_step: i16,
    /// Offered versions (none: the real list).
    pub versions: Vec<u8>,
    /// Name.
    pub name: String,
    /// Candidates as (IPv4, port).
    pub candidates: Vec<([u8; 4], u16)>,
    /// NAT kind byte.
    pub nat: u8,
    /// Offered transport ciphers byte (the node picks from it).
    pub ciphers: u8,
}

/// A remote agent: initiates to and answers a target through the library.
pub struct RemoteAgent {
    /// Its identity.
    pub identity: Identity,
    rng: CoreRng,
    pending: Option<InitiatorHandshake>,
    /// Its session with the target, if any.
    pub session: Option<Session>,
    /// The cookie the target gave it.
    pub cookie: InitiatorCookie,
    next_index: u32,
    clock_secs: u64,
}

impl RemoteAgent {
    /// A remote agent with identity `seed`.
    pub fn new(seed: u8) -> Self {
        Self {
            identity: identity(seed),
            rng: core_rng([seed.wrapping_add(1); 32]),
            pending: None,
            session: None,
            cookie: InitiatorCookie::default(),
            next_index: u32::from(seed) << 24,
            clock_secs: UNIX_START.as_secs(),
        }
    }

    /// A handshake initiation to the agent with Noise key `target`.
    pub fn initiation(
        &mut self,
        now: Instant,
        target: &[u8; 32],
        shape: &InitiationShape,
    ) -> Option<Vec<u8>> {
        self.next_index = self.next_index.wrapping_add(1);
        let index = self.next_index;
        self.clock_secs = self
            .clock_secs
            .saturating_add_signed(i64::from(shape.timestamp_step));
        let payload = InitiationPayload {
            timestamp: Tai64N::from_unix(Duration::from_secs(self.clock_secs)),
            versions: if shape.versions.is_empty() {
                vec![1]
            } else {
                shape.versions.clone()
            },
            name: shape.name.chars().take(64).collect(),
            candidates: shape
                .candidates
                .iter()
                .map(|(ip, port)| SocketAddr::from((*ip, *port)))
                .collect(),
            nat: NatHint {
                kind: nat_kind(shape.nat),
                reflexive: Vec::new(),
            },
            ciphers: CipherSet::from_byte(shape.ciphers),
        };
        let (handshake, mut datagram) = InitiatorHandshake::start(
            &mut self.rng,
            network(),
            &NoiseStatic::new(&self.identity.noise_secret_key()),
            target,
            index,
            &payload,
        )
        .ok()?;
        self.cookie.stamp(now, index, &mut datagram);
        self.pending = Some(handshake);
        Some(datagram)
    }

    /// Seals a payload on the current session.
    pub fn seal(&mut self, now: Instant, payload: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.session.as_mut()?.seal(now, payload, &mut out).ok()?;
        Some(out)
    }

    /// Takes a datagram from the target (Noise key `target`); returns what
    /// it answers (a handshake response), if anything.
    pub fn receive(&mut self, now: Instant, target: &[u8; 32], datagram: &[u8]) -> Option<Vec<u8>> {
        match Datagram::parse(datagram).ok()? {
            Datagram::Response(response) => {
                let mut pending = self.pending.take()?;
                if pending.local_index() != response.receiver_index() {
                    self.pending = Some(pending);
                    return None;
                }
                let (_, keys) = pending.finish(response.noise()).ok()?;
                self.session = Some(Session::new(
                    &keys,
                    response.receiver_index(),
                    response.sender_index(),
                    true,
                    now,
                ));
                None
            }
            Datagram::Initiation(initiation) => {
                let own_key = self.identity.agent_id().noise_public_key();
                let received = ReceivedInitiation::read(
                    &mut self.rng,
                    network(),
                    &NoiseStatic::new(&self.identity.noise_secret_key()),
                    &Mac1Key::for_responder(network(), &own_key),
                    &initiation,
                )
                .ok()?;
                self.next_index = self.next_index.wrapping_add(1);
                let index = self.next_index;
                let sender = received.sender_index;
                let payload = ResponsePayload {
                    version: 1,
                    name: "remote".into(),
                    candidates: Vec::new(),
                    nat: NatHint::default(),
                    cipher: CipherSet::ALL.choose(received.payload.ciphers),
                };
                let (answer, keys) = received.respond(network(), index, &payload).ok()?;
                self.session = Some(Session::new(&keys, index, sender, false, now));
                Some(answer)
            }
            Datagram::CookieReply(reply) => {
                let key = CookieReplyKey::for_responder(network(), target);
                let _ = self
                    .cookie
                    .handle_reply(now, reply.receiver_index(), reply.body(), &key);
                None
            }
            Datagram::Data(data) => {
                let session = self.session.as_mut()?;
                if session.local_index == data.receiver_index() {
                    let mut buffer = data.ciphertext().to_vec();
                    let _ = session.open(now, data.counter(), &mut buffer);
                }
                None
            }
            Datagram::Relay(_) | Datagram::TrustRequest(_) => None,
        }
    }
}
