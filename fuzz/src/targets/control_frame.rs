//! Control frames (inside sessions): decode never panics, and whatever
//! decodes encodes back to the same frame.

use agentnet::core::wire::control_frame::ControlFrame;

/// Runs the target on one input.
pub fn run(bytes: &[u8]) {
    if let Some(frame) = ControlFrame::decode(bytes) {
        let encoded = frame.encode();
        assert_eq!(
            ControlFrame::decode(&encoded).as_ref(),
            Some(&frame),
            "control frame round trip"
        );
    }
}
