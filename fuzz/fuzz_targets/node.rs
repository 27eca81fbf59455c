#![no_main]
//! libFuzzer entry of the `node` target; the harness is
//! `agentnet_fuzz::targets::node` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::node::run(data));
