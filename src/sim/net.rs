//! The simulated network: hosts (each a [`Node`] at an underlay address,
//! maybe behind a NAT), rendezvous servers, and the datagrams in flight
//! between them, on a virtual clock that jumps to the next event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{LinkConfig, NatKind, SimNat, TUNNEL_MTU, identity, network};
use crate::core::address::{NetworkId, NodePrefix, agent_address4};
use crate::core::api::{Event, PeerConfig, Transmit};
use crate::core::identity::{AgentId, Identity};
use crate::core::node::Node;
use crate::core::policy::Policy;
use crate::core::rendezvous::{ClientAddr, RendezvousConfig, RendezvousServer};
use crate::core::stats::status::PeerStatus;

/// Local port of a host's probe socket N: this base plus N.
pub const PROBE_PORT_BASE: u16 = 50_000;

/// How long [`SimNet::run_until_condition`] runs between two looks.
const CONDITION_STEP: Duration = Duration::from_millis(5);

/// A simulated rendezvous server (public address, no NAT).
pub struct SimRendezvous {
    /// The server.
    pub server: RendezvousServer,
    /// Where it listens.
    pub address: SocketAddr,
    /// Whether it is running (a stopped server neither hears nor answers).
    pub up: bool,
}

/// One simulated host.
pub struct SimHost {
    /// Its node.
    pub node: Node,
    /// The node's identity.
    pub identity: Identity,
    /// Its underlay address (private when behind a NAT).
    pub address: SocketAddr,
    /// Packets the node wrote to its TUN.
    pub tun: Vec<Vec<u8>>,
    /// Events the node reported.
    pub events: Vec<Event>,
    /// When each of [`Self::events`] was reported (virtual time).
    pub event_times: Vec<Instant>,
    /// Datagrams the host received from the network (for "no reply" checks).
    pub received_from: Vec<SocketAddr>,
    /// The NAT the host sits behind, if any.
    pub nat: Option<usize>,
    /// Whether its agent runs. A stopped host is a machine whose daemon is
    /// not running: datagrams to it are lost (as to a closed port), it sends
    /// nothing and its timers do not run ([`SimNet::stop_host`],
    /// [`SimNet::restart_host`]).
    pub up: bool,
}

/// A datagram on the wire, ordered by arrival.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    sequence: u64,
    from: SocketAddr,
    to: SocketAddr,
    payload: Vec<u8>,
}

/// The simulated network.
pub struct SimNet {
    /// Virtual time.
    pub now: Instant,
    /// When the simulation started (the wall clock of a restarted host
    /// counts from it).
    start: Instant,
    /// Impairments of every link.
    pub link: LinkConfig,
    /// The network of every host.
    pub network: NetworkId,
    /// Tunnel MTU of the hosts added from now on.
    pub tunnel_mtu: u16,
    /// The hosts, by index.
    pub hosts: Vec<SimHost>,
    rng: ChaCha20Rng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    /// Whether datagrams are copied into [`Self::wire_log`].
    pub record_wire: bool,
    /// Every datagram put on the wire: (from, to, bytes).
    pub wire_log: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// The NAT routers, by index.
    pub nats: Vec<SimNat>,
    /// The rendezvous servers, by index.
    pub rendezvous: Vec<SimRendezvous>,
    /// Pairs of public IPs that cannot reach each other (a cut path).
    pub cuts: HashSet<(IpAddr, IpAddr)>,
}

/// Something outside the simulation that datagrams to unknown addresses
/// reach: given (now, from, to, bytes), it may answer from `to` to `from`.
pub type Outside<'a> = dyn FnMut(Instant, SocketAddr, SocketAddr, &[u8]) -> Option<Vec<u8>> + 'a;

impl SimNet {
    /// An empty network starting at `start`, its randomness seeded by `seed`.
    pub fn new(seed: u64, link: LinkConfig, start: Instant) -> Self {
        Self {
            now: start,
            start,
            link,
            network: network(),
            tunnel_mtu: TUNNEL_MTU,
            hosts: Vec::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            sequence: 0,
            record_wire: true,
            wire_log: Vec::new(),
            nats: Vec::new(),
            rendezvous: Vec::new(),
            cuts: HashSet::new(),
        }
    }

