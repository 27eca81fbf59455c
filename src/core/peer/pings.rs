//! Path pings: liveness pings, hole-punching probes, ping-backs, pongs and
//! their RTT, the periodic RTT ping and `agentnet ping`.

use std::time::Instant;

use rand::RngCore;

use crate::core::api::Event;
use crate::core::peer::context::Context;
use crate::core::wire::control_frame::ControlFrame;
use crate::core::wire::path::PathAddr;

use super::{MAX_OUTSTANDING_PINGS, PING_BACK_INTERVAL, Peer};

impl Peer {
    /// Sends a path ping along `path`, remembering it for its pong. A
    /// liveness ping checks the path in use; a probe punches a candidate.
    pub(super) fn send_ping(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        path: PathAddr,
        liveness: bool,
    ) -> Option<u64> {
        let id = ctx.rng.next_u64();
        if self.seal_to(ctx, now, path, &ControlFrame::PathPing { id }.encode()) {
            self.remember_ping(id, path, now);
            if liveness {
                self.last_ping_sent = Some(now);
            }
            return Some(id);
        }
        None
    }

    /// Remembers ping `id` sent along `path` for its pong (the oldest
    /// unanswered one is forgotten past [`MAX_OUTSTANDING_PINGS`]).
    pub(super) fn remember_ping(&mut self, id: u64, path: PathAddr, now: Instant) {
        let pings = self.pings.get_or_insert_default();
        if pings.len() >= MAX_OUTSTANDING_PINGS {
            pings.pop_front();
        }
        pings.push_back((id, path, now));
    }

    /// Takes ping `id` (where it went, when) if it is outstanding; the
    /// table goes once the last outstanding ping is answered.
    fn take_ping(&mut self, id: u64) -> Option<(PathAddr, Instant)> {
        let pings = self.pings.as_mut()?;
        let position = pings.iter().position(|(ping, _, _)| *ping == id)?;
        let (_, sent_to, sent_at) = pings.remove(position)?;
        if pings.is_empty() {
            self.pings = None;
        }
        Some((sent_to, sent_at))
    }

    /// Answers a path ping on the path it came by (a direct answer is what
    /// opens this side's NAT for the peer).
    pub fn answer_ping(&mut self, ctx: &mut Context, now: Instant, id: u64, from: PathAddr) {
        self.seal_to(ctx, now, from, &ControlFrame::PathPong { id }.encode());
    }

    /// Handles a pong: measures RTT (its path was noted on arrival:
    /// [`Peer::observe_pong_path`]).
    pub fn handle_pong(&mut self, ctx: &mut Context, now: Instant, id: u64, from: PathAddr) {
        let Some((_, sent_at)) = self.take_ping(id) else {
            return;
        };
        let rtt = now.saturating_duration_since(sent_at);
        self.last_rtt_us = Some(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX));
        if self.stats.on_pong(now, id, rtt, from) {
            ctx.events.push_back(Event::PingReply {
                id: self.config.id,
                ping: id,
                rtt,
                path: from,
            });
        }
        if from.is_relay() {
            self.note_relay_rtt(now, rtt);
        }
    }

    /// When ping `id` left, if it is outstanding.
    pub(super) fn ping_sent_at(&self, id: u64) -> Option<Instant> {
        self.pings
            .as_ref()?
            .iter()
            .find(|(ping, _, _)| *ping == id)
            .map(|(_, _, sent_at)| *sent_at)
    }

    /// A ping arrived on a direct path we have not confirmed: ping back on
    /// it at once, so our side confirms it too (after a birthday hit only
    /// that exact socket pair works).
    pub fn ping_back(&mut self, ctx: &mut Context, now: Instant, from: PathAddr) {
        if self.direct_proven() || from.direct_endpoint().is_none() {
            return;
        }
        if self
            .last_ping_back
            .is_some_and(|at| now.saturating_duration_since(at) < PING_BACK_INTERVAL)
        {
            return;
        }
        self.last_ping_back = Some(now);
        self.send_ping(ctx, now, from, false);
    }

    /// IP packets sent and received so far (what makes a peer active).
    pub(super) fn traffic(&self) -> u64 {
        self.counters.rx_packets + self.counters.tx_packets
    }

    /// When the periodic RTT ping is due (only while IP traffic flows).
    pub(super) fn rtt_ping_deadline(&self) -> Option<Instant> {
        if self.is_rendezvous {
            return None;
        }
        let session = self.current.as_ref()?;
        self.stats
            .rtt_ping_deadline(self.traffic(), session.created)
    }

    /// Sends the periodic RTT ping on the path in use when it is due.
    pub(super) fn run_rtt_ping(&mut self, ctx: &mut Context, now: Instant) {
        if self.is_rendezvous || self.current.is_none() {
            return;
        }
        // Asked first: it moves the schedule on even when nothing is sent.
        if !self.stats.rtt_ping_due(now, self.traffic()) || !self.is_up(now) {
            return;
        }
        let Some(path) = self.send_path(ctx, now) else {
            return;
        };
        if let Some(session) = &self.current
            && let Some(count) = self.stats.offpath_report(session.local_index)
        {
            let frame = ControlFrame::SkippedCounters { count }.encode();
            self.seal_to(ctx, now, path, &frame);
        }
        if let Some(id) = self.send_ping(ctx, now, path, false) {
            self.stats.on_ping_sent(now, id, false);
        }
    }

    /// Sends a path ping on the path in use for `agentnet ping`; its pong
    /// comes back as [`Event::PingReply`]. Returns the ping's id and path.
    pub fn request_ping(&mut self, ctx: &mut Context, now: Instant) -> Option<(u64, PathAddr)> {
        if self.is_rendezvous || !self.is_up(now) {
            return None;
        }
        let path = self.send_path(ctx, now)?;
        let id = self.send_ping(ctx, now, path, false)?;
        self.stats.on_ping_sent(now, id, true);
        Some((id, path))
    }
}
