//! The writers of inner packets: the ICMP errors the node sends for packets
//! too big for the tunnel, the replies the name responder writes into the
//! TUN (UDP, ICMPv6 echo), and the in-place header updates of a TCP packet
//! grown by receive offload. Every length is checked; a writer that cannot
//! produce a valid packet returns `None` (or an empty packet), never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::{fold, internet_checksum, pseudo_header_sum, upper_layer_checksum};
use super::packet::{
    ICMPV4_DESTINATION_UNREACHABLE, ICMPV4_FRAGMENTATION_NEEDED, ICMPV6_ECHO_REPLY,
    ICMPV6_PACKET_TOO_BIG, IPV4_HEADER_LEN, IPV6_HEADER_LEN, IPV6_MIN_MTU, IpPacket, IpVersion,
    MAX_IP_LENGTH, PROTO_ICMPV4, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ipv4_field, ipv6_field,
};
use super::transport::{
    ICMP_HEADER_LEN, TcpFlags, UDP_HEADER_LEN, icmp_field, tcp_field, udp_field,
};

/// IPv4 flags byte with "don't fragment" set (offset zero).
const IPV4_DONT_FRAGMENT_BYTE: u8 = 0x40;

/// Appends an IPv6 header for `payload_len` bytes of `next_header`.
fn push_ipv6_header(
    packet: &mut Vec<u8>,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    source: &[u8; 16],
    destination: &[u8; 16],
) {
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&payload_len.to_be_bytes());
    packet.push(next_header);
    packet.push(hop_limit);
    packet.extend_from_slice(source);
    packet.extend_from_slice(destination);
}

/// Appends an IPv4 header without options for a packet of `total_len`
/// bytes of `protocol`, its checksum filled in.
fn push_ipv4_header(
    packet: &mut Vec<u8>,
    total_len: u16,
    dont_fragment: bool,
    ttl: u8,
    protocol: u8,
    source: Ipv4Addr,
    destination: Ipv4Addr,
) {
    let start = packet.len();
    let flags = if dont_fragment {
        IPV4_DONT_FRAGMENT_BYTE
    } else {
        0
    };
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0, flags, 0, ttl, protocol, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    let checksum = internet_checksum(&packet[start..]);
    write_be16(&mut packet[start..], ipv4_field::CHECKSUM, checksum);
}

/// Writes a 16-bit big-endian number at `at` if it fits.
fn write_be16(bytes: &mut [u8], at: usize, value: u16) -> Option<()> {
    bytes
        .get_mut(at..at + 2)?
        .copy_from_slice(&value.to_be_bytes());
    Some(())
}

/// Builds an ICMPv4 "fragmentation needed" (type 3 code 4) for `original`,
/// an IPv4 packet with DF set that does not fit the tunnel, from `source`
/// (the peer it was for, as an on-path router would send it) to its sender, quoting its header and the first 8 bytes
/// after it (RFC 792, RFC 1191 next-hop MTU).
pub fn fragmentation_needed(source: Ipv4Addr, original: &IpPacket<'_>, mtu: u16) -> Vec<u8> {
    let quoted_len = original.bytes().len().min(original.header_len() + 8);
    let total_len = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quoted_len;
    let IpAddr::V4(destination) = original.source_ip() else {
        return Vec::new();
    };
    let mut packet = Vec::with_capacity(total_len);
    // At most 60 + 8 quoted bytes and two headers: within 16 bits.
    let total = u16::try_from(total_len).unwrap_or(u16::MAX);
    push_ipv4_header(
        &mut packet,
        total,
        false,
        64,
        PROTO_ICMPV4,
        source,
        destination,
    );
    packet.extend_from_slice(&[ICMPV4_DESTINATION_UNREACHABLE, ICMPV4_FRAGMENTATION_NEEDED]);
    packet.extend_from_slice(&[0, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original.bytes()[..quoted_len]);
    let icmp_checksum = internet_checksum(&packet[IPV4_HEADER_LEN..]);
    write_be16(
        &mut packet[IPV4_HEADER_LEN..],
        icmp_field::CHECKSUM,
        icmp_checksum,
    );
    packet
}

/// The Internet checksum of ICMPv6 over the pseudo-header and `body`.
pub fn icmpv6_checksum(source: &[u8; 16], destination: &[u8; 16], body: &[u8]) -> u16 {
    upper_layer_checksum(
        IpAddr::V6(Ipv6Addr::from(*source)),
        IpAddr::V6(Ipv6Addr::from(*destination)),
        PROTO_ICMPV6,
        body,
    )
}

/// Builds an ICMPv6 Packet Too Big for `original`, from `source` (this
/// agent) to the original sender, as long as fits in the IPv6 minimum MTU.
pub fn packet_too_big(source: [u8; 16], original: &IpPacket<'_>, mtu: u32) -> Vec<u8> {
    let quoted_len = original
        .bytes()
        .len()
        .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN);
    let body_len = ICMP_HEADER_LEN + quoted_len;
    let destination = original.source();
    let mut packet = Vec::with_capacity(IPV6_HEADER_LEN + body_len);
    // At most the minimum MTU: within 16 bits.
    let payload_len = u16::try_from(body_len).unwrap_or(u16::MAX);
    push_ipv6_header(
        &mut packet,
        payload_len,
        PROTO_ICMPV6,
        64,
        &source,
        &destination,
    );
    packet.extend_from_slice(&[ICMPV6_PACKET_TOO_BIG, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original.bytes()[..quoted_len]);
    let checksum = icmpv6_checksum(&source, &destination, &packet[IPV6_HEADER_LEN..]);
    write_be16(
        &mut packet[IPV6_HEADER_LEN..],
        icmp_field::CHECKSUM,
        checksum,
    );
    packet
}

/// Where a packet written into the TUN goes, and with which hop limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The source address (of the answering service).
    pub source: IpAddr,
    /// The destination address (the asker).
    pub destination: IpAddr,
    /// The IPv6 hop limit or IPv4 time to live.
    pub hop_limit: u8,
}

