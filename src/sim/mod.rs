//! A deterministic in-memory network of [`Node`]s and rendezvous servers
//! (behind the `sim` feature), shared by the tests, the benches and the fuzz
//! targets.
//!
//! Sans-IO like the core: no sockets, no sleeping, no clock. The caller hands
//! in the start time; a virtual clock then jumps from event to event. Links
//! have seeded loss, delay, jitter and duplication ([`LinkConfig`]); hosts
//! may sit behind NATs ([`NatKind`]); paths between public addresses can be
//! cut. Endpoints outside the simulation (a hand-built remote agent, say)
//! answer through a closure ([`SimNet::run_until_with`]).
//!
//! - [`net`]: the network ([`SimNet`]), its hosts and rendezvous servers.
//! - [`nat`]: the NAT routers' mapping and filtering; [`conntrack`]: the
//!   connection table of a router without an inbound firewall.
//! - [`link`]: the impairments of the simulated links.
//! - [`packets`]: IPv6/IPv4 packets with TCP/UDP headers to feed the TUN side.

#![forbid(unsafe_code)]

pub mod conntrack;
pub mod link;
pub mod nat;
pub mod net;
pub mod packets;

use std::time::{Duration, Instant};

use crate::core::address::NetworkId;
use crate::core::api::NodeConfig;
use crate::core::identity::Identity;
use crate::core::node::Node;

pub use link::LinkConfig;
pub use nat::{NatKind, SimNat};
pub use net::{PROBE_PORT_BASE, SimHost, SimNet, SimRendezvous};
pub use packets::{tag_of, tcp_packet, tcp4_packet, udp_packet, udp4_packet};

/// Wall clock every simulated agent starts with (any fixed value: the
/// simulation is closed).
pub const UNIX_START: Duration = Duration::from_secs(1_800_000_000);

/// Tunnel MTU of simulated nodes unless set otherwise (the daemon's default
/// on a 1500-byte link).
pub const TUNNEL_MTU: u16 = 1408;

/// The network every simulated agent is in.
pub fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

/// A fixed identity: every byte of the secret key is `seed`.
pub fn identity(seed: u8) -> Identity {
    match Identity::from_secret_bytes(&[seed; 32]) {
        Ok(identity) => identity,
        Err(_) => unreachable!("32 bytes are a valid secret"),
    }
}

/// A node of [`network`] with this identity, name and tunnel MTU, its
/// random choices seeded by `seed`, started at `now` ([`UNIX_START`] on its
/// wall clock).
pub fn node(
    identity: Identity,
    name: String,
    tunnel_mtu: u16,
    seed: [u8; 32],
    now: Instant,
) -> Node {
    Node::new(
        NodeConfig {
            identity,
            network: network(),
            name,
            tunnel_mtu,
        },
        seed,
        now,
        UNIX_START,
    )
}
