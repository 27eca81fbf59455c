//! Noise and what guards it: the IK handshake (`handshake`), the transport
//! sessions with their replay windows (`session`, `replay`) and the cipher
//! the handshake negotiates for them (`cipher`), TAI64N labels,
//! mac1/mac2 (`mac`), cookies against handshake floods (`cookie`) and the
//! node's static key with its precomputed secrets (`static_keys`), and the
//! snow resolver that uses it with the core's seeded randomness and ring's
//! ChaChaPoly (`resolver`, `handshake_aead`).

pub mod cipher;
pub mod cookie;
pub mod handshake;
pub mod handshake_aead;
pub mod mac;
pub mod replay;
pub mod resolver;
pub mod session;
pub mod static_keys;
pub mod tai64n;
