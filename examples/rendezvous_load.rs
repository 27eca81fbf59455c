//! Scale of one rendezvous server (issue 14): memory per registered
//! agent, CPU per registration refresh, relay throughput and sweep cost
//! with `--agents` agents registered.
//!
//! One `RendezvousServer` (the sans-IO core the daemon runs) is fed the
//! datagrams real agents send, built with the core's own client-side
//! pieces: each simulated agent makes a Noise IK handshake
//! (`InitiatorHandshake`) and sends a sealed `Register` frame in the
//! session, as `Node` does; a second handshake follows (the 2-minute
//! rekey, so the server holds the current and the previous session of
//! every client, as in steady state). Then every agent refreshes its
//! registration once (one sealed `Register` each, CPU time measured over
//! the whole round), and `--pairs` pairs of registered agents relay
//! 1400-byte envelopes to each other. The server's own soft-state sweeps
//! (`handle_timeout`, every 5 s of virtual time) are timed as they fall
//! due. Virtual time spreads each round over 20 s.
//!
//! The server's heap is measured with a counting global allocator: the
//! live bytes it frees when dropped. Bytes per agent are those of the
//! full server less those of a server with two agents (which already holds
//! the fixed relay rate-limit buckets), divided by the extra agents.
//!
//! Output: one `key value` line per result on stdout (progress on stderr):
//!
//! ```text
//! cargo run --release --example rendezvous_load -- --agents 100000
//! ```
//!
//! The handshake load threshold is lifted (100,000 handshakes in 20 s
//! would otherwise be answered with cookies first; the extra round trip
//! does not change what the server keeps).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentnet::core::address::{NetworkId, NodeId};
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::handshake::{InitiationPayload, InitiatorHandshake, SUPPORTED_VERSIONS};
use agentnet::core::noise::session::Session;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::rendezvous::{ClientAddr, RendezvousConfig, RendezvousServer};
use agentnet::core::rng::{CoreRng, core_rng};
use agentnet::core::wire::control_frame::ControlFrame;
use agentnet::core::wire::path::{NatHint, relay_envelope};
use agentnet::core::wire::{Datagram, RELAY_HEADER_LEN, TYPE_DATA};
use anyhow::{Context, bail, ensure};
use clap::Parser;
use rand::RngCore;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes.
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// SAFETY: every call is passed unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping only touches an atomic.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout as given to us, as the contract requires.
        let address = unsafe { System.alloc(layout) };
        if !address.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        address
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let address = unsafe { System.alloc_zeroed(layout) };
        if !address.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        address
    }

    unsafe fn dealloc(&self, address: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller allocated `address` with `layout` through us,
        // hence through `System`.
        unsafe { System.dealloc(address, layout) }
    }

    unsafe fn realloc(&self, address: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` comes from the caller.
        let moved = unsafe { System.realloc(address, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        moved
    }
}

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// CPU time of this thread: time preempted by other work on a shared
/// machine does not count.
fn cpu_now() -> Duration {
    agentnet::sys::calls::thread_cpu_time().expect("Linux has CLOCK_THREAD_CPUTIME_ID")
}

#[derive(Debug, Parser)]
#[command(about = "Load of one rendezvous server with many registered agents")]
struct Args {
    /// Agents that handshake, register and refresh.
    #[arg(long, default_value_t = 100_000)]
    agents: u32,
    /// Pairs of registered agents relaying to each other.
    #[arg(long, default_value_t = 2_000)]
    pairs: u32,
    /// Relay envelopes sent in all.
    #[arg(long, default_value_t = 1_000_000)]
    relay_packets: u32,
}

/// Size of a relay envelope (header and inner datagram).
const ENVELOPE_LEN: usize = 1400;
/// Virtual time each round (handshakes, rekeys, refreshes) is spread over.
const ROUND: Duration = Duration::from_secs(20);
/// Virtual time between the starts of two rounds (an agent's register
/// interval is 25 s).
const ROUND_GAP: Duration = Duration::from_secs(25);
/// Unix time at the start (any fixed time).
const UNIX_START: Duration = Duration::from_secs(1_800_000_000);

fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

fn identity(number: u32, salt: u8) -> anyhow::Result<Identity> {
    let mut secret = [salt; 32];
    secret[..4].copy_from_slice(&number.to_le_bytes());
    Ok(Identity::from_secret_bytes(&secret)?)
}

/// An agent's underlay endpoint: each behind its own address, as agents
/// spread over the Internet are (one address per IPv6 /64 here).
fn endpoint(number: u32) -> ClientAddr {
    let [a, b, c, d] = number.to_be_bytes();
    let address = Ipv6Addr::new(
        0x2001,
        0xdb8,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        1,
    );
    ClientAddr::Udp(SocketAddr::new(address.into(), 7400))
}

/// The client side of one simulated agent.
struct SimAgent {
    id: AgentId,
    noise_static: NoiseStatic,
    from: ClientAddr,
    session: Option<Session>,
}

/// The server, its clients and the CPU time spent in it.
struct Bench {
    server: RendezvousServer,
    server_noise_key: [u8; 32],
    agents: Vec<SimAgent>,
    rng: CoreRng,
    start: Instant,
    /// Server CPU time of handshakes and first registrations.
    handshake_cpu: Duration,
    handshakes: u32,
    /// Sweeps timed while all agents were registered.
    sweeps: Vec<Duration>,
}

impl Bench {
    fn new(agents: u32, start: Instant) -> anyhow::Result<Self> {
        let server_identity = identity(u32::MAX, 0x77)?;
        let server_noise_key = server_identity.agent_id().noise_public_key();
        let mut server = RendezvousServer::new(
            RendezvousConfig::new(server_identity, network()),
            [7; 32],
            start,
        );
        server.set_handshake_load_threshold(u32::MAX);
        let agents = (0..agents)
            .map(|number| {
                let identity = identity(number, 0x5a)?;
                Ok(SimAgent {
                    id: identity.agent_id(),
                    noise_static: NoiseStatic::new(&identity.noise_secret_key()),
                    from: endpoint(number),
                    session: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            server,
            server_noise_key,
            agents,
            rng: core_rng([9; 32]),
            start,
            handshake_cpu: Duration::ZERO,
            handshakes: 0,
            sweeps: Vec::new(),
        })
    }

    /// When agent `number` acts in the round that starts at `round_start`.
    fn time_in_round(&self, round_start: Instant, number: usize) -> Instant {
        round_start + ROUND.mul_f64(number as f64 / self.agents.len().max(1) as f64)
    }

    /// Runs the server's sweep if due, timing it.
    fn service_timers(&mut self, now: Instant, record: bool) {
        if self.server.poll_timeout() <= now {
            let started = cpu_now();
            self.server.handle_timeout(now);
            if record {
                self.sweeps.push(cpu_now() - started);
            }
        }
    }

    /// Feeds one datagram and returns the single answer (timed).
    fn exchange(&mut self, now: Instant, from: ClientAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let started = cpu_now();
        self.server.handle_datagram(now, from, datagram);
        let answer = self.server.poll_transmit();
        self.handshake_cpu += cpu_now() - started;
        let (to, payload) = answer?;
        (to == from).then_some(payload)
    }

    /// Agent `number` makes a handshake and registers in the new session.
    fn handshake_and_register(&mut self, now: Instant, number: usize) -> anyhow::Result<()> {
        let local_index = self.rng.next_u32();
        let payload = InitiationPayload {
            timestamp: Tai64N::from_unix(UNIX_START + now.duration_since(self.start)),
            versions: SUPPORTED_VERSIONS.to_vec(),
            name: format!("agent-{number}"),
            candidates: vec![
                SocketAddr::from(([192, 168, 1, 20], 7400)),
                SocketAddr::new("2001:db8::1".parse()?, 7400),
            ],
            nat: NatHint::default(),
            ciphers: CipherSet::ALL,
        };
        let agent = &self.agents[number];
        let (mut handshake, initiation) = InitiatorHandshake::start(
            &mut self.rng,
            network(),
            &agent.noise_static,
            &self.server_noise_key,
            local_index,
            &payload,
        )?;
        let from = agent.from;
        let response = self
            .exchange(now, from, &initiation)
            .context("no handshake response")?;
        let Ok(Datagram::Response(response)) = Datagram::parse(&response) else {
            bail!("not a handshake response");
        };
        let (_, keys) = handshake.finish(response.noise())?;
        let mut session = Session::new(&keys, local_index, response.sender_index(), true, now);
        let register = self.register_datagram(now, number, &mut session)?;
        let answer = self
            .exchange(now, from, &register)
            .context("no answer to Register")?;
        check_registered(now, &mut session, &answer)?;
        self.agents[number].session = Some(session);
        self.handshakes += 1;
        Ok(())
    }

    /// A sealed `Register` frame of agent `number` in `session`.
    fn register_datagram(
        &self,
        now: Instant,
        number: usize,
        session: &mut Session,
    ) -> anyhow::Result<Vec<u8>> {
        let frame = ControlFrame::Register {
            agent: self.agents[number].id,
        }
        .encode();
        let mut datagram = Vec::new();
        session
            .seal(now, &frame, &mut datagram)
            .map_err(|error| anyhow::anyhow!("seal: {error}"))?;
        Ok(datagram)
    }

    /// Every agent handshakes and registers, spread over a round.
    fn handshake_round(&mut self, round_start: Instant, record_sweeps: bool) -> anyhow::Result<()> {
        for number in 0..self.agents.len() {
            let now = self.time_in_round(round_start, number);
            self.service_timers(now, record_sweeps);
            self.handshake_and_register(now, number)?;
        }
        Ok(())
    }

    /// Every agent refreshes its registration once; returns the server's
    /// CPU time for the whole round (datagrams only, sweeps apart).
    fn refresh_round(&mut self, round_start: Instant) -> anyhow::Result<Duration> {
        let mut datagrams = Vec::with_capacity(self.agents.len());
        for number in 0..self.agents.len() {
            let now = self.time_in_round(round_start, number);
            let mut session = self.agents[number].session.take().context("no session")?;
            datagrams.push((now, self.register_datagram(now, number, &mut session)?));
            self.agents[number].session = Some(session);
        }
        let before = self.server.counters().registrations;
        let mut cpu = Duration::ZERO;
        for (number, (now, datagram)) in datagrams.iter().enumerate() {
            self.service_timers(*now, true);
            let from = self.agents[number].from;
            let started = cpu_now();
            self.server.handle_datagram(*now, from, datagram);
            while self.server.poll_transmit().is_some() {}
            cpu += cpu_now() - started;
        }
        let refreshed = self.server.counters().registrations - before;
        ensure!(
            refreshed == self.agents.len() as u64,
            "{refreshed} of {} refreshes accepted",
            self.agents.len()
        );
        Ok(cpu)
    }

    /// `pairs` pairs (agents 2k and 2k+1) send `packets` 1400-byte relay
    /// envelopes in all, one microsecond of virtual time apart; returns the
    /// server's CPU time.
    fn relay_round(
        &mut self,
        round_start: Instant,
        pairs: usize,
        packets: usize,
    ) -> anyhow::Result<Duration> {
        let senders = (2 * pairs).min(self.agents.len() & !1);
        ensure!(senders >= 2, "relaying needs two agents");
        let mut inner = vec![0x42; ENVELOPE_LEN - RELAY_HEADER_LEN];
        inner[0] = TYPE_DATA;
        let envelopes: Vec<(ClientAddr, Vec<u8>, ClientAddr)> = (0..senders)
            .map(|number| {
                let partner = number ^ 1;
                let destination = NodeId::of(&self.agents[partner].id);
                (
                    self.agents[number].from,
                    relay_envelope(destination, &inner),
                    self.agents[partner].from,
                )
            })
            .collect();
        let before = self.server.counters();
        let mut cpu = Duration::ZERO;
        let mut misrouted = 0usize;
        for packet in 0..packets {
            let now = round_start + Duration::from_micros(packet as u64);
            self.service_timers(now, true);
            let (from, envelope, to) = &envelopes[packet % senders];
            let started = cpu_now();
            self.server.handle_datagram(now, *from, envelope);
            let forwarded = self.server.poll_transmit();
            cpu += cpu_now() - started;
            if forwarded.is_none_or(|(destination, _)| destination != *to) {
                misrouted += 1;
            }
        }
        let after = self.server.counters();
        let relayed = after.relayed_packets - before.relayed_packets;
        ensure!(
            relayed == packets as u64 && misrouted == 0,
            "{relayed} of {packets} forwarded ({misrouted} missing or misrouted; \
             rate-limited {}, unknown destination {})",
            after.dropped_rate_limited - before.dropped_rate_limited,
            after.dropped_unknown_destination - before.dropped_unknown_destination
        );
        Ok(cpu)
    }
}

/// Opens the server's answer and checks it is `Registered`.
fn check_registered(now: Instant, session: &mut Session, answer: &[u8]) -> anyhow::Result<()> {
    let Ok(Datagram::Data(data)) = Datagram::parse(answer) else {
        bail!("the answer to Register is not a data datagram");
    };
    let mut buffer = data.ciphertext().to_vec();
    let len = session
        .open(now, data.counter(), &mut buffer)
        .map_err(|error| anyhow::anyhow!("open: {error}"))?;
    ensure!(
        matches!(
            ControlFrame::decode(&buffer[..len]),
            Some(ControlFrame::Registered { .. })
        ),
        "the answer to Register is not Registered"
    );
    Ok(())
}

/// What one run measured.
struct Measured {
    handshake_us: f64,
    refresh_us: f64,
    relay_pps: f64,
    sweeps: Vec<Duration>,
    server_heap: usize,
    registered: u64,
}

/// The whole scenario with this many agents.
fn run(agents: u32, pairs: u32, relay_packets: u32) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let mut bench = Bench::new(agents, start)?;
    eprintln!("{agents} agents: handshakes and registrations");
    bench.handshake_round(start, false)?;
    eprintln!("{agents} agents: rekeys");
    bench.handshake_round(start + ROUND_GAP, true)?;
    let handshake_us = bench.handshake_cpu.as_secs_f64() * 1e6 / f64::from(bench.handshakes.max(1));
    eprintln!("{agents} agents: refreshes");
    let refresh_cpu = bench.refresh_round(start + 2 * ROUND_GAP)?;
    let refresh_us = refresh_cpu.as_secs_f64() * 1e6 / f64::from(agents.max(1));
    eprintln!("{agents} agents: relaying");
    let relay_cpu = bench.relay_round(
        start + 3 * ROUND_GAP,
        pairs as usize,
        relay_packets as usize,
    )?;
    let relay_pps = f64::from(relay_packets) / relay_cpu.as_secs_f64().max(1e-9);
    let registered = bench.server.counters().registered_now;
    let usage = bench.server.usage();
    ensure!(
        usage.clients == agents as usize && usage.registrations == agents as usize,
        "not all agents are clients and registered: {usage:?}"
    );
    let Bench { server, sweeps, .. } = bench;
    let before_drop = live_bytes();
    drop(server);
    let server_heap = before_drop.saturating_sub(live_bytes());
    Ok(Measured {
        handshake_us,
        refresh_us,
        relay_pps,
        sweeps,
        server_heap,
        registered,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents >= 4, "at least 4 agents");
    let baseline = run(2, 1, 100)?;
    let measured = run(args.agents, args.pairs, args.relay_packets)?;
    let per_agent = measured.server_heap.saturating_sub(baseline.server_heap) as f64
        / f64::from(args.agents - 2);
    let sweep_ms: Vec<f64> = measured
        .sweeps
        .iter()
        .map(|sweep| sweep.as_secs_f64() * 1e3)
        .collect();
    let sweep_mean = sweep_ms.iter().sum::<f64>() / sweep_ms.len().max(1) as f64;
    let sweep_max = sweep_ms.iter().copied().fold(0.0, f64::max);
    println!("rendezvous_agents {}", measured.registered);
    println!("rendezvous_relay_pairs {}", args.pairs.min(args.agents / 2));
    println!(
        "rendezvous_server_heap_mib {:.1}",
        measured.server_heap as f64 / (1u64 << 20) as f64
    );
    println!("rendezvous_bytes_per_agent {per_agent:.0}");
    println!("rendezvous_handshake_us {:.1}", measured.handshake_us);
    println!("rendezvous_refresh_us {:.2}", measured.refresh_us);
    println!("rendezvous_relay_pps {:.0}", measured.relay_pps);
    println!(
        "rendezvous_relay_mbit {:.0}",
        measured.relay_pps * (ENVELOPE_LEN * 8) as f64 / 1e6
    );
    println!("rendezvous_sweep_ms {sweep_mean:.2}");
    println!("rendezvous_sweep_max_ms {sweep_max:.2}");
    Ok(())
}
