//! The ChaChaPoly of handshake messages, on ring's assembly.
//!
//! Noise_IK_25519_ChaChaPoly_BLAKE2s encrypts three short fields per
//! handshake: the initiator's static key and the two payloads. snow's
//! default ChaChaPoly is RustCrypto's: on inputs of a few dozen bytes it
//! spends most of its time setting up its AVX2 code (in this build the
//! AVX2 intrinsics of its Poly1305 are called, not inlined), ~4 % of a
//! responder's handshake in the criterion profile. ring's
//! ChaCha20-Poly1305 (the transport already uses ring) is the same
//! algorithm (RFC 8439) with the nonce Noise defines, so the bytes on the
//! wire are identical: tested against snow's own below.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use snow::types::Cipher;

use super::cipher::TransportCipher;
use crate::core::wire::TAG_LEN;

/// snow's `ChaChaPoly` primitive on ring.
#[derive(Default)]
pub struct RingChaChaPoly {
    /// `None` until snow sets a key (every use follows a `set`).
    key: Option<LessSafeKey>,
}

/// Noise's ChaChaPoly nonce, as the transport builds it.
fn noise_nonce(counter: u64) -> Nonce {
    TransportCipher::ChaCha20Poly1305.nonce(counter)
}

impl Cipher for RingChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .ok()
            .map(LessSafeKey::new);
    }

    /// Writes the ciphertext and its tag to `out` and returns their length;
    /// 0 (a message the peer then rejects) if no key was set or `out` is
    /// too short, which snow never lets happen.
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        let (Some(key), Some(out)) = (&self.key, out.get_mut(..len + TAG_LEN)) else {
            return 0;
        };
        let (body, tag_out) = out.split_at_mut(len);
        body.copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(noise_nonce(nonce), Aad::from(authtext), body) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                len + TAG_LEN
            }
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let body = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        let (sealed, tag) = ciphertext.split_at(len);
        let tag = Tag::try_from(tag).map_err(|_| snow::Error::Decrypt)?;
        body.copy_from_slice(sealed);
        match key.open_in_place_separate_tag(
            noise_nonce(nonce),
            Aad::from(authtext),
            tag,
            body,
            0..,
        ) {
            Ok(_) => Ok(len),
            Err(_) => {
                // Leave no unauthenticated plaintext behind.
                body.fill(0);
                Err(snow::Error::Decrypt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use snow::params::CipherChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};

    fn snows(key: &[u8; 32]) -> Box<dyn Cipher> {
        let mut cipher = DefaultResolver
            .resolve_cipher(&CipherChoice::ChaChaPoly)
            .expect("ChaChaPoly");
        cipher.set(key);
        cipher
    }

    fn ring(key: &[u8; 32]) -> RingChaChaPoly {
        let mut cipher = RingChaChaPoly::default();
        cipher.set(key);
        cipher
    }

    proptest! {
        #[test]
        fn same_bytes_as_snows_chachapoly_both_ways(
            key in any::<[u8; 32]>(),
            nonce in any::<u64>(),
            authtext in proptest::collection::vec(any::<u8>(), 0..64),
            plaintext in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let (theirs, ours) = (snows(&key), ring(&key));
            let mut expected = vec![0u8; plaintext.len() + TAG_LEN];
            let mut sealed = vec![0u8; plaintext.len() + TAG_LEN];
            prop_assert_eq!(theirs.encrypt(nonce, &authtext, &plaintext, &mut expected), expected.len());
            prop_assert_eq!(ours.encrypt(nonce, &authtext, &plaintext, &mut sealed), sealed.len());
            prop_assert_eq!(&sealed, &expected);

            let mut opened = vec![0u8; plaintext.len()];
            prop_assert_eq!(ours.decrypt(nonce, &authtext, &expected, &mut opened).ok(), Some(plaintext.len()));
            prop_assert_eq!(&opened, &plaintext);
        }
    }

    #[test]
    fn tampering_a_short_input_and_a_short_buffer_are_errors_not_panics() {
        let cipher = ring(&[5; 32]);
        let mut sealed = [0u8; 20 + TAG_LEN];
        assert_eq!(
            cipher.encrypt(3, b"ad", &[9; 20], &mut sealed),
            sealed.len()
        );

        let mut out = [0u8; 20];
        for flip in [0, 19, 20, 35] {
            let mut tampered = sealed;
            tampered[flip] ^= 1;
            assert!(cipher.decrypt(3, b"ad", &tampered, &mut out).is_err());
            assert_eq!(out, [0; 20], "no unauthenticated plaintext left");
        }
        assert!(
            cipher.decrypt(4, b"ad", &sealed, &mut out).is_err(),
            "nonce"
        );
        assert!(
            cipher.decrypt(3, b"AD", &sealed, &mut out).is_err(),
            "authtext"
        );
        assert!(cipher.decrypt(3, b"ad", &sealed[..15], &mut out).is_err());
        assert!(cipher.decrypt(3, b"ad", &sealed, &mut [0u8; 19]).is_err());
        assert_eq!(cipher.encrypt(3, b"ad", &[9; 20], &mut [0u8; 35]), 0);
        assert_eq!(
            RingChaChaPoly::default().encrypt(0, b"", b"x", &mut [0u8; 17]),
            0
        );
        assert!(
            RingChaChaPoly::default()
                .decrypt(0, b"", &sealed, &mut out)
                .is_err()
        );
        assert_eq!(cipher.decrypt(3, b"ad", &sealed, &mut out).ok(), Some(20));
        assert_eq!(out, [9; 20]);
    }
}
