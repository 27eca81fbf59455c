#![no_main]
//! libFuzzer entry of the `trust_request` target; the harness is
//! `agentnet_fuzz::targets::trust_request` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::trust_request::run(data));
