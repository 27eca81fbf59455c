#![no_main]
//! libFuzzer entry of the `tcp_frames` target; the harness is
//! `agentnet_fuzz::targets::tcp_frames` (also replayed by `cargo test`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agentnet_fuzz::targets::tcp_frames::run(data));
