//! The few facts the core and the shell read from inner IP packets:
//! version, addresses, header fields, transport protocol and ports. One
//! checked view, [`IpPacket`], over untrusted bytes of either family, with
//! the transport views of [`super::transport`] inside it. Only IPv6 without
//! extension headers and unfragmented IPv4 are looked into for ports
//! (anything else is classified as "other" and judged conservatively by the
//! policy). The writers of inner packets are in [`super::emit`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::transport::{
    IcmpMessage, TcpSegment, UDP_HEADER_LEN, UdpDatagram, be16, icmp_field, tcp_ports_and_flags,
    udp_field,
};

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Largest IPv6 payload and largest IPv4 packet (16-bit length fields).
pub const MAX_IP_LENGTH: usize = 65_535;
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

/// Byte offsets of the fields of the IPv6 header (RFC 8200 §3).
pub mod ipv6_field {
    use std::ops::Range;
    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VERSION_CLASS_FLOW: Range<usize> = 0..4;
    /// Payload length (16 bits).
    pub const PAYLOAD_LENGTH: usize = 4;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SOURCE: Range<usize> = 8..24;
    /// Destination address.
    pub const DESTINATION: Range<usize> = 24..40;
}

/// Byte offsets of the fields of the IPv4 header (RFC 791 §3.1).
pub mod ipv4_field {
    use std::ops::Range;
    /// Version (4 bits) and header length in words (4 bits).
    pub const VERSION_IHL: usize = 0;
    /// Type of service: DSCP and ECN.
    pub const TOS: usize = 1;
    /// Total length (16 bits).
    pub const TOTAL_LENGTH: usize = 2;
    /// Identification (16 bits).
    pub const IDENTIFICATION: usize = 4;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAGMENT: usize = 6;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum (16 bits).
    pub const CHECKSUM: usize = 10;
    /// Source address.
    pub const SOURCE: Range<usize> = 12..16;
    /// Destination address.
    pub const DESTINATION: Range<usize> = 16..20;
}

/// IPv4 "don't fragment" in the flags-and-offset field.
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// IPv4 "more fragments" and the fragment offset.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

