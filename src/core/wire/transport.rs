//! Checked views of the transport headers inside an inner packet: a TCP
//! segment, a UDP datagram, an ICMP message. Each is built with
//! `new_checked` over the IP payload (see [`super::packet::IpPacket::tcp`]
//! and its siblings), which checks every length the accessors rely on, so
//! no accessor can go out of bounds on any input. Field offsets are the
//! named constants below; nothing outside `core::wire` indexes a header.

/// Byte offsets of the fields of a TCP header (RFC 9293 §3.1).
pub mod tcp_field {
    /// Source port (16 bits).
    pub const SOURCE_PORT: usize = 0;
    /// Destination port (16 bits).
    pub const DESTINATION_PORT: usize = 2;
    /// Sequence number (32 bits).
    pub const SEQUENCE: usize = 4;
    /// Acknowledgement number (32 bits).
    pub const ACKNOWLEDGEMENT: usize = 8;
    /// Data offset (high 4 bits, in 32-bit words).
    pub const DATA_OFFSET: usize = 12;
    /// Flags (CWR ECE URG ACK PSH RST SYN FIN).
    pub const FLAGS: usize = 13;
    /// Checksum (16 bits).
    pub const CHECKSUM: usize = 16;
}

/// Byte offsets of the fields of a UDP header (RFC 768).
pub mod udp_field {
    /// Source port (16 bits).
    pub const SOURCE_PORT: usize = 0;
    /// Destination port (16 bits).
    pub const DESTINATION_PORT: usize = 2;
    /// Length of header and payload (16 bits).
    pub const LENGTH: usize = 4;
    /// Checksum (16 bits).
    pub const CHECKSUM: usize = 6;
}

/// Byte offsets of the fields of an ICMP (v4 or v6) echo header.
pub mod icmp_field {
    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum (16 bits).
    pub const CHECKSUM: usize = 2;
    /// Echo identifier (16 bits).
    pub const IDENTIFIER: usize = 4;
    /// Echo sequence number (16 bits).
    pub const SEQUENCE: usize = 6;
}

/// Length of a TCP header without options.
pub const TCP_MIN_HEADER_LEN: usize = 20;
/// Longest TCP header (data offset 15).
pub const TCP_MAX_HEADER_LEN: usize = 60;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Length of the ICMP header every message has (type, code, checksum and
/// four bytes: the echo identifier and sequence, the MTU of a packet too big).
pub const ICMP_HEADER_LEN: usize = 8;

/// The 16-bit big-endian number at `at` (0 past the end; the views check
/// their lengths first, so that is never read).
pub(crate) fn be16(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at + 2) {
        Some(&[high, low]) => u16::from_be_bytes([high, low]),
        _ => 0,
    }
}

/// The 32-bit big-endian number at `at` (0 past the end).
fn be32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// The flags byte of a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: no more data from the sender.
    pub const FIN: Self = Self(0x01);
    /// SYN: synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// RST: reset the connection.
    pub const RST: Self = Self(0x04);
    /// PSH: push the data to the application.
    pub const PSH: Self = Self(0x08);
    /// ACK: the acknowledgement number is valid.
    pub const ACK: Self = Self(0x10);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether only flags of `allowed` are set.
    pub fn only(self, allowed: Self) -> bool {
        self.0 & !allowed.0 == 0
    }

    /// The flags of both.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags set in both.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// SYN set and ACK clear: the first packet of a new connection.
    pub fn is_bare_syn(self) -> bool {
        self.contains(Self::SYN) && !self.contains(Self::ACK)
    }
}

/// The ports and flags of a TCP header of which at least the fixed 20 bytes
/// are present, its data offset unchecked: what the policy and connection
/// tracking read, as they always have. `None` when shorter.
pub(crate) fn tcp_ports_and_flags(bytes: &[u8]) -> Option<(u16, u16, TcpFlags)> {
    (bytes.len() >= TCP_MIN_HEADER_LEN).then(|| {
        (
            be16(bytes, tcp_field::SOURCE_PORT),
            be16(bytes, tcp_field::DESTINATION_PORT),
            TcpFlags(bytes[tcp_field::FLAGS]),
        )
    })
}

/// A checked TCP segment: a fixed header, options within the data offset,
/// and the payload after them.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> TcpSegment<'a> {
    /// Checks the fixed header and the data offset (at least 5 words and
    /// within `bytes`); `None` otherwise.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        let data_offset = *bytes.get(tcp_field::DATA_OFFSET)?;
        let header_len = usize::from(data_offset >> 4) * 4;
        (header_len >= TCP_MIN_HEADER_LEN && header_len <= bytes.len())
            .then_some(Self { bytes, header_len })
    }

    /// Source port.
    pub fn source_port(&self) -> u16 {
        be16(self.bytes, tcp_field::SOURCE_PORT)
    }

    /// Destination port.
    pub fn destination_port(&self) -> u16 {
        be16(self.bytes, tcp_field::DESTINATION_PORT)
    }

    /// Sequence number.
    pub fn sequence(&self) -> u32 {
        be32(self.bytes, tcp_field::SEQUENCE)
    }

    /// Acknowledgement number.
    pub fn acknowledgement(&self) -> u32 {
        be32(self.bytes, tcp_field::ACKNOWLEDGEMENT)
    }

    /// The flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.bytes[tcp_field::FLAGS])
    }

    /// Length of the header, options included.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The option bytes (padding included).
    pub fn options(&self) -> &'a [u8] {
        &self.bytes[TCP_MIN_HEADER_LEN..self.header_len]
    }

    /// The data after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
}

