//! Handshake payloads (the plaintext inside Noise messages 1 and 2): decode
//! never panics, and whatever decodes encodes back to the same value.

use agentnet::core::noise::handshake::{InitiationPayload, ResponsePayload};

/// Runs the target on one input.
pub fn run(bytes: &[u8]) {
    if let Some(payload) = InitiationPayload::decode(bytes) {
        let again = InitiationPayload::decode(&payload.encode());
        assert_eq!(
            again.as_ref(),
            Some(&payload),
            "initiation payload round trip"
        );
    }
    if let Some(payload) = ResponsePayload::decode(bytes) {
        let again = ResponsePayload::decode(&payload.encode());
        assert_eq!(
            again.as_ref(),
            Some(&payload),
            "response payload round trip"
        );
    }
}
