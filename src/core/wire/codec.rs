//! Bounds-checked byte reading and writing for the small payload formats
//! (handshake payloads, control frames). Reading never panics: every read
//! returns `None` when the input is too short.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Reads fields from the front of a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Takes `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.rest.len() < len {
            return None;
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(taken)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// Takes a little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    /// Takes a little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    /// Takes a string with a 1-byte length prefix; must be UTF-8.
    pub fn short_str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Takes a socket address: family (4 or 6), address bytes, port.
    pub fn socket_addr(&mut self) -> Option<SocketAddr> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return None,
        };
        Some(SocketAddr::new(ip, self.u16()?))
    }

    /// Takes a list of up to `max` socket addresses with a 1-byte count.
    pub fn socket_addrs(&mut self, max: usize) -> Option<Vec<SocketAddr>> {
        let count = usize::from(self.u8()?);
        if count > max {
            return None;
        }
        (0..count).map(|_| self.socket_addr()).collect()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Appends fields to a buffer.
pub trait Writer {
    /// Appends a string with a 1-byte length prefix, cut to 255 bytes at a
    /// character boundary.
    fn put_short_str(&mut self, text: &str);
    /// Appends a socket address.
    fn put_socket_addr(&mut self, address: &SocketAddr);
    /// Appends up to `max` socket addresses with a 1-byte count.
    fn put_socket_addrs(&mut self, addresses: &[SocketAddr], max: usize);
}

impl Writer for Vec<u8> {
    fn put_short_str(&mut self, text: &str) {
        let mut end = text.len().min(255);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.push(end as u8);
        self.extend_from_slice(&text.as_bytes()[..end]);
    }

    fn put_socket_addr(&mut self, address: &SocketAddr) {
        match address.ip() {
            IpAddr::V4(ip) => {
                self.push(4);
                self.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.push(6);
                self.extend_from_slice(&ip.octets());
            }
        }
        self.extend_from_slice(&address.port().to_le_bytes());
    }

    fn put_socket_addrs(&mut self, addresses: &[SocketAddr], max: usize) {
        let count = addresses.len().min(max).min(255);
        self.push(count as u8);
        for address in &addresses[..count] {
            self.put_socket_addr(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strings_and_addresses_round_trip() {
        let addresses: Vec<SocketAddr> = vec![
            "10.0.0.1:7400".parse().expect("addr"),
            "[fd00::1]:9".parse().expect("addr"),
        ];
        let mut out = Vec::new();
        out.put_short_str("agent-é");
        out.put_socket_addrs(&addresses, 8);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.short_str(), Some("agent-é"));
        assert_eq!(reader.socket_addrs(8), Some(addresses));
        assert!(reader.is_empty());
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let text = "é".repeat(200);
        let mut out = Vec::new();
        out.put_short_str(&text);
        let mut reader = Reader::new(&out);
        let back = reader.short_str().expect("valid utf-8");
        assert!(back.len() <= 255 && text.starts_with(back));
    }

    proptest! {
        #[test]
        fn reading_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut reader = Reader::new(&bytes);
            let _ = reader.short_str();
            let _ = reader.socket_addrs(8);
            let _ = reader.u64();
        }
    }
}
