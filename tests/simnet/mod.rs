//! A deterministic simulated network for driving several `Node`s: a virtual
//! clock that jumps to the next event, and links with seeded loss, delay,
//! jitter (hence reordering) and duplication. No sockets, no sleeping.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use agentnet::core::address::{NetworkId, NodePrefix};
use agentnet::core::api::{Event, NodeConfig, PeerConfig, Transmit};
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::node::Node;
use agentnet::core::policy::Policy;
use agentnet::core::rendezvous::{ClientAddr, RendezvousConfig, RendezvousServer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Wall clock given to nodes (any fixed value: the simulation is closed).
const UNIX_EPOCH_OFFSET: Duration = Duration::from_secs(1_800_000_000);

/// Impairments of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in [0, jitter) (reorders packets).
    pub jitter: Duration,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            duplicate: 0.0,
        }
    }
}

/// How a simulated NAT maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping (port-preserving), address-and-port
    /// dependent filtering: Linux `masquerade`.
    Easy,
    /// Endpoint-dependent mapping (a random port per destination),
    /// address-and-port dependent filtering: `masquerade random`.
    Hard,
}

struct NatMapping {
    private: SocketAddr,
    /// Remote endpoints the mapping has sent to (the filter).
    remotes: HashSet<SocketAddr>,
}

/// A NAT router with one public address.
pub struct SimNat {
    pub public_ip: IpAddr,
    pub kind: NatKind,
    /// Drops every outbound UDP datagram.
    pub udp_blocked: bool,
    by_flow: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: HashMap<u16, NatMapping>,
}

impl SimNat {
    fn map_outbound(
        &mut self,
        rng: &mut ChaCha20Rng,
        private: SocketAddr,
        remote: SocketAddr,
    ) -> SocketAddr {
        let key = match self.kind {
            NatKind::Easy => (private, None),
            NatKind::Hard => (private, Some(remote)),
        };
        let port = match self.by_flow.get(&key) {
            Some(port) => *port,
            None => {
                let mut port = if self.kind == NatKind::Easy {
                    private.port()
                } else {
                    rng.gen_range(1024..=65535)
                };
                while self.by_port.contains_key(&port) {
                    port = rng.gen_range(1024..=65535);
                }
                self.by_flow.insert(key, port);
                self.by_port.insert(
                    port,
                    NatMapping {
                        private,
                        remotes: HashSet::new(),
                    },
                );
                port
            }
        };
        if let Some(mapping) = self.by_port.get_mut(&port) {
            mapping.remotes.insert(remote);
        }
        SocketAddr::new(self.public_ip, port)
    }

    fn map_inbound(&self, port: u16, remote: SocketAddr) -> Option<SocketAddr> {
        let mapping = self.by_port.get(&port)?;
        mapping.remotes.contains(&remote).then_some(mapping.private)
    }
}

/// A simulated rendezvous server (public address, no NAT).
pub struct SimRendezvous {
    pub server: RendezvousServer,
    pub address: SocketAddr,
    pub up: bool,
}

/// One simulated host.
pub struct SimHost {
    pub node: Node,
    pub identity: Identity,
    pub address: SocketAddr,
    /// Packets the node wrote to its TUN.
    pub tun: Vec<Vec<u8>>,
    /// Events the node reported.
    pub events: Vec<Event>,
    /// Datagrams the host received from the network (for "no reply" checks).
    pub received_from: Vec<SocketAddr>,
    /// The NAT the host sits behind, if any.
    pub nat: Option<usize>,
}

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
    pub now: Instant,
    pub link: LinkConfig,
    pub network: NetworkId,
    pub hosts: Vec<SimHost>,
    rng: ChaCha20Rng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    /// Every datagram put on the wire: (from, to, bytes).
    pub wire_log: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    pub nats: Vec<SimNat>,
    pub rendezvous: Vec<SimRendezvous>,
    /// Pairs of public IPs that cannot reach each other (a cut path).
    pub cuts: HashSet<(IpAddr, IpAddr)>,
}

pub const TUNNEL_MTU: u16 = 1408;
/// Local port of a host's probe socket N: this base plus N.
pub const PROBE_PORT_BASE: u16 = 50_000;

