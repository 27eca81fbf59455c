//! The Internet checksum (RFC 1071) of inner packets, with the IPv4 and
//! IPv6 pseudo headers TCP, UDP and ICMPv6 sum over. One place computes it
//! for every writer in [`super::emit`] and for segmentation offload.

use std::net::IpAddr;

/// The one's-complement sum of `bytes` as 16-bit big-endian words (an odd
/// last byte padded with zero), added to `sum`, not folded.
pub fn sum_words(sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum = sum;
    for chunk in &mut chunks {
        sum += u64::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits (not complemented).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    sum as u16
}

/// The Internet checksum of `bytes`: the complement of their folded sum.
/// Zero when `bytes` already hold a correct checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    !fold(sum_words(0, bytes))
}

/// The unfolded sum of the pseudo header of an upper-layer packet of
/// `length` bytes and protocol `protocol` between `source` and
/// `destination` (RFC 768/793 for IPv4, RFC 8200 §8.1 for IPv6). Mixed
/// families cannot happen in one packet; they are summed as they come.
pub fn pseudo_header_sum(source: IpAddr, destination: IpAddr, protocol: u8, length: u32) -> u64 {
    let address = |sum: u64, address: IpAddr| match address {
        IpAddr::V4(v4) => sum_words(sum, &v4.octets()),
        IpAddr::V6(v6) => sum_words(sum, &v6.octets()),
    };
    let sum = address(address(0, source), destination);
    sum + u64::from(length >> 16) + u64::from(length & 0xffff) + u64::from(protocol)
}

/// The checksum of an upper-layer packet (`body`, its checksum field zero)
/// over its pseudo header. UDP sends a computed zero as `0xffff`; see
/// [`super::emit::udp_checksum`].
pub fn upper_layer_checksum(source: IpAddr, destination: IpAddr, protocol: u8, body: &[u8]) -> u16 {
    // `body` is a packet's payload: its length fits the 32-bit field.
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    !fold(sum_words(
        pseudo_header_sum(source, destination, protocol, length),
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example_and_its_verification() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(0, &bytes)), 0xddf2);
        assert_eq!(internet_checksum(&bytes), !0xddf2);
        let mut with_checksum = bytes.to_vec();
        with_checksum.extend_from_slice(&(!0xddf2u16).to_be_bytes());
        assert_eq!(internet_checksum(&with_checksum), 0);
    }

    #[test]
    fn odd_lengths_pad_the_last_byte() {
        assert_eq!(fold(sum_words(0, &[0x12])), 0x1200);
        assert_eq!(fold(sum_words(0, &[0xff, 0xff, 0x00, 0x01])), 0x0001);
    }
}