/// Builds a UDP packet (IPv6, or IPv4 with DF set) from `source_port` to
/// `destination_port` carrying `payload`, its UDP checksum filled in.
/// `None` when the families differ or the payload does not fit one packet.
pub fn udp_packet(
    route: Route,
    source_port: u16,
    destination_port: u16,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_header_len = match route.source {
        IpAddr::V6(_) => IPV6_HEADER_LEN,
        IpAddr::V4(_) => IPV4_HEADER_LEN,
    };
    let mut packet = Vec::with_capacity(ip_header_len + udp_len);
    push_ip_header(&mut packet, route, PROTO_UDP, udp_len)?;
    let udp_len = u16::try_from(udp_len).ok()?;
    packet.extend_from_slice(&source_port.to_be_bytes());
    packet.extend_from_slice(&destination_port.to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let checksum = udp_checksum(route.source, route.destination, &packet[ip_header_len..]);
    write_be16(&mut packet[ip_header_len..], udp_field::CHECKSUM, checksum)?;
    Some(packet)
}

/// Builds an ICMPv6 echo reply with `identifier`, `sequence` and `body`,
/// its checksum filled in. `None` when the route is not IPv6 or the body
/// does not fit one packet.
pub fn icmpv6_echo_reply(
    route: Route,
    identifier: u16,
    sequence: u16,
    body: &[u8],
) -> Option<Vec<u8>> {
    let (IpAddr::V6(source), IpAddr::V6(destination)) = (route.source, route.destination) else {
        return None;
    };
    let icmp_len = ICMP_HEADER_LEN + body.len();
    let mut packet = Vec::with_capacity(IPV6_HEADER_LEN + icmp_len);
    push_ip_header(&mut packet, route, PROTO_ICMPV6, icmp_len)?;
    packet.extend_from_slice(&[ICMPV6_ECHO_REPLY, 0, 0, 0]);
    packet.extend_from_slice(&identifier.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(body);
    let checksum = icmpv6_checksum(
        &source.octets(),
        &destination.octets(),
        &packet[IPV6_HEADER_LEN..],
    );
    write_be16(
        &mut packet[IPV6_HEADER_LEN..],
        icmp_field::CHECKSUM,
        checksum,
    )?;
    Some(packet)
}

/// Appends the IP header of `route` for `payload_len` bytes of `protocol`;
/// `None` for mixed families or a length past the 16-bit fields.
fn push_ip_header(
    packet: &mut Vec<u8>,
    route: Route,
    protocol: u8,
    payload_len: usize,
) -> Option<()> {
    match (route.source, route.destination) {
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let payload_len = u16::try_from(payload_len).ok()?;
            push_ipv6_header(
                packet,
                payload_len,
                protocol,
                route.hop_limit,
                &source.octets(),
                &destination.octets(),
            );
        }
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let total = u16::try_from(IPV4_HEADER_LEN + payload_len).ok()?;
            push_ipv4_header(
                packet,
                total,
                true,
                route.hop_limit,
                protocol,
                source,
                destination,
            );
        }
        _ => return None,
    }
    Some(())
}

