//! Control frames: inner payloads whose first byte is below 0x40 (an IP
//! packet starts with 0x4_ or 0x6_). They ride the authenticated session.

use std::net::SocketAddr;

use crate::core::identity::AgentId;
use crate::core::wire::codec::{Reader, Writer};
use crate::core::wire::path::{MAX_CANDIDATES, NatHint};

/// First byte of a path ping.
const FRAME_PATH_PING: u8 = 0x01;
/// First byte of a path pong.
const FRAME_PATH_PONG: u8 = 0x02;
/// First byte of a candidate update.
const FRAME_CANDIDATES: u8 = 0x03;
/// First byte of a revocation notice.
const FRAME_REVOKED: u8 = 0x04;
/// First byte of a count of counters spent elsewhere.
const FRAME_SKIPPED_COUNTERS: u8 = 0x05;
/// First byte of a request to punch now.
const FRAME_PUNCH: u8 = 0x06;
/// First byte of a registration with a rendezvous.
const FRAME_REGISTER: u8 = 0x10;
/// First byte of a rendezvous's answer to a registration.
const FRAME_REGISTERED: u8 = 0x11;
/// Payloads starting below this are control frames.
pub const CONTROL_FRAME_LIMIT: u8 = 0x40;

/// A control frame. A keepalive is the empty payload and needs no frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// Probe of a path; answered with a pong carrying the same id.
    PathPing {
        /// Echoed in the pong.
        id: u64,
    },
    /// Answer to a path ping.
    PathPong {
        /// The ping's id.
        id: u64,
    },
    /// The sender's current candidate endpoints and NAT hint.
    Candidates {
        /// Local and reflexive endpoints.
        candidates: Vec<SocketAddr>,
        /// NAT kind and reflexive endpoints (optional on the wire).
        nat: NatHint,
    },
    /// The sender no longer trusts the receiver; the signature is the
    /// sender's Ed25519 signature over the revocation context.
    Revoked {
        /// Ed25519 signature.
        signature: [u8; 64],
    },
    /// How many counters of the session this frame arrives on the sender
    /// spent on datagrams sent elsewhere (path pings to candidates while
    /// hole punching), so the receiver does not count them as lost.
    SkippedCounters {
        /// Running total for the session.
        count: u64,
    },
    /// Sent through a relay: "punch towards my candidates now". The sender
    /// punches half a relay round trip later, so both sides' first
    /// datagrams leave together (a router without an inbound firewall keeps
    /// an entry for a datagram that arrives before its own agent sent
    /// anything, and that entry blocks the agent's flow to the sender).
    Punch {
        /// The sender's round of hole punching (from 1 on, the hard side of
        /// an easy ↔ hard pair probes birthday-style too).
        round: u8,
    },
    /// Agent → rendezvous: register (or refresh) this agent's endpoint. It
    /// names the agent's Ed25519 key, which must match the session's Noise
    /// key (the rendezvous derives the node ID from it).
    Register {
        /// The registering agent.
        agent: AgentId,
    },
    /// Rendezvous → agent: registered; the source address it saw.
    Registered {
        /// The agent's reflexive endpoint (as the rendezvous sees it).
        reflexive: SocketAddr,
        /// Seconds the registration lasts without a refresh.
        lifetime_s: u16,
    },
}

impl ControlFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self {
            ControlFrame::PathPing { id } => {
                out.push(FRAME_PATH_PING);
                out.extend_from_slice(&id.to_le_bytes());
            }
            ControlFrame::PathPong { id } => {
                out.push(FRAME_PATH_PONG);
                out.extend_from_slice(&id.to_le_bytes());
            }
            ControlFrame::Candidates { candidates, nat } => {
                out.push(FRAME_CANDIDATES);
                out.put_socket_addrs(candidates, MAX_CANDIDATES);
                nat.encode_into(&mut out);
            }
            ControlFrame::Revoked { signature } => {
                out.push(FRAME_REVOKED);
                out.extend_from_slice(signature);
            }
            ControlFrame::SkippedCounters { count } => {
                out.push(FRAME_SKIPPED_COUNTERS);
                out.extend_from_slice(&count.to_le_bytes());
            }
            ControlFrame::Punch { round } => {
                out.push(FRAME_PUNCH);
                out.push(*round);
            }
            ControlFrame::Register { agent } => {
                out.push(FRAME_REGISTER);
                out.extend_from_slice(agent.as_bytes());
            }
            ControlFrame::Registered {
                reflexive,
                lifetime_s,
            } => {
                out.push(FRAME_REGISTERED);
                out.put_socket_addr(reflexive);
                out.extend_from_slice(&lifetime_s.to_le_bytes());
            }
        }
        out
    }

    /// The raw key a `Register` frame names, not yet checked to be an
    /// Ed25519 point (what [`ControlFrame::decode`] would check, at the cost
    /// of a point decompression): for a rendezvous that already checked
    /// this key for this session. `None` for any other frame.
    pub fn register_key_bytes(bytes: &[u8]) -> Option<[u8; 32]> {
        let mut reader = Reader::new(bytes);
        (reader.u8()? == FRAME_REGISTER).then_some(())?;
        reader.array()
    }

    /// Decodes a frame; `None` for unknown or malformed frames (ignored, so
    /// newer peers can add frame types).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        match reader.u8()? {
            FRAME_PATH_PING => Some(ControlFrame::PathPing { id: reader.u64()? }),
            FRAME_PATH_PONG => Some(ControlFrame::PathPong { id: reader.u64()? }),
            FRAME_CANDIDATES => {
                let candidates = reader.socket_addrs(MAX_CANDIDATES)?;
                let nat = NatHint::decode_from(&mut reader);
                Some(ControlFrame::Candidates { candidates, nat })
            }
            FRAME_REVOKED => Some(ControlFrame::Revoked {
                signature: reader.array()?,
            }),
            FRAME_SKIPPED_COUNTERS => Some(ControlFrame::SkippedCounters {
                count: reader.u64()?,
            }),
            FRAME_PUNCH => Some(ControlFrame::Punch {
                round: reader.u8()?,
            }),
            FRAME_REGISTER => Some(ControlFrame::Register {
                agent: AgentId::from_bytes(reader.array()?).ok()?,
            }),
            FRAME_REGISTERED => Some(ControlFrame::Registered {
                reflexive: reader.socket_addr()?,
                lifetime_s: reader.u16()?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            ControlFrame::PathPing { id: 7 },
            ControlFrame::PathPong { id: u64::MAX },
            ControlFrame::Candidates {
                candidates: vec!["10.0.0.1:1".parse().expect("addr")],
                nat: NatHint {
                    kind: crate::core::wire::path::NatKind::Easy,
                    reflexive: vec!["192.0.2.9:7400".parse().expect("addr")],
                },
            },
            ControlFrame::Revoked { signature: [9; 64] },
            ControlFrame::SkippedCounters { count: 300 },
            ControlFrame::Punch { round: 3 },
            ControlFrame::Register {
                agent: crate::core::identity::Identity::from_secret_bytes(&[1; 32])
                    .expect("key")
                    .agent_id(),
            },
            ControlFrame::Registered {
                reflexive: "[2001:db8::1]:4444".parse().expect("addr"),
                lifetime_s: 75,
            },
        ];
        for frame in frames {
            let bytes = frame.encode();
            assert!(bytes[0] < CONTROL_FRAME_LIMIT);
            assert_eq!(ControlFrame::decode(&bytes), Some(frame));
        }
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = ControlFrame::decode(&bytes);
        }
    }
}
