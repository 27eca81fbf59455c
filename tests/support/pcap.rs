//! A reader for the classic pcap files `tcpdump -w` writes (Ethernet link
//! type), with just enough IPv4/UDP/ICMP parsing to say who sent what.

use std::net::Ipv4Addr;
use std::path::Path;

const LINKTYPE_ETHERNET: u32 = 1;
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// IP protocol numbers used here.
pub const PROTO_ICMP: u8 = 1;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// One captured IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Everything after the IP header (as captured).
    pub payload: Vec<u8>,
}

impl Ipv4Packet {
    /// `(source port, destination port, payload)` if this is UDP.
    pub fn udp(&self) -> Option<(u16, u16, &[u8])> {
        if self.protocol != PROTO_UDP || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
        let end = len.clamp(8, p.len());
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
            &p[8..end],
        ))
    }

    /// The ICMP type, if this is ICMP.
    pub fn icmp_type(&self) -> Option<u8> {
        (self.protocol == PROTO_ICMP)
            .then(|| self.payload.first().copied())
            .flatten()
    }

    /// One line for messages.
    pub fn summary(&self) -> String {
        match (self.udp(), self.icmp_type()) {
            (Some((sp, dp, data)), _) => format!(
                "UDP {}:{sp} -> {}:{dp}, {} bytes, first byte {:?}",
                self.src,
                self.dst,
                data.len(),
                data.first()
            ),
            (_, Some(t)) => format!("ICMP type {t} {} -> {}", self.src, self.dst),
            _ => format!("IP proto {} {} -> {}", self.protocol, self.src, self.dst),
        }
    }
}

/// Everything in the capture file: the IPv4 packets, and how many frames
/// were something else (ARP, IPv6, ...).
#[derive(Debug, Default)]
pub struct Capture {
    /// IPv4 packets in capture order.
    pub ipv4: Vec<Ipv4Packet>,
    /// Frames that were not IPv4.
    pub other_frames: usize,
}

/// Reads a pcap file. A record cut short at the end (tcpdump still writing)
/// is ignored; anything else malformed is an error.
pub fn read(path: &Path) -> Result<Capture, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the bytes of a pcap file.
pub fn parse(data: &[u8]) -> Result<Capture, String> {
    if data.len() < GLOBAL_HEADER_LEN {
        // tcpdump has not written its header yet: nothing captured.
        return Ok(Capture::default());
    }
    let magic = [data[0], data[1], data[2], data[3]];
    // Microsecond and nanosecond variants; either byte order.
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let u32_at = |off: usize| {
        let b = [data[off], data[off + 1], data[off + 2], data[off + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(format!("link type {linktype}, expected Ethernet"));
    }
    let mut capture = Capture::default();
    let mut off = GLOBAL_HEADER_LEN;
    while off + RECORD_HEADER_LEN <= data.len() {
        let caplen = u32_at(off + 8) as usize;
        let start = off + RECORD_HEADER_LEN;
        if start + caplen > data.len() {
            break;
        }
        match parse_ethernet_ipv4(&data[start..start + caplen]) {
            Some(p) => capture.ipv4.push(p),
            None => capture.other_frames += 1,
        }
        off = start + caplen;
    }
    Ok(capture)
}

fn parse_ethernet_ipv4(frame: &[u8]) -> Option<Ipv4Packet> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let end = total_len.clamp(header_len, ip.len());
    Some(Ipv4Packet {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        protocol: ip[9],
        payload: ip.get(header_len..end)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_UDP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&7400u16.to_be_bytes());
        f.extend_from_slice(&7401u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn parses_udp_record_and_ignores_truncated_tail() {
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        let frame = udp_frame([10, 0, 0, 2], [10, 0, 0, 3], &[1, 0, 0, 0, 9]);
        for _ in 0..2 {
            file.extend_from_slice(&[0; 8]);
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&frame);
        }
        file.truncate(file.len() - 3);
        let cap = parse(&file).unwrap();
        assert_eq!(cap.ipv4.len(), 1);
        let (sp, dp, data) = cap.ipv4[0].udp().unwrap();
        assert_eq!((sp, dp, data), (7400, 7401, &[1u8, 0, 0, 0, 9][..]));
        assert_eq!(cap.ipv4[0].src, Ipv4Addr::new(10, 0, 0, 2));
    }
}
