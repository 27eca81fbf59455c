//! mac1 (DESIGN.md §2): a keyed BLAKE2s-128 over a handshake message, keyed by
//! a hash of the responder's static key and the network ID. It is checked
//! before any other work, so whoever does not know an agent's public key (or
//! is in another network) cannot make it do a Diffie-Hellman, let alone answer.

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

use crate::core::address::NetworkId;
use crate::core::wire::{MAC_LEN, MACS_LEN};

/// Domain-separation label of the mac1 key.
const MAC1_LABEL: &[u8] = b"agentnet mac1 v1";

type Blake2sMac128 = Blake2sMac<U16>;

/// The key that mac1 of messages *to* one agent is made with.
#[derive(Clone)]
pub struct Mac1Key([u8; 32]);

impl std::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Key(..)")
    }
}

/// A key bound to one responder in one network: BLAKE2s-256(label ‖
/// network ID ‖ the responder's Noise static public key). Public knowledge
/// for whoever knows the key (mac1, cookie replies).
pub(crate) fn responder_key(
    label: &[u8],
    network: NetworkId,
    noise_public_key: &[u8; 32],
) -> [u8; 32] {
    let digest = Blake2s256::new()
        .chain_update(label)
        .chain_update(network.as_bytes())
        .chain_update(noise_public_key)
        .finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(&digest);
    key
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(0u8, |difference, (x, y)| difference | (x ^ y))
            == 0
}

impl Mac1Key {
    /// The mac1 key of the agent with this Noise static public key.
    pub fn for_responder(network: NetworkId, noise_public_key: &[u8; 32]) -> Self {
        Self(responder_key(MAC1_LABEL, network, noise_public_key))
    }

    fn compute(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        // A 32-byte key is always valid for BLAKE2s; the fallback is never taken.
        let Ok(mut mac) = <Blake2sMac128 as KeyInit>::new_from_slice(&self.0) else {
            return [0; MAC_LEN];
        };
        mac.update(covered);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Fills in mac1 of a whole handshake message (the last 32 bytes hold
    /// mac1 then mac2; mac2 is left zero: no cookie).
    pub fn seal(&self, message: &mut [u8]) {
        let mac1_at = message.len() - MACS_LEN;
        let mac1 = self.compute(&message[..mac1_at]);
        message[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        message[mac1_at + MAC_LEN..].fill(0);
    }

    /// Whether mac1 of a whole handshake message is right (constant time).
    pub fn verify(&self, message: &[u8]) -> bool {
        if message.len() < MACS_LEN {
            return false;
        }
        let mac1_at = message.len() - MACS_LEN;
        let expected = self.compute(&message[..mac1_at]);
        constant_time_eq(&expected, &message[mac1_at..mac1_at + MAC_LEN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_message_verifies_and_tampering_fails() {
        let network = NetworkId::from_name("agentnet");
        let key = Mac1Key::for_responder(network, &[7; 32]);
        let mut message = vec![1u8; 120];
        key.seal(&mut message);
        assert!(key.verify(&message));
        message[10] ^= 1;
        assert!(!key.verify(&message));
    }

    #[test]
    fn other_key_or_network_fails() {
        let network = NetworkId::from_name("agentnet");
        let mut message = vec![1u8; 120];
        Mac1Key::for_responder(network, &[7; 32]).seal(&mut message);
        assert!(!Mac1Key::for_responder(network, &[8; 32]).verify(&message));
        let other_network = NetworkId::from_name("lab");
        assert!(!Mac1Key::for_responder(other_network, &[7; 32]).verify(&message));
        assert!(!Mac1Key::for_responder(network, &[7; 32]).verify(&message[..10]));
    }
}
