//! The core `Node` fed arbitrary sequences of datagrams, TUN packets, timer
//! jumps and trust changes on a virtual clock. A remote agent that the node
//! trusts takes part for real (handshakes both ways, cookies, sessions), so
//! arbitrary control frames and IP packets reach the node inside valid
//! sessions, directly and through a rendezvous relay.
//!
//! Checked on every step, besides "no panic": only packets that pass
//! cryptokey routing reach the TUN (IPv6: source in the peer's prefix,
//! destination in ours; IPv4: the peer's derived address to ours; or our
//! own ICMP errors), and every timer moves forward when it is run (no busy
//! loop in the daemon).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::{InitiationShape, RemoteAgent, UNIX_START, identity, nat_kind, network};
use agentnet::core::address::{NodeId, NodePrefix, agent_address4};
use agentnet::core::api::{AutoApprove, PeerConfig};
use agentnet::core::node::Node;
use agentnet::core::policy::Policy;
use agentnet::core::rng::core_rng;
use agentnet::core::services::Service;
use agentnet::core::trust::request::TrustRequest;
use agentnet::core::wire::control_frame::ControlFrame;
use agentnet::core::wire::packet::IpPacket;
use agentnet::core::wire::path::NatHint;
use agentnet::core::wire::path::relay_envelope;
use agentnet::core::wire::{Datagram, TYPE_RELAY};
use agentnet::sim::packets::{self, Transport};
use agentnet::sim::{LinkConfig, PROBE_PORT_BASE, SimNet};
use arbitrary::Arbitrary;

const NODE_ADDR: &str = "10.0.0.1:7400";
const PEER_ADDR: &str = "10.0.0.2:7400";
const RENDEZVOUS_ADDR: &str = "10.0.0.100:7400";
const STRANGER_ADDR: &str = "10.0.9.9:4444";
const PEER_SEED: u8 = 2;
const RENDEZVOUS_SEED: u8 = 100;
const STRANGER_SEED: u8 = 50;

