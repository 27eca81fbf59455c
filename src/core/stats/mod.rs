//! Per-peer measurements taken on the data path itself: round-trip time from
//! path pings (`rtt`), loss, reordering and duplicates from the counters
//! the replay window sees (`receive`), handshake durations, drops by
//! reason, and the history of path changes (issue 6).
//!
//! Sans-IO like the rest of the core: every method takes `now`.

pub mod status;

mod receive;
mod rtt;

pub use self::receive::{MAX_LOSS_GAP, RATE_WINDOW, ReceiveReport, ReceiveStats, ReceiveTally};
pub use self::rtt::{ACTIVE_WINDOW, RTT_PING_INTERVAL, RttEstimator, RttReport};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::rtt::RttPinger;
use crate::core::identity::AgentId;
use crate::core::stats::status::PathKind;
use crate::core::wire::path::PathAddr;

/// A ping of ours not answered within this long counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Path changes remembered.
const PATH_HISTORY: usize = 16;
/// Own pings (RTT and `agentnet ping`) remembered for the ping loss.
const OWN_PINGS: usize = 32;

/// Why a ping could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// No trusted peer has this ID.
    #[error("not a trusted peer")]
    UnknownPeer,
    /// No session is up; a handshake was started.
    #[error("no session with the peer yet (handshake started)")]
    NoSession,
    /// A session is up but no path leads to the peer.
    #[error("no path to the peer")]
    NoPath,
}

#[derive(Debug, Clone, Copy)]
struct OwnPing {
    id: u64,
    sent: Instant,
    answered: bool,
    requested: bool,
}

/// The pings this side sent to measure the path (periodic RTT pings and
/// `agentnet ping`), for the round-trip loss.
#[derive(Debug, Clone, Default)]
struct OwnPings {
    recent: VecDeque<OwnPing>,
    sent: u64,
    answered: u64,
}

impl OwnPings {
    fn sent(&mut self, now: Instant, id: u64, requested: bool) {
        if self.recent.len() >= OWN_PINGS {
            self.recent.pop_front();
        }
        self.recent.push_back(OwnPing {
            id,
            sent: now,
            answered: false,
            requested,
        });
        self.sent = self.sent.saturating_add(1);
    }

    /// Marks a ping answered; returns whether it was one of ours and
    /// whether the shell asked for it.
    fn answered(&mut self, id: u64) -> Option<bool> {
        let ping = self
            .recent
            .iter_mut()
            .find(|ping| ping.id == id && !ping.answered)?;
        ping.answered = true;
        self.answered = self.answered.saturating_add(1);
        Some(ping.requested)
    }

    fn report(&self, now: Instant) -> PingReport {
        let settled: Vec<&OwnPing> = self
            .recent
            .iter()
            .filter(|ping| {
                ping.answered || now.saturating_duration_since(ping.sent) >= PING_TIMEOUT
            })
            .collect();
        let lost = settled.iter().filter(|ping| !ping.answered).count() as u64;
        PingReport {
            sent: self.sent,
            answered: self.answered,
            recent: settled.len() as u64,
            recent_lost: lost,
            loss: (!settled.is_empty()).then(|| lost as f64 / settled.len() as f64),
        }
    }
}

/// This side's path pings and their answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PingReport {
    /// Pings sent (periodic RTT pings and `agentnet ping`).
    pub sent: u64,
    /// Pongs received for them.
    pub answered: u64,
    /// Recent pings that are answered or overdue.
    pub recent: u64,
    /// Of those, how many went unanswered.
    pub recent_lost: u64,
    /// Round-trip loss over the recent pings (both directions).
    pub loss: Option<f64>,
}

/// Completed handshakes and how long they took. Counts and microseconds
/// in 32 bits (saturating) where that is plenty: one handshake lasts at
/// most 90 s, and one every 2 minutes takes 8,000 years to count to 2^32.
/// 40 bytes in every peer instead of 80 (issue 16's idle-peer goal).
#[derive(Debug, Clone, Copy, Default)]
struct HandshakeStats {
    completed: u32,
    initiations_sent: u32,
    last_us: u32,
    max_us: u32,
    total_us: u64,
    last_at: Option<Instant>,
}

