//! Connection tracking for allow-policies (DESIGN.md §3): a flow this agent
//! opened towards a peer lets the peer's replies in whatever the policy says;
//! a flow the peer opens must be allowed by its policy, on every packet, so
//! narrowing the policy closes the peer's open flows at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::policy::{InboundKind, Policy};
use crate::core::wire::packet::{
    IcmpKind, IpPacket, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Transport,
};

/// How long an idle TCP flow is remembered.
const TCP_IDLE: Duration = Duration::from_secs(600);
/// How long an idle UDP flow is remembered.
const UDP_IDLE: Duration = Duration::from_secs(120);
/// How long an echo request waits for its reply.
const ICMP_IDLE: Duration = Duration::from_secs(30);
/// Most flows remembered per peer; the oldest goes first when full.
pub const MAX_FLOWS_PER_PEER: usize = 4096;

/// A flow seen from this agent's side: local address and port, remote
/// address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: u8,
    local: [u8; 16],
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
}

#[derive(Debug, Clone, Copy)]
struct FlowEntry {
    last_seen: Instant,
    idle_limit: Duration,
    /// Who opened the flow: only flows this agent opened let the peer's
    /// packets past the policy.
    opened_by: Opener,
}

/// Which side opened a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// This agent: the peer's replies pass whatever the policy says.
    Us,
    /// The peer (our packet answered a flow its policy let in): the policy
    /// as it is now judges each of the peer's packets.
    Peer,
}

/// Why an inbound packet is let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundVerdict {
    /// Allowed (by policy or as part of a tracked flow).
    Accept,
    /// Dropped by the policy.
    Deny,
}

/// The flows of one peer.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    /// Made at the first flow, dropped when the last one expires: an idle
    /// peer keeps 8 bytes here instead of an empty table's 48.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every peer, not 48"
    )]
    flows: Option<Box<HashMap<FlowKey, FlowEntry>>>,
    /// When the peer's policy last changed: a TCP flow first seen (not by
    /// its SYN) within [`TCP_IDLE`] of that may predate the change, and is
    /// judged as the peer's.
    policy_changed_at: Option<Instant>,
}

/// The flow of `packet`, whose ports or ICMP type are `transport` (read
/// once per packet), from this agent's side.
fn flow_of(
    packet: &IpPacket<'_>,
    transport: Transport,
    outbound: bool,
) -> Option<(FlowKey, Duration)> {
    let (local, remote) = if outbound {
        (packet.source(), packet.destination())
    } else {
        (packet.destination(), packet.source())
    };
    let (protocol, source_port, destination_port, idle) = match transport {
        Transport::Tcp {
            source_port,
            destination_port,
            ..
        } => (PROTO_TCP, source_port, destination_port, TCP_IDLE),
        Transport::Udp {
            source_port,
            destination_port,
        } => (PROTO_UDP, source_port, destination_port, UDP_IDLE),
        Transport::Icmp { kind, identifier } => {
            // An echo request out and its reply in share the identifier
            // (the mapped addresses keep ICMPv4 and ICMPv6 apart).
            let expected = if outbound {
                IcmpKind::EchoRequest
            } else {
                IcmpKind::EchoReply
            };
            if kind != expected {
                return None;
            }
            (PROTO_ICMPV6, identifier, identifier, ICMP_IDLE)
        }
        Transport::Other => return None,
    };
    let (local_port, remote_port) = if outbound {
        (source_port, destination_port)
    } else {
        (destination_port, source_port)
    };
    Some((
        FlowKey {
            protocol,
            local,
            remote,
            local_port,
            remote_port,
        },
        idle,
    ))
}

/// How the policy sees an inbound packet.
pub fn inbound_kind(packet: &IpPacket<'_>) -> InboundKind {
    inbound_kind_of(packet.transport())
}

/// How the policy sees an inbound packet of `transport`.
fn inbound_kind_of(transport: Transport) -> InboundKind {
    match transport {
        Transport::Tcp {
            destination_port, ..
        } => InboundKind::Tcp(destination_port),
        Transport::Udp {
            destination_port, ..
        } => InboundKind::Udp(destination_port),
        Transport::Icmp {
            kind: IcmpKind::EchoRequest,
            ..
        } => InboundKind::IcmpEcho,
        Transport::Icmp { .. } | Transport::Other => InboundKind::Other,
    }
}

