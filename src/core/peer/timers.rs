//! A peer's timers: the earliest deadline and what runs when it passes.

use std::time::Instant;

use crate::core::api::Event;
use crate::core::noise::session::REJECT_AFTER_TIME;
use crate::core::peer::context::Context;

use super::{KEEPALIVE_TIMEOUT, Peer, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, Slot, earliest};

impl Peer {
    /// The earliest time [`Peer::on_timeout`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.retry.as_ref().map(|retry| retry.retry_at);
        deadline = earliest(deadline, self.rtt_ping_deadline());
        if let Some(received) = self.last_received
            && self.current.is_some()
            && self.last_sent.is_none_or(|sent| sent < received)
        {
            deadline = earliest(deadline, Some(received + KEEPALIVE_TIMEOUT));
        }
        if let Some(since) = self.unanswered_since {
            deadline = earliest(deadline, Some(since + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT));
        }
        for session in [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
        {
            deadline = earliest(deadline, Some(session.created + REJECT_AFTER_TIME));
        }
        if self.current.is_some() {
            deadline = earliest(deadline, self.path_deadline());
        }
        earliest(deadline, self.services_deadline())
    }

    /// Runs the peer's timers.
    pub fn on_timeout(&mut self, ctx: &mut Context, now: Instant) {
        let was_up = self.current.is_some();
        for slot in [Slot::Current, Slot::Previous, Slot::Next] {
            let expired = match slot {
                Slot::Current => &mut self.current,
                Slot::Previous => &mut self.previous,
                Slot::Next => &mut self.next,
            };
            if expired
                .as_ref()
                .is_some_and(|session| !session.is_usable(now))
                && let Some(session) = expired.take()
            {
                ctx.release_index(session.local_index);
            }
        }
        if was_up && self.current.is_none() {
            ctx.events.push_back(Event::PeerDown { id: self.config.id });
        }

        if let Some(retry) = &self.retry
            && retry.retry_at <= now
        {
            if now.saturating_duration_since(retry.first_attempt) >= REKEY_ATTEMPT_TIME {
                tracing::debug!(peer = %self.config.id, "giving up handshake until new traffic");
                if let Some(handshake) = self.handshake.take() {
                    ctx.release_index(handshake.local_index());
                }
                self.retry = None;
                self.queue = None;
            } else {
                self.send_initiation(ctx, now);
            }
        }

        if let Some(since) = self.unanswered_since
            && now >= since + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
        {
            // We sent data and heard nothing back: the session may be dead
            // on the other side.
            self.unanswered_since = None;
            self.start_handshake_if_idle(ctx, now);
        }

        if let Some(received) = self.last_received
            && self.is_up(now)
            && self.last_sent.is_none_or(|sent| sent < received)
            && now >= received + KEEPALIVE_TIMEOUT
        {
            self.seal_and_transmit(ctx, now, &[]);
        }
        self.run_path_timers(ctx, now);
        self.run_rtt_ping(ctx, now);
        self.run_services_timer(ctx, now);
    }
}
