//! Deterministic randomness for the core. The shell seeds it once from the OS;
//! the core derives every random value from it (and hands snow its own seeded
//! generator per handshake, `core::noise::resolver`), so a simulation with
//! the same seed replays exactly.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The core's random generator.
pub type CoreRng = ChaCha20Rng;

/// Builds the core's generator from a 32-byte seed.
pub fn core_rng(seed: [u8; 32]) -> CoreRng {
    ChaCha20Rng::from_seed(seed)
}