/// `duration` in whole microseconds, saturating at `u32::MAX` (71 min).
fn micros_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Handshakes with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HandshakeReport {
    /// Sessions established (both roles, rekeys included).
    pub completed: u64,
    /// Initiations this side sent (retries included).
    pub initiations_sent: u64,
    /// How long the last one took: from the first initiation to the
    /// response (initiator), or from the response to the confirmation
    /// (responder).
    pub last_duration_ms: Option<f64>,
    /// Mean duration.
    pub mean_duration_ms: Option<f64>,
    /// Longest duration.
    pub max_duration_ms: Option<f64>,
    /// Sum of all durations.
    pub total_duration_ms: f64,
    /// When the last session was established (Unix seconds).
    pub last_unix_s: Option<f64>,
}

/// Packets of this peer dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeerDrops {
    /// Inbound packets the allow-policy refused.
    pub policy: u64,
    /// Replays and duplicates refused by the replay window.
    pub replay: u64,
    /// Inner packets from outside the peer's node prefix (or not IPv6).
    pub spoofed: u64,
    /// Packets with this peer's session index that failed authentication.
    pub decrypt: u64,
    /// Packets to the peer over the tunnel MTU (answered with Packet Too Big).
    pub mtu: u64,
}

#[derive(Debug, Clone, Copy)]
struct PathChange {
    at: Instant,
    path: PathKind,
    via: Option<SocketAddr>,
}

/// One change of the path a peer's traffic takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PathChangeReport {
    /// When (Unix seconds).
    pub at_unix_s: f64,
    /// How long ago, in seconds.
    pub age_s: f64,
    /// The new path.
    pub path: PathKind,
    /// The peer's endpoint (direct) or the rendezvous relaying (relay).
    pub via: Option<SocketAddr>,
}

/// Counters of our current session spent on datagrams sent off the path
/// in use, and how many of them the peer was told about.
#[derive(Debug, Clone, Copy, Default)]
struct OffPath {
    local_index: u32,
    sent: u64,
    reported: u64,
}

/// What path pings measured and cost: RTT per path, our own pings, and
/// counters spent off the path in use.
#[derive(Debug, Clone, Default)]
struct PingMeasurements {
    rtt_direct: RttEstimator,
    rtt_relay: RttEstimator,
    pings: OwnPings,
    offpath: OffPath,
}

/// Everything measured about one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    /// Loss, reordering and duplicates of what the peer sent us.
    pub receive: ReceiveStats,
    /// Authentication failures on this peer's sessions.
    pub decrypt_failed: u64,
    /// Packets to the peer refused for the tunnel MTU.
    pub too_big: u64,
    /// Allocated at the first ping sent or answered, or the first datagram
    /// off the path: a peer that never carried traffic pings nobody, and
    /// keeps 8 bytes here instead of 280 (issue 7).
    ping_measurements: Option<Box<PingMeasurements>>,
    handshakes: HandshakeStats,
    path_changes: u64,
    path_history: VecDeque<PathChange>,
    pinger: RttPinger,
}

/// Pushes `item`, allocating room for only one at the first push: most
/// peers' histories hold one entry for good (an idle peer: the path it
/// came up on, the session it was confirmed on), where Rust's first
/// allocation has room for four (issue 7). Growth doubles from there.
fn push_back_sparing<T>(deque: &mut VecDeque<T>, item: T) {
    if deque.capacity() == 0 {
        deque.reserve_exact(1);
    }
    deque.push_back(item);
}

/// The measurements of one peer, as `status` shows them (flattened into
/// [`crate::core::stats::status::PeerStatus`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatsReport {
    /// RTT of the path in use (`None` until a ping was answered on it).
    pub rtt: Option<RttReport>,
    /// RTT of the direct path.
    pub rtt_direct: Option<RttReport>,
    /// RTT of the relayed path.
    pub rtt_relay: Option<RttReport>,
    /// Loss, reordering and duplicates of what the peer sent us.
    pub receive: ReceiveReport,
    /// Our path pings and their answers (round-trip loss).
    pub pings: PingReport,
    /// Dropped packets by reason.
    pub drops: PeerDrops,
    /// Handshakes and their durations.
    pub handshake: HandshakeReport,
    /// How often the path changed.
    pub path_changes: u64,
    /// When the path last changed (Unix seconds).
    pub path_since_unix_s: Option<f64>,
    /// The last path changes, oldest first.
    pub path_history: Vec<PathChangeReport>,
    /// The rendezvous relaying the traffic, when the path is "relay".
    pub relay_id: Option<AgentId>,
    /// Largest inner packet carried to this peer (the tunnel MTU).
    pub mtu: u16,
}

