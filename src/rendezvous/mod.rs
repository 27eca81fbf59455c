//! Rendezvous in the shell: the server (`agentnet rendezvous`, around
//! `core::rendezvous`), an agent's link to each of its servers over UDP or
//! framed TCP (`link`), and reachability checks towards them (`netcheck`).

#![forbid(unsafe_code)]

pub mod link;
pub mod netcheck;
pub mod server;