/// A checked UDP datagram: a header whose length field covers the header
/// and lies within the bytes (zero means "up to the end", as for jumbograms).
#[derive(Debug, Clone, Copy)]
pub struct UdpDatagram<'a> {
    /// Header and payload, cut to the length field.
    bytes: &'a [u8],
}

impl<'a> UdpDatagram<'a> {
    /// Checks the header and its length field; `None` when the bytes are
    /// shorter than a header or than the length field says, or when the
    /// field is below the header's own length.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < UDP_HEADER_LEN {
            return None;
        }
        match usize::from(be16(bytes, udp_field::LENGTH)) {
            0 => Some(Self { bytes }),
            length if (UDP_HEADER_LEN..=bytes.len()).contains(&length) => Some(Self {
                bytes: &bytes[..length],
            }),
            _ => None,
        }
    }

    /// Source port.
    pub fn source_port(&self) -> u16 {
        be16(self.bytes, udp_field::SOURCE_PORT)
    }

    /// Destination port.
    pub fn destination_port(&self) -> u16 {
        be16(self.bytes, udp_field::DESTINATION_PORT)
    }

    /// The data after the header, as long as the length field says.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[UDP_HEADER_LEN..]
    }
}

/// A checked ICMP (v4 or v6, by the packet it came in) message of at least
/// its 8-byte header.
#[derive(Debug, Clone, Copy)]
pub struct IcmpMessage<'a> {
    bytes: &'a [u8],
}

impl<'a> IcmpMessage<'a> {
    /// Checks the length of the header; `None` when shorter.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= ICMP_HEADER_LEN).then_some(Self { bytes })
    }

    /// The message type.
    pub fn message_type(&self) -> u8 {
        self.bytes[icmp_field::TYPE]
    }

    /// The message code.
    pub fn code(&self) -> u8 {
        self.bytes[icmp_field::CODE]
    }

    /// The echo identifier (meaningful for echo requests and replies).
    pub fn identifier(&self) -> u16 {
        be16(self.bytes, icmp_field::IDENTIFIER)
    }

    /// The echo sequence number (meaningful for echo requests and replies).
    pub fn sequence(&self) -> u16 {
        be16(self.bytes, icmp_field::SEQUENCE)
    }

    /// The bytes after the 8-byte header (an echo's data).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[ICMP_HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_segment_checks_its_data_offset() {
        let mut header = vec![0u8; 24];
        header[0..2].copy_from_slice(&1234u16.to_be_bytes());
        header[2..4].copy_from_slice(&80u16.to_be_bytes());
        header[4..8].copy_from_slice(&7u32.to_be_bytes());
        header[8..12].copy_from_slice(&9u32.to_be_bytes());
        header[12] = 6 << 4;
        header[13] = 0x18;
        header[20..24].copy_from_slice(&[1, 1, 1, 0]);
        header.extend_from_slice(b"data");
        let segment = TcpSegment::new_checked(&header).expect("valid");
        assert_eq!(
            (segment.source_port(), segment.destination_port()),
            (1234, 80)
        );
        assert_eq!((segment.sequence(), segment.acknowledgement()), (7, 9));
        assert!(segment.flags().contains(TcpFlags::ACK.union(TcpFlags::PSH)));
        assert!(segment.flags().only(TcpFlags::ACK.union(TcpFlags::PSH)));
        assert_eq!(segment.options(), &[1, 1, 1, 0]);
        assert_eq!(segment.payload(), b"data");
        // A data offset below 5 words, or past the end: refused.
        header[12] = 4 << 4;
        assert!(TcpSegment::new_checked(&header).is_none());
        header[12] = 8 << 4;
        assert!(TcpSegment::new_checked(&header).is_none());
        assert!(TcpSegment::new_checked(&header[..19]).is_none());
        assert!(tcp_ports_and_flags(&header[..20]).is_some());
    }

    #[test]
    fn udp_datagram_is_cut_to_its_length_field() {
        let mut datagram = vec![0, 53, 0x9c, 0x40, 0, 12, 0, 0, b'a', b'b', b'c', b'd', b'e'];
        let udp = UdpDatagram::new_checked(&datagram).expect("valid");
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
        assert_eq!(udp.payload(), b"abcd");
        datagram[5] = 0;
        let whole = UdpDatagram::new_checked(&datagram).expect("zero: to the end");
        assert_eq!(whole.payload(), b"abcde");
        datagram[5] = 7;
        assert!(UdpDatagram::new_checked(&datagram).is_none());
        datagram[5] = 14;
        assert!(UdpDatagram::new_checked(&datagram).is_none());
        assert!(UdpDatagram::new_checked(&datagram[..7]).is_none());
    }

    #[test]
    fn icmp_message_reads_its_echo_fields() {
        let bytes = [128, 0, 0xab, 0xcd, 0, 9, 0, 3, b'p'];
        let icmp = IcmpMessage::new_checked(&bytes).expect("valid");
        assert_eq!((icmp.message_type(), icmp.code()), (128, 0));
        assert_eq!((icmp.identifier(), icmp.sequence()), (9, 3));
        assert_eq!(icmp.body(), b"p");
        assert!(IcmpMessage::new_checked(&bytes[..7]).is_none());
    }
}