fn addr(text: &str) -> SocketAddr {
    match text.parse() {
        Ok(address) => address,
        Err(_) => unreachable!("constant addresses parse"),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
/// Where a raw datagram comes from.
pub enum Source {
    Peer,
    Rendezvous,
    Stranger,
    Port(u16),
}

#[derive(Arbitrary, Debug)]
/// A control frame the peer sends inside its session.
pub enum Frame {
    Ping(u64),
    Pong(u64),
    Candidates(Vec<([u8; 4], u16)>, u8),
    Revoked {
        valid: bool,
    },
    Skipped(u64),
    Register,
    Registered([u8; 4], u16, u16),
    Raw(Vec<u8>),
    Punch(u8),
    /// An advertisement with any entries (kind, port, path, name), valid
    /// or not.
    Services {
        generation: u64,
        entries: Vec<(String, u16, String, String)>,
    },
    ServicesAck(u64),
}

#[derive(Arbitrary, Debug)]
/// An IPv6 or IPv4 packet, well formed, with fuzzed fields.
pub struct IpShape {
    source_low: u16,
    to_resolver: bool,
    next_header: u8,
    source_port: u16,
    destination_port: u16,
    flags: u8,
    payload_len: u16,
    /// IPv4 between the two agents' derived addresses instead (`source_low`
    /// nonzero: a forged source next to the real one).
    ipv4: bool,
}

impl IpShape {
    /// The transport header and payload length it asks for.
    fn transport(&self) -> Transport {
        Transport {
            protocol: self.next_header,
            source_port: self.source_port,
            destination_port: self.destination_port,
            flags: self.flags,
            payload_len: usize::from(self.payload_len % 2048),
        }
    }
}

#[derive(Arbitrary, Debug)]
/// The peer's allow-policy.
pub enum PolicyChoice {
    All,
    Text(String),
}

#[derive(Arbitrary, Debug)]
/// One step of the sequence.
pub enum Op {
    Raw {
        from: Source,
        bytes: Vec<u8>,
    },
    ProbeRaw {
        socket: u16,
        bytes: Vec<u8>,
    },
    Relayed {
        from_peer: bool,
        bytes: Vec<u8>,
    },
    PeerInitiate {
        relayed: bool,
        shape: InitiationShape,
    },
    PeerPayload {
        relayed: bool,
        payload: Vec<u8>,
    },
    PeerFrame {
        relayed: bool,
        frame: Frame,
    },
    PeerIp {
        relayed: bool,
        shape: IpShape,
    },
    Replay {
        index: u8,
        from: Source,
    },
    Reflect {
        index: u8,
    },
    Tun {
        bytes: Vec<u8>,
    },
    TunToPeer {
        shape: IpShape,
    },
    Advance {
        millis: u16,
    },
    Connect,
    Ping,
    Remove,
    Revoke,
    Upsert {
        endpoint: bool,
        policy: PolicyChoice,
    },
    Load {
        threshold: u8,
    },
    TrustRequest {
        name: String,
        justification: String,
        skew: i16,
        auto: bool,
    },
    TakePending,
    Candidates(Vec<([u8; 4], u16)>),
    /// The node advertises `http` services on these ports.
    Advertise(Vec<u16>),
}

/// The node under test and the peer that talks to it.
pub struct World {
    /// The simulated network: the node is its only host; the peer and the
    /// rendezvous answer from outside it.
    net: SimNet,
    /// The trusted remote agent.
    pub peer: RemoteAgent,
    start: Instant,
    node_key: [u8; 32],
    own_prefix: NodePrefix,
    peer_prefix: NodePrefix,
    own_address4: Ipv4Addr,
    peer_address4: Ipv4Addr,
    peer_node: NodeId,
    /// Datagrams the peer sent to the node (for replays).
    peer_sent: Vec<Vec<u8>>,
    /// Packets from the peer the node delivered to its TUN.
    pub delivered: usize,
}

/// The node's index among the simulated hosts.
const NODE: usize = 0;

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let mut net = SimNet::new(0, LinkConfig::INSTANT, now);
        let node_identity = identity(1);
        net.add_host_with(
            node_identity.clone(),
            "node".into(),
            [9; 32],
            addr(NODE_ADDR),
        );
        let peer = RemoteAgent::new(PEER_SEED);
        let peer_id = peer.identity.agent_id();
        let node = &mut net.hosts[NODE].node;
        node.upsert_peer(
            now,
            PeerConfig {
                id: peer_id,
                name: "peer".into(),
                endpoint: Some(addr(PEER_ADDR)),
                allow: Policy::All,
            },
        );
        node.add_rendezvous(
            now,
            identity(RENDEZVOUS_SEED).agent_id(),
            addr(RENDEZVOUS_ADDR),
        );
        node.set_local_candidates(vec![addr(NODE_ADDR)]);
        let node_id = node_identity.agent_id();
        Self {
            net,
            peer,
            start: now,
            node_key: node_id.noise_public_key(),
            own_prefix: NodePrefix::of_agent(network(), &node_id),
            peer_prefix: NodePrefix::of_agent(network(), &peer_id),
            own_address4: agent_address4(network(), &node_id),
            peer_address4: agent_address4(network(), &peer_id),
            peer_node: NodeId::of(&peer_id),
            peer_sent: Vec::new(),
            delivered: 0,
        }
    }

    /// The node under test.
    pub fn node(&self) -> &Node {
        &self.net.hosts[NODE].node
    }

    fn node_mut(&mut self) -> &mut Node {
        &mut self.net.hosts[NODE].node
    }

    /// Virtual time.
    pub fn now(&self) -> Instant {
        self.net.now
    }

    fn source_addr(source: Source) -> SocketAddr {
        match source {
            Source::Peer => addr(PEER_ADDR),
            Source::Rendezvous => addr(RENDEZVOUS_ADDR),
            Source::Stranger => addr(STRANGER_ADDR),
            Source::Port(port) => SocketAddr::from(([10, 0, 0, 2], port)),
        }
    }

    /// Datagrams the node sent (for reflections): the first 64.
    fn node_sent(&self) -> Vec<Vec<u8>> {
        let node_ip = addr(NODE_ADDR).ip();
        self.net
            .wire_log
            .iter()
            .filter(|(from, _, _)| from.ip() == node_ip)
            .take(64)
            .map(|(_, _, payload)| payload.clone())
            .collect()
    }

    /// Sends a datagram of the peer to the node, directly or relayed.
    fn send_from_peer(&mut self, relayed: bool, datagram: Vec<u8>) {
        if self.peer_sent.len() < 64 {
            self.peer_sent.push(datagram.clone());
        }
        if relayed {
            let envelope = relay_envelope(self.peer_node, &datagram);
            self.deliver(addr(RENDEZVOUS_ADDR), &envelope);
        } else {
            self.deliver(addr(PEER_ADDR), &datagram);
        }
    }

    fn deliver(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.deliver_to(from, addr(NODE_ADDR), datagram);
    }

    fn deliver_to(&mut self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        self.net.inject(from, to, datagram.to_vec());
        self.drain();
    }

    /// Runs the network at the current time: datagrams for the peer
    /// (direct or through the relay) go to it and its answers come back;
    /// TUN packets are checked.
    fn drain(&mut self) {
        let now = self.now();
        self.run_until(now);
    }

    /// Runs the network (timers and datagrams) until `until`.
    fn run_until(&mut self, until: Instant) {
        let (peer, peer_node, node_key) = (&mut self.peer, self.peer_node, self.node_key);
        self.net
            .run_until_with(until, &mut |now, _from, to, payload: &[u8]| {
                if to == addr(PEER_ADDR) {
                    peer.receive(now, &node_key, payload)
                } else if to == addr(RENDEZVOUS_ADDR) {
                    match Datagram::parse(payload) {
                        Ok(Datagram::Relay(relay)) if NodeId(relay.destination()) == peer_node => {
                            let answer = peer.receive(now, &node_key, relay.inner())?;
                            Some(relay_envelope(peer_node, &answer))
                        }
                        _ => None,
                    }
                } else {
                    None
                }
            });
        let host = &mut self.net.hosts[NODE];
        host.events.clear();
        for packet in std::mem::take(&mut host.tun) {
            self.check_tun_packet(&packet);
        }
    }

    fn check_tun_packet(&mut self, packet: &[u8]) {
        let parsed = IpPacket::new_checked(packet).expect("a whole IP packet to the TUN");
        let (source, destination) = (parsed.source_ip(), parsed.destination_ip());
        let (delivered, own_error) = match (source, destination) {
            (IpAddr::V6(source), IpAddr::V6(destination)) => (
                self.peer_prefix.contains(&source)
                    && NodePrefix::of_address(&destination) == self.own_prefix,
                source == self.own_prefix.agent_address(),
            ),
            (IpAddr::V4(source), IpAddr::V4(destination)) => (
                source == self.peer_address4 && destination == self.own_address4,
                source == self.own_address4,
            ),
            _ => (false, false),
        };
        self.delivered += usize::from(delivered);
        assert!(
            delivered || own_error,
            "cryptokey routing let {source} -> {destination} through"
        );
    }

    /// Moves virtual time on by `by`, running every timer that falls due
    /// (the simulator checks each one moves forward).
    fn advance(&mut self, by: Duration) {
        let until = self.now() + by;
        self.run_until(until);
    }

    /// An IPv4 packet between the two agents as `shape` says: the real
    /// source when `source_low` is 1 (as `::1` is the agent in IPv6), else
    /// one that many addresses away.
    fn ipv4_packet(&self, shape: &IpShape, source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
        let offset = u32::from(shape.source_low.wrapping_sub(1));
        let source = Ipv4Addr::from(u32::from(source).wrapping_add(offset));
        packets::ipv4_packet(source, destination, &shape.transport())
    }

    fn ip_packet(&self, shape: &IpShape, source: Ipv6Addr, destination: Ipv6Addr) -> Vec<u8> {
        packets::ipv6_packet(source, destination, &shape.transport())
    }

    fn in_prefix(prefix: NodePrefix, low: u16) -> Ipv6Addr {
        let mut segments = prefix.agent_address().segments();
        segments[7] = low;
        Ipv6Addr::from(segments)
    }

    fn frame_bytes(&self, frame: Frame) -> Vec<u8> {
        let addrs = |list: Vec<([u8; 4], u16)>| -> Vec<SocketAddr> {
            list.into_iter()
                .take(12)
                .map(|(ip, port)| SocketAddr::from((ip, port)))
                .collect()
        };
        match frame {
            Frame::Ping(id) => ControlFrame::PathPing { id }.encode(),
            Frame::Pong(id) => ControlFrame::PathPong { id }.encode(),
            Frame::Candidates(list, nat) => ControlFrame::Candidates {
                candidates: addrs(list),
                nat: NatHint {
                    kind: nat_kind(nat),
                    reflexive: Vec::new(),
                },
            }
            .encode(),
            Frame::Revoked { valid } => {
                let mut message = b"agentnet revocation v1".to_vec();
                message.extend_from_slice(self.peer.identity.agent_id().as_bytes());
                message.extend_from_slice(identity(1).agent_id().as_bytes());
                let mut signature = self.peer.identity.sign(&message);
                if !valid {
                    signature[0] ^= 1;
                }
                ControlFrame::Revoked { signature }.encode()
            }
            Frame::Skipped(count) => ControlFrame::SkippedCounters { count }.encode(),
            Frame::Punch(round) => ControlFrame::Punch { round }.encode(),
            Frame::Register => ControlFrame::Register {
                agent: self.peer.identity.agent_id(),
            }
            .encode(),
            Frame::Registered(ip, port, lifetime_s) => ControlFrame::Registered {
                reflexive: SocketAddr::from((ip, port)),
                lifetime_s,
            }
            .encode(),
            Frame::Services {
                generation,
                entries,
            } => services_frame(generation, &entries),
            Frame::ServicesAck(generation) => ControlFrame::ServicesAck { generation }.encode(),
            Frame::Raw(mut bytes) => {
                if let Some(first) = bytes.first_mut() {
                    *first %= 0x40;
                }
                bytes
            }
        }
    }

    fn peer_config(&self, endpoint: bool, policy: PolicyChoice) -> PeerConfig {
        PeerConfig {
            id: self.peer.identity.agent_id(),
            name: "peer".into(),
            endpoint: endpoint.then(|| addr(PEER_ADDR)),
            allow: match policy {
                PolicyChoice::All => Policy::All,
                PolicyChoice::Text(text) => text.parse().unwrap_or(Policy::All),
            },
        }
    }
}

