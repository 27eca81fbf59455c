//! Control frames: inner payloads whose first byte is below 0x40 (an IP
//! packet starts with 0x4_ or 0x6_). They ride the authenticated session.

use std::net::SocketAddr;

use crate::core::identity::AgentId;
use crate::core::services::{
    MAX_SERVICES, MAX_SERVICES_FRAME_LEN, Service, ServiceKind, frame_len,
};
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
/// First byte of an advertisement of services.
const FRAME_SERVICES: u8 = 0x07;
/// First byte of the acknowledgement of an advertisement.
const FRAME_SERVICES_ACK: u8 = 0x08;
/// The layout of `Services` frames this code writes and reads.
pub const SERVICES_VERSION: u8 = 1;
/// First byte of a registration with a rendezvous.
const FRAME_REGISTER: u8 = 0x10;
/// First byte of a rendezvous's answer to a registration.
const FRAME_REGISTERED: u8 = 0x11;
/// Flag of a `Register` frame's flags byte: the agent reads source tags.
const REGISTER_READS_SOURCE_TAGS: u8 = 1;
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
    /// The services the sender offers the receiver (already filtered by
    /// the receiver's policy at the sender), replacing any of an older
    /// generation. At most [`MAX_SERVICES`] entries and
    /// [`MAX_SERVICES_FRAME_LEN`] bytes; every entry is checked on
    /// decoding. Authenticated by the session it rides.
    Services {
        /// Layout version ([`SERVICES_VERSION`]); others are not decoded.
        version: u8,
        /// Grows with every change of the set, across restarts (the
        /// sender's wall clock in milliseconds at least).
        generation: u64,
        /// The entries.
        entries: Vec<Service>,
    },
    /// The receiver of `Services` has the set of this generation.
    ServicesAck {
        /// The generation received.
        generation: u64,
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
            ControlFrame::Services {
                version,
                generation,
                entries,
            } => {
                out.push(FRAME_SERVICES);
                out.push(*version);
                out.extend_from_slice(&generation.to_le_bytes());
                let entries = &entries[..entries.len().min(MAX_SERVICES)];
                out.push(entries.len() as u8);
                for entry in entries {
                    out.put_short_str(entry.kind.as_str());
                    out.extend_from_slice(&entry.port.to_le_bytes());
                    out.put_short_str(entry.path.as_deref().unwrap_or(""));
                    out.put_short_str(entry.name.as_deref().unwrap_or(""));
                }
            }
            ControlFrame::ServicesAck { generation } => {
                out.push(FRAME_SERVICES_ACK);
                out.extend_from_slice(&generation.to_le_bytes());
            }
            ControlFrame::Register { agent } => {
                out.push(FRAME_REGISTER);
                out.extend_from_slice(agent.as_bytes());
                // What this version understands; a server that predates the
                // byte ignores it, as `decode` does.
                out.push(REGISTER_READS_SOURCE_TAGS);
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

    /// Whether a `Register` frame says its agent reads the source tags of
    /// relayed trust requests ([`crate::core::wire::Relay::source_tag`]):
    /// the flags byte after the key, which agents that predate it do not
    /// send (their parser refuses an envelope with a tag).
    pub fn register_reads_source_tags(bytes: &[u8]) -> bool {
        bytes.first() == Some(&FRAME_REGISTER)
            && bytes
                .get(1 + 32)
                .is_some_and(|flags| flags & REGISTER_READS_SOURCE_TAGS != 0)
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
            FRAME_SERVICES => decode_services(bytes.len(), &mut reader),
            FRAME_SERVICES_ACK => Some(ControlFrame::ServicesAck {
                generation: reader.u64()?,
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

/// The rest of a `Services` frame of `len` bytes: refused when it is too
/// long, of another version, holds too many or bad entries, or has bytes
/// left over.
fn decode_services(len: usize, reader: &mut Reader<'_>) -> Option<ControlFrame> {
    if len > MAX_SERVICES_FRAME_LEN {
        return None;
    }
    let version = reader.u8()?;
    if version != SERVICES_VERSION {
        return None;
    }
    let generation = reader.u64()?;
    let count = usize::from(reader.u8()?);
    if count > MAX_SERVICES {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let kind: ServiceKind = reader.short_str()?.parse().ok()?;
        let port = reader.u16()?;
        let optional = |text: &str| (!text.is_empty()).then(|| text.to_string());
        let path = optional(reader.short_str()?);
        let name = optional(reader.short_str()?);
        entries.push(Service::new(kind, port, path, name).ok()?);
    }
    if !reader.is_empty() || frame_len(&entries) != len {
        return None;
    }
    Some(ControlFrame::Services {
        version,
        generation,
        entries,
    })
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

    fn services(entries: Vec<Service>) -> ControlFrame {
        ControlFrame::Services {
            version: SERVICES_VERSION,
            generation: 1_800_000_000_000,
            entries,
        }
    }

    fn service(text: &str, path: Option<&str>, name: Option<&str>) -> Service {
        Service::parse(text, path.map(Into::into), name.map(Into::into)).expect(text)
    }

    #[test]
    fn services_frames_round_trip_with_their_exact_length() {
        for frame in [
            services(Vec::new()),
            services(vec![
                service("mcp:8000", Some("/mcp"), Some("notes")),
                service("a2a:9999", Some("/.well-known/agent.json"), None),
                service("my-tool:1", None, None),
            ]),
            ControlFrame::ServicesAck { generation: 7 },
        ] {
            let bytes = frame.encode();
            if let ControlFrame::Services { entries, .. } = &frame {
                assert_eq!(bytes.len(), frame_len(entries));
            }
            assert_eq!(ControlFrame::decode(&bytes), Some(frame));
        }
    }

    #[test]
    fn bad_services_frames_are_refused() {
        let good = services(vec![service("mcp:8000", Some("/mcp"), None)]).encode();
        let mut other_version = good.clone();
        other_version[1] = 2;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut bad_kind = good.clone();
        bad_kind[12] = b'M';
        let mut port_zero = good.clone();
        port_zero[15..17].copy_from_slice(&[0, 0]);
        let mut control_in_path = good.clone();
        control_in_path[19] = b'\n';
        let mut too_many = good[..10].to_vec();
        too_many.push(33);
        for _ in 0..33 {
            too_many.extend_from_slice(&[1, b'x', 1, 0, 0, 0]);
        }
        let mut oversize = good[..10].to_vec();
        oversize.push(10);
        for _ in 0..10 {
            oversize.push(1);
            oversize.push(b'x');
            oversize.extend_from_slice(&[1, 0]);
            oversize.push(128);
            oversize.push(b'/');
            oversize.extend_from_slice(&[b'p'; 127]);
            oversize.push(0);
        }
        for (what, bytes) in [
            ("other version", other_version),
            ("trailing byte", trailing),
            ("bad kind", bad_kind),
            ("port 0", port_zero),
            ("control character in the path", control_in_path),
            ("33 entries", too_many),
            ("over the size bound", oversize),
            ("cut short", good[..good.len() - 1].to_vec()),
        ] {
            assert_eq!(ControlFrame::decode(&bytes), None, "{what}");
        }
    }

    fn any_service() -> impl Strategy<Value = Service> {
        (
            "[a-z0-9-]{1,15}",
            1u16..,
            // A URL's characters (`check_path`).
            proptest::option::of("/[!#-;=?-\\[\\]_a-z~]{0,40}"),
            proptest::option::of("[ -~]{1,48}"),
        )
            .prop_map(|(kind, port, path, name)| {
                Service::new(kind.parse().expect("kind"), port, path, name).expect("service")
            })
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = ControlFrame::decode(&bytes);
        }

        #[test]
        fn decoding_garbage_after_a_services_byte_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..1400)
        ) {
            let mut frame = vec![FRAME_SERVICES, SERVICES_VERSION];
            frame.extend_from_slice(&bytes);
            let _ = ControlFrame::decode(&frame);
        }

        #[test]
        fn every_services_set_that_fits_round_trips(
            entries in proptest::collection::vec(any_service(), 0..40),
            generation in any::<u64>(),
        ) {
            let (entries, _) = crate::core::services::fit_to_frame(entries);
            let frame = ControlFrame::Services { version: SERVICES_VERSION, generation, entries };
            let bytes = frame.encode();
            prop_assert!(bytes.len() <= MAX_SERVICES_FRAME_LEN);
            prop_assert_eq!(ControlFrame::decode(&bytes), Some(frame));
        }
    }
}