/// Who opened the flow whose first packet we see going out: a TCP SYN is
/// ours; anything else is an answer to the peer when the policy lets the
/// peer reach our end of the flow (the flow then stays under the policy).
/// A TCP flow met mid-stream shortly after the policy changed may have been
/// opened by the peer before the change (untracked under `all`, or gone
/// idle), so it is the peer's too: it fails closed rather than turning a
/// flow the new policy forbids into "ours".
fn opener_of_outbound(
    key: &FlowKey,
    transport: Transport,
    policy: &Policy,
    recently_changed: bool,
) -> Opener {
    let reverse = match transport {
        Transport::Tcp { is_syn: true, .. } => return Opener::Us,
        Transport::Tcp { .. } if recently_changed => return Opener::Peer,
        Transport::Tcp { .. } => InboundKind::Tcp(key.local_port),
        Transport::Udp { .. } => InboundKind::Udp(key.local_port),
        Transport::Icmp { .. } | Transport::Other => return Opener::Us,
    };
    if policy.allows(reverse) {
        Opener::Peer
    } else {
        Opener::Us
    }
}

/// Forgets the flows idle past their limit.
fn expire_flows(flows: &mut HashMap<FlowKey, FlowEntry>, now: Instant) {
    flows.retain(|_, entry| now.saturating_duration_since(entry.last_seen) < entry.idle_limit);
}

impl ConnectionTracker {
    /// The peer's policy changed at `now` (see `opener_of_outbound`). Flows
    /// the peer opened are judged by the policy as it is at each packet.
    pub fn policy_changed(&mut self, now: Instant) {
        self.policy_changed_at = Some(now);
    }

    /// Records a packet this agent sends to the peer (`policy`: what the
    /// peer may open, to tell our flows from answers to the peer's).
    pub fn track_outbound(&mut self, now: Instant, policy: &Policy, packet: &IpPacket<'_>) {
        let transport = packet.transport();
        let Some((key, idle_limit)) = flow_of(packet, transport, true) else {
            return;
        };
        if let Some(entry) = self.flows.as_mut().and_then(|flows| flows.get_mut(&key))
            && now.saturating_duration_since(entry.last_seen) < entry.idle_limit
        {
            entry.last_seen = now;
            return;
        }
        if let Some(flows) = self.flows.as_mut()
            && !flows.contains_key(&key)
            && flows.len() >= MAX_FLOWS_PER_PEER
        {
            expire_flows(flows, now);
            if flows.len() >= MAX_FLOWS_PER_PEER
                && let Some(oldest) = flows
                    .iter()
                    .min_by_key(|(_, entry)| entry.last_seen)
                    .map(|(key, _)| *key)
            {
                flows.remove(&oldest);
            }
        }
        let recently_changed = self
            .policy_changed_at
            .is_some_and(|at| now.saturating_duration_since(at) < TCP_IDLE);
        let opened_by = opener_of_outbound(&key, transport, policy, recently_changed);
        self.flows.get_or_insert_default().insert(
            key,
            FlowEntry {
                last_seen: now,
                idle_limit,
                opened_by,
            },
        );
    }

    /// Judges a packet the peer sends to this agent under its policy as it
    /// is now.
    pub fn check_inbound(
        &mut self,
        now: Instant,
        policy: &Policy,
        packet: &IpPacket<'_>,
    ) -> InboundVerdict {
        let transport = packet.transport();
        let allowed = policy.allows(inbound_kind_of(transport));
        if let Some((key, _)) = flow_of(packet, transport, false)
            && let Some(entry) = self.flows.as_mut().and_then(|flows| flows.get_mut(&key))
            && now.saturating_duration_since(entry.last_seen) < entry.idle_limit
            && (entry.opened_by == Opener::Us || allowed)
        {
            entry.last_seen = now;
            return InboundVerdict::Accept;
        }
        if allowed {
            InboundVerdict::Accept
        } else {
            InboundVerdict::Deny
        }
    }

    /// Forgets idle flows.
    pub fn expire(&mut self, now: Instant) {
        if let Some(flows) = self.flows.as_mut() {
            expire_flows(flows, now);
            if flows.is_empty() {
                self.flows = None;
            }
        }
    }

    /// Number of flows remembered.
    pub fn len(&self) -> usize {
        self.flows.as_ref().map_or(0, |flows| flows.len())
    }

    /// Whether no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::packet::tests::{ipv4, ipv6, tcp};
    use crate::core::wire::packet::{
        ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        PROTO_ICMPV4, PROTO_ICMPV6, PROTO_TCP,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn addresses() -> (Ipv6Addr, Ipv6Addr) {
        (
            "fd00::1".parse().expect("addr"),
            "fd00::2".parse().expect("addr"),
        )
    }

    fn only_http() -> Policy {
        "tcp:80".parse().expect("policy")
    }

    #[test]
    fn replies_to_own_connections_pass_a_closed_policy() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        let syn = ipv6(me, peer, PROTO_TCP, &tcp(40000, 22, 0x02));
        tracker.track_outbound(
            now,
            &only_http(),
            &IpPacket::new_checked(&syn).expect("valid"),
        );
        let reply = ipv6(peer, me, PROTO_TCP, &tcp(22, 40000, 0x12));
        let verdict = tracker.check_inbound(
            now,
            &only_http(),
            &IpPacket::new_checked(&reply).expect("valid"),
        );
        assert_eq!(verdict, InboundVerdict::Accept);
    }