/// What the peer knows that the report needs besides the stats.
#[derive(Debug, Clone, Copy)]
pub struct ReportContext {
    /// The path in use.
    pub path: PathKind,
    /// The rendezvous relaying, if the path is "relay".
    pub relay_id: Option<AgentId>,
    /// The tunnel MTU.
    pub mtu: u16,
    /// Drops counted by the peer's own counters.
    pub policy: u64,
    /// Replays counted by the peer's own counters.
    pub replay: u64,
    /// Spoofed packets counted by the peer's own counters.
    pub spoofed: u64,
}

impl PeerStats {
    /// A pong arrived for ping `id` of ours after `rtt`, along `from`.
    /// Returns whether the shell asked for that ping (`agentnet ping`).
    pub fn on_pong(&mut self, now: Instant, id: u64, rtt: Duration, from: PathAddr) -> bool {
        let measured = self.ping_measurements_mut();
        if from.is_relay() {
            measured.rtt_relay.sample(now, rtt);
        } else {
            measured.rtt_direct.sample(now, rtt);
        }
        measured.pings.answered(id).unwrap_or(false)
    }

    fn ping_measurements_mut(&mut self) -> &mut PingMeasurements {
        self.ping_measurements.get_or_insert_default()
    }

    /// A ping of ours (RTT or requested) went out.
    pub fn on_ping_sent(&mut self, now: Instant, id: u64, requested: bool) {
        self.ping_measurements_mut().pings.sent(now, id, requested);
    }

    /// When the next periodic RTT ping is due, if the peer is active.
    /// `traffic` is the sum of IP packets sent and received.
    pub fn rtt_ping_deadline(&self, traffic: u64, session_start: Instant) -> Option<Instant> {
        self.pinger.deadline(traffic, session_start)
    }

    /// Whether the periodic RTT ping is due now (and notes that it is sent).
    pub fn rtt_ping_due(&mut self, now: Instant, traffic: u64) -> bool {
        self.pinger.due(now, traffic)
    }

    /// A control frame went off the path in use on our session with index
    /// `local_index` (a probe, or a pong to the peer's probe).
    pub fn on_offpath_sent(&mut self, local_index: u32) {
        let offpath = &mut self.ping_measurements_mut().offpath;
        if offpath.local_index != local_index {
            *offpath = OffPath {
                local_index,
                ..OffPath::default()
            };
        }
        offpath.sent = offpath.sent.saturating_add(1);
    }

    /// The running count to report to the peer on the session with index
    /// `local_index`, if it grew since the last report (taken as sent).
    pub fn offpath_report(&mut self, local_index: u32) -> Option<u64> {
        let offpath = &mut self.ping_measurements.as_mut()?.offpath;
        if offpath.local_index != local_index || offpath.sent == offpath.reported {
            return None;
        }
        offpath.reported = offpath.sent;
        Some(offpath.sent)
    }

    /// An initiation to the peer went out.
    pub fn on_initiation_sent(&mut self) {
        self.handshakes.initiations_sent = self.handshakes.initiations_sent.saturating_add(1);
    }

    /// A session was established after `duration`.
    pub fn on_handshake_completed(&mut self, now: Instant, duration: Duration) {
        let handshakes = &mut self.handshakes;
        handshakes.completed = handshakes.completed.saturating_add(1);
        handshakes.last_us = micros_u32(duration);
        handshakes.total_us = handshakes
            .total_us
            .saturating_add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
        handshakes.max_us = handshakes.max_us.max(handshakes.last_us);
        handshakes.last_at = Some(now);
    }

    /// Frees what an idle peer no longer needs (the expired rate window).
    pub fn release_idle_memory(&mut self, now: Instant) {
        self.receive.release_expired(now);
    }

