//! One transport session: the keys of one handshake, an explicit 64-bit
//! counter as nonce, and a replay window (DESIGN.md §2).
//!
//! The AEAD is ChaCha20-Poly1305 with the Noise nonce layout (32 zero bits
//! then the counter, little-endian) and empty associated data, so it is
//! exactly Noise's transport encryption; done here in place to avoid copies,
//! with ring's assembly implementation (about 3x the throughput of the
//! portable Rust one on the project's machine; the hot path of the tunnel).

use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::handshake::SessionKeys;
use super::replay::{ReplayVerdict, ReplayWindow};
use super::wire::{self, DATA_HEADER_LEN, TAG_LEN};

/// Start a new handshake when the session is this old (initiator side).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a session older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Start a new handshake after this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept a counter at or beyond this.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Why a packet could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session is too old or has sent too many messages.
    #[error("session expired")]
    Expired,
    /// The counter was seen before or is behind the window.
    #[error("replayed or too old counter")]
    Replay,
    /// The tag did not verify.
    #[error("authentication failed")]
    Decrypt,
}

/// A transport session. `Debug` prints indices, never keys.
pub struct Session {
    /// Our index: peers put it in the packets they send us.
    pub local_index: u32,
    /// The peer's index: we put it in the packets we send.
    pub remote_index: u32,
    /// Whether we initiated the handshake that made it.
    pub is_initiator: bool,
    /// When the handshake completed.
    pub created: Instant,
    sealing: LessSafeKey,
    opening: LessSafeKey,
    next_send_counter: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .field("sent", &self.next_send_counter)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(nonce)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // Only a key of the wrong length is refused; ours are 32 bytes.
    let key =
        UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("ChaCha20-Poly1305 takes a 32-byte key");
    LessSafeKey::new(key)
}

