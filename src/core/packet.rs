//! The few facts the core reads from inner IP packets: version, addresses,
//! transport protocol and ports. Checked views over untrusted bytes; only
//! IPv6 without extension headers is looked into for ports (anything else is
//! classified as "other" and judged conservatively by the policy).

use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// IPv6 minimum link MTU.
pub const IPV6_MIN_MTU: usize = 1280;
/// Next-header value of TCP.
pub const PROTO_TCP: u8 = 6;
/// Next-header value of UDP.
pub const PROTO_UDP: u8 = 17;
/// Next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// ICMPv6 echo request type.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply type.
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 packet-too-big type.
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// A length-checked IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    bytes: &'a [u8],
}

/// The transport-level identity of a packet, enough for the policy and
/// connection tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP with ports and whether it is a bare SYN (a new connection).
    Tcp {
        /// Source port.
        source_port: u16,
        /// Destination port.
        destination_port: u16,
        /// SYN set and ACK clear.
        is_syn: bool,
    },
    /// UDP with ports.
    Udp {
        /// Source port.
        source_port: u16,
        /// Destination port.
        destination_port: u16,
    },
    /// ICMPv6 with type and, for echo, the identifier.
    Icmp {
        /// ICMPv6 type.
        icmp_type: u8,
        /// Echo identifier (0 for other types).
        identifier: u16,
    },
    /// Anything else, or a header we do not look into.
    Other,
}

impl<'a> Ipv6Packet<'a> {
    /// Checks version and length; `None` when not a whole IPv6 packet.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < IPV6_HEADER_LEN || bytes[0] >> 4 != 6 {
            return None;
        }
        let payload_len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
        if IPV6_HEADER_LEN + payload_len != bytes.len() {
            return None;
        }
        Some(Self { bytes })
    }

    /// The whole packet.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The source address octets.
    pub fn source(&self) -> [u8; 16] {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.bytes[8..24]);
        octets
    }

    /// The destination address octets.
    pub fn destination(&self) -> [u8; 16] {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.bytes[24..40]);
        octets
    }

    /// The source address.
    pub fn source_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.source())
    }

    /// The next-header field.
    pub fn next_header(&self) -> u8 {
        self.bytes[6]
    }

    /// Ports or ICMP type of the packet.
    pub fn transport(&self) -> Transport {
        let payload = &self.bytes[IPV6_HEADER_LEN..];
        let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
        match self.next_header() {
            PROTO_TCP if payload.len() >= 20 => {
                let flags = payload[13];
                Transport::Tcp {
                    source_port: port(0),
                    destination_port: port(2),
                    is_syn: flags & 0x02 != 0 && flags & 0x10 == 0,
                }
            }
            PROTO_UDP if payload.len() >= 8 => Transport::Udp {
                source_port: port(0),
                destination_port: port(2),
            },
            PROTO_ICMPV6 if payload.len() >= 8 => {
                let icmp_type = payload[0];
                let identifier = if matches!(icmp_type, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY) {
                    port(4)
                } else {
                    0
                };
                Transport::Icmp {
                    icmp_type,
                    identifier,
                }
            }
            _ => Transport::Other,
        }
    }
}

/// The Internet checksum of ICMPv6 over the pseudo-header and `body`.
pub fn icmpv6_checksum(source: &[u8; 16], destination: &[u8; 16], body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for chunk in &mut chunks {
            sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    add(source);
    add(destination);
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, PROTO_ICMPV6]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an ICMPv6 Packet Too Big for `original`, from `source` (this
/// agent) to the original sender, as long as fits in the IPv6 minimum MTU.
pub fn packet_too_big(source: [u8; 16], original: &Ipv6Packet<'_>, mtu: u32) -> Vec<u8> {
    let quoted_len = original
        .bytes()
        .len()
        .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - 8);
    let body_len = 8 + quoted_len;
    let destination = original.source();
    let mut packet = Vec::with_capacity(IPV6_HEADER_LEN + body_len);
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&(body_len as u16).to_be_bytes());
    packet.push(PROTO_ICMPV6);
    packet.push(64);
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&destination);
    packet.extend_from_slice(&[ICMPV6_PACKET_TOO_BIG, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original.bytes()[..quoted_len]);
    let checksum = icmpv6_checksum(&source, &destination, &packet[IPV6_HEADER_LEN..]);
    packet[IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds an IPv6 packet with a transport payload (test helper).
    pub(crate) fn ipv6(
        source: Ipv6Addr,
        destination: Ipv6Addr,
        next_header: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        packet.push(next_header);
        packet.push(64);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        packet.extend_from_slice(payload);
        packet
    }

    /// A TCP header with ports and flags (test helper).
    pub(crate) fn tcp(source_port: u16, destination_port: u16, flags: u8) -> Vec<u8> {
        let mut header = vec![0u8; 20];
        header[0..2].copy_from_slice(&source_port.to_be_bytes());
        header[2..4].copy_from_slice(&destination_port.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = flags;
        header
    }

    #[test]
    fn reads_tcp_ports_and_syn() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let b: Ipv6Addr = "fd00::2".parse().expect("addr");
        let bytes = ipv6(a, b, PROTO_TCP, &tcp(1234, 80, 0x02));
        let packet = Ipv6Packet::new_checked(&bytes).expect("valid");
        assert_eq!(
            packet.transport(),
            Transport::Tcp {
                source_port: 1234,
                destination_port: 80,
                is_syn: true
            }
        );
        assert_eq!(packet.source_addr(), a);
    }

    #[test]
    fn packet_too_big_is_valid_icmpv6_within_minimum_mtu() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let b: Ipv6Addr = "fd00::2".parse().expect("addr");
        let big = ipv6(a, b, PROTO_UDP, &vec![0u8; 1500]);
        let original = Ipv6Packet::new_checked(&big).expect("valid");
        let reply = packet_too_big(b.octets(), &original, 1408);
        assert_eq!(reply.len(), IPV6_MIN_MTU);
        let parsed = etherparse::SlicedPacket::from_ip(&reply).expect("parses");
        match parsed.transport {
            Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
                assert_eq!(
                    icmp.icmp_type(),
                    etherparse::Icmpv6Type::PacketTooBig { mtu: 1408 }
                );
                let (source, destination) = (b.octets(), a.octets());
                assert_eq!(icmpv6_checksum(&source, &destination, icmp.slice()), 0);
            }
            other => panic!("not icmpv6: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(packet) = Ipv6Packet::new_checked(&bytes) {
                let _ = (packet.transport(), packet.source(), packet.destination());
            }
        }
    }
}
