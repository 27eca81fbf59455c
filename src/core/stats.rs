//! Per-peer measurements taken on the data path itself: round-trip time from
//! path pings, loss, reordering and duplicates from the counters the replay
//! window sees, handshake durations, drops by reason, and the history of
//! path changes (issue 6).
//!
//! Sans-IO like the rest of the core: every method takes `now`.
//!
//! How loss is estimated: every packet a peer seals carries the next value
//! of the session's 64-bit counter, so on the receiving side the highest
//! counter seen (plus one) is how many packets the peer sent us, and the
//! difference from the number that arrived is how many were lost. A packet
//! below the highest counter arrives late (reordering); one already seen is
//! a duplicate. Counters the sender spends elsewhere (path pings to
//! candidates while hole punching) would look like loss: the sender reports
//! their running count in a `SkippedCounters` control frame before each RTT
//! ping, and the receiver counts them as skipped, not lost. For a peer that
//! does not report them, a jump of more than [`MAX_LOSS_GAP`] is taken for
//! such a burst (birthday probing) and counted as skipped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::identity::AgentId;
use super::path::PathAddr;
use super::replay::ReplayVerdict;
use super::status::PathKind;

/// How often a path ping measures the RTT while IP traffic flows.
pub const RTT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// A peer is active (and pinged for RTT) this long after the last IP packet
/// either way; idle peers stay silent.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(10);
/// The sliding window the loss and reordering rates cover.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A forward jump of the counter by more than this is the sender spending
/// counters on probes sent elsewhere, not loss.
pub const MAX_LOSS_GAP: u64 = 128;
/// A ping of ours not answered within this long counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Width of one bucket of the rate window.
const BUCKET: Duration = Duration::from_secs(1);
/// Receiving sessions tracked at once (current, previous, next and one
/// spare for a rekey in flight).
const TRACKED_SESSIONS: usize = 4;
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

/// A smoothed round-trip time as TCP keeps it (RFC 6298: gain 1/8 for the
/// mean, 1/4 for the variation).
#[derive(Debug, Clone, Copy, Default)]
pub struct RttEstimator {
    smoothed: Duration,
    variation: Duration,
    last: Duration,
    min: Duration,
    max: Duration,
    samples: u64,
    last_at: Option<Instant>,
}

impl RttEstimator {
    /// Adds one measurement.
    pub fn sample(&mut self, now: Instant, rtt: Duration) {
        if self.samples == 0 {
            self.smoothed = rtt;
            self.variation = rtt / 2;
            self.min = rtt;
            self.max = rtt;
        } else {
            let error = self.smoothed.abs_diff(rtt);
            self.variation = (self.variation * 3 + error) / 4;
            self.smoothed = (self.smoothed * 7 + rtt) / 8;
            self.min = self.min.min(rtt);
            self.max = self.max.max(rtt);
        }
        self.last = rtt;
        self.samples += 1;
        self.last_at = Some(now);
    }

    /// The smoothed RTT, if anything was measured.
    pub fn smoothed(&self) -> Option<Duration> {
        (self.samples > 0).then_some(self.smoothed)
    }

