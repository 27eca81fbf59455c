#![no_main]
//! libFuzzer entry of the `datagram` target; the harness is
//! `agentnet_fuzz::targets::datagram` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::datagram::run(data));
