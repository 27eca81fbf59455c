//! The few facts the core reads from inner IP packets: version, addresses,
//! transport protocol and ports. One checked view, [`IpPacket`], over
//! untrusted bytes of either family. Only IPv6 without extension headers and
//! unfragmented IPv4 are looked into for ports (anything else is classified
//! as "other" and judged conservatively by the policy).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 minimum link MTU.
pub const IPV6_MIN_MTU: usize = 1280;
/// Protocol number of ICMPv4.
pub const PROTO_ICMPV4: u8 = 1;
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
/// ICMPv4 echo request type.
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
/// ICMPv4 echo reply type.
pub const ICMPV4_ECHO_REPLY: u8 = 0;
/// ICMPv4 destination-unreachable type.
pub const ICMPV4_DESTINATION_UNREACHABLE: u8 = 3;
/// ICMPv4 "fragmentation needed and DF set" code.
pub const ICMPV4_FRAGMENTATION_NEEDED: u8 = 4;

/// Which IP version a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A length-checked IP packet of either family.
#[derive(Debug, Clone, Copy)]
pub struct IpPacket<'a> {
    bytes: &'a [u8],
    version: IpVersion,
    /// Where the transport header starts.
    header_len: usize,
}

/// What an ICMP message is, whichever the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    /// Echo request (ping).
    EchoRequest,
    /// Echo reply.
    EchoReply,
    /// Any other type.
    Other(u8),
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
    /// ICMPv4 or ICMPv6 with its kind and, for echo, the identifier.
    Icmp {
        /// Echo request, echo reply or another type.
        kind: IcmpKind,
        /// Echo identifier (0 for other types).
        identifier: u16,
    },
    /// Anything else, or a header we do not look into.
    Other,
}

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address, so
/// tables keyed by 16 bytes hold both families apart.
pub fn mapped(address: Ipv4Addr) -> [u8; 16] {
    address.to_ipv6_mapped().octets()
}