    /// A snapshot for status, `None` before the first sample.
    pub fn report(&self, now: Instant) -> Option<RttReport> {
        let last_at = self.last_at?;
        Some(RttReport {
            last_ms: millis(self.last),
            smoothed_ms: millis(self.smoothed),
            variation_ms: millis(self.variation),
            min_ms: millis(self.min),
            max_ms: millis(self.max),
            samples: self.samples,
            age_s: now.saturating_duration_since(last_at).as_secs_f64(),
        })
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Round-trip times of one path, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RttReport {
    /// The last measurement.
    pub last_ms: f64,
    /// Smoothed mean (EWMA, gain 1/8).
    pub smoothed_ms: f64,
    /// Mean deviation (EWMA, gain 1/4).
    pub variation_ms: f64,
    /// Smallest measurement.
    pub min_ms: f64,
    /// Largest measurement.
    pub max_ms: f64,
    /// Measurements so far.
    pub samples: u64,
    /// Seconds since the last measurement.
    pub age_s: f64,
}

/// What the replay window saw of the packets a peer sent us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReceiveTally {
    /// Counters the peer used (highest counter + 1, summed over sessions).
    pub expected: u64,
    /// Packets that arrived and authenticated.
    pub received: u64,
    /// Of those, how many arrived after a higher counter (reordering).
    pub reordered: u64,
    /// Packets that arrived again (dropped as duplicates).
    pub duplicates: u64,
    /// Packets too far behind the window to tell (dropped).
    pub too_old: u64,
    /// Of the expected counters, those the peer spent on datagrams sent
    /// elsewhere (reported, or guessed from jumps over [`MAX_LOSS_GAP`]):
    /// not counted as lost.
    pub skipped: u64,
    /// Of the received packets, control frames that came another way than
    /// the peer's traffic (its probes that did arrive; counted in `skipped`
    /// by a peer that reports them).
    pub arrived_offpath: u64,
}

impl ReceiveTally {
    fn add(&mut self, other: &ReceiveTally) {
        self.expected += other.expected;
        self.received += other.received;
        self.reordered += other.reordered;
        self.duplicates += other.duplicates;
        self.too_old += other.too_old;
        self.skipped += other.skipped;
        self.arrived_offpath += other.arrived_offpath;
    }

    /// Packets sent to us, as far as the counters tell.
    pub fn sent_to_us(&self) -> u64 {
        self.expected.saturating_sub(self.skipped)
    }

    /// Packets sent to us that never arrived (so far).
    pub fn lost(&self) -> u64 {
        let arrived = self.received.saturating_sub(self.arrived_offpath);
        self.sent_to_us().saturating_sub(arrived)
    }

    /// Lost / sent to us, `None` before anything was sent.
    pub fn loss_ratio(&self) -> Option<f64> {
        let sent = self.sent_to_us();
        (sent > 0).then(|| self.lost() as f64 / sent as f64)
    }

    /// Reordered / received, `None` before anything arrived.
    pub fn reorder_ratio(&self) -> Option<f64> {
        (self.received > 0).then(|| self.reordered as f64 / self.received as f64)
    }

    /// Duplicates / (received + duplicates), `None` before anything arrived.
    pub fn duplicate_ratio(&self) -> Option<f64> {
        let seen = self.received + self.duplicates;
        (seen > 0).then(|| self.duplicates as f64 / seen as f64)
    }
}

#[derive(Debug, Clone, Copy)]
struct SessionCounters {
    local_index: u32,
    highest: u64,
    last_used: Instant,
    /// The sender's last `SkippedCounters` total.
    reported: u64,
    /// Counters taken for skipped from jumps, not yet matched by a report.
    guessed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    tally: ReceiveTally,
}

/// Receive-side statistics of one peer: totals and a sliding window.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    sessions: Vec<SessionCounters>,
    /// Whether the peer reports its off-path counters.
    peer_reports: bool,
    /// Whether the peer's traffic (data, keepalives) last came relayed.
    traffic_relayed: Option<bool>,
    total: ReceiveTally,
    buckets: VecDeque<Bucket>,
}

