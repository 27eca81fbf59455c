//! The transport cipher of a session, negotiated inside the handshake
//! (issue 16).
//!
//! Every build speaks ChaCha20-Poly1305, Noise's `ChaChaPoly`. Where the CPU
//! has AES and carry-less multiply instructions, AES-256-GCM (Noise's
//! `AESGCM`) is three times faster here (ring's assembly: 41 against 14
//! Gbit/s per core on 1,420-byte packets, `benches/session.rs`), and the
//! AEAD is a third of the daemon's CPU under bulk traffic.
//!
//! The initiator lists what it offers in message 1; the responder picks
//! AES-256-GCM only when both sides offer it, and names its choice in
//! message 2. Both payloads are encrypted and bound into the Noise
//! transcript, so no one on the path can change them: a downgrade would
//! need one of the two static keys. The initiator refuses a choice it did
//! not offer. An older peer sends neither field and gets ChaCha20-Poly1305.
//! Only the transport changes: the handshake itself stays
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`.

use std::fmt;

use ring::aead::{NONCE_LEN, Nonce};

/// The AEAD that protects a session's data packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportCipher {
    /// ChaCha20-Poly1305, spoken by every build.
    #[default]
    ChaCha20Poly1305,
    /// AES-256-GCM, chosen when both sides have hardware AES.
    Aes256Gcm,
}

impl TransportCipher {
    /// Noise's nonce for `counter`: four zero bytes, then the counter
    /// little-endian (ChaChaPoly) or big-endian (AESGCM). The transport's
    /// and the handshake's (`handshake_aead`).
    pub fn nonce(self, counter: u64) -> Nonce {
        let counter = match self {
            Self::ChaCha20Poly1305 => counter.to_le_bytes(),
            Self::Aes256Gcm => counter.to_be_bytes(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&counter);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Its byte in a handshake response.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::ChaCha20Poly1305 => 0,
            Self::Aes256Gcm => 1,
        }
    }

    /// The cipher a response names; `None` for a byte this build does not
    /// know (the responder chose something never offered).
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::ChaCha20Poly1305),
            1 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The name shown to users, as Noise spells the cipher.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Self::Aes256Gcm => "AES-256-GCM",
        }
    }

    fn bit(self) -> u8 {
        1 << self.to_byte()
    }
}

impl fmt::Display for TransportCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The transport ciphers a node offers or accepts: one bit per
/// [`TransportCipher`] byte. Bits this build does not know are kept (an
/// initiation re-encodes as it came) and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSet(u8);

impl CipherSet {
    /// ChaCha20-Poly1305 alone: what a peer that lists nothing speaks.
    pub const CHACHA_ONLY: Self = Self(1);
    /// Every cipher this build has.
    pub const ALL: Self = Self(0b11);

    /// The set from its handshake byte. ChaCha20-Poly1305 is always in
    /// it: every build speaks it, whatever the byte says.
    pub fn from_byte(byte: u8) -> Self {
        Self(byte | Self::CHACHA_ONLY.0)
    }

    /// Its handshake byte.
    pub fn to_byte(self) -> u8 {
        self.0
    }

    /// Whether `cipher` is in the set.
    pub fn contains(self, cipher: TransportCipher) -> bool {
        self.0 & cipher.bit() != 0
    }

    /// What this CPU runs fast: AES-256-GCM only with AES and carry-less
    /// multiply instructions (without them ring's constant-time fallback
    /// is slower than ChaCha20-Poly1305).
    pub fn accelerated() -> Self {
        if has_aes_instructions() {
            Self::ALL
        } else {
            Self::CHACHA_ONLY
        }
    }

    /// The responder's choice from what the initiator `offered`: the
    /// fastest cipher both sets hold.
    pub fn choose(self, offered: CipherSet) -> TransportCipher {
        let common = Self(self.0 & offered.0);
        if common.contains(TransportCipher::Aes256Gcm) {
            TransportCipher::Aes256Gcm
        } else {
            TransportCipher::ChaCha20Poly1305
        }
    }
}

impl Default for CipherSet {
    fn default() -> Self {
        Self::ALL
    }
}

#[cfg(target_arch = "x86_64")]
fn has_aes_instructions() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn has_aes_instructions() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn has_aes_instructions() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_only_when_both_sides_offer_it() {
        let sets = [CipherSet::ALL, CipherSet::CHACHA_ONLY];
        for ours in sets {
            for offered in sets {
                let both = ours == CipherSet::ALL && offered == CipherSet::ALL;
                let chosen = ours.choose(offered);
                assert_eq!(
                    chosen == TransportCipher::Aes256Gcm,
                    both,
                    "{ours:?} / {offered:?}: {chosen}"
                );
            }
        }
        // Bits of ciphers this build does not know choose nothing new.
        let future = CipherSet::from_byte(0b1000_0001);
        assert_eq!(
            CipherSet::ALL.choose(future),
            TransportCipher::ChaCha20Poly1305
        );
    }

    #[test]
    fn chacha_is_always_in_a_set_and_unknown_bits_are_kept() {
        assert_eq!(CipherSet::from_byte(0), CipherSet::CHACHA_ONLY);
        let future = CipherSet::from_byte(0b1000_0010);
        assert!(future.contains(TransportCipher::ChaCha20Poly1305));
        assert!(future.contains(TransportCipher::Aes256Gcm));
        assert_eq!(CipherSet::from_byte(future.to_byte()), future);
    }

    #[test]
    fn response_bytes_round_trip_and_unknown_ones_are_refused() {
        for cipher in [
            TransportCipher::ChaCha20Poly1305,
            TransportCipher::Aes256Gcm,
        ] {
            assert_eq!(TransportCipher::from_byte(cipher.to_byte()), Some(cipher));
        }
        assert_eq!(TransportCipher::from_byte(2), None);
    }
}