/// Sets `flags` in the TCP header of `packet`, whose IP header is
/// `ip_header_len` bytes long. `None` when the packet is shorter.
pub fn add_tcp_flags(packet: &mut [u8], ip_header_len: usize, flags: TcpFlags) -> Option<()> {
    let at = ip_header_len.checked_add(tcp_field::FLAGS)?;
    let byte = packet.get_mut(at)?;
    *byte = TcpFlags(*byte).union(flags).0;
    Some(())
}

/// Completes a TCP packet that grew (receive offload joined the payloads
/// of the segments after it) to `total_len` bytes for the kernel to cut
/// again. `packet` holds at least its headers (the payloads may follow in
/// other buffers of the same write). Sets the IP length (IPv4: and the
/// header checksum), and puts into the TCP checksum field the folded, not
/// complemented, sum of the pseudo header: a partial checksum the kernel
/// completes over the TCP bytes (or trusts for local delivery). `None` when
/// `total_len` is shorter than the headers or longer than the 16-bit length
/// fields allow.
pub fn finish_grown_tcp(
    packet: &mut [u8],
    total_len: usize,
    version: IpVersion,
    ip_header_len: usize,
) -> Option<()> {
    let tcp_len = total_len.checked_sub(ip_header_len)?;
    let (source, destination) = match version {
        IpVersion::V4 => {
            if ip_header_len < IPV4_HEADER_LEN || total_len > MAX_IP_LENGTH {
                return None;
            }
            let total = u16::try_from(total_len).ok()?;
            write_be16(packet, ipv4_field::TOTAL_LENGTH, total)?;
            write_be16(packet, ipv4_field::CHECKSUM, 0)?;
            let checksum = internet_checksum(packet.get(..ip_header_len)?);
            write_be16(packet, ipv4_field::CHECKSUM, checksum)?;
            let address = |range: std::ops::Range<usize>| -> Option<IpAddr> {
                let octets: [u8; 4] = packet.get(range)?.try_into().ok()?;
                Some(IpAddr::from(octets))
            };
            (
                address(ipv4_field::SOURCE)?,
                address(ipv4_field::DESTINATION)?,
            )
        }
        IpVersion::V6 => {
            if ip_header_len != IPV6_HEADER_LEN {
                return None;
            }
            write_be16(
                packet,
                ipv6_field::PAYLOAD_LENGTH,
                u16::try_from(tcp_len).ok()?,
            )?;
            let address = |range: std::ops::Range<usize>| -> Option<IpAddr> {
                let octets: [u8; 16] = packet.get(range)?.try_into().ok()?;
                Some(IpAddr::from(octets))
            };
            (
                address(ipv6_field::SOURCE)?,
                address(ipv6_field::DESTINATION)?,
            )
        }
    };
    // Within 16 bits, checked above.
    let length = u32::try_from(tcp_len).ok()?;
    let partial = fold(pseudo_header_sum(source, destination, PROTO_TCP, length));
    let at = ip_header_len.checked_add(tcp_field::CHECKSUM)?;
    write_be16(packet, at, partial)
}