impl ReceiveStats {
    /// An authenticated packet with `counter` arrived on the session with
    /// our index `local_index` (call after the replay window marked it).
    pub fn on_accepted(&mut self, now: Instant, local_index: u32, counter: u64) {
        let mut tally = ReceiveTally {
            received: 1,
            ..ReceiveTally::default()
        };
        match self
            .sessions
            .iter_mut()
            .find(|session| session.local_index == local_index)
        {
            Some(session) => {
                session.last_used = now;
                if counter > session.highest {
                    let jump = counter - session.highest;
                    tally.expected = jump;
                    if jump > MAX_LOSS_GAP {
                        tally.skipped = jump - 1;
                        session.guessed += jump - 1;
                    }
                    session.highest = counter;
                } else {
                    tally.reordered = 1;
                }
            }
            None => {
                // Counters start at 0: everything below the first one seen
                // was sent before it.
                tally.expected = counter + 1;
                let guessed = if counter >= MAX_LOSS_GAP { counter } else { 0 };
                tally.skipped = guessed;
                if self.sessions.len() >= TRACKED_SESSIONS
                    && let Some(oldest) = self
                        .sessions
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, session)| session.last_used)
                        .map(|(position, _)| position)
                {
                    self.sessions.swap_remove(oldest);
                }
                self.sessions.push(SessionCounters {
                    local_index,
                    highest: counter,
                    last_used: now,
                    reported: 0,
                    guessed,
                });
            }
        }
        self.record(now, &tally);
    }

    /// Notes the way the packet just accepted came: traffic shows the
    /// peer's path in use; a control frame that came another way is one the
    /// peer counts as off its path (a probe, a pong to our probe).
    pub fn on_arrival_path(&mut self, now: Instant, relayed: bool, control: bool) {
        if !control {
            self.traffic_relayed = Some(relayed);
        } else if self.peer_reports
            && self
                .traffic_relayed
                .is_some_and(|traffic| traffic != relayed)
        {
            let tally = ReceiveTally {
                arrived_offpath: 1,
                ..ReceiveTally::default()
            };
            self.record(now, &tally);
        }
    }

    /// The peer reports `count` counters of the session with our index
    /// `local_index` spent on datagrams sent elsewhere (running total).
    pub fn on_skipped_report(&mut self, now: Instant, local_index: u32, count: u64) {
        let Some(session) = self
            .sessions
            .iter_mut()
            .find(|session| session.local_index == local_index)
        else {
            return;
        };
        self.peer_reports = true;
        let new = count.saturating_sub(session.reported);
        session.reported = session.reported.max(count);
        // What a jump already made us guess is not counted twice.
        let known = new.min(session.guessed);
        session.guessed -= known;
        let tally = ReceiveTally {
            skipped: new - known,
            ..ReceiveTally::default()
        };
        self.record(now, &tally);
    }

    /// A packet was refused by the replay window.
    pub fn on_refused(&mut self, now: Instant, verdict: ReplayVerdict) {
        let tally = match verdict {
            ReplayVerdict::Duplicate => ReceiveTally {
                duplicates: 1,
                ..ReceiveTally::default()
            },
            ReplayVerdict::TooOld | ReplayVerdict::Fresh => ReceiveTally {
                too_old: 1,
                ..ReceiveTally::default()
            },
        };
        self.record(now, &tally);
    }

    fn record(&mut self, now: Instant, tally: &ReceiveTally) {
        self.total.add(tally);
        let fresh = self
            .buckets
            .back()
            .is_none_or(|bucket| now >= bucket.start + BUCKET);
        if fresh {
            self.buckets.push_back(Bucket {
                start: now,
                tally: ReceiveTally::default(),
            });
            while self
                .buckets
                .front()
                .is_some_and(|bucket| bucket.start + RATE_WINDOW <= now)
            {
                self.buckets.pop_front();
            }
        }
        if let Some(bucket) = self.buckets.back_mut() {
            bucket.tally.add(tally);
        }
    }

    /// Everything since the peer was added.
    pub fn total(&self) -> ReceiveTally {
        self.total
    }

    /// The last [`RATE_WINDOW`] (at bucket granularity).
    pub fn window(&self, now: Instant) -> ReceiveTally {
        let mut tally = ReceiveTally::default();
        for bucket in &self.buckets {
            if bucket.start + RATE_WINDOW > now {
                tally.add(&bucket.tally);
            }
        }
        tally
    }
}