/// Which IP version a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The destination of what looks like an IPv6 packet (version 6 and a whole
/// fixed header), before the rest is checked: a cheap test of whom a packet
/// is for. `None` for anything else.
pub fn peek_ipv6_destination(bytes: &[u8]) -> Option<Ipv6Addr> {
    if bytes.first()? >> 4 != 6 {
        return None;
    }
    let destination: [u8; 16] = bytes.get(ipv6_field::DESTINATION)?.try_into().ok()?;
    Some(Ipv6Addr::from(destination))
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
                let payload_len = usize::from(be16(bytes, ipv6_field::PAYLOAD_LENGTH));
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
                let header_len = usize::from(bytes[ipv4_field::VERSION_IHL] & 0x0f) * 4;
                let total_len = usize::from(be16(bytes, ipv4_field::TOTAL_LENGTH));
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

    /// Length of the IP header (IPv4 options included): where the transport
    /// header starts.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The bytes after the IP header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// Whether an IPv4 header carries options (IPv6: never, extension
    /// headers are not followed).
    pub fn has_options(&self) -> bool {
        self.header_len > IPV4_HEADER_LEN && self.version == IpVersion::V4
    }

    /// The source address as 16 bytes (IPv4-mapped for IPv4).
    pub fn source(&self) -> [u8; 16] {
        match self.version {
            IpVersion::V6 => octets16(&self.bytes[ipv6_field::SOURCE]),
            IpVersion::V4 => mapped(self.v4_at(ipv4_field::SOURCE.start)),
        }
    }

    /// The destination address as 16 bytes (IPv4-mapped for IPv4).
    pub fn destination(&self) -> [u8; 16] {
        match self.version {
            IpVersion::V6 => octets16(&self.bytes[ipv6_field::DESTINATION]),
            IpVersion::V4 => mapped(self.v4_at(ipv4_field::DESTINATION.start)),
        }
    }

    /// The source address.
    pub fn source_ip(&self) -> IpAddr {
        match self.version {
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(self.source())),
            IpVersion::V4 => IpAddr::V4(self.v4_at(ipv4_field::SOURCE.start)),
        }
    }

    /// The destination address.
    pub fn destination_ip(&self) -> IpAddr {
        match self.version {
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(self.destination())),
            IpVersion::V4 => IpAddr::V4(self.v4_at(ipv4_field::DESTINATION.start)),
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
            IpVersion::V6 => self.bytes[ipv6_field::NEXT_HEADER],
            IpVersion::V4 => self.bytes[ipv4_field::PROTOCOL],
        }
    }

    /// The IPv6 hop limit or IPv4 time to live.
    pub fn hop_limit(&self) -> u8 {
        match self.version {
            IpVersion::V6 => self.bytes[ipv6_field::HOP_LIMIT],
            IpVersion::V4 => self.bytes[ipv4_field::TTL],
        }
    }

    /// The IPv6 traffic class or IPv4 type of service (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        match self.version {
            IpVersion::V6 => {
                let word = self.version_class_flow();
                // Bits 20..28 of the first word.
                (word >> 20) as u8
            }
            IpVersion::V4 => self.bytes[ipv4_field::TOS],
        }
    }

    /// The IPv6 flow label (0 for IPv4).
    pub fn flow_label(&self) -> u32 {
        match self.version {
            IpVersion::V6 => self.version_class_flow() & 0x000f_ffff,
            IpVersion::V4 => 0,
        }
    }

    fn version_class_flow(&self) -> u32 {
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.bytes[ipv6_field::VERSION_CLASS_FLOW]);
        u32::from_be_bytes(word)
    }

    /// Whether an IPv4 packet forbids fragmentation (IPv6: always).
    pub fn dont_fragment(&self) -> bool {
        match self.version {
            IpVersion::V6 => true,
            IpVersion::V4 => self.ipv4_flags_fragment() & IPV4_DONT_FRAGMENT != 0,
        }
    }

    /// Whether this is a fragment of an IPv4 packet (more fragments or a
    /// non-zero offset): its ports are not looked at. IPv6 fragments carry
    /// an extension header, which is not followed, so never.
    pub fn is_fragment(&self) -> bool {
        self.version == IpVersion::V4 && self.ipv4_flags_fragment() & IPV4_FRAGMENT_BITS != 0
    }

    fn ipv4_flags_fragment(&self) -> u16 {
        be16(self.bytes, ipv4_field::FLAGS_FRAGMENT)
    }

    /// The TCP segment of a whole (unfragmented) TCP packet with a valid
    /// data offset; `None` otherwise.
    pub fn tcp(&self) -> Option<TcpSegment<'a>> {
        if self.protocol() != PROTO_TCP || self.is_fragment() {
            return None;
        }
        TcpSegment::new_checked(self.payload())
    }

    /// The UDP datagram of a whole UDP packet with a valid length field;
    /// `None` otherwise.
    pub fn udp(&self) -> Option<UdpDatagram<'a>> {
        if self.protocol() != PROTO_UDP || self.is_fragment() {
            return None;
        }
        UdpDatagram::new_checked(self.payload())
    }

    /// The ICMP message (ICMPv4 in IPv4, ICMPv6 in IPv6) of a whole packet;
    /// `None` otherwise.
    pub fn icmp(&self) -> Option<IcmpMessage<'a>> {
        let icmp = match self.version {
            IpVersion::V6 => PROTO_ICMPV6,
            IpVersion::V4 => PROTO_ICMPV4,
        };
        if self.protocol() != icmp || self.is_fragment() {
            return None;
        }
        IcmpMessage::new_checked(self.payload())
    }

    /// Whether the stack this packet is delivered to may send a packet back
    /// within the call that delivers it: an echo request is answered there,
    /// a TCP segment acknowledged, an ACK may let queued data leave. Not an
    /// echo reply, which ends its exchange, nor UDP, which a program answers
    /// later if at all (an error the kernel sends instead is read at the
    /// next look).
    pub fn may_be_answered_on_delivery(&self) -> bool {
        !matches!(
            self.transport(),
            Transport::Udp { .. }
                | Transport::Icmp {
                    kind: IcmpKind::EchoReply,
                    ..
                }
        )
    }

    /// Ports or ICMP type of the packet. TCP and UDP ports are read from any
    /// fixed header (lengths inside it unchecked), as the policy judges them.
    pub fn transport(&self) -> Transport {
        if self.is_fragment() {
            return Transport::Other;
        }
        let payload = self.payload();
        match self.protocol() {
            PROTO_TCP => match tcp_ports_and_flags(payload) {
                Some((source_port, destination_port, flags)) => Transport::Tcp {
                    source_port,
                    destination_port,
                    is_syn: flags.is_bare_syn(),
                },
                None => Transport::Other,
            },
            PROTO_UDP if payload.len() >= UDP_HEADER_LEN => Transport::Udp {
                source_port: be16(payload, udp_field::SOURCE_PORT),
                destination_port: be16(payload, udp_field::DESTINATION_PORT),
            },
            _ => match self.icmp() {
                Some(icmp) => {
                    let (echo_request, echo_reply) = match self.version {
                        IpVersion::V6 => (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
                        IpVersion::V4 => (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY),
                    };
                    let kind = match icmp.message_type() {
                        t if t == echo_request => IcmpKind::EchoRequest,
                        t if t == echo_reply => IcmpKind::EchoReply,
                        t => IcmpKind::Other(t),
                    };
                    let identifier = match kind {
                        IcmpKind::Other(_) => 0,
                        _ => be16(payload, icmp_field::IDENTIFIER),
                    };
                    Transport::Icmp { kind, identifier }
                }
                None => Transport::Other,
            },
        }
    }
}

