//! agentnet: an encrypted IPv6 overlay between AI agents that trust each other.
//!
//! [`core`] holds every protocol decision and does no I/O; the modules beside
//! it are the I/O shell (TUN, UDP, control socket, state files) around it.

pub mod attach;
pub mod attach_filter;
pub mod control;
pub mod core;
pub mod daemon;
pub mod fleet;
pub mod metrics;
pub mod netcheck;
pub mod netns;
pub mod nofollow;
pub mod ping;
pub mod rendezvous_server;
pub mod serve;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod tcp_frames;
pub mod trust_requests;
pub mod userspace;