/// Loss, reordering and duplicates of the packets the peer sent us.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReceiveReport {
    /// Length of the window the rates cover, in seconds.
    pub window_s: f64,
    /// Fraction of the peer's packets lost in the window (0..1).
    pub loss: Option<f64>,
    /// Fraction of received packets that arrived out of order in the window.
    pub reordering: Option<f64>,
    /// Fraction of arrivals that were duplicates in the window.
    pub duplication: Option<f64>,
    /// Counts in the window.
    pub window: ReceiveTally,
    /// Counts since the peer was added.
    pub total: ReceiveTally,
    /// Fraction lost since the peer was added.
    pub loss_total: Option<f64>,
    /// Packets lost since the peer was added.
    pub lost_total: u64,
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
        self.sent += 1;
    }

    /// Marks a ping answered; returns whether it was one of ours and
    /// whether the shell asked for it.
    fn answered(&mut self, id: u64) -> Option<bool> {
        let ping = self
            .recent
            .iter_mut()
            .find(|ping| ping.id == id && !ping.answered)?;
        ping.answered = true;
        self.answered += 1;
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

/// Completed handshakes and how long they took.
#[derive(Debug, Clone, Copy, Default)]
struct HandshakeStats {
    completed: u64,
    initiations_sent: u64,
    last: Duration,
    total: Duration,
    max: Duration,
    last_at: Option<Instant>,
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

/// Decides when to send the periodic RTT ping: every
/// [`RTT_PING_INTERVAL`] while IP traffic flowed in the last
/// [`ACTIVE_WINDOW`].
#[derive(Debug, Clone, Copy, Default)]
struct RttPinger {
    last_ping: Option<Instant>,
    traffic_seen: u64,
    active_until: Option<Instant>,
}

impl RttPinger {
    fn deadline(&self, traffic: u64, session_start: Instant) -> Option<Instant> {
        let next = self
            .last_ping
            .map_or(session_start, |at| at + RTT_PING_INTERVAL);
        if traffic != self.traffic_seen {
            return Some(next);
        }
        self.active_until
            .filter(|until| next < *until)
            .map(|_| next)
    }

    /// Whether to ping now. Always moves the state on, so a deadline that
    /// passed never fires twice.
    fn due(&mut self, now: Instant, traffic: u64) -> bool {
        if traffic != self.traffic_seen {
            self.traffic_seen = traffic;
            self.active_until = Some(now + ACTIVE_WINDOW);
        }
        if self.active_until.is_none_or(|until| now >= until) {
            self.active_until = None;
            return false;
        }
        if self
            .last_ping
            .is_some_and(|at| now < at + RTT_PING_INTERVAL)
        {
            return false;
        }
        self.last_ping = Some(now);
        true
    }
}

/// Counters of our current session spent on datagrams sent off the path
/// in use, and how many of them the peer was told about.
#[derive(Debug, Clone, Copy, Default)]
struct OffPath {
    local_index: u32,
    sent: u64,
    reported: u64,
}

/// Everything measured about one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    /// RTT of the direct path.
    pub rtt_direct: RttEstimator,
    /// RTT of the relayed path.
    pub rtt_relay: RttEstimator,
    /// Loss, reordering and duplicates of what the peer sent us.
    pub receive: ReceiveStats,
    /// Authentication failures on this peer's sessions.
    pub decrypt_failed: u64,
    /// Packets to the peer refused for the tunnel MTU.
    pub too_big: u64,
    pings: OwnPings,
    handshakes: HandshakeStats,
    path_changes: u64,
    path_history: VecDeque<PathChange>,
    pinger: RttPinger,
    offpath: OffPath,
}

/// The measurements of one peer, as `status` shows them (flattened into
/// [`super::status::PeerStatus`]).
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
        if from.is_relay() {
            self.rtt_relay.sample(now, rtt);
        } else {
            self.rtt_direct.sample(now, rtt);
        }
        self.pings.answered(id).unwrap_or(false)
    }

    /// A ping of ours (RTT or requested) went out.
    pub fn on_ping_sent(&mut self, now: Instant, id: u64, requested: bool) {
        self.pings.sent(now, id, requested);
    }

    /// When the next periodic RTT ping is due, if the peer is active.
    /// `traffic` is the sum of IP packets sent and received.
    pub fn rtt_ping_deadline(&self, traffic: u64, session_start: Instant) -> Option<Instant> {
        if std::env::var_os("OBS_NO_PINGS").is_some() { return None; }
        self.pinger.deadline(traffic, session_start)
    }

    /// Whether the periodic RTT ping is due now (and notes that it is sent).
    pub fn rtt_ping_due(&mut self, now: Instant, traffic: u64) -> bool {
        if std::env::var_os("OBS_NO_PINGS").is_some() { return false; }
        self.pinger.due(now, traffic)
    }

    /// A control frame went off the path in use on our session with index
    /// `local_index` (a probe, or a pong to the peer's probe).
    pub fn on_offpath_sent(&mut self, local_index: u32) {
        if self.offpath.local_index != local_index {
            self.offpath = OffPath {
                local_index,
                ..OffPath::default()
            };
        }
        self.offpath.sent += 1;
    }

    /// The running count to report to the peer on the session with index
    /// `local_index`, if it grew since the last report (taken as sent).
    pub fn offpath_report(&mut self, local_index: u32) -> Option<u64> {
        let offpath = &mut self.offpath;
        if offpath.local_index != local_index || offpath.sent == offpath.reported {
            return None;
        }
        offpath.reported = offpath.sent;
        Some(offpath.sent)
    }

    /// An initiation to the peer went out.
    pub fn on_initiation_sent(&mut self) {
        self.handshakes.initiations_sent += 1;
    }

    /// A session was established after `duration`.
    pub fn on_handshake_completed(&mut self, now: Instant, duration: Duration) {
        let handshakes = &mut self.handshakes;
        handshakes.completed += 1;
        handshakes.last = duration;
        handshakes.total += duration;
        handshakes.max = handshakes.max.max(duration);
        handshakes.last_at = Some(now);
    }

    /// The path changed to `path` (through `via`).
    pub fn on_path_changed(&mut self, now: Instant, path: PathKind, via: Option<PathAddr>) {
        self.path_changes += 1;
        if self.path_history.len() >= PATH_HISTORY {
            self.path_history.pop_front();
        }
        self.path_history.push_back(PathChange {
            at: now,
            path,
            via: via.map(|via| via.underlay()),
        });
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
        let completed = u32::try_from(handshakes.completed).unwrap_or(u32::MAX);
        let rtt = match context.path {
            PathKind::Direct => self.rtt_direct.report(now),
            PathKind::Relay => self.rtt_relay.report(now),
            PathKind::None => None,
        };
        PeerStatsReport {
            rtt,
            rtt_direct: self.rtt_direct.report(now),
            rtt_relay: self.rtt_relay.report(now),
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
            pings: self.pings.report(now),
            drops: PeerDrops {
                policy: context.policy,
                replay: context.replay,
                spoofed: context.spoofed,
                decrypt: self.decrypt_failed,
                mtu: self.too_big,
            },
            handshake: HandshakeReport {
                completed: handshakes.completed,
                initiations_sent: handshakes.initiations_sent,
                last_duration_ms: (completed > 0).then(|| millis(handshakes.last)),
                mean_duration_ms: (completed > 0).then(|| millis(handshakes.total / completed)),
                max_duration_ms: (completed > 0).then(|| millis(handshakes.max)),
                total_duration_ms: millis(handshakes.total),
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

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rtt_estimator_follows_rfc_6298() {
        let now = Instant::now();
        let mut rtt = RttEstimator::default();
        assert!(rtt.report(now).is_none());
        rtt.sample(now, 100 * MS);
        assert_eq!(rtt.smoothed(), Some(100 * MS));
        rtt.sample(now, 20 * MS);
        // 7/8 * 100 + 1/8 * 20 = 90; variation 3/4 * 50 + 1/4 * 80 = 57.5
        let report = rtt.report(now).expect("sampled");
        assert!((report.smoothed_ms - 90.0).abs() < 1e-6, "{report:?}");
        assert!((report.variation_ms - 57.5).abs() < 1e-6, "{report:?}");
        assert_eq!(
            (report.min_ms, report.max_ms, report.last_ms),
            (20.0, 100.0, 20.0)
        );
        assert_eq!(report.samples, 2);
    }

    #[test]
    fn gaps_are_loss_and_late_arrivals_are_reordering() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        // 0..10 sent; 3 and 7 lost; 5 arrives after 6.
        for counter in [0, 1, 2, 4, 6, 5, 8, 9] {
            stats.on_accepted(now, 1, counter);
        }
        stats.on_refused(now, ReplayVerdict::Duplicate);
        let total = stats.total();
        assert_eq!(total.expected, 10);
        assert_eq!(total.received, 8);
        assert_eq!(total.lost(), 2);
        assert_eq!(total.reordered, 1);
        assert_eq!(total.duplicates, 1);
        assert_eq!(total.loss_ratio(), Some(0.2));
        assert_eq!(stats.window(now), total);
    }

    #[test]
    fn sessions_count_separately_and_bursts_elsewhere_are_skipped() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        stats.on_accepted(now, 1, 0);
        stats.on_accepted(now, 1, 1);
        // A new session starts at 0 again: no loss, no reordering.
        stats.on_accepted(now, 2, 0);
        stats.on_accepted(now, 2, 1);
        // 500 counters spent on birthday probes to other addresses.
        stats.on_accepted(now, 2, 502);
        let total = stats.total();
        assert_eq!(total.lost(), 0, "{total:?}");
        assert_eq!(total.reordered, 0);
        assert_eq!(total.skipped, 500);
        // The report of those 500 (and 3 more) does not count them twice.
        stats.on_accepted(now, 2, 506);
        stats.on_skipped_report(now, 2, 503);
        let total = stats.total();
        assert_eq!((total.skipped, total.lost()), (503, 0), "{total:?}");
    }

    #[test]
    fn reported_probes_are_not_loss() {
        let now = Instant::now();
        let mut stats = ReceiveStats::default();
        // 0..20, of which 5, 6, 7 went to candidates that did not answer
        // and 12 was lost.
        for counter in (0..20).filter(|c| ![5, 6, 7, 12].contains(c)) {
            stats.on_accepted(now, 9, counter);
        }
        assert_eq!(stats.total().lost(), 4);
        stats.on_skipped_report(now, 9, 3);
        stats.on_skipped_report(now, 9, 3);
        let total = stats.total();
        assert_eq!((total.lost(), total.skipped), (1, 3), "{total:?}");
        assert_eq!(total.loss_ratio(), Some(1.0 / 17.0));
        // Traffic comes relayed; a probe of the peer's arrives directly (and
        // was reported as skipped): still one lost.
        stats.on_accepted(now, 9, 20);
        stats.on_arrival_path(now, true, false);
        stats.on_accepted(now, 9, 21);
        stats.on_arrival_path(now, false, true);
        stats.on_skipped_report(now, 9, 4);
        assert_eq!(stats.total().lost(), 1, "{:?}", stats.total());
    }

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
    fn the_window_forgets_old_loss() {
        let start = Instant::now();
        let mut stats = ReceiveStats::default();
        for counter in (0..100).step_by(2) {
            stats.on_accepted(start, 1, counter);
        }
        let later = start + RATE_WINDOW + BUCKET;
        for counter in 99..150 {
            stats.on_accepted(later, 1, counter);
        }
        assert_eq!(stats.window(later).loss_ratio(), Some(0.0));
        assert!(stats.total().loss_ratio().is_some_and(|loss| loss > 0.3));
    }

    #[test]
    fn rtt_pings_only_while_traffic_flows_and_never_spin() {
        let start = Instant::now();
        let mut pinger = RttPinger::default();
        assert_eq!(pinger.deadline(0, start), None, "idle: no ping");
        assert_eq!(pinger.deadline(5, start), Some(start));
        assert!(pinger.due(start, 5));
        assert!(!pinger.due(start, 5), "one ping per interval");
        let next = pinger.deadline(5, start).expect("active");
        assert_eq!(next, start + RTT_PING_INTERVAL);
        // No traffic since: pings continue for the active window, then stop.
        let mut now = next;
        let mut pings = 1;
        while let Some(deadline) = pinger.deadline(5, start) {
            assert!(deadline >= now, "a deadline in the past would spin");
            now = deadline;
            if pinger.due(now, 5) {
                pings += 1;
            }
            assert!(pings < 100);
        }
        assert_eq!(pings, 10);
        // A late wake-up after the window ends does not leave a stale deadline.
        let mut pinger = RttPinger::default();
        assert!(pinger.due(start, 1));
        assert!(!pinger.due(start + ACTIVE_WINDOW * 2, 1));
        assert_eq!(pinger.deadline(1, start), None);
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