/// A `Services` frame (type 0x07, version 1) with these entries as they
/// are, each string cut to 255 bytes: the decoder must refuse bad ones.
pub fn services_frame(generation: u64, entries: &[(String, u16, String, String)]) -> Vec<u8> {
    let mut out = vec![0x07, 1];
    out.extend_from_slice(&generation.to_le_bytes());
    out.push(entries.len().min(255) as u8);
    let put = |out: &mut Vec<u8>, text: &str| {
        let bytes = &text.as_bytes()[..text.len().min(255)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    };
    for (kind, port, path, name) in entries.iter().take(255) {
        put(&mut out, kind);
        out.extend_from_slice(&port.to_le_bytes());
        put(&mut out, path);
        put(&mut out, name);
    }
    out
}

/// Runs one sequence of operations (the fuzz target).
pub fn run(ops: Vec<Op>) -> World {
    let mut world = World::new();
    for op in ops.into_iter().take(128) {
        match op {
            Op::Raw { from, bytes } => world.deliver(World::source_addr(from), &bytes),
            Op::ProbeRaw { socket, bytes } => {
                let probe = SocketAddr::new(addr(NODE_ADDR).ip(), PROBE_PORT_BASE + socket % 512);
                world.deliver_to(addr(PEER_ADDR), probe, &bytes);
            }
            Op::Relayed { from_peer, bytes } => {
                let node = if from_peer {
                    world.peer_node
                } else {
                    NodeId([7; 8])
                };
                let envelope = relay_envelope(node, &bytes);
                world.deliver(addr(RENDEZVOUS_ADDR), &envelope);
            }
            Op::PeerInitiate { relayed, shape } => {
                let now = world.now();
                let key = world.node_key;
                if let Some(datagram) = world.peer.initiation(now, &key, &shape) {
                    world.send_from_peer(relayed, datagram);
                }
            }
            Op::PeerPayload { relayed, payload } => {
                let now = world.now();
                if let Some(datagram) = world.peer.seal(now, &payload) {
                    world.send_from_peer(relayed, datagram);
                }
            }
            Op::PeerFrame { relayed, frame } => {
                let payload = world.frame_bytes(frame);
                let now = world.now();
                if let Some(datagram) = world.peer.seal(now, &payload) {
                    world.send_from_peer(relayed, datagram);
                }
            }
            Op::PeerIp { relayed, shape } => {
                let source = World::in_prefix(world.peer_prefix, shape.source_low);
                let destination = if shape.to_resolver {
                    World::in_prefix(world.own_prefix, 0x53)
                } else {
                    world.own_prefix.agent_address()
                };
                let packet = if shape.ipv4 {
                    world.ipv4_packet(&shape, world.peer_address4, world.own_address4)
                } else {
                    world.ip_packet(&shape, source, destination)
                };
                let now = world.now();
                if let Some(datagram) = world.peer.seal(now, &packet) {
                    world.send_from_peer(relayed, datagram);
                }
            }
            Op::Replay { index, from } => {
                if !world.peer_sent.is_empty() {
                    let datagram =
                        world.peer_sent[usize::from(index) % world.peer_sent.len()].clone();
                    world.deliver(World::source_addr(from), &datagram);
                }
            }
            Op::Reflect { index } => {
                let node_sent = world.node_sent();
                if !node_sent.is_empty() {
                    let datagram = node_sent[usize::from(index) % node_sent.len()].clone();
                    let from = if datagram.first() == Some(&TYPE_RELAY) {
                        addr(RENDEZVOUS_ADDR)
                    } else {
                        addr(PEER_ADDR)
                    };
                    world.deliver(from, &datagram);
                }
            }
            Op::Tun { bytes } => {
                let now = world.now();
                world.node_mut().handle_tun_packet(now, &bytes);
                world.drain();
            }
            Op::TunToPeer { shape } => {
                let source = world.own_prefix.agent_address();
                let destination = World::in_prefix(world.peer_prefix, shape.source_low);
                let packet = if shape.ipv4 {
                    world.ipv4_packet(&shape, world.own_address4, world.peer_address4)
                } else {
                    world.ip_packet(&shape, source, destination)
                };
                let now = world.now();
                world.node_mut().handle_tun_packet(now, &packet);
                world.drain();
            }
            Op::Advance { millis } => {
                // Up to ~3 minutes per step: keepalives, retries, rekeys,
                // expiry and registration timers all get their turn.
                world.advance(Duration::from_millis(u64::from(millis) * 3));
            }
            Op::Connect => {
                let now = world.now();
                let id = world.peer.identity.agent_id();
                world.node_mut().connect(now, &id);
                world.drain();
            }
            Op::Ping => {
                let now = world.now();
                let id = world.peer.identity.agent_id();
                let _ = world.node_mut().ping(now, &id);
                world.drain();
            }
            Op::Advertise(ports) => {
                let now = world.now();
                let services = ports
                    .iter()
                    .filter_map(|port| {
                        let kind = "http".parse().ok()?;
                        Service::new(kind, *port, None, None).ok()
                    })
                    .collect();
                let _ = world.node_mut().set_advertised_services(now, services);
                world.drain();
            }
            Op::Remove => {
                let id = world.peer.identity.agent_id();
                world.node_mut().remove_peer(&id);
                world.drain();
            }
            Op::Revoke => {
                let now = world.now();
                let id = world.peer.identity.agent_id();
                world.node_mut().revoke_peer(now, &id);
                world.drain();
            }
            Op::Upsert { endpoint, policy } => {
                let config = world.peer_config(endpoint, policy);
                let now = world.now();
                world.node_mut().upsert_peer(now, config);
                world.drain();
            }
            Op::Load { threshold } => {
                let threshold = match threshold {
                    0 => 0,
                    255 => u32::MAX,
                    other => u32::from(other),
                };
                world.node_mut().set_handshake_load_threshold(threshold);
            }
            Op::TrustRequest {
                name,
                justification,
                skew,
                auto,
            } => {
                let stranger = identity(STRANGER_SEED);
                if auto {
                    world.node_mut().set_auto_approve(AutoApprove {
                        agents: vec![stranger.agent_id()],
                        fleet_keys: Vec::new(),
                    });
                }
                let request = TrustRequest {
                    requester: stranger.agent_id(),
                    target: identity(1).agent_id(),
                    unix_time: (UNIX_START + (world.now() - world.start))
                        .as_secs()
                        .saturating_add_signed(i64::from(skew)),
                    nonce: [skew as u8; 16],
                    name,
                    justification,
                    requested: Policy::All,
                    candidates: Vec::new(),
                    endorsement: None,
                };
                let mut rng = core_rng([skew as u8; 32]);
                if let Ok(datagram) = request.seal(&mut rng, network(), &stranger) {
                    world.deliver(addr(STRANGER_ADDR), &datagram);
                }
            }
            Op::TakePending => {
                let id = identity(STRANGER_SEED).agent_id();
                let now = world.now();
                let _ = world.node_mut().pending_requests(now);
                let _ = world.node_mut().take_pending_request(&id);
            }
            Op::Candidates(list) => {
                let candidates = list
                    .into_iter()
                    .take(16)
                    .map(|(ip, port)| SocketAddr::from((ip, port)))
                    .collect();
                world.node_mut().set_local_candidates(candidates);
            }
        }
        let now = world.now();
        let _ = world.node().status(now);
    }
    world
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP datagram from the peer's port 4000 to our port 53.
    fn udp_shape() -> IpShape {
        IpShape {
            source_low: 1,
            to_resolver: false,
            next_header: 17,
            source_port: 4000,
            destination_port: 53,
            flags: 0,
            payload_len: 20,
            ipv4: false,
        }
    }

    fn udp_from_peer(relayed: bool) -> Op {
        Op::PeerIp {
            relayed,
            shape: udp_shape(),
        }
    }

    fn initiate(relayed: bool, step: i16) -> Op {
        Op::PeerInitiate {
            relayed,
            shape: InitiationShape {
                timestamp_step: step,
                ..InitiationShape::default()
            },
        }
    }

    #[test]
    fn peer_handshake_lets_packets_reach_the_tun() {
        let world = run(vec![initiate(false, 0), udp_from_peer(false)]);
        assert_eq!(world.delivered, 1);
    }

    #[test]
    fn relayed_handshake_lets_packets_reach_the_tun() {
        let world = run(vec![initiate(true, 0), udp_from_peer(true)]);
        assert_eq!(world.delivered, 1);
    }

    #[test]
    fn node_under_load_takes_the_peer_after_a_cookie() {
        let world = run(vec![
            Op::Load { threshold: 0 },
            initiate(false, 0),
            udp_from_peer(false),
            initiate(false, 1),
            udp_from_peer(false),
        ]);
        assert_eq!(world.delivered, 1, "only the retry with mac2 was answered");
        assert_eq!(world.node().status(world.now()).dropped.needs_cookie, 1);
    }

    #[test]
    fn peer_packet_from_outside_its_own_prefix_is_dropped_as_spoofed() {
        let mut world = run(vec![initiate(false, 0), udp_from_peer(false)]);
        assert_eq!(world.delivered, 1, "the session carries honest packets");
        let shape = udp_shape();
        // A trusted peer sends, inside its own session, packets that claim
        // our own prefix and a neighbour of its prefix as their source.
        let destination = world.own_prefix.agent_address();
        let mut neighbour = World::in_prefix(world.peer_prefix, 1).segments();
        neighbour[6] ^= 1;
        for source in [World::in_prefix(world.own_prefix, 7), neighbour.into()] {
            let packet = world.ip_packet(&shape, source, destination);
            let now = world.now();
            let datagram = world.peer.seal(now, &packet).expect("a session is up");
            world.send_from_peer(false, datagram);
        }
        assert_eq!(world.delivered, 1, "a spoofed packet reached the TUN");
        let status = world.node().status(world.now());
        assert_eq!(status.peers[0].stats.drops.spoofed, 2);
    }

    #[test]
    fn ipv4_from_the_peer_reaches_the_tun_only_from_its_own_address() {
        let genuine = IpShape {
            ipv4: true,
            ..udp_shape()
        };
        let forged = IpShape {
            ipv4: true,
            source_low: 2,
            ..udp_shape()
        };
        let world = run(vec![
            initiate(false, 0),
            Op::PeerIp {
                relayed: false,
                shape: genuine,
            },
            Op::PeerIp {
                relayed: false,
                shape: forged,
            },
        ]);
        assert_eq!(world.delivered, 1);
        assert_eq!(world.node().status(world.now()).peers[0].dropped_spoofed, 1);
    }

    #[test]
    fn node_initiates_to_the_peer() {
        let shape = IpShape {
            source_low: 1,
            to_resolver: false,
            next_header: 17,
            source_port: 53,
            destination_port: 4000,
            flags: 0,
            payload_len: 20,
            ipv4: false,
        };
        let world = run(vec![Op::TunToPeer { shape }, udp_from_peer(false)]);
        assert!(world.peer.session.is_some(), "the peer answered the node");
        assert_eq!(world.delivered, 1);
    }
}