    /// The path changed to `path` (through `via`).
    pub fn on_path_changed(&mut self, now: Instant, path: PathKind, via: Option<PathAddr>) {
        self.path_changes = self.path_changes.saturating_add(1);
        if self.path_history.len() >= PATH_HISTORY {
            self.path_history.pop_front();
        }
        let change = PathChange {
            at: now,
            path,
            via: via.map(|via| via.underlay()),
        };
        push_back_sparing(&mut self.path_history, change);
    }

    /// A snapshot for status; `unix` turns an instant into Unix time.
    pub fn report(
        &self,
        now: Instant,
        unix: impl Fn(Instant) -> Duration,
        context: ReportContext,
    ) -> PeerStatsReport {
        let window = self.receive.window(now);
        let total = self.receive.total();
        let handshakes = &self.handshakes;
        let completed = handshakes.completed;
        let micros_ms = |micros: u64| micros as f64 / 1000.0;
        let measured = self.ping_measurements.as_deref();
        let rtt_direct = measured.and_then(|measured| measured.rtt_direct.report(now));
        let rtt_relay = measured.and_then(|measured| measured.rtt_relay.report(now));
        let rtt = match context.path {
            PathKind::Direct => rtt_direct,
            PathKind::Relay => rtt_relay,
            PathKind::None => None,
        };
        PeerStatsReport {
            rtt,
            rtt_direct,
            rtt_relay,
            receive: ReceiveReport {
                window_s: RATE_WINDOW.as_secs_f64(),
                loss: window.loss_ratio(),
                reordering: window.reorder_ratio(),
                duplication: window.duplicate_ratio(),
                window,
                total,
                loss_total: total.loss_ratio(),
                lost_total: total.lost(),
            },
            pings: measured.map_or_else(
                || OwnPings::default().report(now),
                |measured| measured.pings.report(now),
            ),
            drops: PeerDrops {
                policy: context.policy,
                replay: context.replay,
                spoofed: context.spoofed,
                decrypt: self.decrypt_failed,
                mtu: self.too_big,
            },
            handshake: HandshakeReport {
                completed: u64::from(completed),
                initiations_sent: u64::from(handshakes.initiations_sent),
                last_duration_ms: (completed > 0).then(|| micros_ms(u64::from(handshakes.last_us))),
                mean_duration_ms: (completed > 0)
                    .then(|| micros_ms(handshakes.total_us / u64::from(completed))),
                max_duration_ms: (completed > 0).then(|| micros_ms(u64::from(handshakes.max_us))),
                total_duration_ms: micros_ms(handshakes.total_us),
                last_unix_s: handshakes.last_at.map(|at| unix(at).as_secs_f64()),
            },
            path_changes: self.path_changes,
            path_since_unix_s: self
                .path_history
                .back()
                .map(|change| unix(change.at).as_secs_f64()),
            path_history: self
                .path_history
                .iter()
                .map(|change| PathChangeReport {
                    at_unix_s: unix(change.at).as_secs_f64(),
                    age_s: now.saturating_duration_since(change.at).as_secs_f64(),
                    path: change.path,
                    via: change.via,
                })
                .collect(),
            relay_id: context.relay_id,
            mtu: context.mtu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offpath_counts_are_reported_once_per_session() {
        let mut stats = PeerStats::default();
        assert_eq!(stats.offpath_report(1), None);
        stats.on_offpath_sent(1);
        stats.on_offpath_sent(1);
        assert_eq!(stats.offpath_report(1), Some(2));
        assert_eq!(stats.offpath_report(1), None);
        stats.on_offpath_sent(2);
        assert_eq!(stats.offpath_report(1), None, "another session");
        assert_eq!(stats.offpath_report(2), Some(1));
    }

    #[test]
    fn own_pings_give_round_trip_loss() {
        let now = Instant::now();
        let mut pings = OwnPings::default();
        pings.sent(now, 1, false);
        pings.sent(now, 2, true);
        pings.sent(now, 3, false);
        assert_eq!(pings.answered(2), Some(true));
        assert_eq!(pings.answered(2), None, "a second pong is not counted");
        assert_eq!(pings.answered(9), None);
        let report = pings.report(now);
        assert_eq!((report.recent, report.loss), (1, Some(0.0)));
        let report = pings.report(now + PING_TIMEOUT);
        assert_eq!(report.recent_lost, 2);
        assert!(
            report
                .loss
                .is_some_and(|loss| (loss - 2.0 / 3.0).abs() < 1e-9)
        );
    }
}
