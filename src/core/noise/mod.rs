//! Noise and what guards it: the IK handshake (`handshake`), the transport
//! sessions with their replay windows (`session`, `replay`), TAI64N labels,
//! mac1/mac2 (`mac`) and cookies against handshake floods (`cookie`).

pub mod cookie;
pub mod handshake;
pub mod mac;
pub mod replay;
pub mod session;
pub mod tai64n;
