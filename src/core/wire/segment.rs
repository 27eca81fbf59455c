//! What a received TCP packet tells the shell's segment merging (GRO), read
//! by the core while it checks the packet, so that the packet is parsed once
//! on its way from the UDP socket to the TUN.

use super::packet::{IpPacket, IpVersion};
use super::transport::{TCP_MIN_HEADER_LEN, TcpFlags};

/// What identifies a TCP flow: family, addresses (IPv4-mapped for IPv4)
/// and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub version: IpVersion,
    pub source: [u8; 16],
    pub destination: [u8; 16],
    pub source_port: u16,
    pub destination_port: u16,
}

/// The IP fields every packet of a merged segment must share: traffic
/// class / TOS (ECN included), flow label, hop limit / TTL and DF. The IDs
/// the kernel renumbers are not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedIpFields {
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub dont_fragment: bool,
}

/// The parts of an IPv4 or IPv6 TCP packet that merging looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegmentInfo {
    pub flow: FlowKey,
    pub ip: SharedIpFields,
    /// Length of the IP header (40 for IPv6, 20 for IPv4).
    pub ip_header_len: usize,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// IP plus TCP header.
    pub header_len: usize,
    pub payload_len: usize,
}

impl TcpSegmentInfo {
    /// The TCP segment of a checked packet, if merging may consider it:
    /// IPv6 without extension headers or IPv4 without options, not a
    /// fragment.
    pub fn of(packet: &IpPacket<'_>) -> Option<Self> {
        if packet.has_options() {
            return None;
        }
        let tcp = packet.tcp()?;
        Some(Self {
            flow: FlowKey {
                version: packet.version(),
                source: packet.source(),
                destination: packet.destination(),
                source_port: tcp.source_port(),
                destination_port: tcp.destination_port(),
            },
            ip: SharedIpFields {
                traffic_class: packet.traffic_class(),
                flow_label: packet.flow_label(),
                hop_limit: packet.hop_limit(),
                dont_fragment: packet.dont_fragment(),
            },
            ip_header_len: packet.header_len(),
            seq: tcp.sequence(),
            ack: tcp.acknowledgement(),
            flags: tcp.flags(),
            header_len: packet.header_len() + tcp.header_len(),
            payload_len: tcp.payload().len(),
        })
    }

    /// The TCP options (padding included) in `packet`, the packet this
    /// describes or one that grew from it (payload appended, headers
    /// unchanged); `None` if `packet` is shorter than the headers.
    pub fn options<'a>(&self, packet: &'a [u8]) -> Option<&'a [u8]> {
        packet.get(self.ip_header_len + TCP_MIN_HEADER_LEN..self.header_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp6(options: &[etherparse::TcpOptionElement], payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(4000, 80, 7, 1000)
            .ack(9)
            .options(options)
            .expect("options fit");
        let mut bytes = Vec::new();
        builder.write(&mut bytes, payload).expect("write");
        bytes
    }

    #[test]
    fn a_tcp_packet_reads_as_its_headers_say() {
        let bytes = tcp6(&[etherparse::TcpOptionElement::Timestamp(5, 6)], b"hello");
        let packet = IpPacket::new_checked(&bytes).expect("valid packet");
        let info = TcpSegmentInfo::of(&packet).expect("a TCP segment");
        assert_eq!(info.flow.source_port, 4000);
        assert_eq!(info.flow.destination_port, 80);
        assert_eq!((info.seq, info.ack), (7, 9));
        assert_eq!(info.ip_header_len, 40);
        assert_eq!(info.header_len, 40 + 32);
        assert_eq!(info.payload_len, 5);
        assert_eq!(info.options(&bytes).map(<[u8]>::len), Some(12));
        assert_eq!(info.options(&bytes[..50]), None);
    }

    #[test]
    fn udp_is_no_segment() {
        let builder = PacketBuilder::ipv6([1; 16], [2; 16], 64).udp(1, 2);
        let mut bytes = Vec::new();
        builder.write(&mut bytes, b"x").expect("write");
        let packet = IpPacket::new_checked(&bytes).expect("valid packet");
        assert_eq!(TcpSegmentInfo::of(&packet), None);
    }
}