impl Session {
    /// A session from the keys of a completed handshake.
    pub fn new(
        keys: &SessionKeys,
        local_index: u32,
        remote_index: u32,
        is_initiator: bool,
        now: Instant,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            is_initiator,
            created: now,
            sealing: key(&keys.send),
            opening: key(&keys.receive),
            next_send_counter: 0,
            replay: ReplayWindow::new(),
        }
    }

    /// Whether the session may still carry packets.
    pub fn is_usable(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
            && self.next_send_counter < REJECT_AFTER_MESSAGES
    }

    /// Whether the initiator should start a new handshake.
    pub fn wants_rekey(&self, now: Instant) -> bool {
        self.is_initiator
            && (now.saturating_duration_since(self.created) >= REKEY_AFTER_TIME
                || self.next_send_counter >= REKEY_AFTER_MESSAGES)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next_send_counter
    }

    /// Seals `payload` into a whole data datagram appended to `out`.
    pub fn seal(
        &mut self,
        now: Instant,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if !self.is_usable(now) {
            return Err(SessionError::Expired);
        }
        let counter = self.next_send_counter;
        self.next_send_counter += 1;
        let start = out.len();
        out.resize(start + DATA_HEADER_LEN, 0);
        wire::write_data_header(&mut out[start..], self.remote_index, counter);
        out.extend_from_slice(payload);
        let body_start = start + DATA_HEADER_LEN;
        let tag = self
            .sealing
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut out[body_start..])
            .map_err(|_| SessionError::Expired)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Checks the counter against the replay window, without decrypting.
    pub fn check_replay(&self, counter: u64) -> Result<(), SessionError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Expired);
        }
        match self.replay.check(counter) {
            ReplayVerdict::Fresh => Ok(()),
            ReplayVerdict::Duplicate | ReplayVerdict::TooOld => Err(SessionError::Replay),
        }
    }

    /// Opens a data message in place: `ciphertext` holds payload ‖ tag and
    /// on success its first `n` bytes are the payload, `n` returned.
    /// Order: check the window, decrypt, then mark.
    pub fn open(
        &mut self,
        now: Instant,
        counter: u64,
        ciphertext: &mut [u8],
    ) -> Result<usize, SessionError> {
        if !self.is_usable(now) {
            return Err(SessionError::Expired);
        }
        self.check_replay(counter)?;
        if ciphertext.len() < TAG_LEN {
            return Err(SessionError::Decrypt);
        }
        let payload_len = self
            .opening
            .open_in_place(nonce(counter), Aad::empty(), ciphertext)
            .map_err(|_| SessionError::Decrypt)?
            .len();
        if !self.replay.mark(counter) {
            return Err(SessionError::Replay);
        }
        Ok(payload_len)
    }

    /// The receive-side replay window (for loss and reorder statistics).
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::Datagram;
    use zeroize::Zeroizing;

    fn pair(now: Instant) -> (Session, Session) {
        let a_to_b = [1u8; 32];
        let b_to_a = [2u8; 32];
        let a = SessionKeys {
            send: Zeroizing::new(a_to_b),
            receive: Zeroizing::new(b_to_a),
        };
        let b = SessionKeys {
            send: Zeroizing::new(b_to_a),
            receive: Zeroizing::new(a_to_b),
        };
        (
            Session::new(&a, 1, 2, true, now),
            Session::new(&b, 2, 1, false, now),
        )
    }

    fn open(session: &mut Session, now: Instant, datagram: &[u8]) -> Result<Vec<u8>, SessionError> {
        let Ok(Datagram::Data(data)) = Datagram::parse(datagram) else {
            panic!("not data");
        };
        let mut buffer = data.ciphertext().to_vec();
        let len = session.open(now, data.counter(), &mut buffer)?;
        buffer.truncate(len);
        Ok(buffer)
    }

    #[test]
    fn sealed_packets_open_once_and_in_any_order() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        let datagrams: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let mut out = Vec::new();
                alice.seal(now, &[i; 100], &mut out).expect("seals");
                out
            })
            .collect();
        for i in [3usize, 0, 4, 1, 2] {
            assert_eq!(open(&mut bob, now, &datagrams[i]), Ok(vec![i as u8; 100]));
        }
        assert_eq!(
            open(&mut bob, now, &datagrams[2]),
            Err(SessionError::Replay)
        );
    }

    #[test]
    fn tampered_packet_fails_and_does_not_burn_its_counter() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        let mut datagram = Vec::new();
        alice.seal(now, b"hello", &mut datagram).expect("seals");
        let mut tampered = datagram.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&mut bob, now, &tampered), Err(SessionError::Decrypt));
        assert_eq!(open(&mut bob, now, &datagram), Ok(b"hello".to_vec()));
    }

    #[test]
    fn session_expires_after_reject_time() {
        let now = Instant::now();
        let (mut alice, _) = pair(now);
        assert!(!alice.wants_rekey(now));
        assert!(alice.wants_rekey(now + REKEY_AFTER_TIME));
        let mut out = Vec::new();
        assert_eq!(
            alice.seal(now + REJECT_AFTER_TIME, b"x", &mut out),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn matches_snow_transport_encryption() {
        // Our in-place AEAD must be Noise's transport cipher: check against
        // snow on a real handshake.
        let params: snow::params::NoiseParams =
            "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().expect("params");
        let mut initiator = snow::Builder::new(params.clone())
            .build_initiator()
            .expect("init");
        let mut responder = snow::Builder::new(params).build_responder().expect("resp");
        let mut buffer = [0u8; 200];
        let mut payload = [0u8; 200];
        let len = initiator.write_message(&[], &mut buffer).expect("m1");
        responder
            .read_message(&buffer[..len], &mut payload)
            .expect("m1");
        let len = responder.write_message(&[], &mut buffer).expect("m2");
        initiator
            .read_message(&buffer[..len], &mut payload)
            .expect("m2");
        let (k1, k2) = initiator.dangerously_get_raw_split();
        let snow_responder = responder
            .into_stateless_transport_mode()
            .expect("transport");
        let keys = SessionKeys {
            send: Zeroizing::new(k1),
            receive: Zeroizing::new(k2),
        };
        let now = Instant::now();
        let mut ours = Session::new(&keys, 1, 2, true, now);
        for _ in 0..3 {
            let mut datagram = Vec::new();
            ours.seal(now, b"interop", &mut datagram).expect("seals");
            let Ok(Datagram::Data(data)) = Datagram::parse(&datagram) else {
                panic!("not data");
            };
            let len = snow_responder
                .read_message(data.counter(), data.ciphertext(), &mut payload)
                .expect("snow opens our packet");
            assert_eq!(&payload[..len], b"interop");
        }
    }
}