impl<'a> IpPacket<'a> {
    /// Checks version, header and length; `None` when not one whole IPv4
    /// or IPv6 packet.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        match bytes.first()? >> 4 {
            6 => {
                if bytes.len() < IPV6_HEADER_LEN {
                    return None;
                }
                let payload_len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
                (IPV6_HEADER_LEN + payload_len == bytes.len()).then_some(Self {
                    bytes,
                    version: IpVersion::V6,
                    header_len: IPV6_HEADER_LEN,
                })
            }
            4 => {
                if bytes.len() < IPV4_HEADER_LEN {
                    return None;
                }
                let header_len = usize::from(bytes[0] & 0x0f) * 4;
                let total_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                (header_len >= IPV4_HEADER_LEN
                    && header_len <= total_len
                    && total_len == bytes.len())
                .then_some(Self {
                    bytes,
                    version: IpVersion::V4,
                    header_len,
                })
            }
            _ => None,
        }
    }

    /// The whole packet.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// IPv4 or IPv6.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// The source address as 16 bytes (IPv4-mapped for IPv4).
    pub fn source(&self) -> [u8; 16] {
        match self.version {
            IpVersion::V6 => octets16(&self.bytes[8..24]),
            IpVersion::V4 => mapped(self.v4_at(12)),
        }
    }

    /// The destination address as 16 bytes (IPv4-mapped for IPv4).
    pub fn destination(&self) -> [u8; 16] {
        match self.version {
            IpVersion::V6 => octets16(&self.bytes[24..40]),
            IpVersion::V4 => mapped(self.v4_at(16)),
        }
    }

    /// The source address.
    pub fn source_ip(&self) -> IpAddr {
        match self.version {
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(self.source())),
            IpVersion::V4 => IpAddr::V4(self.v4_at(12)),
        }
    }

    /// The destination address.
    pub fn destination_ip(&self) -> IpAddr {
        match self.version {
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(self.destination())),
            IpVersion::V4 => IpAddr::V4(self.v4_at(16)),
        }
    }

    fn v4_at(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        )
    }

    /// The transport protocol number (IPv6 next header, IPv4 protocol).
    pub fn protocol(&self) -> u8 {
        match self.version {
            IpVersion::V6 => self.bytes[6],
            IpVersion::V4 => self.bytes[9],
        }
    }

    /// Whether an IPv4 packet forbids fragmentation (IPv6: always).
    pub fn dont_fragment(&self) -> bool {
        match self.version {
            IpVersion::V6 => true,
            IpVersion::V4 => self.bytes[6] & 0x40 != 0,
        }
    }

    /// Whether this is a fragment of an IPv4 packet (more fragments or a
    /// non-zero offset): its ports are not looked at.
    fn is_ipv4_fragment(&self) -> bool {
        self.version == IpVersion::V4
            && u16::from_be_bytes([self.bytes[6], self.bytes[7]]) & 0x3fff != 0
    }

    /// Ports or ICMP type of the packet.
    pub fn transport(&self) -> Transport {
        if self.is_ipv4_fragment() {
            return Transport::Other;
        }
        let payload = &self.bytes[self.header_len..];
        let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
        let icmp = |echo_request: u8, echo_reply: u8| {
            let icmp_type = payload[0];
            let kind = match icmp_type {
                t if t == echo_request => IcmpKind::EchoRequest,
                t if t == echo_reply => IcmpKind::EchoReply,
                t => IcmpKind::Other(t),
            };
            let identifier = if matches!(kind, IcmpKind::Other(_)) {
                0
            } else {
                port(4)
            };
            Transport::Icmp { kind, identifier }
        };
        match (self.version, self.protocol()) {
            (_, PROTO_TCP) if payload.len() >= 20 => {
                let flags = payload[13];
                Transport::Tcp {
                    source_port: port(0),
                    destination_port: port(2),
                    is_syn: flags & 0x02 != 0 && flags & 0x10 == 0,
                }
            }
            (_, PROTO_UDP) if payload.len() >= 8 => Transport::Udp {
                source_port: port(0),
                destination_port: port(2),
            },
            (IpVersion::V6, PROTO_ICMPV6) if payload.len() >= 8 => {
                icmp(ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            }
            (IpVersion::V4, PROTO_ICMPV4) if payload.len() >= 8 => {
                icmp(ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY)
            }
            _ => Transport::Other,
        }
    }
}

fn octets16(bytes: &[u8]) -> [u8; 16] {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    octets
}

