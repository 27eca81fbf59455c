//! Limits of birthday hole punching (issue #17, item 11): where a burst of
//! probes may go, and how often.
//!
//! A birthday round sends hundreds of probes to the peer's reflexive
//! endpoints, which the peer itself announced. A trusted peer that lies in
//! its NAT hint could aim those bursts at a third party. So a burst goes
//! only to one IP address the peer could plausibly own: the address its
//! authenticated direct traffic came from, when we saw any lately, else the
//! first address it claims (a NAT has one public address; endpoints at other
//! addresses get nothing). And a peer gets at most
//! [`MAX_BIRTHDAY_ROUNDS`] rounds per [`BIRTHDAY_WINDOW`], however often
//! it makes us start probing again.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};

use crate::core::peer::context::Context;
use crate::core::wire::control_frame::ControlFrame;
use crate::core::wire::path::{NatKind, PathAddr};

use super::{BIRTHDAY_PORTS, BIRTHDAY_SOCKETS, OBSERVED_IP_LIFETIME, Peer};

/// Birthday rounds one peer may cause per [`BIRTHDAY_WINDOW`].
pub const MAX_BIRTHDAY_ROUNDS: u32 = 4;
/// The window over which birthday rounds are counted.
pub const BIRTHDAY_WINDOW: Duration = Duration::from_secs(600);

/// The claimed reflexive endpoints a burst may aim at: those at the
/// observed address of the peer if there is one, else those at the first
/// claimed address. Never more than one IP address.
pub fn burst_targets(claimed: &[SocketAddr], observed: Option<IpAddr>) -> Vec<SocketAddr> {
    let Some(address) = observed.or_else(|| claimed.first().map(SocketAddr::ip)) else {
        return Vec::new();
    };
    let address = canonical_ip(address);
    claimed
        .iter()
        .copied()
        .filter(|endpoint| canonical_ip(endpoint.ip()) == address)
        .collect()
}

/// The same address whether it came as IPv4 or IPv4-mapped IPv6.
fn canonical_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// How many birthday rounds a peer caused in the current window.
#[derive(Debug, Default, Clone, Copy)]
pub struct BurstBudget {
    window_start: Option<Instant>,
    used: u32,
}

impl BurstBudget {
    /// Takes one round from the budget; `false` when it is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= BIRTHDAY_WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= MAX_BIRTHDAY_ROUNDS {
            return false;
        }
        self.used += 1;
        true
    }
}

impl Peer {
    /// One round of birthday probing (DESIGN.md §5 and issue 4): behind a
    /// hard NAT, ping the peer's reflexive endpoint from many fresh probe
    /// sockets; behind an easy NAT facing a hard one, ping many random
    /// ports of the peer's public address. A few hundred each make a hit
    /// likely in one round; rounds are few and spaced.
    pub(super) fn birthday_round(&mut self, ctx: &mut Context, now: Instant) {
        let ours = ctx.nat_kind();
        if !matches!(
            (ours, self.remote_nat),
            (NatKind::Hard, NatKind::Easy) | (NatKind::Easy, NatKind::Hard)
        ) {
            return;
        }
        // Only at an address the peer could own, and a few rounds per
        // window: a lying hint must not aim bursts at a third party.
        let observed = self
            .observed_ip
            .filter(|(_, at)| now.saturating_duration_since(*at) < OBSERVED_IP_LIFETIME)
            .map(|(address, _)| address);
        let targets = burst_targets(&self.remote_reflexive, observed);
        if targets.is_empty() || !self.birthday_budget.take(now) {
            return;
        }
        let id = ctx.rng.next_u64();
        let mut sent = 0usize;
        match (ours, self.remote_nat) {
            (NatKind::Hard, NatKind::Easy) => {
                for target in targets.iter().copied() {
                    for socket in 0..BIRTHDAY_SOCKETS {
                        sent += usize::from(self.seal_to(
                            ctx,
                            now,
                            PathAddr::Probe(socket, target),
                            &ControlFrame::PathPing { id }.encode(),
                        ));
                    }
                }
            }
            (NatKind::Easy, NatKind::Hard) => {
                // One address (see `burst_targets`).
                if let Some(address) = targets.first().map(SocketAddr::ip) {
                    for _ in 0..BIRTHDAY_PORTS {
                        let port = ctx.rng.gen_range(1024..=u16::MAX);
                        let target = SocketAddr::new(address, port);
                        sent += usize::from(self.seal_to(
                            ctx,
                            now,
                            PathAddr::Direct(target),
                            &ControlFrame::PathPing { id }.encode(),
                        ));
                    }
                }
            }
            _ => return,
        }
        tracing::debug!(peer = %self.config.id, ?ours, theirs = ?self.remote_nat, sent, "birthday probing round");
        if let Some(&target) = targets.first() {
            self.remember_ping(id, PathAddr::Direct(target), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> SocketAddr {
        text.parse().expect("endpoint")
    }

    #[test]
    fn claimed_address_other_than_the_observed_one_gets_no_burst() {
        let claimed = [
            endpoint("198.51.100.9:4000"),
            endpoint("203.0.113.7:5000"),
            endpoint("203.0.113.7:5001"),
        ];
        let observed: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(
            burst_targets(&claimed, Some(observed)),
            vec![claimed[1], claimed[2]]
        );
        // The victim alone, claimed by a peer seen elsewhere: nothing.
        assert!(burst_targets(&claimed[..1], Some(observed)).is_empty());
        // The observed address counts as IPv4-mapped too.
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert_eq!(burst_targets(&claimed, Some(mapped)).len(), 2);
    }

    #[test]
    fn unobserved_peer_gets_bursts_at_one_address_only() {
        let claimed = [
            endpoint("203.0.113.7:5000"),
            endpoint("198.51.100.9:4000"),
            endpoint("203.0.113.7:5001"),
        ];
        assert_eq!(burst_targets(&claimed, None), vec![claimed[0], claimed[2]]);
        assert!(burst_targets(&[], None).is_empty());
    }

    #[test]
    fn bursts_are_rate_bounded_per_window() {
        let start = Instant::now();
        let mut budget = BurstBudget::default();
        let taken = (0..100)
            .filter(|second| budget.take(start + Duration::from_secs(*second)))
            .count();
        assert_eq!(taken, MAX_BIRTHDAY_ROUNDS as usize);
        assert!(budget.take(start + BIRTHDAY_WINDOW));
    }
}