fn octets16(bytes: &[u8]) -> [u8; 16] {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    octets
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::wire::emit::fragmentation_needed;
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
        let checksum = super::super::checksum::internet_checksum(&packet);
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
    fn reads_header_fields_and_transport_views_of_both_families() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let b: Ipv6Addr = "fd00::2".parse().expect("addr");
        let mut bytes = ipv6(a, b, PROTO_TCP, &tcp(1234, 80, 0x18));
        bytes[0..4].copy_from_slice(&0x6ab1_2345u32.to_be_bytes());
        bytes[7] = 9;
        let packet = IpPacket::new_checked(&bytes).expect("valid");
        assert_eq!(
            (packet.traffic_class(), packet.flow_label()),
            (0xab, 0x1_2345)
        );
        assert_eq!(
            (packet.hop_limit(), packet.header_len()),
            (9, IPV6_HEADER_LEN)
        );
        assert!(!packet.is_fragment() && !packet.has_options());
        let segment = packet.tcp().expect("tcp");
        assert_eq!(
            (segment.source_port(), segment.destination_port()),
            (1234, 80)
        );
        assert!(packet.udp().is_none() && packet.icmp().is_none());
        assert_eq!(peek_ipv6_destination(&bytes), Some(b));
        assert_eq!(peek_ipv6_destination(&bytes[..39]), None);

        let a4 = Ipv4Addr::new(100, 64, 0, 1);
        let b4 = Ipv4Addr::new(100, 64, 0, 2);
        let mut bytes = ipv4(a4, b4, PROTO_UDP, &[0, 53, 0, 54, 0, 9, 0, 0, b'x']);
        bytes[1] = 0x2e;
        let packet = IpPacket::new_checked(&bytes).expect("valid");
        assert_eq!((packet.traffic_class(), packet.flow_label()), (0x2e, 0));
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(packet.udp().expect("udp").payload(), b"x");
        assert!(packet.tcp().is_none());
        assert_eq!(peek_ipv6_destination(&bytes), None);
        // A fragment has no transport view.
        bytes[6] |= 0x20;
        let fragment = IpPacket::new_checked(&bytes).expect("valid");
        assert!(fragment.is_fragment() && fragment.udp().is_none());
    }

    #[test]
    fn only_echo_replies_and_udp_are_never_answered_on_delivery() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let b: Ipv6Addr = "fd00::2".parse().expect("addr");
        let a4 = Ipv4Addr::new(100, 64, 0, 1);
        let b4 = Ipv4Addr::new(100, 64, 0, 2);
        let echo = |kind: u8| vec![kind, 0, 0, 0, 0, 7, 0, 1];
        let udp = [0, 53, 0, 54, 0, 9, 0, 0, b'x'];
        let cases = [
            (
                ipv4(a4, b4, PROTO_ICMPV4, &echo(8)),
                true,
                "ICMPv4 echo request",
            ),
            (
                ipv4(a4, b4, PROTO_ICMPV4, &echo(0)),
                false,
                "ICMPv4 echo reply",
            ),
            (
                ipv6(a, b, PROTO_ICMPV6, &echo(128)),
                true,
                "ICMPv6 echo request",
            ),
            (
                ipv6(a, b, PROTO_ICMPV6, &echo(129)),
                false,
                "ICMPv6 echo reply",
            ),
            // The ICMPv4 echo reply's type is another message in ICMPv6.
            (ipv6(a, b, PROTO_ICMPV6, &echo(0)), true, "ICMPv6 type 0"),
            (
                ipv4(a4, b4, PROTO_TCP, &tcp(1234, 80, 0x10)),
                true,
                "a TCP ACK",
            ),
            (
                ipv6(a, b, PROTO_TCP, &tcp(1234, 80, 0x18)),
                true,
                "TCP data",
            ),
            (ipv4(a4, b4, PROTO_UDP, &udp), false, "UDP over IPv4"),
            (ipv6(a, b, PROTO_UDP, &udp), false, "UDP over IPv6"),
            // An ICMP header cut short is not known to be a reply.
            (ipv4(a4, b4, PROTO_ICMPV4, &[]), true, "an empty ICMPv4"),
        ];
        for (bytes, answerable, what) in cases {
            let packet = IpPacket::new_checked(&bytes).expect("valid");
            assert_eq!(packet.may_be_answered_on_delivery(), answerable, "{what}");
        }
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            version in prop_oneof![Just(0x45u8), Just(0x4fu8), Just(0x60u8), any::<u8>()],
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
            tcp_or_udp in any::<bool>(),
        ) {
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            if bytes.len() >= 6 && version >> 4 == 6 {
                // Often a consistent payload length, to get past the check.
                let len = (bytes.len().max(40) - 40) as u16;
                bytes[4..6].copy_from_slice(&len.to_be_bytes());
            }
            if bytes.len() >= 20 && tcp_or_udp {
                // Often an unfragmented TCP or UDP packet, to reach their views.
                let protocol = if bytes[1] & 1 == 0 { PROTO_TCP } else { PROTO_UDP };
                if version >> 4 == 6 {
                    bytes[6] = protocol;
                } else {
                    bytes[9] = protocol;
                    bytes[6] &= 0x40;
                    bytes[7] = 0;
                }
            }
            if bytes.len() >= 4 && version >> 4 == 4 {
                // Often a consistent total length, to get past the check.
                let len = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&len.to_be_bytes());
            }
            if let Some(packet) = IpPacket::new_checked(&bytes) {
                let _ = (packet.transport(), packet.source_ip(), packet.destination_ip());
                let _ = (packet.dont_fragment(), packet.protocol());
                let _ = (packet.hop_limit(), packet.traffic_class(), packet.flow_label());
                let _ = (packet.is_fragment(), packet.has_options(), packet.header_len());
                if let Some(tcp) = packet.tcp() {
                    let _ = (tcp.source_port(), tcp.destination_port(), tcp.flags());
                    let _ = (tcp.sequence(), tcp.acknowledgement());
                    prop_assert_eq!(
                        tcp.header_len() + tcp.payload().len(),
                        packet.payload().len()
                    );
                    prop_assert_eq!(tcp.options().len(), tcp.header_len() - 20);
                }
                if let Some(udp) = packet.udp() {
                    let _ = (udp.source_port(), udp.destination_port());
                    prop_assert!(udp.payload().len() + 8 <= packet.payload().len());
                }
                if let Some(icmp) = packet.icmp() {
                    let _ = (icmp.message_type(), icmp.code(), icmp.identifier());
                    let _ = (icmp.sequence(), icmp.body());
                }
                if packet.version() == IpVersion::V4 {
                    let reply = fragmentation_needed(Ipv4Addr::new(100, 64, 0, 1), &packet, 1280);
                    prop_assert!(IpPacket::new_checked(&reply).is_some());
                }
            }
        }
    }
}
