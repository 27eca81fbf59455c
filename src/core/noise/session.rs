//! One transport session: the keys of one handshake, an explicit 64-bit
//! counter as nonce, and a replay window (DESIGN.md §2).
//!
//! The AEAD is the one the handshake chose (`super::cipher`):
//! ChaCha20-Poly1305 or AES-256-GCM, with Noise's nonce layout for each
//! (32 zero bits then the counter, little-endian for ChaChaPoly and
//! big-endian for AESGCM) and empty associated data, so it is exactly
//! Noise's transport encryption; done here in place to avoid copies, with
//! ring's assembly implementations (the hot path of the tunnel).
//!
//! ring's expanded key (`LessSafeKey`) takes 544 bytes whatever the
//! algorithm (it is sized for AES-GCM's key schedule) against 32 bytes of
//! raw key, so a session keeps the raw keys and holds the expanded
//! form of a direction only while that direction carries traffic (issue 7:
//! memory per idle peer). See [`KEEP_AFTER_PACKETS`].

use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use zeroize::Zeroizing;

use crate::core::noise::cipher::TransportCipher;
use crate::core::noise::handshake::SessionKeys;
use crate::core::noise::replay::{ReplayVerdict, ReplayWindow};
use crate::core::wire::{self, DATA_HEADER_LEN, TAG_LEN};

/// Start a new handshake when the session is this old (initiator side).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a session older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Start a new handshake after this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept a counter at or beyond this.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// [`Session::release_idle_keys`] drops a direction's kept expanded key
/// once it has been unused this long.
pub const KEEP_EXPANDED_KEY_FOR: Duration = Duration::from_secs(10);
/// A direction keeps its expanded key once this many packets in a row came
/// closer than [`BURST_GAP`] to each other: a flow of data. A session's
/// start (confirmation, services offer and acknowledgement), keepalives and
/// RTT pings (a second apart) expand the key on the stack for each packet
/// and keep nothing, so an idle peer costs no 544-byte key per direction.
pub const KEEP_AFTER_PACKETS: u8 = 8;
/// See [`KEEP_AFTER_PACKETS`].
pub const BURST_GAP: Duration = Duration::from_millis(100);

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
    sealing: DirectionKey,
    opening: DirectionKey,
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

fn expand(cipher: TransportCipher, bytes: &[u8; 32]) -> LessSafeKey {
    let algorithm = match cipher {
        TransportCipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        TransportCipher::Aes256Gcm => &AES_256_GCM,
    };
    // Only a key of the wrong length is refused; both take 32 bytes.
    let key = UnboundKey::new(algorithm, bytes).expect("both AEADs take a 32-byte key");
    LessSafeKey::new(key)
}

/// The key of one direction: always the raw 32 bytes (zeroed on drop);
/// ring's expanded form, on the heap, only while the direction is busy.
struct DirectionKey {
    raw: Zeroizing<[u8; 32]>,
    expanded: Option<Box<LessSafeKey>>,
    last_used: Option<Instant>,
    /// Packets in a row closer than [`BURST_GAP`], while not expanded.
    burst: u8,
    cipher: TransportCipher,
}

impl DirectionKey {
    fn new(cipher: TransportCipher, raw: &[u8; 32]) -> Self {
        Self {
            raw: Zeroizing::new(*raw),
            expanded: None,
            last_used: None,
            burst: 0,
            cipher,
        }
    }

    /// Runs `operation` with the expanded key. A busy direction expands
    /// once and keeps the key (the data path pays only the pointer); the
    /// first use after a quiet spell expands it on the stack and drops it.
    fn with<R>(&mut self, now: Instant, operation: impl FnOnce(&LessSafeKey) -> R) -> R {
        let previous_use = self.last_used.replace(now);
        match self.expanded.as_deref() {
            Some(expanded) => operation(expanded),
            None => self.expand_for(now, previous_use, operation),
        }
    }

    /// [`Self::with`] without an expanded key: expands it, and keeps it
    /// once [`KEEP_AFTER_PACKETS`] packets came in a burst.
    #[cold]
    #[inline(never)]
    fn expand_for<R>(
        &mut self,
        now: Instant,
        previous_use: Option<Instant>,
        operation: impl FnOnce(&LessSafeKey) -> R,
    ) -> R {
        let expanded = expand(self.cipher, &self.raw);
        let close = previous_use.is_some_and(|at| now.saturating_duration_since(at) < BURST_GAP);
        self.burst = if close {
            self.burst.saturating_add(1)
        } else {
            1
        };
        if self.burst >= KEEP_AFTER_PACKETS {
            operation(self.expanded.insert(Box::new(expanded)))
        } else {
            operation(&expanded)
        }
    }

    /// Drops the expanded key when unused for [`KEEP_EXPANDED_KEY_FOR`].
    fn release_if_idle(&mut self, now: Instant) {
        if self
            .last_used
            .is_none_or(|at| now.saturating_duration_since(at) >= KEEP_EXPANDED_KEY_FOR)
        {
            self.expanded = None;
        }
    }
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
            sealing: DirectionKey::new(keys.cipher, &keys.send),
            opening: DirectionKey::new(keys.cipher, &keys.receive),
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

    /// The transport cipher of its packets.
    pub fn cipher(&self) -> TransportCipher {
        self.sealing.cipher
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
        let body = &mut out[start + DATA_HEADER_LEN..];
        let nonce = self.sealing.cipher.nonce(counter);
        let tag = self
            .sealing
            .with(now, |key| {
                key.seal_in_place_separate_tag(nonce, Aad::empty(), body)
            })
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
        let nonce = self.opening.cipher.nonce(counter);
        let payload_len = self
            .opening
            .with(now, |key| {
                key.open_in_place(nonce, Aad::empty(), ciphertext)
                    .map(|payload| payload.len())
            })
            .map_err(|_| SessionError::Decrypt)?;
        if !self.replay.mark(counter) {
            return Err(SessionError::Replay);
        }
        Ok(payload_len)
    }

