//! Paths a datagram can take to a peer: straight to its endpoint, or through
//! a rendezvous relay in a type-5 envelope (DESIGN.md §5).

use std::fmt;
use std::net::SocketAddr;

use crate::core::address::NodeId;
use crate::core::wire::codec::{Reader, Writer};
use crate::core::wire::{self, RELAY_HEADER_LEN, TYPE_RELAY};

/// Where a datagram came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathAddr {
    /// Straight to or from this underlay endpoint.
    Direct(SocketAddr),
    /// Through the rendezvous at this endpoint.
    Relay(SocketAddr),
    /// Straight to or from this endpoint, through probe socket N (an extra
    /// local UDP socket the shell opens on demand for birthday hole
    /// punching behind a hard NAT).
    Probe(u16, SocketAddr),
}

/// What this agent knows about its own NAT, from what rendezvous servers
/// saw (announced to peers so both sides pick a punching strategy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Not known (fewer than two rendezvous answers).
    #[default]
    Unknown,
    /// A public address: what rendezvous servers see is a local address.
    None,
    /// Endpoint-independent mapping: the same public port for every
    /// destination.
    Easy,
    /// Endpoint-dependent mapping: a new public port per destination.
    Hard,
}

impl NatKind {
    /// Wire encoding.
    pub fn to_byte(self) -> u8 {
        match self {
            NatKind::Unknown => 0,
            NatKind::None => 1,
            NatKind::Easy => 2,
            NatKind::Hard => 3,
        }
    }

    /// Wire decoding (unknown values are `Unknown`).
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            1 => NatKind::None,
            2 => NatKind::Easy,
            3 => NatKind::Hard,
            _ => NatKind::Unknown,
        }
    }
}

impl PathAddr {
    /// The underlay address the datagram actually goes to or came from.
    pub fn underlay(&self) -> SocketAddr {
        match self {
            PathAddr::Direct(address) | PathAddr::Relay(address) | PathAddr::Probe(_, address) => {
                *address
            }
        }
    }

    /// The remote endpoint of a direct path (main or probe socket).
    pub fn direct_endpoint(&self) -> Option<SocketAddr> {
        match self {
            PathAddr::Direct(address) | PathAddr::Probe(_, address) => Some(*address),
            PathAddr::Relay(_) => None,
        }
    }

    /// Whether this is a relayed path.
    pub fn is_relay(&self) -> bool {
        matches!(self, PathAddr::Relay(_))
    }
}

impl fmt::Display for PathAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathAddr::Direct(address) => write!(f, "direct {address}"),
            PathAddr::Relay(address) => write!(f, "relay via {address}"),
            PathAddr::Probe(socket, address) => {
                write!(f, "direct {address} (probe socket {socket})")
            }
        }
    }
}

/// Wraps a datagram in a relay envelope naming `node` (the destination when
/// sent to a rendezvous, the source when a rendezvous delivers it).
pub fn relay_envelope(node: NodeId, inner: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(RELAY_HEADER_LEN + inner.len());
    datagram.extend_from_slice(&[TYPE_RELAY, 0, 0, 0]);
    datagram.extend_from_slice(&node.0);
    datagram.extend_from_slice(inner);
    datagram
}

/// Rewrites the node ID of a relay envelope in place (the rendezvous turns
/// the destination into the source before forwarding).
pub fn rewrite_relay_node(datagram: &mut [u8], node: NodeId) {
    if datagram.len() >= RELAY_HEADER_LEN && datagram[0] == TYPE_RELAY {
        datagram[wire::HEADER_LEN..RELAY_HEADER_LEN].copy_from_slice(&node.0);
    }
}

/// Writes the source tag of a relay envelope in place: the three bytes
/// after its type, where a rendezvous says which of its sources a relayed
/// trust request came from (see [`wire::Relay::source_tag`]); 0 clears it.
pub fn set_relay_source_tag(datagram: &mut [u8], tag: u32) {
    if datagram.len() >= RELAY_HEADER_LEN && datagram[0] == TYPE_RELAY {
        datagram[1..wire::HEADER_LEN].copy_from_slice(&tag.to_be_bytes()[1..]);
    }
}

/// Most candidate endpoints carried in a handshake or a control frame.
pub const MAX_CANDIDATES: usize = 8;

/// A peer's NAT kind and reflexive endpoints, for choosing how to punch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatHint {
    /// Mapping behaviour of its NAT.
    pub kind: NatKind,
    /// Where rendezvous servers saw it.
    pub reflexive: Vec<SocketAddr>,
}

impl NatHint {
    /// Appends the hint.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind.to_byte());
        out.put_socket_addrs(&self.reflexive, MAX_CANDIDATES);
    }

    /// Reads a hint if present; missing or malformed trailing data is
    /// "unknown" (older peers, or fields this build does not know).
    pub fn decode_from(reader: &mut Reader<'_>) -> Self {
        Self::decode_reporting(reader).0
    }

    /// [`Self::decode_from`], and whether the hint was absent or read
    /// whole: only then is the reader where a field after it starts.
    pub fn decode_reporting(reader: &mut Reader<'_>) -> (Self, bool) {
        let Some(kind) = reader.u8() else {
            return (Self::default(), true);
        };
        let reflexive = reader.socket_addrs(MAX_CANDIDATES);
        let whole = reflexive.is_some();
        let hint = Self {
            kind: NatKind::from_byte(kind),
            reflexive: reflexive.unwrap_or_default(),
        };
        (hint, whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::Datagram;

    #[test]
    fn envelope_round_trips_and_rewrites() {
        let inner = [4u8, 0, 0, 0, 1, 2, 3];
        let mut datagram = relay_envelope(NodeId([7; 8]), &inner);
        rewrite_relay_node(&mut datagram, NodeId([9; 8]));
        match Datagram::parse(&datagram) {
            Ok(Datagram::Relay(relay)) => {
                assert_eq!(relay.destination(), [9; 8]);
                assert_eq!(relay.inner(), inner);
            }
            other => panic!("not a relay envelope: {other:?}"),
        }
    }
}
