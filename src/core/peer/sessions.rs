//! A peer's sessions: the current, previous and next slots, the handshake
//! this side initiates with its retries, and sending (sealing, the queue
//! while no session is up).

use std::time::Instant;

use rand::Rng;

use crate::core::api::Event;
use crate::core::noise::cookie::{CookieReplyError, CookieReplyKey};
use crate::core::noise::handshake::{InitiationPayload, InitiatorHandshake, SUPPORTED_VERSIONS};
use crate::core::noise::session::{Session, SessionError};
use crate::core::noise::tai64n::Tai64N;
use crate::core::peer::context::Context;
use crate::core::wire::control_frame::CONTROL_FRAME_LIMIT;
use crate::core::wire::path::PathAddr;

use super::path::Route;
use super::{
    FIRST_RETRY, HandshakeNews, MAX_QUEUED_PACKETS, MAX_RETRY, MIN_INITIATION_INTERVAL,
    PEER_KEEPS_INITIATING, Peer, REKEY_ON_RECEIVE_AGE, RESPONDER_REKEY_AGE, Retry, Slot,
};

impl Peer {
    /// Whether a session can carry packets now.
    pub fn is_up(&self, now: Instant) -> bool {
        self.current
            .as_ref()
            .is_some_and(|session| session.is_usable(now))
    }

    /// The slot holding the session with this local index.
    pub fn slot_of(&self, local_index: u32) -> Option<Slot> {
        let holds = |session: &Option<Box<Session>>| {
            session
                .as_ref()
                .is_some_and(|s| s.local_index == local_index)
        };
        if holds(&self.current) {
            Some(Slot::Current)
        } else if holds(&self.next) {
            Some(Slot::Next)
        } else if holds(&self.previous) {
            Some(Slot::Previous)
        } else {
            None
        }
    }

