#![no_main]
//! libFuzzer entry of the `state_files` target; the harness is
//! `agentnet_fuzz::targets::state_files` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::state_files::run(data));
