//! Handshake payloads (the plaintext inside Noise messages 1 and 2): decode
//! never panics, and whatever decodes encodes back to the same value.
#![no_main]

use agentnet::core::handshake::{InitiationPayload, ResponsePayload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
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
});