    #[test]
    fn new_inbound_connection_needs_the_policy() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        let to_ssh = ipv6(peer, me, PROTO_TCP, &tcp(40000, 22, 0x02));
        let to_http = ipv6(peer, me, PROTO_TCP, &tcp(40000, 80, 0x02));
        let check = |tracker: &mut ConnectionTracker, bytes: &[u8]| {
            tracker.check_inbound(
                now,
                &only_http(),
                &IpPacket::new_checked(bytes).expect("valid"),
            )
        };
        assert_eq!(check(&mut tracker, &to_ssh), InboundVerdict::Deny);
        assert_eq!(check(&mut tracker, &to_http), InboundVerdict::Accept);
    }

    #[test]
    fn echo_reply_passes_only_after_own_request_and_expires() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        let echo = |kind: u8, source, destination| {
            ipv6(
                source,
                destination,
                PROTO_ICMPV6,
                &[kind, 0, 0, 0, 0, 7, 0, 1],
            )
        };
        let reply = echo(ICMPV6_ECHO_REPLY, peer, me);
        let reply = IpPacket::new_checked(&reply).expect("valid");
        assert_eq!(
            tracker.check_inbound(now, &only_http(), &reply),
            InboundVerdict::Deny
        );
        let request = echo(ICMPV6_ECHO_REQUEST, me, peer);
        tracker.track_outbound(
            now,
            &only_http(),
            &IpPacket::new_checked(&request).expect("valid"),
        );
        assert_eq!(
            tracker.check_inbound(now, &only_http(), &reply),
            InboundVerdict::Accept
        );
        assert_eq!(
            tracker.check_inbound(now + ICMP_IDLE * 3, &only_http(), &reply),
            InboundVerdict::Deny
        );
        // Housekeeping forgets the flow, and the table with it.
        assert_eq!(tracker.len(), 1);
        tracker.expire(now + ICMP_IDLE * 3);
        assert!(tracker.is_empty());
        assert!(tracker.flows.is_none(), "an idle peer keeps no table");
    }

    #[test]
    fn ipv4_flows_follow_the_same_policy_and_tracking() {
        let me = Ipv4Addr::new(100, 64, 0, 1);
        let peer = Ipv4Addr::new(100, 99, 0, 2);
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        let check = |tracker: &mut ConnectionTracker, bytes: &[u8]| {
            tracker.check_inbound(
                now,
                &only_http(),
                &IpPacket::new_checked(bytes).expect("valid"),
            )
        };
        // `tcp:80` lets the peer open port 80 over IPv4, and nothing else.
        let to_http = ipv4(peer, me, PROTO_TCP, &tcp(40000, 80, 0x02));
        let to_ssh = ipv4(peer, me, PROTO_TCP, &tcp(40000, 22, 0x02));
        assert_eq!(check(&mut tracker, &to_http), InboundVerdict::Accept);
        assert_eq!(check(&mut tracker, &to_ssh), InboundVerdict::Deny);
        // Our own IPv4 connection's replies pass.
        let syn = ipv4(me, peer, PROTO_TCP, &tcp(40001, 22, 0x02));
        tracker.track_outbound(
            now,
            &only_http(),
            &IpPacket::new_checked(&syn).expect("valid"),
        );
        let answer = ipv4(peer, me, PROTO_TCP, &tcp(22, 40001, 0x12));
        assert_eq!(check(&mut tracker, &answer), InboundVerdict::Accept);
        // ICMPv4 echo: the reply to our ping passes, their ping does not.
        let echo = |kind: u8, source, destination| {
            ipv4(
                source,
                destination,
                PROTO_ICMPV4,
                &[kind, 0, 0, 0, 0, 9, 0, 1],
            )
        };
        assert_eq!(
            check(&mut tracker, &echo(ICMPV4_ECHO_REQUEST, peer, me)),
            InboundVerdict::Deny
        );
        let reply = echo(ICMPV4_ECHO_REPLY, peer, me);
        assert_eq!(check(&mut tracker, &reply), InboundVerdict::Deny);
        tracker.track_outbound(
            now,
            &only_http(),
            &IpPacket::new_checked(&echo(ICMPV4_ECHO_REQUEST, me, peer)).expect("valid"),
        );
        assert_eq!(check(&mut tracker, &reply), InboundVerdict::Accept);
    }

    #[test]
    fn flow_table_is_bounded() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        for port in 0..(MAX_FLOWS_PER_PEER as u16 + 100) {
            let syn = ipv6(me, peer, PROTO_TCP, &tcp(port, 22, 0x02));
            tracker.track_outbound(
                now,
                &only_http(),
                &IpPacket::new_checked(&syn).expect("valid"),
            );
        }
        assert_eq!(tracker.len(), MAX_FLOWS_PER_PEER);
    }

    /// Our packet `bytes` going out, seen by the tracker.
    fn send(tracker: &mut ConnectionTracker, now: Instant, policy: &Policy, bytes: &[u8]) {
        tracker.track_outbound(now, policy, &IpPacket::new_checked(bytes).expect("valid"));
    }

    /// The tracker's verdict on the peer's packet `bytes`.
    fn receive(
        tracker: &mut ConnectionTracker,
        now: Instant,
        policy: &Policy,
        bytes: &[u8],
    ) -> InboundVerdict {
        tracker.check_inbound(now, policy, &IpPacket::new_checked(bytes).expect("valid"))
    }

    #[test]
    fn narrowing_from_all_closes_the_peers_untracked_connection() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        // Under `all` nothing was tracked; the peer has an ssh session open.
        // The policy narrows to tcp:80, and our server's next segment on it
        // is the first the tracker sees.
        tracker.policy_changed(now);
        let later = now + Duration::from_secs(5);
        let ours_mid_stream = ipv6(me, peer, PROTO_TCP, &tcp(22, 40000, 0x18));
        send(&mut tracker, later, &only_http(), &ours_mid_stream);
        let peer_segment = ipv6(peer, me, PROTO_TCP, &tcp(40000, 22, 0x18));
        assert_eq!(
            receive(&mut tracker, later, &only_http(), &peer_segment),
            InboundVerdict::Deny,
            "the old ssh flow stays open"
        );
        // Our own new connection still gets its answers.
        let our_syn = ipv6(me, peer, PROTO_TCP, &tcp(50000, 22, 0x02));
        send(&mut tracker, later, &only_http(), &our_syn);
        let answer = ipv6(peer, me, PROTO_TCP, &tcp(22, 50000, 0x12));
        assert_eq!(
            receive(&mut tracker, later, &only_http(), &answer),
            InboundVerdict::Accept
        );
    }

    #[test]
    fn narrowed_policy_closes_the_peers_flows_but_not_ours() {
        let (me, peer) = addresses();
        let now = Instant::now();
        let mut tracker = ConnectionTracker::default();
        let ssh: Policy = "tcp:22".parse().expect("policy");
        let narrowed: Policy = "tcp:8080".parse().expect("policy");
        let packet = |source, destination, ports: (u16, u16), flags| {
            ipv6(
                source,
                destination,
                PROTO_TCP,
                &tcp(ports.0, ports.1, flags),
            )
        };
        let inbound = |tracker: &mut ConnectionTracker, policy: &Policy, bytes: &[u8]| {
            tracker.check_inbound(now, policy, &IpPacket::new_checked(bytes).expect("valid"))
        };
        // The peer's connection to our ssh, answered; ours to its 9000.
        let peer_syn = packet(peer, me, (40000, 22), 0x02);
        assert_eq!(
            inbound(&mut tracker, &ssh, &peer_syn),
            InboundVerdict::Accept
        );
        let answer = packet(me, peer, (22, 40000), 0x12);
        tracker.track_outbound(now, &ssh, &IpPacket::new_checked(&answer).expect("valid"));
        let our_syn = packet(me, peer, (50000, 9000), 0x02);
        tracker.track_outbound(now, &ssh, &IpPacket::new_checked(&our_syn).expect("valid"));
        let peer_ack = packet(peer, me, (40000, 22), 0x10);
        let peer_reply = packet(peer, me, (9000, 50000), 0x12);
        assert_eq!(
            inbound(&mut tracker, &ssh, &peer_ack),
            InboundVerdict::Accept
        );
        assert_eq!(
            inbound(&mut tracker, &ssh, &peer_reply),
            InboundVerdict::Accept
        );
        // Narrowed: the peer's flow is closed, ours still answers, and our
        // server's next packet on the old flow opens nothing.
        assert_eq!(
            inbound(&mut tracker, &narrowed, &peer_ack),
            InboundVerdict::Deny
        );
        assert_eq!(
            inbound(&mut tracker, &narrowed, &peer_reply),
            InboundVerdict::Accept
        );
        let more = packet(me, peer, (22, 40000), 0x10);
        tracker.track_outbound(
            now,
            &narrowed,
            &IpPacket::new_checked(&more).expect("valid"),
        );
        assert_eq!(
            inbound(&mut tracker, &narrowed, &peer_ack),
            InboundVerdict::Deny
        );
    }
}
