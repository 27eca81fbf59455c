//! Deterministic randomness for the core. The shell seeds it once from the OS;
//! the core derives every random value from it (and hands snow its own seeded
//! generator per handshake), so a simulation with the same seed replays
//! exactly.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::core::noise::static_keys::{CachedDh25519, NoiseStatic};

/// The core's random generator.
pub type CoreRng = ChaCha20Rng;

/// Builds the core's generator from a 32-byte seed.
pub fn core_rng(seed: [u8; 32]) -> CoreRng {
    ChaCha20Rng::from_seed(seed)
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// A snow resolver whose randomness comes from a seed the core chose, with
/// the default pure-Rust primitives for everything else; X25519 takes the
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
        DefaultResolver.resolve_cipher(choice)
    }
}