/// The Internet checksum (RFC 1071) of `bytes` added to `sum`, folded.
fn internet_checksum(mut sum: u32, bytes: &[u8]) -> u16 {
    let mut chunks = bytes.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an ICMPv4 "fragmentation needed" (type 3 code 4) for `original`,
/// an IPv4 packet with DF set that does not fit the tunnel, from `source`
/// (the peer it was for, as an on-path router would send it) to its sender, quoting its header and the first 8 bytes
/// after it (RFC 792, RFC 1191 next-hop MTU).
pub fn fragmentation_needed(source: Ipv4Addr, original: &IpPacket<'_>, mtu: u16) -> Vec<u8> {
    let quoted_len = original.bytes().len().min(original.header_len + 8);
    let total_len = IPV4_HEADER_LEN + 8 + quoted_len;
    let IpAddr::V4(destination) = original.source_ip() else {
        return Vec::new();
    };
    let mut packet = Vec::with_capacity(total_len);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMPV4, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    let header_checksum = internet_checksum(0, &packet[..IPV4_HEADER_LEN]);
    packet[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    packet.extend_from_slice(&[ICMPV4_DESTINATION_UNREACHABLE, ICMPV4_FRAGMENTATION_NEEDED]);
    packet.extend_from_slice(&[0, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original.bytes()[..quoted_len]);
    let icmp_checksum = internet_checksum(0, &packet[IPV4_HEADER_LEN..]);
    packet[IPV4_HEADER_LEN + 2..IPV4_HEADER_LEN + 4].copy_from_slice(&icmp_checksum.to_be_bytes());
    packet
}

/// The Internet checksum of ICMPv6 over the pseudo-header and `body`.
pub fn icmpv6_checksum(source: &[u8; 16], destination: &[u8; 16], body: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(source);
    pseudo[16..32].copy_from_slice(destination);
    pseudo[32..36].copy_from_slice(&(body.len() as u32).to_be_bytes());
    pseudo[39] = PROTO_ICMPV6;
    let folded = !internet_checksum(0, &pseudo);
    internet_checksum(u32::from(folded), body)
}

/// Builds an ICMPv6 Packet Too Big for `original`, from `source` (this
/// agent) to the original sender, as long as fits in the IPv6 minimum MTU.
pub fn packet_too_big(source: [u8; 16], original: &IpPacket<'_>, mtu: u32) -> Vec<u8> {
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

    /// Builds an IPv4 packet (no options, DF set) with a transport
    /// payload (test helper). The header checksum is filled in.
    pub(crate) fn ipv4(
        source: Ipv4Addr,
        destination: Ipv4Addr,
        protocol: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let total = (IPV4_HEADER_LEN + payload.len()) as u16;
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        let checksum = super::internet_checksum(0, &packet);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
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
        let packet = IpPacket::new_checked(&bytes).expect("valid");
        assert_eq!(
            packet.transport(),
            Transport::Tcp {
                source_port: 1234,
                destination_port: 80,
                is_syn: true
            }
        );
        assert_eq!(packet.source_ip(), IpAddr::V6(a));
        assert_eq!(packet.version(), IpVersion::V6);
    }

    #[test]
    fn reads_ipv4_addresses_ports_and_echo() {
        let a = Ipv4Addr::new(100, 64, 0, 1);
        let b = Ipv4Addr::new(100, 64, 0, 2);
        let bytes = ipv4(a, b, PROTO_TCP, &tcp(1234, 8080, 0x02));
        let packet = IpPacket::new_checked(&bytes).expect("valid");
        assert_eq!(packet.version(), IpVersion::V4);
        assert_eq!(packet.source_ip(), IpAddr::V4(a));
        assert_eq!(packet.destination_ip(), IpAddr::V4(b));
        assert_eq!(packet.source(), mapped(a));
        assert!(packet.dont_fragment());
        assert_eq!(
            packet.transport(),
            Transport::Tcp {
                source_port: 1234,
                destination_port: 8080,
                is_syn: true
            }
        );
        let echo = ipv4(
            a,
            b,
            PROTO_ICMPV4,
            &[ICMPV4_ECHO_REQUEST, 0, 0, 0, 0, 7, 0, 1],
        );
        assert_eq!(
            IpPacket::new_checked(&echo).expect("valid").transport(),
            Transport::Icmp {
                kind: IcmpKind::EchoRequest,
                identifier: 7
            }
        );
        // The same bytes as ICMPv6 type 8 are not an echo.
        let not_echo = ipv6(
            "fd00::1".parse().expect("addr"),
            "fd00::2".parse().expect("addr"),
            PROTO_ICMPV6,
            &[ICMPV4_ECHO_REQUEST, 0, 0, 0, 0, 7, 0, 1],
        );
        assert_eq!(
            IpPacket::new_checked(&not_echo).expect("valid").transport(),
            Transport::Icmp {
                kind: IcmpKind::Other(ICMPV4_ECHO_REQUEST),
                identifier: 0
            }
        );
    }

    #[test]
    fn ipv4_options_fragments_and_bad_lengths() {
        let a = Ipv4Addr::new(100, 64, 0, 1);
        let b = Ipv4Addr::new(100, 64, 0, 2);
        let mut bytes = ipv4(a, b, PROTO_UDP, &[0, 53, 0, 54, 0, 8, 0, 0]);
        // A trailing byte, a short header, a length past the end: refused.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IpPacket::new_checked(&longer).is_none());
        let mut short_header = bytes.clone();
        short_header[0] = 0x44;
        assert!(IpPacket::new_checked(&short_header).is_none());
        let mut past_end = bytes.clone();
        past_end[0] = 0x4f;
        assert!(IpPacket::new_checked(&past_end).is_none());
        // Options move the ports.
        let mut with_options = vec![0x46];
        with_options.extend_from_slice(&bytes[1..20]);
        with_options.extend_from_slice(&[1, 1, 1, 0]);
        with_options.extend_from_slice(&bytes[20..]);
        with_options[2..4].copy_from_slice(&(bytes.len() as u16 + 4).to_be_bytes());
        assert_eq!(
            IpPacket::new_checked(&with_options)
                .expect("valid")
                .transport(),
            Transport::Udp {
                source_port: 53,
                destination_port: 54
            }
        );
        // Fragments (more-fragments, or an offset) are not looked into.
        bytes[6] = 0x20;
        assert_eq!(
            IpPacket::new_checked(&bytes).expect("valid").transport(),
            Transport::Other
        );
        bytes[6] = 0;
        bytes[7] = 1;
        assert_eq!(
            IpPacket::new_checked(&bytes).expect("valid").transport(),
            Transport::Other
        );
    }

    #[test]
    fn fragmentation_needed_is_valid_icmpv4_with_the_mtu() {
        let me = Ipv4Addr::new(100, 64, 0, 1);
        let app = Ipv4Addr::new(100, 64, 0, 1);
        let peer = Ipv4Addr::new(100, 99, 0, 2);
        let big = ipv4(app, peer, PROTO_TCP, &[0u8; 1500]);
        let original = IpPacket::new_checked(&big).expect("valid");
        let reply = fragmentation_needed(me, &original, 1408);
        let parsed = etherparse::SlicedPacket::from_ip(&reply).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &parsed.net else {
            panic!("not ipv4");
        };
        assert_eq!(ip.header().destination_addr(), app);
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum()
        );
        match parsed.transport {
            Some(etherparse::TransportSlice::Icmpv4(icmp)) => {
                assert_eq!(
                    icmp.icmp_type(),
                    etherparse::Icmpv4Type::DestinationUnreachable(
                        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                            next_hop_mtu: 1408
                        }
                    )
                );
                assert_eq!(super::internet_checksum(0, icmp.slice()), 0);
                // The original header and 8 bytes of its payload are quoted.
                assert_eq!(icmp.payload(), &big[..28]);
            }
            other => panic!("not icmpv4: {other:?}"),
        }
    }

    #[test]
    fn packet_too_big_is_valid_icmpv6_within_minimum_mtu() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let b: Ipv6Addr = "fd00::2".parse().expect("addr");
        let big = ipv6(a, b, PROTO_UDP, &vec![0u8; 1500]);
        let original = IpPacket::new_checked(&big).expect("valid");
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
        fn arbitrary_bytes_never_panic(
            version in prop_oneof![Just(0x45u8), Just(0x4fu8), Just(0x60u8), any::<u8>()],
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            if bytes.len() >= 4 && version >> 4 == 4 {
                // Often a consistent total length, to get past the check.
                let len = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&len.to_be_bytes());
            }
            if let Some(packet) = IpPacket::new_checked(&bytes) {
                let _ = (packet.transport(), packet.source_ip(), packet.destination_ip());
                let _ = (packet.dont_fragment(), packet.protocol());
                if packet.version() == IpVersion::V4 {
                    let reply = fragmentation_needed(Ipv4Addr::new(100, 64, 0, 1), &packet, 1280);
                    prop_assert!(IpPacket::new_checked(&reply).is_some());
                }
            }
        }
    }
}
