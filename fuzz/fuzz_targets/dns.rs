#![no_main]
//! libFuzzer entry of the `dns` target; the harness is
//! `agentnet_fuzz::targets::dns` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::dns::run(data));
