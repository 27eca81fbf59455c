//! The sans-IO protocol core: no sockets, no tokio, no clock, no OS
//! randomness. Packets and `now` go in; packets, timers and events come out.
//!
//! [`node::Node`] is the entry point; everything else is a piece of it.

#![forbid(unsafe_code)]

pub mod address;
pub mod api;
pub mod identity;
pub mod limit;
pub mod node;
pub mod noise;
pub mod packet_map;
pub mod peer;
pub mod policy;
pub mod rendezvous;
pub mod rng;
pub mod services;
pub mod stats;
pub mod text;
pub mod trust;
pub mod wire;