    /// Drops the expanded keys of directions idle for
    /// [`KEEP_EXPANDED_KEY_FOR`] (they are rebuilt from the raw keys when
    /// traffic resumes).
    pub fn release_idle_keys(&mut self, now: Instant) {
        self.sealing.release_if_idle(now);
        self.opening.release_if_idle(now);
    }

    /// Whether the sealing and the opening direction hold their expanded
    /// keys.
    #[cfg(test)]
    fn holds_expanded_keys(&self) -> (bool, bool) {
        (
            self.sealing.expanded.is_some(),
            self.opening.expanded.is_some(),
        )
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

    const CIPHERS: [TransportCipher; 2] = [
        TransportCipher::ChaCha20Poly1305,
        TransportCipher::Aes256Gcm,
    ];

    fn pair(now: Instant) -> (Session, Session) {
        pair_with(TransportCipher::ChaCha20Poly1305, now)
    }

    fn pair_with(cipher: TransportCipher, now: Instant) -> (Session, Session) {
        let a_to_b = [1u8; 32];
        let b_to_a = [2u8; 32];
        let a = SessionKeys {
            send: Zeroizing::new(a_to_b),
            receive: Zeroizing::new(b_to_a),
            cipher,
        };
        let b = SessionKeys {
            send: Zeroizing::new(b_to_a),
            receive: Zeroizing::new(a_to_b),
            cipher,
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
        for cipher in CIPHERS {
            let now = Instant::now();
            let (mut alice, mut bob) = pair_with(cipher, now);
            assert_eq!(alice.cipher(), cipher);
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
    }

    #[test]
    fn tampered_packet_fails_and_does_not_burn_its_counter() {
        for cipher in CIPHERS {
            let now = Instant::now();
            let (mut alice, mut bob) = pair_with(cipher, now);
            let mut datagram = Vec::new();
            alice.seal(now, b"hello", &mut datagram).expect("seals");
            let mut tampered = datagram.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            assert_eq!(open(&mut bob, now, &tampered), Err(SessionError::Decrypt));
            assert_eq!(open(&mut bob, now, &datagram), Ok(b"hello".to_vec()));
        }
    }

    #[test]
    fn sessions_of_different_ciphers_cannot_read_each_other() {
        let now = Instant::now();
        let (mut chacha, _) = pair_with(TransportCipher::ChaCha20Poly1305, now);
        let (_, mut aes) = pair_with(TransportCipher::Aes256Gcm, now);
        let mut datagram = Vec::new();
        chacha.seal(now, b"hello", &mut datagram).expect("seals");
        assert_eq!(open(&mut aes, now, &datagram), Err(SessionError::Decrypt));
    }

    #[test]
    fn expanded_keys_are_kept_only_while_traffic_flows() {
        let start = Instant::now();
        let (mut alice, mut bob) = pair(start);
        let exchange = |at: Instant, alice: &mut Session, bob: &mut Session| {
            let mut datagram = Vec::new();
            alice.seal(at, b"payload", &mut datagram).expect("seals");
            assert_eq!(open(bob, at, &datagram), Ok(b"payload".to_vec()));
        };
        // A session's start: a few packets at once keep nothing.
        for _ in 0..KEEP_AFTER_PACKETS - 1 {
            exchange(start, &mut alice, &mut bob);
        }
        assert_eq!(alice.holds_expanded_keys(), (false, false));
        assert_eq!(bob.holds_expanded_keys(), (false, false));
        // RTT pings a second apart keep nothing either.
        let mut at = start;
        for _ in 0..20 {
            at += Duration::from_secs(1);
            exchange(at, &mut alice, &mut bob);
        }
        assert_eq!(alice.holds_expanded_keys(), (false, false));
        assert_eq!(bob.holds_expanded_keys(), (false, false));
        // A flow keeps the keys for the data path.
        for _ in 0..KEEP_AFTER_PACKETS {
            at += Duration::from_millis(1);
            exchange(at, &mut alice, &mut bob);
        }
        assert_eq!(alice.holds_expanded_keys(), (true, false));
        assert_eq!(bob.holds_expanded_keys(), (false, true));
        alice.release_idle_keys(at + KEEP_EXPANDED_KEY_FOR / 2);
        assert_eq!(alice.holds_expanded_keys(), (true, false), "still busy");
        // Idle: dropped, and rebuilt from the raw keys when a flow resumes.
        let idle = at + KEEP_EXPANDED_KEY_FOR;
        alice.release_idle_keys(idle);
        bob.release_idle_keys(idle);
        assert_eq!(alice.holds_expanded_keys(), (false, false));
        assert_eq!(bob.holds_expanded_keys(), (false, false));
        for _ in 0..KEEP_AFTER_PACKETS {
            exchange(idle, &mut alice, &mut bob);
        }
        assert_eq!(alice.holds_expanded_keys(), (true, false));
        assert_eq!(bob.holds_expanded_keys(), (false, true));
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
        // Our in-place AEADs must be Noise's transport ciphers (the nonce
        // layouts differ): check each against snow on a real handshake.
        for (cipher, noise) in [
            (TransportCipher::ChaCha20Poly1305, "ChaChaPoly"),
            (TransportCipher::Aes256Gcm, "AESGCM"),
        ] {
            matches_snow(cipher, &format!("Noise_NN_25519_{noise}_BLAKE2s"));
        }
    }

    fn matches_snow(cipher: TransportCipher, params: &str) {
        let params: snow::params::NoiseParams = params.parse().expect("params");
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
            cipher,
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
