//! The sans-IO protocol core: no sockets, no tokio, no clock, no OS
//! randomness. Packets and `now` go in; packets, timers and events come out.
//!
//! [`node::Node`] is the entry point; everything else is a piece of it.

pub mod address;
pub mod birthday;
pub mod codec;
pub mod conntrack;
pub mod context;
pub mod control_frame;
pub mod cookie;
pub mod handshake;
pub mod identity;
pub mod known_sources;
pub mod limit;
pub mod mac;
pub mod node;
pub mod packet;
pub mod path;
pub mod peer;
pub mod peer_table;
pub mod pending;
pub mod policy;
pub mod rendezvous;
pub mod replay;
pub mod rng;
pub mod session;
pub mod stats;
pub mod status;
pub mod tai64n;
pub mod text;
pub mod trust;
pub mod trust_request;
pub mod wire;
