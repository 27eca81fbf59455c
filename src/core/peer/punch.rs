//! Hole punching timed through the relay.
//!
//! Behind Linux `masquerade` with no inbound firewall, a datagram that
//! reaches a router before its own agent sent anything to that peer is
//! delivered to the router itself and leaves a connection-tracking entry
//! (peer → public port). When the agent then sends to that peer, the
//! router gives the flow another public port, and the peer's datagrams
//! keep refreshing the router's entry: a punch that is not simultaneous
//! poisons both routers (measured in the NAT lab with `conntrack -L`,
//! modelled in `sim::conntrack`). So the two sides punch together: one
//! of them (the *leader*, the smaller agent ID) sends [`ControlFrame::Punch`]
//! through the relay and punches half a relay round trip later, when the
//! other (the *follower*) punches on receiving it. Both routers then hold
//! their agent's flow before the other's datagram arrives.
//!
//! Rounds follow [`PROBE_SCHEDULE`]: quick ones first (they also cover
//! loss and birthday probing), then a gap longer than the 30 s a router
//! keeps an unanswered UDP entry, so a failed punch leaves nothing behind
//! for the next one. A follower whose direct path fails later asks the
//! leader for a round the same way. A follower whose peer never asks (an
//! older agent) punches on its own, after [`FOLLOWER_GRACE`].

use std::time::{Duration, Instant};

use crate::core::peer::context::Context;
use crate::core::wire::control_frame::ControlFrame;
use crate::core::wire::path::PathAddr;

use super::{PROBE_SCHEDULE, PathState, Peer};

/// How long a follower waits for its peer's first punch request before it
/// punches on its own (the peer may be an agent that never asks).
const FOLLOWER_GRACE: Duration = Duration::from_secs(2);
/// How long a leader waits for the relayed pong that times its punch
/// before it asks again.
const RTT_WAIT: Duration = Duration::from_secs(1);
/// Least time between two punches a peer's requests cause.
const MIN_PUNCH_INTERVAL: Duration = Duration::from_millis(250);

/// A scheduled step of hole punching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProbeRound {
    /// When it is due.
    pub(super) at: Instant,
    /// How many rounds ran before it (the wait after it, and whether it
    /// adds a birthday round, follow from this).
    pub(super) round: usize,
    /// What is due.
    pub(super) step: RoundStep,
}

/// What a scheduled step of hole punching does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoundStep {
    /// Decide by role: the leader asks for a punch, the follower waits for
    /// one.
    Start,
    /// Leader: a relayed ping is out to time the punch; ask again when its
    /// pong is late.
    AwaitRtt,
    /// Leader: punch now (the follower punches at the same moment).
    Punch,
    /// Follower whose peer never asked for a punch: punch on its own.
    Alone,
}

/// What a peer knows for timing punches.
#[derive(Debug, Default)]
pub(super) struct PunchState {
    /// Round-trip time through the relay, from the last relayed pong.
    relay_rtt: Option<Duration>,
    /// The peer asked for a punch at least once (it leads; we wait for it).
    peer_leads: bool,
    /// When a request of the peer last made us punch.
    last_answered: Option<Instant>,
}

impl Peer {
    /// Whether this side times the punches: the smaller agent ID does.
    fn leads_punching(&self, ctx: &Context) -> bool {
        ctx.own_id.as_bytes() < self.config.id.as_bytes()
    }

    /// Starts hole punching unless a round is scheduled already or the
    /// direct path is proven.
    pub fn start_probing(&mut self, now: Instant) {
        if !self.is_rendezvous
            && let PathState::Unproven { probing: None } = self.path
        {
            self.path = PathState::Unproven {
                probing: Some(ProbeRound {
                    at: now,
                    round: 0,
                    step: RoundStep::Start,
                }),
            };
        }
    }

    /// A relayed pong measured the relay's round trip: a leader waiting for
    /// it punches now.
    pub(super) fn note_relay_rtt(&mut self, now: Instant, rtt: Duration) {
        self.punch.relay_rtt = Some(rtt);
        if let PathState::Unproven {
            probing: Some(probe),
        } = &mut self.path
            && probe.step == RoundStep::AwaitRtt
        {
            probe.at = now;
            probe.step = RoundStep::Start;
        }
    }

