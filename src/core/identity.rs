//! Agent identity: one Ed25519 key pair, its copy-pasteable ID, its `did:key`
//! form and the X25519 key Noise uses (DESIGN.md §1).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

/// Length in bytes of an Ed25519 public key, the raw form of an [`AgentId`].
pub const AGENT_ID_LEN: usize = 32;

/// Length of the text form of an [`AgentId`] (base32 of 32 bytes, no padding).
pub const AGENT_ID_TEXT_LEN: usize = 52;

/// Multicodec prefix of an Ed25519 public key (`ed25519-pub`, varint 0xed).
const DID_KEY_ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];

/// Errors when reading identities and agent IDs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The text is not 52 characters of lowercase base32.
    #[error("not an agent ID: expected {AGENT_ID_TEXT_LEN} characters of base32 (a-z, 2-7)")]
    BadAgentIdText,
    /// The bytes are not a valid Ed25519 public key.
    #[error("not an agent ID: the key is not a valid Ed25519 public key")]
    NotAPublicKey,
    /// A secret key file does not hold 32 bytes.
    #[error("secret key must be 32 bytes, found {0}")]
    BadSecretKeyLength(usize),
}

/// An agent's public identity: its Ed25519 public key.
///
/// The text form (lowercase base32, no padding) is the only thing two
/// operators exchange to trust each other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId([u8; AGENT_ID_LEN]);

impl AgentId {
    /// Wraps raw public-key bytes after checking they are a valid Ed25519 key.
    pub fn from_bytes(bytes: [u8; AGENT_ID_LEN]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::NotAPublicKey)?;
        Ok(Self(bytes))
    }

    /// The raw Ed25519 public key.
    pub fn as_bytes(&self) -> &[u8; AGENT_ID_LEN] {
        &self.0
    }

    /// The Ed25519 verifying key (validated on construction).
    pub fn verifying_key(&self) -> VerifyingKey {
        // Construction checked the bytes, so this cannot fail; fall back to a
        // recheck instead of panicking should that invariant ever be broken.
        VerifyingKey::from_bytes(&self.0).unwrap_or_else(|_| {
            tracing::error!("agent id holds an invalid key; using identity point");
            VerifyingKey::default()
        })
    }

    /// The X25519 public key Noise sees for this agent.
    pub fn noise_public_key(&self) -> [u8; 32] {
        self.verifying_key().to_montgomery().to_bytes()
    }

    /// The `did:key` form (Ed25519 multicodec, base58btc multibase).
    pub fn to_did_key(&self) -> String {
        let mut bytes = Vec::with_capacity(2 + AGENT_ID_LEN);
        bytes.extend_from_slice(&DID_KEY_ED25519_MULTICODEC);
        bytes.extend_from_slice(&self.0);
        format!("did:key:z{}", bs58::encode(bytes).into_string())
    }

    /// Checks an Ed25519 signature by this agent.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verifying_key()
            .verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// The lowercase, unpadded base32 of agent IDs (and of the other binary
/// values agentnet writes as text, such as endorsement signatures).
pub fn base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // The alphabet is a constant; a failure here is a programming error that
    // tests catch, so fall back to the standard alphabet rather than panic.
    spec.encoding()
        .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_string();
        write!(f, "AgentId({}…)", &text[..12])
    }
}

impl FromStr for AgentId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let text = text.strip_prefix("agent:").unwrap_or(text);
        if text.len() != AGENT_ID_TEXT_LEN {
            return Err(IdentityError::BadAgentIdText);
        }
        let lower = text.to_ascii_lowercase();
        let bytes = base32()
            .decode(lower.as_bytes())
            .map_err(|_| IdentityError::BadAgentIdText)?;
        let bytes: [u8; AGENT_ID_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadAgentIdText)?;
        Self::from_bytes(bytes)
    }
}

impl serde::Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for AgentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An agent's secret identity: the Ed25519 signing key.
///
/// `Debug` prints the public ID only, never key material.
#[derive(Clone)]
pub struct Identity {
    signing_key: SigningKey,
}

impl Identity {
    /// Builds the identity from its 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8]) -> Result<Self, IdentityError> {
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| IdentityError::BadSecretKeyLength(secret.len()))?;
        Ok(Self {
            signing_key: SigningKey::from_bytes(&secret),
        })
    }

    /// The 32-byte secret seed, for storing in the key file.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing_key.to_bytes())
    }

    /// This agent's public ID.
    pub fn agent_id(&self) -> AgentId {
        AgentId(self.signing_key.verifying_key().to_bytes())
    }

    /// The X25519 secret Noise uses: the clamped scalar of the Ed25519 key.
    pub fn noise_secret_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing_key.to_scalar_bytes())
    }

    /// Signs a message with the agent's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing_key.sign(message).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 32]).expect("32 bytes")
    }

    #[test]
    fn agent_id_text_round_trips_and_is_lowercase_base32() {
        let id = identity(7).agent_id();
        let text = id.to_string();
        assert_eq!(text.len(), AGENT_ID_TEXT_LEN);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(text.parse::<AgentId>(), Ok(id));
        assert_eq!(text.to_ascii_uppercase().parse::<AgentId>(), Ok(id));
    }

    #[test]
    fn bad_agent_id_text_is_rejected() {
        assert_eq!("abc".parse::<AgentId>(), Err(IdentityError::BadAgentIdText));
        let too_long = "a".repeat(53);
        assert!(too_long.parse::<AgentId>().is_err());
        let bad_char = "1".repeat(52);
        assert_eq!(
            bad_char.parse::<AgentId>(),
            Err(IdentityError::BadAgentIdText)
        );
    }

    #[test]
    fn pinned_agent_id_and_did_key() {
        // RFC 8032 test vector 1; text and did:key computed independently in Python.
        let secret = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let identity = Identity::from_secret_bytes(&secret).expect("32 bytes");
        let id = identity.agent_id();
        assert_eq!(
            id.as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            id.to_string(),
            "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena"
        );
        assert_eq!(
            id.to_did_key(),
            "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"
        );
    }

    #[test]
    fn noise_key_pair_matches_ed25519_identity() {
        // One key: the X25519 public key Noise derives from our secret must be
        // the Montgomery form of the Ed25519 public key peers already know.
        for seed in 0..16u8 {
            let identity = identity(seed);
            let secret = identity.noise_secret_key();
            let derived_public = curve25519_public(&secret);
            assert_eq!(derived_public, identity.agent_id().noise_public_key());
        }
    }

    fn curve25519_public(secret: &[u8; 32]) -> [u8; 32] {
        curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
    }

    #[test]
    fn signatures_verify_only_for_the_signer() {
        let alice = identity(1);
        let bob = identity(2);
        let signature = alice.sign(b"hello");
        assert!(alice.agent_id().verify(b"hello", &signature));
        assert!(!alice.agent_id().verify(b"hellO", &signature));
        assert!(!bob.agent_id().verify(b"hello", &signature));
    }

    #[test]
    fn debug_never_prints_secret() {
        let identity = identity(9);
        let secret_hex: String = identity
            .secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!format!("{identity:?}").contains(&secret_hex[..16]));
    }

    pub(crate) fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