/// The UDP checksum of `datagram` (header with a zero checksum field, and
/// payload): zero is sent as `0xffff`, zero meaning "none" (RFC 768).
pub fn udp_checksum(source: IpAddr, destination: IpAddr, datagram: &[u8]) -> u16 {
    match upper_layer_checksum(source, destination, PROTO_UDP, datagram) {
        0 => 0xffff,
        checksum => checksum,
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{ipv4, ipv6, tcp};
    use super::*;

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
                assert_eq!(internet_checksum(icmp.slice()), 0);
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

    fn route(source: &str, destination: &str) -> Route {
        Route {
            source: source.parse().expect("address"),
            destination: destination.parse().expect("address"),
            hop_limit: 64,
        }
    }

    #[test]
    fn udp_packets_of_both_families_parse_with_valid_checksums() {
        for route in [
            route("fd00::53", "fd00::1"),
            route("100.64.0.53", "100.64.0.1"),
        ] {
            let packet = udp_packet(route, 53, 40000, b"answer").expect("fits");
            let parsed = etherparse::SlicedPacket::from_ip(&packet).expect("parses");
            let Some(etherparse::TransportSlice::Udp(udp)) = &parsed.transport else {
                panic!("not udp");
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
            assert_eq!(udp.payload(), b"answer");
            let header = udp.to_header();
            let checksum = match &parsed.net {
                Some(etherparse::NetSlice::Ipv6(ip)) => header
                    .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
                    .expect("checksum"),
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert!(ip.header().dont_fragment());
                    assert_eq!(
                        ip.header().to_header().calc_header_checksum(),
                        ip.header().header_checksum()
                    );
                    header
                        .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                        .expect("checksum")
                }
                other => panic!("not ip: {other:?}"),
            };
            assert_eq!(header.checksum, checksum);
            let view = IpPacket::new_checked(&packet).expect("valid");
            assert_eq!(view.source_ip(), route.source);
            assert_eq!(view.hop_limit(), 64);
            assert_eq!(view.udp().expect("udp").payload(), b"answer");
        }
        assert!(udp_packet(route("fd00::53", "100.64.0.1"), 53, 1, b"").is_none());
        assert!(udp_packet(route("fd00::53", "fd00::1"), 53, 1, &[0; 65_535]).is_none());
    }

    #[test]
    fn echo_reply_is_valid_icmpv6() {
        let reply = icmpv6_echo_reply(route("fd00::53", "fd00::1"), 9, 3, b"ping").expect("fits");
        let parsed = etherparse::SlicedPacket::from_ip(&reply).expect("parses");
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &parsed.transport else {
            panic!("not icmpv6");
        };
        assert!(matches!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::EchoReply(echo) if echo.id == 9 && echo.seq == 3
        ));
        assert_eq!(icmp.payload(), b"ping");
        let source: Ipv6Addr = "fd00::53".parse().expect("address");
        let destination: Ipv6Addr = "fd00::1".parse().expect("address");
        assert_eq!(
            icmpv6_checksum(&source.octets(), &destination.octets(), icmp.slice()),
            0
        );
        assert!(icmpv6_echo_reply(route("100.64.0.53", "100.64.0.1"), 9, 3, b"").is_none());
    }

    #[test]
    fn a_grown_tcp_packet_gets_its_lengths_and_a_partial_checksum() {
        let header = tcp(1, 80, TcpFlags::ACK.0);
        let a: Ipv6Addr = "fd00::1".parse().expect("address");
        let b: Ipv6Addr = "fd00::2".parse().expect("address");
        let a4 = Ipv4Addr::new(100, 64, 0, 1);
        let b4 = Ipv4Addr::new(100, 64, 0, 2);
        for (mut packet, version, ip_header_len) in [
            (
                ipv6(a, b, PROTO_TCP, &header),
                IpVersion::V6,
                IPV6_HEADER_LEN,
            ),
            (
                ipv4(a4, b4, PROTO_TCP, &header),
                IpVersion::V4,
                IPV4_HEADER_LEN,
            ),
        ] {
            packet.extend_from_slice(&[7; 999]);
            add_tcp_flags(&mut packet, ip_header_len, TcpFlags::PSH).expect("long enough");
            let total_len = packet.len();
            finish_grown_tcp(&mut packet, total_len, version, ip_header_len).expect("fits");
            let view = IpPacket::new_checked(&packet).expect("lengths set");
            let segment = view.tcp().expect("tcp");
            assert!(segment.flags().contains(TcpFlags::PSH.union(TcpFlags::ACK)));
            assert_eq!(segment.payload().len(), 999);
            // The kernel completes the partial checksum over the TCP bytes:
            // that must give the real checksum.
            let mut zeroed = view.payload().to_vec();
            zeroed[tcp_field::CHECKSUM..tcp_field::CHECKSUM + 2].fill(0);
            let real =
                upper_layer_checksum(view.source_ip(), view.destination_ip(), PROTO_TCP, &zeroed);
            assert_eq!(internet_checksum(view.payload()), real);
            if version == IpVersion::V4 {
                assert_eq!(internet_checksum(&packet[..IPV4_HEADER_LEN]), 0);
            }
        }
        let mut short = vec![0x45; 10];
        assert!(finish_grown_tcp(&mut short, 10, IpVersion::V4, IPV4_HEADER_LEN).is_none());
        assert!(add_tcp_flags(&mut short, IPV4_HEADER_LEN, TcpFlags::PSH).is_none());
        let mut huge = vec![0x60; IPV6_HEADER_LEN + 65_536];
        let huge_len = huge.len();
        assert!(finish_grown_tcp(&mut huge, huge_len, IpVersion::V6, IPV6_HEADER_LEN).is_none());
    }
}
