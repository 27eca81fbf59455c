//! Simulated NAT routers: how they map outbound flows to public ports and
//! which inbound datagrams they let through.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use super::conntrack::Conntrack;

/// How a simulated NAT maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping (port-preserving), address-and-port
    /// dependent filtering: Linux `masquerade`.
    Easy,
    /// Endpoint-dependent mapping (a random port per destination),
    /// address-and-port dependent filtering: `masquerade random`.
    Hard,
    /// Linux `masquerade` with no inbound firewall, modelled on its
    /// connection tracking ([`Conntrack`]): the private port when it is
    /// free, but a datagram from a remote that matches no flow stays in the
    /// router and takes that (remote, port) pair, so the agent's own flow
    /// to that remote gets another port later.
    EasyNoFirewall,
}

/// One public port of a NAT.
struct NatMapping {
    private: SocketAddr,
    /// Remote endpoints the mapping has sent to (the filter).
    remotes: HashSet<SocketAddr>,
    /// A port mapping the host asked for (PCP, NAT-PMP, UPnP-IGD): lets
    /// every remote in.
    forwarded: bool,
}

/// A NAT router with one public address.
pub struct SimNat {
    /// Its public address.
    pub public_ip: IpAddr,
    /// How it maps and filters.
    pub kind: NatKind,
    /// Drops every outbound UDP datagram.
    pub udp_blocked: bool,
    by_flow: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: HashMap<u16, NatMapping>,
    /// The connection table of an [`NatKind::EasyNoFirewall`] router.
    conntrack: Conntrack,
}

impl SimNat {
    /// A router of `kind` at `public_ip` with no mappings yet.
    pub fn new(public_ip: IpAddr, kind: NatKind) -> Self {
        Self {
            public_ip,
            kind,
            udp_blocked: false,
            by_flow: HashMap::new(),
            by_port: HashMap::new(),
            conntrack: Conntrack::default(),
        }
    }

    /// The public source of a datagram from `private` to `remote` (making
    /// a mapping if the flow has none); the remote may answer through it.
    pub(crate) fn map_outbound(
        &mut self,
        rng: &mut ChaCha20Rng,
        now: Instant,
        private: SocketAddr,
        remote: SocketAddr,
    ) -> SocketAddr {
        let key = match self.kind {
            NatKind::Easy => (private, None),
            NatKind::Hard => (private, Some(remote)),
            NatKind::EasyNoFirewall => {
                let port = self.conntrack.outbound(rng, now, private, remote);
                return SocketAddr::new(self.public_ip, port);
            }
        };
        let port = match self.by_flow.get(&key) {
            Some(port) => *port,
            None => {
                let mut port = if self.kind == NatKind::Easy {
                    private.port()
                } else {
                    rng.gen_range(1024..=65535)
                };
                while self.by_port.contains_key(&port) {
                    port = rng.gen_range(1024..=65535);
                }
                self.by_flow.insert(key, port);
                self.by_port.insert(
                    port,
                    NatMapping {
                        private,
                        remotes: HashSet::new(),
                        forwarded: false,
                    },
                );
                port
            }
        };
        if let Some(mapping) = self.by_port.get_mut(&port) {
            mapping.remotes.insert(remote);
        }
        SocketAddr::new(self.public_ip, port)
    }

    /// Forwards public `port` to `private` from any remote, as a port
    /// mapping the host asked the router for (PCP, NAT-PMP, UPnP-IGD)
    /// does; replies to a remote that came in through it leave from it.
    /// Returns the public endpoint.
    pub fn forward_port(&mut self, port: u16, private: SocketAddr) -> SocketAddr {
        self.by_port.insert(
            port,
            NatMapping {
                private,
                remotes: HashSet::new(),
                forwarded: true,
            },
        );
        SocketAddr::new(self.public_ip, port)
    }

    /// The private destination of a datagram from `remote` to public
    /// `port`, if a mapping sent to that remote (or forwards the port).
    pub(crate) fn map_inbound(
        &mut self,
        now: Instant,
        port: u16,
        remote: SocketAddr,
    ) -> Option<SocketAddr> {
        if self.kind == NatKind::EasyNoFirewall {
            return self.conntrack.inbound(now, remote, port);
        }
        let mapping = self.by_port.get_mut(&port)?;
        if mapping.forwarded {
            // Connection tracking: the answers to this remote go back
            // through the forwarded port.
            mapping.remotes.insert(remote);
            let private = mapping.private;
            match self.kind {
                NatKind::Hard => {
                    self.by_flow.insert((private, Some(remote)), port);
                }
                NatKind::Easy | NatKind::EasyNoFirewall => {
                    self.by_flow.entry((private, None)).or_insert(port);
                }
            }
            return Some(private);
        }
        mapping.remotes.contains(&remote).then_some(mapping.private)
    }
}

impl SimNat {
    /// Conntrack entries an [`NatKind::EasyNoFirewall`] router holds for
    /// itself (unsolicited datagrams that clash with its agents' flows).
    pub fn router_entries(&self, now: Instant) -> usize {
        self.conntrack.router_entries(now)
    }
}
