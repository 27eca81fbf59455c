//! Outer datagram formats (DESIGN.md §2). Every datagram starts with a 1-byte
//! type and 3 reserved bytes (zero, except a relay envelope's source tag);
//! fields after it are little-endian. Each view is
//! built with `parse`, the only constructor used on untrusted bytes, which
//! checks the length so the accessors cannot go out of bounds.

pub mod checksum;
pub mod codec;
pub mod control_frame;
pub mod emit;
pub mod packet;
pub mod path;
pub mod segment;
pub mod transport;

/// Handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Cookie reply (under load only).
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Transport data.
pub const TYPE_DATA: u8 = 4;
/// Relay envelope.
pub const TYPE_RELAY: u8 = 5;
/// Sealed trust request.
pub const TYPE_TRUST_REQUEST: u8 = 6;

/// Bytes of type and reserved fields.
pub const HEADER_LEN: usize = 4;
/// Length of a mac (mac1 or mac2).
pub const MAC_LEN: usize = 16;
/// Both macs at the end of a handshake message.
pub const MACS_LEN: usize = 2 * MAC_LEN;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// X25519 public key length.
pub const KEY_LEN: usize = 32;
/// Smallest Noise IK message 1: e, encrypted s, encrypted empty payload.
pub const MIN_NOISE_INITIATION_LEN: usize = KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN;
/// Smallest Noise IK message 2: e, encrypted empty payload.
pub const MIN_NOISE_RESPONSE_LEN: usize = KEY_LEN + TAG_LEN;
/// Largest handshake message accepted: bounds the work a stranger can cause.
pub const MAX_HANDSHAKE_LEN: usize = 1024;
/// Offset of the ciphertext in a data message.
pub const DATA_HEADER_LEN: usize = 16;
/// Overhead of a data message over its inner payload.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a relay envelope adds in front of an inner datagram.
pub const RELAY_HEADER_LEN: usize = 12;
/// Cookie reply length: header, receiver index, 24-byte nonce, sealed cookie.
pub const COOKIE_REPLY_LEN: usize = 8 + 24 + MAC_LEN + TAG_LEN;

/// Why a datagram was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its type requires, or longer than allowed.
    #[error("datagram has a bad length for its type")]
    BadLength,
    /// Unknown type byte, or reserved bytes not zero.
    #[error("unknown datagram type or nonzero reserved bytes")]
    UnknownType,
}

/// The little-endian `u32` at `offset` (the caller checked the length).
fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

/// The little-endian `u64` at `offset` (the caller checked the length).
fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

/// Writes the 4-byte header of a datagram of this type.
pub fn write_header(out: &mut [u8], message_type: u8) {
    out[0] = message_type;
    out[1..4].fill(0);
}

/// A parsed datagram of any type.
#[derive(Debug, Clone, Copy)]
pub enum Datagram<'a> {
    /// Type 1.
    Initiation(Initiation<'a>),
    /// Type 2.
    Response(Response<'a>),
    /// Type 3.
    CookieReply(CookieReply<'a>),
    /// Type 4.
    Data(Data<'a>),
    /// Type 5.
    Relay(Relay<'a>),
    /// Type 6 (body checked by the trust-request parser).
    TrustRequest(&'a [u8]),
}

impl<'a> Datagram<'a> {
    /// Classifies and length-checks a datagram. Cheap: no cryptography.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::BadLength);
        }
        // Spare bytes are zero, except in a relay envelope, where a
        // rendezvous may write a source tag (`Relay::source_tag`).
        if bytes[0] != TYPE_RELAY && bytes[1..4] != [0, 0, 0] {
            return Err(WireError::UnknownType);
        }
        match bytes[0] {
            TYPE_INITIATION => Initiation::parse(bytes).map(Datagram::Initiation),
            TYPE_RESPONSE => Response::parse(bytes).map(Datagram::Response),
            TYPE_COOKIE_REPLY => CookieReply::parse(bytes).map(Datagram::CookieReply),
            TYPE_DATA => Data::parse(bytes).map(Datagram::Data),
            TYPE_RELAY => Relay::parse(bytes).map(Datagram::Relay),
            TYPE_TRUST_REQUEST => Ok(Datagram::TrustRequest(bytes)),
            _ => Err(WireError::UnknownType),
        }
    }
}

/// Handshake initiation: sender index, Noise message 1, mac1, mac2.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a> {
    bytes: &'a [u8],
}

impl<'a> Initiation<'a> {
    /// Offset of the Noise message.
    pub const NOISE_OFFSET: usize = 8;

    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let min = Self::NOISE_OFFSET + MIN_NOISE_INITIATION_LEN + MACS_LEN;
        if bytes.len() < min || bytes.len() > MAX_HANDSHAKE_LEN {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes })
    }

    /// The initiator's session index.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// The Noise message.
    pub fn noise(&self) -> &'a [u8] {
        &self.bytes[Self::NOISE_OFFSET..self.bytes.len() - MACS_LEN]
    }

    /// The whole datagram (for mac checks).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Handshake response: sender index, receiver index, Noise message 2, macs.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    bytes: &'a [u8],
}

impl<'a> Response<'a> {
    /// Offset of the Noise message.
    pub const NOISE_OFFSET: usize = 12;

    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let min = Self::NOISE_OFFSET + MIN_NOISE_RESPONSE_LEN + MACS_LEN;
        if bytes.len() < min || bytes.len() > MAX_HANDSHAKE_LEN {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes })
    }

    /// The responder's session index.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// The initiator's session index, echoed.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.bytes, 8)
    }

    /// The Noise message.
    pub fn noise(&self) -> &'a [u8] {
        &self.bytes[Self::NOISE_OFFSET..self.bytes.len() - MACS_LEN]
    }

    /// The whole datagram (for mac checks).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Cookie reply: receiver index, nonce, sealed cookie.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a> {
    bytes: &'a [u8],
}

