//! Handshakes: answering initiations (mac1, cookies under load, trust,
//! replay and flood checks), cookie replies and responses to ours.

use std::time::Instant;

use crate::core::address::NodeId;
use crate::core::noise::cookie::{CookieReplyKey, HandshakeSource, InitiationVerdict};
use crate::core::noise::handshake::{
    HandshakeError, ReceivedInitiation, ResponsePayload, choose_version,
};
use crate::core::noise::session::Session;
use crate::core::peer::HandshakeNews;
use crate::core::wire;
use crate::core::wire::path::PathAddr;

use super::{Node, peer_by_index};

impl Node {
    /// Sets how many handshake initiations per second put this node under
    /// load (cookies required; default
    /// [`crate::core::noise::cookie::DEFAULT_LOAD_THRESHOLD`]; 0: always).
    pub fn set_handshake_load_threshold(&mut self, per_second: u32) {
        self.cookies.set_load_threshold(per_second);
    }

    /// Whether this node is under handshake load (answering initiations
    /// without a valid mac2 with cookie replies).
    pub fn is_under_handshake_load(&self, now: Instant) -> bool {
        self.cookies.is_under_load(now)
    }

    pub(super) fn handle_initiation(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        initiation: &wire::Initiation<'_>,
    ) {
        let ctx = &mut self.ctx;
        // mac1 first (cheap, strangers stop here); then, under load, mac2
        // or a cookie reply instead of any Diffie-Hellman.
        if !ctx.own_mac1.verify(initiation.bytes()) {
            ctx.dropped.bad_mac1 += 1;
            return;
        }
        let source = HandshakeSource::of_path(from, relayed_by);
        // Under load, a cookie reply goes only where a trusted peer is: a
        // stranger gets no reply of any kind (issue #17, item 5).
        let (known_sources, peers) = (&mut self.known_sources, &self.peers);
        match self.cookies.admit_replying_only_to(
            now,
            &mut ctx.rng,
            &source,
            initiation.bytes(),
            initiation.sender_index(),
            || known_sources.admits(now, &source, peers),
        ) {
            InitiationVerdict::Process => {}
            InitiationVerdict::SendCookie(reply) => {
                ctx.dropped.needs_cookie += 1;
                ctx.send_on(from, relayed_by.unwrap_or(NodeId([0; 8])), reply);
                return;
            }
            InitiationVerdict::RateLimited => {
                ctx.dropped.handshake_rate_limited += 1;
                return;
            }
            InitiationVerdict::CookieRateLimited => {
                ctx.dropped.cookie_rate_limited += 1;
                return;
            }
            InitiationVerdict::UnknownSource => {
                ctx.dropped.under_load_unknown_source += 1;
                return;
            }
        }
        let received = match ReceivedInitiation::read(
            &mut ctx.rng,
            ctx.network,
            &ctx.noise_static,
            &ctx.own_mac1,
            initiation,
        ) {
            Ok(received) => received,
            Err(HandshakeError::BadMac1) => {
                ctx.dropped.bad_mac1 += 1;
                return;
            }
            Err(_) => {
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        let Some(slot) = self.by_noise_key.get(&received.remote_static).copied() else {
            ctx.dropped.untrusted += 1;
            return;
        };
        let Some(peer) = self.peers.at_mut(slot).filter(|peer| !peer.is_rendezvous()) else {
            ctx.dropped.untrusted += 1;
            return;
        };
        let id = peer.id();
        if relayed_by.is_some_and(|node| node != peer.node_id()) {
            ctx.dropped.handshake_failed += 1;
            return;
        }
        if peer.is_replayed_initiation(received.payload.timestamp) {
            ctx.dropped.replayed_initiation += 1;
            return;
        }
        if peer.is_initiation_flood(now) {
            ctx.dropped.initiation_flood += 1;
            return;
        }
        let Some(version) = choose_version(&received.payload.versions) else {
            ctx.dropped.handshake_failed += 1;
            return;
        };
        let sender_index = received.sender_index;
        let timestamp = received.payload.timestamp;
        // The name a peer announces is shown in `status`: stored inert.
        let news = HandshakeNews {
            name: crate::core::text::escape_untrusted(&received.payload.name),
            candidates: received.payload.candidates.clone(),
            nat: received.payload.nat.clone(),
        };
        let local_index = ctx.allocate_index(slot);
        let payload = ResponsePayload {
            version,
            name: ctx.name.clone(),
            candidates: ctx.local_candidates.clone(),
            nat: ctx.nat_hint(),
            cipher: ctx.transport_ciphers.choose(received.payload.ciphers),
        };
        let (datagram, keys) = match received.respond(ctx.network, local_index, &payload) {
            Ok(answer) => answer,
            Err(_) => {
                ctx.release_index(local_index);
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        tracing::debug!(peer = %id, %from, local_index, "answering handshake initiation");
        peer.accept_initiation(
            ctx,
            now,
            from,
            timestamp,
            news,
            Box::new(Session::new(&keys, local_index, sender_index, false, now)),
        );
        ctx.send_on(from, peer.node_id(), datagram);
    }

    /// A cookie reply to our initiation in flight: keep the cookie, so the
    /// retry carries a valid mac2.
    pub(super) fn handle_cookie_reply(
        &mut self,
        now: Instant,
        relayed_by: Option<NodeId>,
        reply: &wire::CookieReply<'_>,
    ) {
        let ctx = &mut self.ctx;
        let local_index = reply.receiver_index();
        let Some(peer) = ctx
            .by_index
            .get(&local_index)
            .and_then(|slot| self.peers.at_mut(*slot))
            .filter(|peer| {
                peer.is_pending_initiation(local_index)
                    && relayed_by.is_none_or(|node| node == peer.node_id())
            })
        else {
            ctx.dropped.bad_cookie_reply += 1;
            return;
        };
        let key = CookieReplyKey::for_responder(ctx.network, peer.noise_public());
        match peer.accept_cookie_reply(now, local_index, reply.body(), &key) {
            Ok(()) => {
                tracing::debug!(peer = %peer.id(), local_index, "peer is under load: got a cookie");
            }
            Err(_) => ctx.dropped.bad_cookie_reply += 1,
        }
    }

    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        response: &wire::Response<'_>,
    ) {
        let ctx = &mut self.ctx;
        if !ctx.own_mac1.verify(response.bytes()) {
            ctx.dropped.bad_mac1 += 1;
            return;
        }
        let local_index = response.receiver_index();
        let Some(peer) = peer_by_index(&ctx.by_index, &mut self.peers, local_index) else {
            ctx.dropped.unknown_session += 1;
            return;
        };
        if !peer.is_pending_initiation(local_index)
            || relayed_by.is_some_and(|node| node != peer.node_id())
        {
            ctx.dropped.unknown_session += 1;
            return;
        }
        let Some(handshake) = peer.pending_initiation_mut() else {
            return;
        };
        let (payload, keys) = match handshake.finish(response.noise()) {
            Ok(done) => {
                peer.take_pending_initiation();
                done
            }
            Err(HandshakeError::Noise) => {
                // Not from the responder (anyone who saw our index on the
                // path can forge mac1): the initiation stays in flight for
                // the real response.
                ctx.dropped.handshake_failed += 1;
                return;
            }
            Err(_) => {
                // The responder's answer opened but is unusable: the retry
                // timer starts a fresh initiation.
                peer.take_pending_initiation();
                ctx.release_index(local_index);
                ctx.dropped.handshake_failed += 1;
                return;
            }
        };
        tracing::debug!(peer = %peer.id(), %from, local_index, "handshake complete");
        let news = HandshakeNews {
            name: crate::core::text::escape_untrusted(&payload.name),
            candidates: payload.candidates,
            nat: payload.nat,
        };
        let session = Box::new(Session::new(
            &keys,
            local_index,
            response.sender_index(),
            true,
            now,
        ));
        peer.accept_response(ctx, now, from, news, session);
    }
}