    /// Runs a due step of hole punching.
    pub(super) fn run_probe_round(&mut self, ctx: &mut Context, now: Instant) {
        let PathState::Unproven {
            probing: Some(probe),
        } = self.path
        else {
            return;
        };
        if probe.at > now {
            return;
        }
        let Some(relay) = self.relay_route(ctx, now) else {
            self.path = PathState::Unproven { probing: None };
            return;
        };
        let leads = self.leads_punching(ctx);
        let next = match probe.step {
            RoundStep::Start | RoundStep::AwaitRtt if leads => match self.punch.relay_rtt {
                Some(rtt) => {
                    let round = u8::try_from(probe.round).unwrap_or(u8::MAX);
                    tracing::debug!(peer = %self.config.id, round, ?rtt, "asking the peer to punch with us");
                    self.seal_to(
                        ctx,
                        now,
                        PathAddr::Relay(relay),
                        &ControlFrame::Punch { round }.encode(),
                    );
                    Some(ProbeRound {
                        at: now + (rtt / 2).max(Duration::from_millis(1)),
                        step: RoundStep::Punch,
                        ..probe
                    })
                }
                None => {
                    self.send_ping(ctx, now, PathAddr::Relay(relay), false);
                    Some(ProbeRound {
                        at: now + RTT_WAIT,
                        step: RoundStep::AwaitRtt,
                        ..probe
                    })
                }
            },
            _ if !leads && self.punch.peer_leads => {
                // The leader times the rounds; it may not know that the
                // direct path needs them (it sends nothing that goes
                // unanswered), so ask.
                self.seal_to(
                    ctx,
                    now,
                    PathAddr::Relay(relay),
                    &ControlFrame::Punch { round: 0 }.encode(),
                );
                None
            }
            RoundStep::Start | RoundStep::AwaitRtt => Some(ProbeRound {
                at: now + FOLLOWER_GRACE,
                step: RoundStep::Alone,
                ..probe
            }),
            RoundStep::Punch | RoundStep::Alone => {
                self.punch(ctx, now, probe.round);
                let wait = PROBE_SCHEDULE[probe.round.min(PROBE_SCHEDULE.len() - 1)];
                Some(ProbeRound {
                    at: now + wait,
                    round: probe.round + 1,
                    step: if leads {
                        RoundStep::Start
                    } else {
                        RoundStep::Alone
                    },
                })
            }
        };
        self.path = PathState::Unproven { probing: next };
    }

    /// The peer asks for a punch. From the leader: punch now (it punches
    /// at the same moment). From the follower: its direct path is not
    /// proven, so lead rounds, or, while ours looks proven (it may carry
    /// nothing that would show it broken), check it with a ping: it falls
    /// back, and rounds start, when that goes unanswered.
    pub fn punch_requested(&mut self, ctx: &mut Context, now: Instant, round: u8) {
        if self.is_rendezvous
            || self
                .punch
                .last_answered
                .is_some_and(|at| now.saturating_duration_since(at) < MIN_PUNCH_INTERVAL)
        {
            return;
        }
        if self.leads_punching(ctx) {
            self.punch.last_answered = Some(now);
            self.check_direct_path(ctx, now);
            self.start_probing(now);
            return;
        }
        self.punch.peer_leads = true;
        let PathState::Unproven { probing } = &mut self.path else {
            return;
        };
        // The peer times the rounds from now on.
        *probing = None;
        if self.relay_route(ctx, now).is_none() {
            return;
        }
        self.punch.last_answered = Some(now);
        tracing::debug!(peer = %self.config.id, round, "punching as the peer asked");
        self.punch(ctx, now, usize::from(round));
    }

    /// One punch: a ping to every candidate, from the second round on with
    /// birthday probing where it applies.
    fn punch(&mut self, ctx: &mut Context, now: Instant, round: usize) {
        for target in self.probe_targets() {
            self.send_ping(ctx, now, PathAddr::Direct(target), false);
        }
        if round >= 1 {
            self.birthday_round(ctx, now);
        }
    }
}