    /// Adds a NAT router with public address 10.0.1.N.
    pub fn add_nat(&mut self, kind: NatKind) -> usize {
        let index = self.nats.len();
        let public_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8 + 1));
        self.nats.push(SimNat::new(public_ip, kind));
        index
    }

    /// Adds a host behind `nat`, at `192.168.<nat>.<n>:7400`.
    pub fn add_host_behind(&mut self, key_seed: u8, nat: usize) -> usize {
        let index = self.add_host(key_seed);
        let behind = self
            .hosts
            .iter()
            .filter(|host| host.nat == Some(nat))
            .count();
        let octet = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        self.hosts[index].address =
            SocketAddr::from(([192, 168, octet(nat + 1), octet(behind + 2)], 7400));
        self.hosts[index].nat = Some(nat);
        index
    }

    /// Adds a rendezvous server at `10.0.2.N:7400`.
    pub fn add_rendezvous(&mut self, key_seed: u8) -> usize {
        self.add_rendezvous_with(key_seed, |_| {})
    }

    /// Adds a rendezvous server at `10.0.2.N:7400` whose configuration
    /// `tune` adjusts first.
    pub fn add_rendezvous_with(
        &mut self,
        key_seed: u8,
        tune: impl FnOnce(&mut RendezvousConfig),
    ) -> usize {
        let index = self.rendezvous.len();
        let mut config = RendezvousConfig::new(identity(key_seed), self.network);
        tune(&mut config);
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        let server = RendezvousServer::new(config, seed, self.now);
        let address = SocketAddr::from(([10, 0, 2, index as u8 + 1], 7400));
        self.rendezvous.push(SimRendezvous {
            server,
            address,
            up: true,
        });
        index
    }

    /// Points `host` at every rendezvous server.
    pub fn use_rendezvous(&mut self, host: usize) {
        let now = self.now;
        for index in 0..self.rendezvous.len() {
            let (id, address) = (
                self.rendezvous[index].server.agent_id(),
                self.rendezvous[index].address,
            );
            self.hosts[host].node.add_rendezvous(now, id, address);
        }
    }

    /// Cuts (or heals) the path between two NATs' public addresses.
    pub fn set_cut(&mut self, nat_a: usize, nat_b: usize, cut: bool) {
        let (a, b) = (self.nats[nat_a].public_ip, self.nats[nat_b].public_ip);
        if cut {
            self.cuts.insert((a, b));
            self.cuts.insert((b, a));
        } else {
            self.cuts.remove(&(a, b));
            self.cuts.remove(&(b, a));
        }
    }

    /// The path a host reports for a peer ("direct", "relay" or "none").
    pub fn path(&self, host: usize, peer: usize) -> String {
        self.peer_status(host, peer)
            .map(|status| format!("{:?}", status.path).to_lowercase())
            .unwrap_or_else(|| "none".into())
    }

    /// What `host` reports about `peer`, if it knows it.
    pub fn peer_status(&self, host: usize, peer: usize) -> Option<PeerStatus> {
        let id = self.id(peer);
        self.hosts[host]
            .node
            .status(self.now)
            .peers
            .into_iter()
            .find(|status| status.id == id)
    }

    /// Adds a host with a key derived from `key_seed`, at `10.0.0.N:7400`.
    pub fn add_host(&mut self, key_seed: u8) -> usize {
        let index = self.hosts.len();
        let address = SocketAddr::from(([10, 0, 0, index as u8 + 1], 7400));
        let mut node_seed = [0u8; 32];
        self.rng.fill(&mut node_seed);
        self.add_host_with(
            identity(key_seed),
            format!("host{index}"),
            node_seed,
            address,
        )
    }

    /// Adds a host with this identity and name at `address`, its node's
    /// randomness seeded by `node_seed`.
    pub fn add_host_with(
        &mut self,
        identity: Identity,
        name: String,
        node_seed: [u8; 32],
        address: SocketAddr,
    ) -> usize {
        let node = super::node(identity.clone(), name, self.tunnel_mtu, node_seed, self.now);
        self.hosts.push(SimHost {
            node,
            identity,
            address,
            tun: Vec::new(),
            events: Vec::new(),
            event_times: Vec::new(),
            received_from: Vec::new(),
            nat: None,
            up: true,
        });
        self.hosts.len() - 1
    }

    /// Stops the agent of `host`: its node keeps its state but hears,
    /// sends and runs nothing until [`SimNet::restart_host`].
    pub fn stop_host(&mut self, host: usize) {
        self.hosts[host].up = false;
    }

    /// Starts the agent of `host` afresh (as a new daemon would: same
    /// identity and address, no peers, no sessions, the wall clock of now),
    /// its randomness seeded by `node_seed`. The caller adds its peers.
    pub fn restart_host(&mut self, host: usize, node_seed: [u8; 32]) {
        let unix_now = super::UNIX_START + self.now.saturating_duration_since(self.start);
        self.restart_host_with_clock(host, node_seed, unix_now);
    }

    /// [`SimNet::restart_host`] with the wall clock at `unix_now` (a host
    /// whose clock was set back, or jumped ahead, across the restart).
    pub fn restart_host_with_clock(
        &mut self,
        host: usize,
        node_seed: [u8; 32],
        unix_now: Duration,
    ) {
        let entry = &mut self.hosts[host];
        entry.node = Node::new(
            crate::core::api::NodeConfig {
                identity: entry.identity.clone(),
                network: self.network,
                name: format!("host{host}"),
                tunnel_mtu: self.tunnel_mtu,
            },
            node_seed,
            self.now,
            unix_now,
        );
        entry.up = true;
    }

    /// The agent ID of `host`.
    pub fn id(&self, host: usize) -> AgentId {
        self.hosts[host].identity.agent_id()
    }

    /// The host's IPv6 overlay address.
    pub fn overlay_address(&self, host: usize) -> Ipv6Addr {
        NodePrefix::of_agent(self.network, &self.id(host)).agent_address()
    }

    /// The host's IPv4 overlay address.
    pub fn overlay_address4(&self, host: usize) -> Ipv4Addr {
        agent_address4(self.network, &self.id(host))
    }

    /// `host` trusts `peer`, optionally knowing its endpoint.
    pub fn trust(&mut self, host: usize, peer: usize, with_endpoint: bool, allow: Policy) {
        let config = PeerConfig {
            id: self.id(peer),
            name: format!("host{peer}"),
            endpoint: with_endpoint.then_some(self.hosts[peer].address),
            allow,
        };
        let now = self.now;
        self.hosts[host].node.upsert_peer(now, config);
    }

    /// Both trust each other with all ports; both know endpoints.
    pub fn trust_both(&mut self, a: usize, b: usize) {
        self.trust(a, b, true, Policy::All);
        self.trust(b, a, true, Policy::All);
    }

    /// Puts a datagram on the wire from an arbitrary source (an attacker,
    /// or an endpoint outside the simulation).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        self.schedule(from, to, payload);
    }

    fn nat_of_address(&self, address: SocketAddr) -> Option<usize> {
        self.hosts
            .iter()
            .find(|host| host.address.ip() == address.ip())
            .and_then(|host| host.nat)
    }

    fn schedule(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        if self.record_wire {
            self.wire_log.push((from, to, payload.clone()));
        }
        // Outbound NAT: unless both ends sit behind the same NAT, the source
        // is translated to the NAT's public address.
        let from = match self.nat_of_address(from) {
            Some(nat) if self.nat_of_address(to) != Some(nat) => {
                if self.nats[nat].udp_blocked {
                    return;
                }
                let now = self.now;
                self.nats[nat].map_outbound(&mut self.rng, now, from, to)
            }
            _ => from,
        };
        if self.cuts.contains(&(from.ip(), to.ip())) {
            return;
        }
        if self.rng.gen_bool(self.link.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if self.link.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.link.jitter.mul_f64(self.rng.gen_range(0.0..1.0))
            };
            self.sequence += 1;
            self.in_flight.push(Reverse(InFlight {
                at: self.now + self.link.delay + jitter,
                sequence: self.sequence,
                from,
                to,
                payload: payload.clone(),
            }));
        }
    }

    /// Moves every pending output of every node onto the wire / TUN log.
    fn drain_outputs(&mut self) {
        for index in 0..self.hosts.len() {
            let from = self.hosts[index].address;
            let mut transmits: Vec<Transmit> = Vec::new();
            let host = &mut self.hosts[index];
            while let Some(transmit) = host.node.poll_transmit() {
                transmits.push(transmit);
            }
            while let Some(packet) = host.node.poll_tun_packet() {
                host.tun.push(packet);
            }
            while let Some(event) = host.node.poll_event() {
                host.events.push(event);
                host.event_times.push(self.now);
            }
            if !host.up {
                continue;
            }
            for transmit in transmits {
                let source = match transmit.source {
                    Some(socket) => SocketAddr::new(from.ip(), PROBE_PORT_BASE + socket),
                    None => from,
                };
                self.schedule(source, transmit.destination, transmit.payload);
            }
        }
        for index in 0..self.rendezvous.len() {
            let from = self.rendezvous[index].address;
            let mut out = Vec::new();
            while let Some(transmit) = self.rendezvous[index].server.poll_transmit() {
                out.push(transmit);
            }
            if !self.rendezvous[index].up {
                continue;
            }
            for (to, payload) in out {
                if let ClientAddr::Udp(address) = to {
                    self.schedule(from, address, payload);
                }
            }
        }
    }

    /// Feeds a packet into a host's TUN side.
    pub fn send_from_tun(&mut self, host: usize, packet: &[u8]) {
        let now = self.now;
        self.hosts[host].node.handle_tun_packet(now, packet);
        self.drain_outputs();
    }

    /// Feeds `from`'s TUN a UDP packet to `to`'s overlay address (port
    /// 9000, 100 bytes) that carries `tag` ([`super::tag_of`] reads it
    /// back).
    pub fn send_tagged(&mut self, from: usize, to: usize, tag: u32) {
        let packet = super::udp_packet(
            self.overlay_address(from),
            self.overlay_address(to),
            9000,
            tag,
            100,
        );
        self.send_from_tun(from, &packet);
    }

    /// The tags of the tagged packets `host`'s TUN received, in order.
    pub fn delivered_tags(&self, host: usize) -> Vec<u32> {
        self.hosts[host]
            .tun
            .iter()
            .filter_map(|packet| super::tag_of(packet))
            .collect()
    }

    /// Delivers one datagram; returns the host it reached, if any.
    fn deliver(&mut self, flight: InFlight, outside: &mut Outside<'_>) -> Option<usize> {
        let InFlight {
            from, to, payload, ..
        } = flight;
        let now = self.now;
        // Inbound NAT: a datagram to a NAT's public address reaches the host
        // behind it only through a mapping that sent to this source.
        let to = match self.nats.iter_mut().find(|nat| nat.public_ip == to.ip()) {
            Some(nat) => nat.map_inbound(now, to.port(), from)?,
            None => to,
        };
        if let Some(rendezvous) = self.rendezvous.iter_mut().find(|r| r.address == to) {
            if rendezvous.up {
                rendezvous
                    .server
                    .handle_datagram(now, ClientAddr::Udp(from), &payload);
            }
            return None;
        }
        if let Some(index) = self.hosts.iter().position(|host| host.address == to) {
            let host = &mut self.hosts[index];
            if !host.up {
                return None; // nobody listens: lost
            }
            host.received_from.push(from);
            host.node.handle_datagram(now, from, &payload);
            Some(index)
        } else if let Some(index) = self
            .hosts
            .iter()
            .position(|host| host.address.ip() == to.ip() && to.port() >= PROBE_PORT_BASE)
        {
            let host = &mut self.hosts[index];
            if !host.up {
                return None;
            }
            host.received_from.push(from);
            host.node
                .handle_datagram_on_probe(now, to.port() - PROBE_PORT_BASE, from, &payload);
            Some(index)
        } else {
            if let Some(answer) = outside(now, from, to, &payload) {
                self.schedule(to, from, answer);
            }
            None
        }
    }

    /// When `host`'s timers are due next (never for a stopped host).
    fn host_deadline(&mut self, host: usize) -> Option<Instant> {
        let host = &mut self.hosts[host];
        host.up.then(|| host.node.poll_timeout()).flatten()
    }

    /// Runs the simulation until `until` (virtual time); datagrams to
    /// addresses nobody holds are lost.
    pub fn run_until(&mut self, until: Instant) {
        self.run_until_with(until, &mut |_, _, _, _| None);
    }

    /// Runs the simulation until `until` (virtual time); datagrams to
    /// addresses nobody in the simulation holds go to `outside`.
    ///
    /// Panics if a node's timer, once run, is still due: the daemon would
    /// spin on it.
    pub fn run_until_with(&mut self, until: Instant, outside: &mut Outside<'_>) {
        // Each host's next deadline, asked again only of the hosts a step
        // touched (asking all of them on every step costs O(hosts × peers),
        // which large meshes cannot afford). The caller may have changed any
        // node since the last run: all are asked at the start.
        let mut deadlines: Vec<Option<Instant>> = (0..self.hosts.len())
            .map(|host| self.host_deadline(host))
            .collect();
        loop {
            self.drain_outputs();
            let next_delivery = self.in_flight.peek().map(|Reverse(flight)| flight.at);
            let next_timer = deadlines
                .iter()
                .flatten()
                .copied()
                .chain(self.rendezvous.iter().map(|r| r.server.poll_timeout()))
                .min();
            let next = [next_delivery, next_timer].into_iter().flatten().min();
            let Some(next) = next.filter(|next| *next <= until) else {
                self.now = until.max(self.now);
                return;
            };
            self.now = next.max(self.now);
            let now = self.now;
            while self
                .in_flight
                .peek()
                .is_some_and(|Reverse(flight)| flight.at <= now)
            {
                let Some(Reverse(flight)) = self.in_flight.pop() else {
                    break;
                };
                if let Some(host) = self.deliver(flight, outside) {
                    deadlines[host] = self.host_deadline(host);
                }
            }
            for (index, deadline) in deadlines.iter_mut().enumerate() {
                if deadline.is_some_and(|deadline| deadline <= now) {
                    self.hosts[index].node.handle_timeout(now);
                    *deadline = self.host_deadline(index);
                    if let Some(next) = *deadline {
                        assert!(next > now, "a timer did not move past {now:?}");
                    }
                }
            }
            for rendezvous in &mut self.rendezvous {
                if rendezvous.server.poll_timeout() <= now {
                    rendezvous.server.handle_timeout(now);
                }
            }
        }
    }

    /// Runs for a duration.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Delivers every datagram in flight, and what they cause, at the
    /// current time, running no timer (the benches' lossless instant
    /// network: a handshake completes within one call).
    pub fn settle(&mut self) {
        loop {
            self.drain_outputs();
            if self.in_flight.is_empty() {
                return;
            }
            while let Some(Reverse(flight)) = self.in_flight.pop() {
                self.deliver(flight, &mut |_, _, _, _| None);
            }
        }
    }

    /// Whether `host` has an established session with `peer`.
    pub fn is_connected(&self, host: usize, peer: usize) -> bool {
        self.peer_status(host, peer)
            .is_some_and(|status| status.session_established)
    }

    /// Runs in steps until `condition` holds or `limit` of virtual time passes.
    pub fn run_until_condition(
        &mut self,
        limit: Duration,
        mut condition: impl FnMut(&SimNet) -> bool,
    ) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if condition(self) {
                return true;
            }
            self.run_for(CONDITION_STEP);
        }
        condition(self)
    }
}
