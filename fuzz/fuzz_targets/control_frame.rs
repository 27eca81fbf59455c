//! Control frames (inside sessions): decode never panics, and whatever
//! decodes encodes back to the same frame.
#![no_main]

use agentnet::core::control_frame::ControlFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(frame) = ControlFrame::decode(bytes) {
        let encoded = frame.encode();
        assert_eq!(
            ControlFrame::decode(&encoded).as_ref(),
            Some(&frame),
            "control frame round trip"
        );
    }
});
