//! agentnet: an encrypted overlay between AI agents that trust each other.
//!
//! [`core`] holds every protocol decision and does no I/O; the modules beside
//! it are the I/O shell (TUN, UDP, control socket, state files) around it.
//! [`sys`] holds every system call and the only `unsafe` code; every other
//! module forbids `unsafe`.

pub mod agent;
pub mod attach;
pub mod cards;
pub mod control;
pub mod core;
pub mod mcp;
pub mod metrics;
pub mod names;
pub mod portmap;
pub mod rendezvous;
pub mod serve;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod sys;
pub mod userspace;
