#![no_main]
//! libFuzzer entry of the `services_frame` target; the harness is
//! `agentnet_fuzz::targets::services_frame` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::services_frame::run(data));