impl SimNet {
    /// An empty network with a seeded RNG.
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        Self {
            now: Instant::now(),
            link,
            network: NetworkId::from_name("agentnet"),
            hosts: Vec::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            sequence: 0,
            wire_log: Vec::new(),
            nats: Vec::new(),
            rendezvous: Vec::new(),
            cuts: HashSet::new(),
        }
    }

    /// Adds a NAT router with public address 10.0.1.N.
    pub fn add_nat(&mut self, kind: NatKind) -> usize {
        let index = self.nats.len();
        self.nats.push(SimNat {
            public_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8 + 1)),
            kind,
            udp_blocked: false,
            by_flow: HashMap::new(),
            by_port: HashMap::new(),
        });
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
        self.hosts[index].address = format!("192.168.{}.{}:7400", nat + 1, behind + 2)
            .parse()
            .expect("addr");
        self.hosts[index].nat = Some(nat);
        index
    }

    /// Adds a rendezvous server at `10.0.2.N:7400`.
    pub fn add_rendezvous(&mut self, key_seed: u8) -> usize {
        let identity = Identity::from_secret_bytes(&[key_seed; 32]).expect("32 bytes");
        let index = self.rendezvous.len();
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        let server = RendezvousServer::new(
            RendezvousConfig::new(identity, self.network),
            seed,
            self.now,
        );
        let address = format!("10.0.2.{}:7400", index + 1).parse().expect("addr");
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
        let id = self.id(peer);
        self.hosts[host]
            .node
            .status(self.now)
            .peers
            .iter()
            .find(|status| status.id == id)
            .map(|status| format!("{:?}", status.path).to_lowercase())
            .unwrap_or_else(|| "none".into())
    }

    /// Adds a host with a key derived from `key_seed`, at `10.0.0.N:7400`.
    pub fn add_host(&mut self, key_seed: u8) -> usize {
        let identity = Identity::from_secret_bytes(&[key_seed; 32]).expect("32 bytes");
        let index = self.hosts.len();
        let address: SocketAddr = format!("10.0.0.{}:7400", index + 1).parse().expect("addr");
        let mut node_seed = [0u8; 32];
        self.rng.fill(&mut node_seed);
        let node = Node::new(
            NodeConfig {
                identity: identity.clone(),
                network: self.network,
                name: format!("host{index}"),
                tunnel_mtu: TUNNEL_MTU,
            },
            node_seed,
            self.now,
            UNIX_EPOCH_OFFSET,
        );
        self.hosts.push(SimHost {
            node,
            identity,
            address,
            tun: Vec::new(),
            events: Vec::new(),
            received_from: Vec::new(),
            nat: None,
        });
        index
    }

    pub fn id(&self, host: usize) -> AgentId {
        self.hosts[host].identity.agent_id()
    }

    pub fn overlay_address(&self, host: usize) -> Ipv6Addr {
        NodePrefix::of_agent(self.network, &self.id(host)).agent_address()
    }

    /// The host's IPv4 overlay address.
    pub fn overlay_address4(&self, host: usize) -> Ipv4Addr {
        agentnet::core::address::agent_address4(self.network, &self.id(host))
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

    /// Puts a datagram on the wire from an arbitrary source (an attacker).
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
        self.wire_log.push((from, to, payload.clone()));
        // Outbound NAT: unless both ends sit behind the same NAT, the source
        // is translated to the NAT's public address.
        let from = match self.nat_of_address(from) {
            Some(nat) if self.nat_of_address(to) != Some(nat) => {
                if self.nats[nat].udp_blocked {
                    return;
                }
                self.nats[nat].map_outbound(&mut self.rng, from, to)
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

    fn deliver(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        // Inbound NAT: a datagram to a NAT's public address reaches the host
        // behind it only through a mapping that sent to this source.
        let to = match self.nats.iter().find(|nat| nat.public_ip == to.ip()) {
            Some(nat) => match nat.map_inbound(to.port(), from) {
                Some(private) => private,
                None => return,
            },
            None => to,
        };
        if let Some(rendezvous) = self.rendezvous.iter_mut().find(|r| r.address == to) {
            if rendezvous.up {
                rendezvous
                    .server
                    .handle_datagram(now, ClientAddr::Udp(from), payload);
            }
            return;
        }
        if let Some(host) = self.hosts.iter_mut().find(|host| host.address == to) {
            host.received_from.push(from);
            host.node.handle_datagram(now, from, payload);
        } else if let Some(host) = self
            .hosts
            .iter_mut()
            .find(|host| host.address.ip() == to.ip() && to.port() >= PROBE_PORT_BASE)
        {
            host.received_from.push(from);
            host.node
                .handle_datagram_on_probe(now, to.port() - PROBE_PORT_BASE, from, payload);
        }
    }

    /// Runs the simulation until `until` (virtual time).
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.drain_outputs();
            let next_delivery = self.in_flight.peek().map(|Reverse(flight)| flight.at);
            let next_timer = self
                .hosts
                .iter()
                .filter_map(|host| host.node.poll_timeout())
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
                self.deliver(now, flight.from, flight.to, &flight.payload);
            }
            for host in &mut self.hosts {
                if host
                    .node
                    .poll_timeout()
                    .is_some_and(|deadline| deadline <= now)
                {
                    host.node.handle_timeout(now);
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

    /// Whether `host` has an established session with `peer`.
    pub fn is_connected(&self, host: usize, peer: usize) -> bool {
        let id = self.id(peer);
        self.hosts[host]
            .node
            .status(self.now)
            .peers
            .iter()
            .any(|status| status.id == id && status.session_established)
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
            self.run_for(Duration::from_millis(5));
        }
        condition(self)
    }
}

/// A UDP-in-IPv6 packet from `source` to `destination` carrying `tag`.
pub fn udp_packet(
    source: Ipv6Addr,
    destination: Ipv6Addr,
    destination_port: u16,
    tag: u32,
    len: usize,
) -> Vec<u8> {
    let payload_len = 8 + len.max(4);
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload_len as u16).to_be_bytes());
    packet.push(17);
    packet.push(64);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&destination_port.to_be_bytes());
    packet.extend_from_slice(&(payload_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&tag.to_be_bytes());
    packet.resize(40 + payload_len, 0xab);
    packet
}

