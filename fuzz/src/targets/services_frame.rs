//! `Services` control frames (advertisements from trusted peers): any
//! bytes after the frame's type and version decode without a panic, and
//! whatever decodes keeps every bound (count, size, checked entries) and
//! encodes back to the same bytes.

use agentnet::core::services::{MAX_SERVICES, MAX_SERVICES_FRAME_LEN, check_set};
use agentnet::core::wire::control_frame::{ControlFrame, SERVICES_VERSION};

/// Runs the target on one input: as it is, and behind a `Services` header.
pub fn run(bytes: &[u8]) {
    check(bytes);
    let mut framed = vec![0x07, SERVICES_VERSION];
    framed.extend_from_slice(bytes);
    check(&framed);
}

fn check(bytes: &[u8]) {
    if let Some(ControlFrame::Services { entries, .. }) = ControlFrame::decode(bytes) {
        assert!(entries.len() <= MAX_SERVICES, "too many entries decoded");
        assert!(
            bytes.len() <= MAX_SERVICES_FRAME_LEN,
            "oversize frame decoded"
        );
        assert!(
            check_set(&entries).is_ok(),
            "a decoded set breaks the rules"
        );
        let frame = ControlFrame::decode(bytes);
        assert_eq!(
            frame.as_ref().map(ControlFrame::encode).as_deref(),
            Some(bytes),
            "services frame round trip"
        );
    }
}