impl<'a> CookieReply<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() != COOKIE_REPLY_LEN {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes })
    }

    /// The index of the handshake this cookie answers.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// The nonce and sealed cookie.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[8..]
    }
}

/// Transport data: receiver index, counter, ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    bytes: &'a [u8],
}

impl<'a> Data<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() < DATA_OVERHEAD {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes })
    }

    /// The receiver's session index.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// The message counter (the AEAD nonce).
    pub fn counter(&self) -> u64 {
        u64_at(self.bytes, 8)
    }

    /// Ciphertext with tag.
    pub fn ciphertext(&self) -> &'a [u8] {
        &self.bytes[DATA_HEADER_LEN..]
    }
}

/// Writes the header of a data message into the first [`DATA_HEADER_LEN`] bytes.
pub fn write_data_header(out: &mut [u8], receiver_index: u32, counter: u64) {
    write_header(out, TYPE_DATA);
    out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// Relay envelope: destination node ID and an inner datagram.
#[derive(Debug, Clone, Copy)]
pub struct Relay<'a> {
    bytes: &'a [u8],
}

impl<'a> Relay<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() < RELAY_HEADER_LEN + HEADER_LEN {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes })
    }

    /// The node the inner datagram is for.
    pub fn destination(&self) -> [u8; 8] {
        let mut node = [0u8; 8];
        node.copy_from_slice(&self.bytes[4..12]);
        node
    }

    /// The inner datagram.
    pub fn inner(&self) -> &'a [u8] {
        &self.bytes[RELAY_HEADER_LEN..]
    }

    /// The source tag a rendezvous wrote into the three bytes after the
    /// type (0: none). It is the same for every trust request the server
    /// relays from one source address (an IPv6 /64), and tells nothing
    /// else: a keyed hash the server draws anew at each start. The agent
    /// counts its pending requests per tag, so that one flooder behind a
    /// rendezvous cannot push out what others sent through it.
    pub fn source_tag(&self) -> u32 {
        u32::from_be_bytes([0, self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_and_unknown_datagrams_are_rejected() {
        assert_eq!(Datagram::parse(&[]).err(), Some(WireError::BadLength));
        assert_eq!(
            Datagram::parse(&[4, 0, 0]).err(),
            Some(WireError::BadLength)
        );
        assert_eq!(
            Datagram::parse(&[9, 0, 0, 0]).err(),
            Some(WireError::UnknownType)
        );
        assert_eq!(
            Datagram::parse(&[4, 1, 0, 0]).err(),
            Some(WireError::UnknownType)
        );
        assert_eq!(
            Datagram::parse(&[4, 0, 0, 0, 1]).err(),
            Some(WireError::BadLength)
        );
        assert_eq!(
            Datagram::parse(&[1; 2000]).err(),
            Some(WireError::UnknownType),
            "reserved bytes are checked first"
        );
    }

    #[test]
    fn only_a_relay_envelope_carries_a_source_tag() {
        let node = crate::core::address::NodeId([7; 8]);
        let mut envelope = crate::core::wire::path::relay_envelope(node, &[4; 40]);
        crate::core::wire::path::set_relay_source_tag(&mut envelope, 0x00ab_cdef);
        assert_eq!(&envelope[..4], &[TYPE_RELAY, 0xab, 0xcd, 0xef]);
        match Datagram::parse(&envelope) {
            Ok(Datagram::Relay(relay)) => {
                assert_eq!(relay.source_tag(), 0x00ab_cdef);
                assert_eq!(relay.destination(), [7; 8]);
            }
            other => panic!("{other:?}"),
        }
        let mut data = envelope.clone();
        data[0] = TYPE_DATA;
        assert_eq!(Datagram::parse(&data).err(), Some(WireError::UnknownType));
        crate::core::wire::path::set_relay_source_tag(&mut data, 0);
        assert_eq!(
            &data[1..4],
            &[0xab, 0xcd, 0xef],
            "not an envelope: untouched"
        );
    }

    #[test]
    fn data_header_round_trips() {
        let mut datagram = vec![0u8; DATA_OVERHEAD + 5];
        write_data_header(&mut datagram, 0xdead_beef, 0x0102_0304_0506_0708);
        match Datagram::parse(&datagram) {
            Ok(Datagram::Data(data)) => {
                assert_eq!(data.receiver_index(), 0xdead_beef);
                assert_eq!(data.counter(), 0x0102_0304_0506_0708);
                assert_eq!(data.ciphertext().len(), TAG_LEN + 5);
            }
            other => panic!("not data: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accessors_stay_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            match Datagram::parse(&bytes) {
                Ok(Datagram::Initiation(m)) => { let _ = (m.sender_index(), m.noise().len()); }
                Ok(Datagram::Response(m)) => { let _ = (m.sender_index(), m.receiver_index(), m.noise().len()); }
                Ok(Datagram::CookieReply(m)) => { let _ = (m.receiver_index(), m.body().len()); }
                Ok(Datagram::Data(m)) => { let _ = (m.receiver_index(), m.counter(), m.ciphertext().len()); }
                Ok(Datagram::Relay(m)) => { let _ = (m.destination(), m.inner().len()); }
                Ok(Datagram::TrustRequest(_)) | Err(_) => {}
            }
        }

        #[test]
        fn typed_prefix_with_random_tail_never_panics(kind in 0u8..8, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![kind, 0, 0, 0];
            bytes.extend(tail);
            let _ = Datagram::parse(&bytes);
        }
    }
}
