//! The sans-IO protocol core: no sockets, no tokio, no clock, no OS
//! randomness. Packets and `now` go in; packets, timers and events come out.

pub mod address;
pub mod identity;
pub mod node;
pub mod policy;
pub mod status;
pub mod trust;
