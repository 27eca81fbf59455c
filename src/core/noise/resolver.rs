//! The snow resolver of every handshake: randomness from a seed the core
//! chose (`core::rng`), so a simulation replays exactly; X25519 with the
//! node's shortcuts ([`super::static_keys`]); ChaChaPoly on ring
//! ([`super::handshake_aead`]); snow's default BLAKE2s.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use super::handshake_aead::RingChaChaPoly;
use super::static_keys::{CachedDh25519, NoiseStatic};
use crate::core::rng::CoreRng;

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// A snow resolver whose randomness comes from a seed the core chose, with
/// ring's ChaChaPoly and snow's BLAKE2s; X25519 takes the
/// node's shortcuts (its static public key and static-static secrets, see
/// [`NoiseStatic`]) when given them.
pub struct SeededResolver {
    seed: [u8; 32],
    statics: Option<NoiseStatic>,
}

impl SeededResolver {
    /// A resolver drawing its seed from the core's generator.
    pub fn from_rng(rng: &mut CoreRng) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            seed,
            statics: None,
        }
    }

    /// The same, with the node's static key and its precomputed secrets.
    pub fn with_statics(mut self, statics: &NoiseStatic) -> Self {
        self.statics = Some(statics.clone());
        self
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => {
                Some(Box::new(CachedDh25519::new(self.statics.clone())))
            }
            other => DefaultResolver.resolve_dh(other),
        }
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            snow::params::CipherChoice::ChaChaPoly => Some(Box::new(RingChaChaPoly::default())),
            other => DefaultResolver.resolve_cipher(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::noise::handshake::NOISE_PARAMS;
    use crate::core::rng::core_rng;

    /// An IK handshake and one transport message each way between this
    /// resolver, as a node uses it (its static key with the peer's
    /// static-static secret precomputed), and snow's defaults: this
    /// resolver initiates when `our_side_initiates`, else it responds.
    fn handshake_with_snow(our_side_initiates: bool) {
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().expect("params");
        let initiator_keys = snow::Builder::new(params.clone())
            .generate_keypair()
            .expect("keys");
        let responder_keys = snow::Builder::new(params.clone())
            .generate_keypair()
            .expect("keys");
        let builder = |ours: bool, own: &snow::Keypair, peer: &snow::Keypair| {
            if !ours {
                return snow::Builder::new(params.clone());
            }
            let secret: [u8; 32] = own.private.as_slice().try_into().expect("32 bytes");
            let statics = NoiseStatic::new(&secret);
            statics.add_peer(&peer.public.as_slice().try_into().expect("32 bytes"));
            let resolver = SeededResolver::from_rng(&mut core_rng([4; 32])).with_statics(&statics);
            snow::Builder::with_resolver(params.clone(), Box::new(resolver))
        };
        let mut initiator = builder(our_side_initiates, &initiator_keys, &responder_keys)
            .local_private_key(&initiator_keys.private)
            .and_then(|b| b.remote_public_key(&responder_keys.public))
            .and_then(|b| b.prologue(b"agentnet test"))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut responder = builder(!our_side_initiates, &responder_keys, &initiator_keys)
            .local_private_key(&responder_keys.private)
            .and_then(|b| b.prologue(b"agentnet test"))
            .and_then(|b| b.build_responder())
            .expect("responder");
        // One message from `from` to `to` (handshake or transport), read
        // back as it was sent.
        macro_rules! deliver {
            ($from:expr, $to:expr, $text:expr) => {{
                let (mut message, mut payload) = ([0u8; 300], [0u8; 300]);
                let len = $from.write_message($text, &mut message).expect("writes");
                let read = $to
                    .read_message(&message[..len], &mut payload)
                    .expect("reads");
                assert_eq!(&payload[..read], $text);
            }};
        }
        deliver!(initiator, responder, b"hello");
        deliver!(responder, initiator, b"hi");
        let (mut initiator, mut responder) = (
            initiator.into_transport_mode().expect("transport"),
            responder.into_transport_mode().expect("transport"),
        );
        deliver!(initiator, responder, b"ping");
        deliver!(responder, initiator, b"pong");
    }

    #[test]
    fn handshakes_with_snows_defaults_in_both_roles() {
        handshake_with_snow(true);
        handshake_with_snow(false);
    }
}
