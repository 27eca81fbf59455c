//! The handshake's BLAKE2s (issue 16: ≥ 10,000 handshakes/s per core).
//!
//! snow's own primitive hashes with the `blake2` crate's portable code and
//! keys each HMAC afresh: an HKDF with two outputs (every `MixKey` and the
//! final split of an IK handshake) compresses twelve blocks, four for each
//! HMAC. Here the compression is `blake2s_simd`'s (SSE4.1 or AVX2 where the
//! CPU has them, chosen at run time), and an HKDF keys its outputs' HMACs
//! once: the key's inner and outer pad blocks are hashed a single time and
//! each output continues from copies of those two states, ten blocks
//! instead of twelve (three outputs: twelve instead of sixteen).
//!
//! The bytes are the standard's (RFC 2104 HMAC, Noise's HKDF) and equal
//! snow's own primitive's for every input (tested), so a peer on snow's
//! defaults, or any other Noise implementation, completes the same
//! handshakes.

use blake2s_simd::State;
use snow::types::Hash;
use zeroize::Zeroize;

/// BLAKE2s's block, in bytes (what HMAC pads its key to).
const BLOCK_LEN: usize = 64;
/// BLAKE2s-256's digest, in bytes.
const HASH_LEN: usize = 32;

/// snow's `BLAKE2s` primitive: the same values, fewer and faster
/// compressions.
#[derive(Default)]
pub struct Blake2sHash {
    state: State,
}

impl Hash for Blake2sHash {
    fn name(&self) -> &'static str {
        "BLAKE2s"
    }

    fn block_len(&self) -> usize {
        BLOCK_LEN
    }

    fn hash_len(&self) -> usize {
        HASH_LEN
    }

    fn reset(&mut self) {
        self.state = State::new();
    }

    fn input(&mut self, data: &[u8]) {
        self.state.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        write_digest(&self.state.finalize(), out);
        self.state = State::new();
    }

    fn hmac(&mut self, key: &[u8], data: &[u8], out: &mut [u8]) {
        HmacKey::new(key).mac(&[data], out);
    }

    fn hkdf(
        &mut self,
        chaining_key: &[u8],
        input_key_material: &[u8],
        outputs: usize,
        out1: &mut [u8],
        out2: &mut [u8],
        out3: &mut [u8],
    ) {
        let mut temp_key = [0u8; HASH_LEN];
        HmacKey::new(chaining_key).mac(&[input_key_material], &mut temp_key);
        let output_key = HmacKey::new(&temp_key);
        temp_key.zeroize();
        // Output i is HMAC(temp_key, output i-1 ‖ i); the first has no
        // predecessor.
        let mut previous = [0u8; HASH_LEN];
        let mut next = [0u8; HASH_LEN];
        for (index, out) in [out1, out2, out3].into_iter().enumerate().take(outputs) {
            let counter = [index as u8 + 1];
            let predecessor: &[u8] = if index == 0 { &[] } else { &previous };
            output_key.mac(&[predecessor, &counter], &mut next);
            write_digest_bytes(&next, out);
            previous = next;
        }
        previous.zeroize();
        next.zeroize();
    }
}

/// An HMAC-BLAKE2s key with its inner and outer pad blocks already hashed.
struct HmacKey {
    inner: State,
    outer: State,
}

impl HmacKey {
    fn new(key: &[u8]) -> Self {
        // RFC 2104: a key longer than a block is replaced by its hash
        // (Noise's keys are never longer than a digest).
        let hashed;
        let key = if key.len() > BLOCK_LEN {
            hashed = blake2s_simd::blake2s(key);
            hashed.as_bytes()
        } else {
            key
        };
        let mut pad = [0u8; BLOCK_LEN];
        let mut keyed = |fill: u8| {
            pad.fill(fill);
            for (byte, key_byte) in pad.iter_mut().zip(key) {
                *byte ^= key_byte;
            }
            let mut state = State::new();
            state.update(&pad);
            state
        };
        let (inner, outer) = (keyed(0x36), keyed(0x5c));
        pad.zeroize();
        Self { inner, outer }
    }

    /// HMAC of the concatenation of `parts`, written to `out`.
    fn mac(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut inner = self.inner.clone();
        for part in parts {
            inner.update(part);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize().as_bytes());
        write_digest(&outer.finalize(), out);
    }
}

fn write_digest(digest: &blake2s_simd::Hash, out: &mut [u8]) {
    write_digest_bytes(digest.as_bytes(), out);
}

/// Copies a digest into the front of `out` (snow passes buffers of its
/// largest digest; a shorter one, which it never passes, takes what fits).
fn write_digest_bytes(digest: &[u8], out: &mut [u8]) {
    let len = digest.len().min(out.len());
    out[..len].copy_from_slice(&digest[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use snow::params::HashChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};

    fn snows() -> Box<dyn Hash> {
        DefaultResolver
            .resolve_hash(&HashChoice::Blake2s)
            .expect("snow's BLAKE2s")
    }

    /// snow's buffers are its largest digest, 64 bytes.
    fn hkdf_of(hash: &mut dyn Hash, key: &[u8], ikm: &[u8], outputs: usize) -> [[u8; 64]; 3] {
        let mut out = [[0u8; 64]; 3];
        let [out1, out2, out3] = &mut out;
        hash.hkdf(key, ikm, outputs, out1, out2, out3);
        out
    }

    proptest! {
        #[test]
        fn hashes_and_hmacs_equal_snows(
            key in proptest::collection::vec(any::<u8>(), 0..=BLOCK_LEN),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            split in 0usize..300,
        ) {
            let (mut ours, mut theirs) = (Blake2sHash::default(), snows());
            let split = split.min(data.len());
            let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
            for hash in [&mut ours as &mut dyn Hash, theirs.as_mut()] {
                hash.reset();
                hash.input(&data[..split]);
                hash.input(&data[split..]);
            }
            ours.result(&mut a);
            theirs.result(&mut b);
            prop_assert_eq!(a, b);
            // `result` leaves a fresh state behind, as snow's does.
            ours.input(&data);
            theirs.input(&data);
            ours.result(&mut a);
            theirs.result(&mut b);
            prop_assert_eq!(a, b);
            ours.hmac(&key, &data, &mut a);
            theirs.hmac(&key, &data, &mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn hkdf_equals_snows(
            chaining_key in proptest::collection::vec(any::<u8>(), 0..=HASH_LEN),
            ikm in proptest::collection::vec(any::<u8>(), 0..100),
            outputs in 1usize..=3,
        ) {
            let ours = hkdf_of(&mut Blake2sHash::default(), &chaining_key, &ikm, outputs);
            let theirs = hkdf_of(snows().as_mut(), &chaining_key, &ikm, outputs);
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn keys_longer_than_a_block_are_hashed_first() {
        // RFC 2104; snow's own primitive refuses them (it asserts).
        let long = [7u8; BLOCK_LEN + 1];
        let digest = blake2s_simd::blake2s(&long);
        let (mut from_long, mut from_digest) = ([0u8; HASH_LEN], [0u8; HASH_LEN]);
        HmacKey::new(&long).mac(&[b"data"], &mut from_long);
        HmacKey::new(digest.as_bytes()).mac(&[b"data"], &mut from_digest);
        assert_eq!(from_long, from_digest);
    }
}
