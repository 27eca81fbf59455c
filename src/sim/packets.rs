//! IP packets for the TUN side of simulated nodes: IPv6 or IPv4 with a TCP,
//! UDP or ICMP header and filler, built from plain fields. Checksums of the
//! transport headers are left zero (the overlay does not look at them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source port of the packets made by [`udp_packet`] and [`udp4_packet`].
const TAGGED_SOURCE_PORT: u16 = 40000;
/// Byte that fills every payload.
const FILLER: u8 = 0xab;

/// The transport part of a packet.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// IP protocol (next header): 6 TCP, 17 UDP, 58 ICMPv6 get a header;
    /// any other number only the payload.
    pub protocol: u8,
    /// TCP/UDP source port (ICMP: the identifier).
    pub source_port: u16,
    /// TCP/UDP destination port (ICMP: the sequence number).
    pub destination_port: u16,
    /// TCP flags (ICMP: the type).
    pub flags: u8,
    /// Bytes of filler after the transport header.
    pub payload_len: usize,
}

impl Transport {
    /// The transport header and payload.
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(20 + self.payload_len);
        match self.protocol {
            6 => {
                let mut tcp = [0u8; 20];
                tcp[0..2].copy_from_slice(&self.source_port.to_be_bytes());
                tcp[2..4].copy_from_slice(&self.destination_port.to_be_bytes());
                tcp[12] = 5 << 4;
                tcp[13] = self.flags;
                bytes.extend_from_slice(&tcp);
            }
            17 => {
                bytes.extend_from_slice(&self.source_port.to_be_bytes());
                bytes.extend_from_slice(&self.destination_port.to_be_bytes());
                bytes.extend_from_slice(&((8 + self.payload_len) as u16).to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
            }
            58 => {
                bytes.extend_from_slice(&[self.flags, 0, 0, 0]);
                bytes.extend_from_slice(&self.source_port.to_be_bytes());
                bytes.extend_from_slice(&self.destination_port.to_be_bytes());
            }
            _ => {}
        }
        bytes.resize(bytes.len() + self.payload_len, FILLER);
        bytes
    }

    /// A UDP header from the tagged source port, and `len` (at least 4)
    /// bytes of payload that start with the tag's place.
    fn tagged_udp(destination_port: u16, len: usize) -> Self {
        Self {
            protocol: 17,
            source_port: TAGGED_SOURCE_PORT,
            destination_port,
            flags: 0,
            payload_len: len.max(4),
        }
    }
}

/// An IPv6 packet (hop limit 64) from `source` to `destination`.
pub fn ipv6_packet(source: Ipv6Addr, destination: Ipv6Addr, transport: &Transport) -> Vec<u8> {
    let body = transport.bytes();
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
    packet.push(transport.protocol);
    packet.push(64);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&body);
    packet
}

/// An IPv4 packet (no options, DF, TTL 64, header checksum set) from
/// `source` to `destination`.
pub fn ipv4_packet(source: Ipv4Addr, destination: Ipv4Addr, transport: &Transport) -> Vec<u8> {
    let body = transport.bytes();
    let mut header = match etherparse::Ipv4Header::new(
        body.len() as u16,
        64,
        etherparse::IpNumber(transport.protocol),
        source.octets(),
        destination.octets(),
    ) {
        Ok(header) => header,
        Err(_) => unreachable!("a simulated packet's payload fits an IPv4 packet"),
    };
    header.dont_fragment = true;
    header.header_checksum = header.calc_header_checksum();
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// An IPv6 or IPv4 packet, as the addresses are; both must be of one
/// version.
pub fn ip_packet(source: IpAddr, destination: IpAddr, transport: &Transport) -> Vec<u8> {
    match (source, destination) {
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            ipv6_packet(source, destination, transport)
        }
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            ipv4_packet(source, destination, transport)
        }
        _ => panic!("a packet from {source} to {destination} mixes IP versions"),
    }
}

/// A UDP packet (IPv6, or IPv4 with DF set) from `source` to `destination`
/// carrying `tag`, `len` (at least 4) bytes of UDP payload.
pub fn udp_packet<A: Into<IpAddr>>(
    source: A,
    destination: A,
    destination_port: u16,
    tag: u32,
    len: usize,
) -> Vec<u8> {
    let mut packet = ip_packet(
        source.into(),
        destination.into(),
        &Transport::tagged_udp(destination_port, len),
    );
    let at = tag_offset(&packet);
    packet[at..at + 4].copy_from_slice(&tag.to_be_bytes());
    packet
}

/// A TCP packet (IPv6, or IPv4 with DF set) with ports and flags.
pub fn tcp_packet<A: Into<IpAddr>>(
    source: A,
    destination: A,
    source_port: u16,
    destination_port: u16,
    flags: u8,
) -> Vec<u8> {
    let transport = Transport {
        protocol: 6,
        source_port,
        destination_port,
        flags,
        payload_len: 0,
    };
    ip_packet(source.into(), destination.into(), &transport)
}

/// [`tcp_packet`] under the name the IPv4 tests use.
pub use tcp_packet as tcp4_packet;
/// [`udp_packet`] under the name the IPv4 tests use.
pub use udp_packet as udp4_packet;

/// Where the tag of a tagged UDP packet sits: after the IP and UDP headers.
fn tag_offset(packet: &[u8]) -> usize {
    if packet.first().is_some_and(|byte| byte >> 4 == 4) {
        28
    } else {
        48
    }
}

/// The tag of a packet made by [`udp_packet`] or [`udp4_packet`].
pub fn tag_of(packet: &[u8]) -> Option<u32> {
    let at = tag_offset(packet);
    let bytes: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_packets_carry_their_tag_and_length() {
        let (a, b) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        let packet = udp_packet(a, b, 9000, 77, 100);
        assert_eq!(packet.len(), 40 + 8 + 100);
        assert_eq!(tag_of(&packet), Some(77));
        let packet = udp4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED, 9000, 78, 2);
        assert_eq!(packet.len(), 20 + 8 + 4);
        assert_eq!(tag_of(&packet), Some(78));
        assert_eq!(tcp_packet(a, b, 1, 2, 0x02).len(), 60);
    }
}
