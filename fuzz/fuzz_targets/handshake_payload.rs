#![no_main]
//! libFuzzer entry of the `handshake_payload` target; the harness is
//! `agentnet_fuzz::targets::handshake_payload` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::handshake_payload::run(data));
