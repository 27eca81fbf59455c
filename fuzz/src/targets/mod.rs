//! The harness of every fuzz target, one module each: `run(bytes)` takes the
//! raw input libFuzzer gives. `fuzz_targets/` wraps them for cargo-fuzz, and
//! `tests/fuzz_corpus.rs` replays the saved corpora and crashers through the
//! same functions under `cargo test`.

pub mod control_frame;
pub mod datagram;
pub mod dns;
pub mod handshake_payload;
pub mod node;
pub mod rendezvous;
pub mod services_frame;
pub mod state_files;
pub mod tcp_frames;
pub mod trust_request;

/// A fuzz target's harness.
pub type Harness = fn(&[u8]);

/// Every target by its cargo-fuzz name.
pub const ALL: &[(&str, Harness)] = &[
    ("control_frame", control_frame::run),
    ("datagram", datagram::run),
    ("dns", dns::run),
    ("handshake_payload", handshake_payload::run),
    ("node", node::run),
    ("rendezvous", rendezvous::run),
    ("services_frame", services_frame::run),
    ("state_files", state_files::run),
    ("tcp_frames", tcp_frames::run),
    ("trust_request", trust_request::run),
];