/// A TCP-in-IPv6 packet with ports and flags.
pub fn tcp_packet(
    source: Ipv6Addr,
    destination: Ipv6Addr,
    source_port: u16,
    destination_port: u16,
    flags: u8,
) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&destination_port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    packet.extend_from_slice(&tcp);
    packet
}

/// A UDP-in-IPv4 packet (DF set) from `source` to `destination` carrying
/// `tag`, `len` bytes of UDP payload.
pub fn udp4_packet(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    destination_port: u16,
    tag: u32,
    len: usize,
) -> Vec<u8> {
    let udp_len = 8 + len.max(4);
    let mut packet = ipv4_header(source, destination, 17, 20 + udp_len);
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&destination_port.to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&tag.to_be_bytes());
    packet.resize(20 + udp_len, 0xab);
    packet
}

/// A TCP-in-IPv4 packet (DF set) with ports and flags.
pub fn tcp4_packet(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    source_port: u16,
    destination_port: u16,
    flags: u8,
) -> Vec<u8> {
    let mut packet = ipv4_header(source, destination, 6, 40);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&destination_port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    packet.extend_from_slice(&tcp);
    packet
}

/// An IPv4 header (no options, DF, TTL 64) with its checksum.
fn ipv4_header(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, total: usize) -> Vec<u8> {
    let mut header = etherparse::Ipv4Header::new(
        (total - 20) as u16,
        64,
        etherparse::IpNumber(protocol),
        source.octets(),
        destination.octets(),
    )
    .expect("header");
    header.dont_fragment = true;
    header.header_checksum = header.calc_header_checksum();
    header.to_bytes().to_vec()
}

/// The tag of a packet made by [`udp_packet`] or [`udp4_packet`].
pub fn tag_of(packet: &[u8]) -> Option<u32> {
    let at = if packet.first()? >> 4 == 4 { 28 } else { 48 };
    let bytes: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