    /// The session in a slot.
    pub fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_deref_mut(),
            Slot::Previous => self.previous.as_deref_mut(),
            Slot::Next => self.next.as_deref_mut(),
        }
    }

    /// Whether this local index belongs to our in-flight initiation.
    pub fn is_pending_initiation(&self, local_index: u32) -> bool {
        self.handshake
            .as_ref()
            .is_some_and(|h| h.local_index() == local_index)
    }

    /// The in-flight initiation (to finish it in place: a forged response
    /// must not spend it).
    pub fn pending_initiation_mut(&mut self) -> Option<&mut InitiatorHandshake> {
        self.handshake.as_deref_mut()
    }

    /// Drops the in-flight initiation (finished, or spent by a response that
    /// opened but was unusable).
    pub fn take_pending_initiation(&mut self) -> Option<InitiatorHandshake> {
        self.handshake.take().map(|handshake| *handshake)
    }

    /// Makes a new session current, keeping the old one as previous.
    pub fn install_current(&mut self, ctx: &mut Context, now: Instant, session: Box<Session>) {
        let was_up = self.is_up(now);
        if let Some(old) = self.previous.take() {
            ctx.release_index(old.local_index);
        }
        self.previous = self.current.take();
        // Initiator: since the first initiation; responder: since answering.
        let started = self
            .retry
            .as_ref()
            .map_or(session.created, |retry| retry.first_attempt);
        self.stats
            .on_handshake_completed(now, now.saturating_duration_since(started));
        self.current = Some(session);
        self.retry = None;
        // The handshake is done: the initiation in flight is answered, and
        // only a cookie still fresh is worth keeping.
        if self
            .cookie
            .as_ref()
            .is_some_and(|cookie| !cookie.has_fresh_cookie(now))
        {
            self.cookie = None;
        }
        if !was_up {
            ctx.events.push_back(Event::PeerUp { id: self.config.id });
        }
        self.flush_queue(ctx, now);
        self.offer_services_on_new_session(ctx, now);
        if !self.direct_proven()
            && self
                .route(ctx, now)
                .is_some_and(|route| route.relay_alternative)
        {
            self.start_probing(now);
        }
        self.report_path(ctx, now);
    }

    /// Holds an answered session until the initiator confirms it.
    pub fn install_next(&mut self, ctx: &mut Context, session: Box<Session>) {
        if let Some(old) = self.next.replace(session) {
            ctx.release_index(old.local_index);
        }
    }

    /// Promotes the confirmed `next` session to current, unless the
    /// handshakes crossed and ours is the one both sides keep (see
    /// [`Peer::keeps_own_session`]): then the peer's session becomes the
    /// previous one, still accepted while the peer moves over to ours.
    pub fn confirm_next(&mut self, ctx: &mut Context, now: Instant) {
        let Some(session) = self.next.take() else {
            return;
        };
        if self.keeps_own_session(ctx, now, &session) {
            tracing::debug!(peer = %self.config.id, "handshakes crossed: keeping the session we initiated");
            if let Some(old) = self.previous.replace(session) {
                ctx.release_index(old.local_index);
            }
            return;
        }
        self.install_current(ctx, now, session);
    }

    /// Whether, on the peer's confirmation of the session it initiated
    /// (`answered`), the current session stays. That is so when both sides
    /// initiated at once and both handshakes completed: the current session
    /// is ours and no older than the answered one. Each side would
    /// otherwise promote the other's session, and both would end up sending
    /// on a session they did not initiate, which neither rekeys (only an
    /// initiator does): it would expire under the traffic after
    /// `REJECT_AFTER_TIME`. Both sides decide alike: the session of the
    /// agent with the lower ID is kept, so one session carries the traffic
    /// and its initiator keeps it fresh.
    fn keeps_own_session(&self, ctx: &Context, now: Instant, answered: &Session) -> bool {
        ctx.own_id < self.config.id
            && self.current.as_ref().is_some_and(|current| {
                current.is_initiator
                    && current.is_usable(now)
                    && current.created >= answered.created
            })
    }

    /// Notes an authenticated packet from the peer. Only packets with a
    /// payload call for a keepalive back; keepalives themselves do not, or
    /// two idle peers would keep each other awake forever.
    pub fn observe_receive(&mut self, now: Instant, has_payload: bool) {
        if has_payload {
            self.last_received = Some(now);
        }
        self.unanswered_since = None;
        self.silent_since = None;
    }

    /// Whether we should start a handshake after receiving on the current
    /// session (it is ours and about to expire).
    pub fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        self.handshake.is_none()
            && self.current.as_ref().is_some_and(|session| {
                session.is_initiator
                    && now.saturating_duration_since(session.created) >= REKEY_ON_RECEIVE_AGE
            })
    }

    /// Sends an IP packet (already accepted for this peer) or a control
    /// payload; queues it and starts a handshake when no session is up.
    pub fn send(&mut self, ctx: &mut Context, now: Instant, payload: &[u8]) {
        if self.is_up(now)
            && let Some(route) = self.route(ctx, now)
        {
            self.seal_and_transmit_on(ctx, now, route, payload);
        } else {
            let queue = self.queue.get_or_insert_default();
            if queue.len() >= MAX_QUEUED_PACKETS {
                queue.pop_front();
            }
            queue.push_back(payload.to_vec());
            self.start_handshake_if_idle(ctx, now);
        }
    }

    /// Seals a payload on the current session and sends it along `path`.
    pub(super) fn seal_to(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        path: PathAddr,
        payload: &[u8],
    ) -> bool {
        let Some(session) = self.current.as_mut() else {
            return false;
        };
        // A buffer the shell gave back after sending: no allocation per
        // packet on the way out.
        let mut datagram = ctx.take_buffer();
        datagram.reserve(payload.len() + crate::core::wire::DATA_OVERHEAD);
        if session.seal(now, payload, &mut datagram).is_err() {
            ctx.recycle_buffer(datagram);
            return false;
        }
        let local_index = session.local_index;
        ctx.send_on(path, self.node_id, datagram);
        // A control frame (probe, pong to a probe) off the path in use may
        // never reach the peer: tell it, so it is not counted as loss.
        if payload
            .first()
            .is_some_and(|first| *first < CONTROL_FRAME_LIMIT)
            && self.send_path(ctx, now) != Some(path)
        {
            self.stats.on_offpath_sent(local_index);
        }
        true
    }

    /// Seals a payload and sends it the way packets go now.
    pub(super) fn seal_and_transmit(&mut self, ctx: &mut Context, now: Instant, payload: &[u8]) {
        if let Some(route) = self.route(ctx, now) {
            self.seal_and_transmit_on(ctx, now, route, payload);
        }
    }

    /// Seals a payload and sends it along `route` (decided once for it).
    fn seal_and_transmit_on(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        route: Route,
        payload: &[u8],
    ) {
        if !self.seal_to(ctx, now, route.path, payload) {
            return;
        }
        let responder_rekey_age = RESPONDER_REKEY_AGE[usize::from(ctx.own_id > self.config.id)];
        let wants_rekey = self.current.as_ref().is_some_and(|session| {
            session.wants_rekey(now)
                || (!session.is_initiator
                    && now.saturating_duration_since(session.created) >= responder_rekey_age)
        });
        self.last_sent = Some(now);
        if !payload.is_empty() {
            self.counters.tx_bytes += payload.len() as u64;
            self.counters.tx_packets += 1;
            if self.unanswered_since.is_none() {
                self.unanswered_since = Some(now);
            }
            self.silent_since.get_or_insert(now);
            self.note_sent_on(now, route);
        }
        if wants_rekey {
            self.start_handshake_if_idle(ctx, now);
        }
    }

    pub(super) fn flush_queue(&mut self, ctx: &mut Context, now: Instant) {
        let queued = self.queue.take();
        let was_empty = queued.as_ref().is_none_or(|queue| queue.is_empty());
        for payload in queued.into_iter().flat_map(|queue| *queue) {
            self.seal_and_transmit(ctx, now, &payload);
        }
        if was_empty
            && self
                .current
                .as_ref()
                .is_some_and(|s| s.is_initiator && s.sent() == 0)
        {
            // Confirm the session to the responder, which waits for our
            // first packet before it sends on it.
            self.seal_and_transmit(ctx, now, &[]);
        }
    }

    /// Abandons any handshake in flight and starts a new one now.
    pub fn restart_handshake(&mut self, ctx: &mut Context, now: Instant) {
        if let Some(handshake) = self.handshake.take() {
            ctx.release_index(handshake.local_index());
        }
        self.retry = None;
        self.start_handshake_if_idle(ctx, now);
    }

    /// Starts a handshake unless one is in flight.
    pub fn start_handshake_if_idle(&mut self, ctx: &mut Context, now: Instant) {
        if self.retry.is_none() {
            self.retry = Some(Box::new(Retry {
                first_attempt: now,
                attempts: 0,
                retry_at: now,
            }));
            self.send_initiation(ctx, now);
        }
    }

    pub(super) fn send_initiation(&mut self, ctx: &mut Context, now: Instant) {
        let Some(retry) = self.retry.as_mut() else {
            return;
        };
        retry.attempts += 1;
        // 1, 1, 2, 2, 4, 4, 8, 8, ... seconds: quick retries for a lossy
        // first exchange, then exponential backoff to the cap.
        let doublings = ((retry.attempts - 1) / 2).min(8);
        let backoff = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
        let jitter = ctx.rng.gen_range(0.8..1.2);
        retry.retry_at = now + backoff.mul_f64(jitter);
        if let Some(old) = self.handshake.take() {
            ctx.release_index(old.local_index());
        }
        // Direct and through each live relay of the peer's, in parallel:
        // whichever path answers first carries the session (a duplicate
        // arriving later is dropped by the responder as a replayed initiation).
        let mut paths: Vec<PathAddr> = self.endpoint.map(PathAddr::Direct).into_iter().collect();
        paths.extend(
            self.initiation_relays(ctx, now)
                .into_iter()
                .map(PathAddr::Relay),
        );
        self.want_relay_link(ctx, now);
        if paths.is_empty() {
            // Nowhere to send yet; the retry timer tries again (an endpoint
            // may be learnt from the peer's own initiation meanwhile).
            return;
        }
        let local_index = ctx.allocate_index(self.slot);
        let payload = InitiationPayload {
            timestamp: ctx.timestamp(now),
            versions: SUPPORTED_VERSIONS.to_vec(),
            name: ctx.name.clone(),
            candidates: ctx.local_candidates.clone(),
            nat: ctx.nat_hint(),
            ciphers: ctx.transport_ciphers,
        };
        match InitiatorHandshake::start(
            &mut ctx.rng,
            ctx.network,
            &ctx.noise_static,
            &self.noise_public,
            local_index,
            &payload,
        ) {
            Ok((handshake, mut datagram)) => {
                // mac2 when the peer gave us a cookie (it is under load).
                self.cookie
                    .get_or_insert_default()
                    .stamp(now, local_index, &mut datagram);
                tracing::debug!(peer = %self.config.id, local_index, attempt = self.retry.as_ref().map_or(0, |r| r.attempts), "sending handshake initiation");
                self.handshake = Some(Box::new(handshake));
                self.stats.on_initiation_sent();
                for path in paths {
                    ctx.send_on(path, self.node_id, datagram.clone());
                }
            }
            Err(error) => {
                tracing::warn!(peer = %self.config.id, %error, "could not build handshake initiation");
                ctx.release_index(local_index);
            }
        }
    }

    /// Destroys every session and pending handshake (keys are dropped).
    pub fn clear_sessions(&mut self, ctx: &mut Context) {
        for session in [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            ctx.release_index(session.local_index);
        }
        if let Some(handshake) = self.handshake.take() {
            ctx.release_index(handshake.local_index());
        }
        self.retry = None;
        self.queue = None;
        self.unanswered_since = None;
        self.silent_since = None;
    }

    /// Frees what only traffic needs once it stopped: the expanded AEAD
    /// keys of sessions idle for [`crate::core::noise::session::KEEP_EXPANDED_KEY_FOR`]
    /// (see [`Session::release_idle_keys`]) and the expired receive-rate
    /// window. Called by the node's housekeeping.
    pub fn release_idle_memory(&mut self, now: Instant) {
        for session in [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .flatten()
        {
            session.release_idle_keys(now);
        }
        self.stats.release_idle_memory(now);
    }

    /// Whether an initiation with this timestamp replays one already
    /// accepted (TAI64N not newer).
    pub fn is_replayed_initiation(&self, timestamp: Tai64N) -> bool {
        self.last_initiation_timestamp
            .is_some_and(|last| timestamp <= last)
    }

    /// Whether an initiation now would follow the last accepted one too
    /// closely ([`MIN_INITIATION_INTERVAL`]).
    pub fn is_initiation_flood(&self, now: Instant) -> bool {
        self.last_initiation_accepted
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_INITIATION_INTERVAL)
    }

    /// Takes the session of an initiation we answered (from `from`, stamped
    /// `timestamp`): it waits in the `next` slot until the initiator
    /// confirms it.
    pub fn accept_initiation(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        from: PathAddr,
        timestamp: Tai64N,
        news: HandshakeNews,
        session: Box<Session>,
    ) {
        let peer_keeps_initiating = self
            .last_initiation_accepted
            .is_some_and(|at| now.saturating_duration_since(at) < PEER_KEEPS_INITIATING);
        self.last_initiation_timestamp = Some(timestamp);
        self.last_initiation_accepted = Some(now);
        self.learn_from_handshake(now, from, news);
        self.observe_path(ctx, now, from, false);
        self.install_next(ctx, session);
        if !self.is_up(now) {
            self.retry_soon(ctx, now, peer_keeps_initiating);
        }
    }

    /// The peer just proved it is up (its initiation came) while we have no
    /// session: our own handshake is retried soon, from the first step of
    /// the backoff. Without this, a retry that backed off while the peer
    /// was down (up to [`MAX_RETRY`]), or none at all after
    /// `REKEY_ATTEMPT_TIME` gave up, would be all that is left should the
    /// peer's confirmation of the answered session be lost. The peer's
    /// confirmation, due within a round trip, cancels the retry
    /// ([`Peer::install_current`]).
    ///
    /// While the peer keeps initiating ([`PEER_KEEPS_INITIATING`]: faster
    /// than its own retries would), the retry is put off instead, to a
    /// first step after the latest initiation: the peer is handshaking on
    /// its own, and one more initiation of ours would cost both sides a
    /// handshake to travel the way our answers already go. Under a flood of
    /// a trusted peer's initiations that was one of ours per second and
    /// peer, ~4 % of a responder's CPU (issue 16). The retry comes once the
    /// peer stops.
    fn retry_soon(&mut self, ctx: &mut Context, now: Instant, peer_keeps_initiating: bool) {
        let retry_at = now + FIRST_RETRY.mul_f64(ctx.rng.gen_range(0.8..1.2));
        match self.retry.as_mut() {
            Some(retry) => {
                retry.first_attempt = now;
                retry.attempts = 0;
                retry.retry_at = if peer_keeps_initiating {
                    retry.retry_at.max(retry_at)
                } else {
                    retry.retry_at.min(retry_at)
                };
            }
            None => {
                self.retry = Some(Box::new(Retry {
                    first_attempt: now,
                    attempts: 0,
                    retry_at,
                }));
            }
        }
    }

    /// Takes the session our initiation built once the response came (from
    /// `from`): it is current at once.
    pub fn accept_response(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        from: PathAddr,
        news: HandshakeNews,
        session: Box<Session>,
    ) {
        self.learn_from_handshake(now, from, news);
        self.observe_path(ctx, now, from, true);
        self.observe_receive(now, false);
        self.install_current(ctx, now, session);
    }

    /// What every completed handshake tells about the peer.
    fn learn_from_handshake(&mut self, now: Instant, from: PathAddr, news: HandshakeNews) {
        self.remote_name = Some(news.name);
        self.set_remote_candidates(now, news.candidates);
        self.set_remote_nat(news.nat);
        self.last_handshake = Some(now);
        self.counters.handshakes += 1;
        if from.is_relay() {
            self.forget_direct_path(now);
        }
    }

    /// Takes a cookie reply to our initiation in flight (the peer is under
    /// load): the retry carries a valid mac2.
    pub fn accept_cookie_reply(
        &mut self,
        now: Instant,
        local_index: u32,
        body: &[u8],
        key: &CookieReplyKey,
    ) -> Result<(), CookieReplyError> {
        match self.cookie.as_mut() {
            Some(cookie) => cookie.handle_reply(now, local_index, body, key),
            None => Err(CookieReplyError::NotInFlight),
        }
    }

    /// Opens a data packet for session `local_index` in place: the replay
    /// window is checked before decryption and marked after the tag
    /// verified. Returns the slot that held the session and the plaintext
    /// length; counts what it refuses.
    pub fn open_data(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        local_index: u32,
        counter: u64,
        buffer: &mut [u8],
    ) -> Option<(Slot, usize)> {
        let Some(slot) = self.slot_of(local_index) else {
            ctx.dropped.unknown_session += 1;
            return None;
        };
        let session = self.session_mut(slot)?;
        if session.check_replay(counter).is_err() {
            let verdict = session.replay_window().check(counter);
            self.counters.dropped_replay += 1;
            self.stats.receive.on_refused(now, verdict);
            return None;
        }
        let len = match session.open(now, counter, buffer) {
            Ok(len) => len,
            Err(SessionError::Replay) => {
                self.counters.dropped_replay += 1;
                return None;
            }
            Err(SessionError::Decrypt) => {
                ctx.dropped.decrypt_failed += 1;
                self.stats.decrypt_failed += 1;
                return None;
            }
            Err(SessionError::Expired) => {
                ctx.dropped.unknown_session += 1;
                return None;
            }
        };
        self.stats.receive.on_accepted(now, local_index, counter);
        Some((slot, len))
    }

    /// Notes which path an opened packet came by (relayed or not) and
    /// whether it was a control frame, for the receive statistics.
    pub fn note_arrival(&mut self, now: Instant, relayed: bool, control: bool) {
        self.stats.receive.on_arrival_path(now, relayed, control);
    }

    /// The peer reports counters it skipped on session `local_index`
    /// (control frames it sent off the path in use).
    pub fn note_skipped_counters(&mut self, now: Instant, local_index: u32, count: u64) {
        self.stats
            .receive
            .on_skipped_report(now, local_index, count);
    }
}
