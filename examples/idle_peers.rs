//! Heap per idle peer (issue 7: ≤ 2 KiB per additional idle peer).
//!
//! Builds one `Node` (the hub) and brings up a session with each of
//! `--peers` throwaway peer nodes through real Noise handshakes over an
//! in-memory exchange: the peer trusts the hub and connects, the hub
//! answers and is confirmed; then the peer node is dropped. A counting
//! global allocator gives the hub's heap (bytes allocated − bytes freed,
//! everything else having been dropped) with one peer and with all of
//! them, hence the bytes per additional peer. The heap blocks that the
//! last peer left behind are listed by size, and the sizes of the
//! per-peer structures printed, to show where the bytes go.
//!
//! ```text
//! cargo run --release --example idle_peers -- --peers 10000
//! ```
//!
//! Virtual time moves 1 ms per peer and the hub's handshake load
//! threshold is lifted, so 10,000 handshakes do not put it under load
//! (cookie round trips would not change what it keeps per peer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentnet::core::address::{NetworkId, NodePrefix};
use agentnet::core::api::PeerSlot;
use agentnet::core::api::{NodeConfig, PeerConfig};
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::node::Node;
use agentnet::core::noise::cookie::InitiatorCookie;
use agentnet::core::noise::handshake::InitiatorHandshake;
use agentnet::core::noise::replay::ReplayWindow;
use agentnet::core::noise::session::Session;
use agentnet::core::peer::{Peer, PeerCounters};
use agentnet::core::policy::Policy;
use agentnet::core::policy::conntrack::ConnectionTracker;
use agentnet::core::stats::{PeerStats, ReceiveStats, RttEstimator};
use anyhow::ensure;
use clap::Parser;

/// Heap blocks remembered while tracing one peer's arrival.
const TRACE_SLOTS: usize = 4096;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_LEN: AtomicUsize = AtomicUsize::new(0);
static TRACE_ADDRESSES: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
static TRACE_SIZES: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];

/// The system allocator, counting live bytes and blocks; while tracing,
/// it also remembers each block made (and forgets it when freed).
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn note_alloc(address: *mut u8, size: usize) {
    if address.is_null() {
        return;
    }
    LIVE_BYTES.fetch_add(size, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        let slot = TRACE_LEN.fetch_add(1, Ordering::Relaxed);
        if slot < TRACE_SLOTS {
            TRACE_ADDRESSES[slot].store(address as usize, Ordering::Relaxed);
            TRACE_SIZES[slot].store(size, Ordering::Relaxed);
        }
    }
}

fn note_free(address: *mut u8, size: usize) {
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        let len = TRACE_LEN.load(Ordering::Relaxed).min(TRACE_SLOTS);
        for slot in 0..len {
            if TRACE_ADDRESSES[slot].load(Ordering::Relaxed) == address as usize {
                TRACE_ADDRESSES[slot].store(0, Ordering::Relaxed);
                TRACE_SIZES[slot].store(0, Ordering::Relaxed);
            }
        }
    }
}

// SAFETY: every call is passed unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping only touches atomics and never
// allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout as given to us, as the contract requires.
        let address = unsafe { System.alloc(layout) };
        note_alloc(address, layout.size());
        address
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let address = unsafe { System.alloc_zeroed(layout) };
        note_alloc(address, layout.size());
        address
    }

    unsafe fn dealloc(&self, address: *mut u8, layout: Layout) {
        note_free(address, layout.size());
        // SAFETY: the caller allocated `address` with `layout` through us,
        // hence through `System`.
        unsafe { System.dealloc(address, layout) }
    }

    unsafe fn realloc(&self, address: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` comes from the caller.
        let moved = unsafe { System.realloc(address, layout, new_size) };
        if !moved.is_null() {
            note_free(address, layout.size());
            note_alloc(moved, new_size);
        }
        moved
    }
}

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

#[derive(Debug, Parser)]
#[command(about = "Heap of one agent per idle peer with a session up")]
struct Args {
    /// Peers to bring up.
    #[arg(long, default_value_t = 10_000)]
    peers: u32,
}

const HUB_ENDPOINT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 255, 0, 1)),
    7400,
);

fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

fn identity(number: u32) -> anyhow::Result<Identity> {
    let mut secret = [0x5a; 32];
    secret[..4].copy_from_slice(&number.to_le_bytes());
    Ok(Identity::from_secret_bytes(&secret)?)
}

fn node(number: u32, now: Instant) -> anyhow::Result<Node> {
    let mut seed = [0xa5; 32];
    seed[..4].copy_from_slice(&number.to_le_bytes());
    Ok(Node::new(
        NodeConfig {
            identity: identity(number)?,
            network: network(),
            name: format!("agent-{number}"),
            tunnel_mtu: 1408,
        },
        seed,
        now,
        Duration::from_secs(1_800_000_000),
    ))
}

fn peer_endpoint(number: u32) -> SocketAddr {
    let [_, high, middle, low] = number.to_be_bytes();
    SocketAddr::from(([10, high, middle, low], 7400))
}

/// Delivers datagrams between the hub and one peer until both are quiet.
fn exchange(now: Instant, hub: &mut Node, peer: &mut Node, peer_at: SocketAddr) {
    loop {
        let mut moved = false;
        while let Some(transmit) = hub.poll_transmit() {
            moved = true;
            if transmit.destination == peer_at {
                peer.handle_datagram(now, HUB_ENDPOINT, &transmit.payload);
            }
        }
        while let Some(transmit) = peer.poll_transmit() {
            moved = true;
            if transmit.destination == HUB_ENDPOINT {
                hub.handle_datagram(now, peer_at, &transmit.payload);
            }
        }
        for node in [&mut *hub, &mut *peer] {
            while node.poll_tun_packet().is_some() {}
            while node.poll_event().is_some() {}
        }
        if !moved {
            return;
        }
    }
}

/// Brings up a session between the hub and a new peer node, then drops
/// the peer node. The peer announces two candidates, as an agent with an
/// IPv4 and an IPv6 interface does.
fn add_peer(hub: &mut Node, number: u32, now: Instant) -> anyhow::Result<AgentId> {
    let mut peer = node(number, now)?;
    let peer_id = peer.agent_id();
    let peer_at = peer_endpoint(number);
    let hub_id = hub.agent_id();
    peer.set_local_candidates(vec![
        peer_at,
        SocketAddr::new("2001:db8::1".parse()?, peer_at.port()),
    ]);
    hub.upsert_peer(
        now,
        PeerConfig {
            id: peer_id,
            name: format!("agent-{number}"),
            endpoint: None,
            allow: Policy::All,
        },
    );
    peer.upsert_peer(
        now,
        PeerConfig {
            id: hub_id,
            name: "hub".into(),
            endpoint: Some(HUB_ENDPOINT),
            allow: Policy::All,
        },
    );
    peer.connect(now, &hub_id);
    exchange(now, hub, &mut peer, peer_at);
    ensure!(
        hub.peer_path(now, &peer_id).is_some(),
        "no session with peer {number}"
    );
    Ok(peer_id)
}

/// Hash-table bytes per entry at this many entries (hashbrown: buckets a
/// power of two, at most 7/8 full, one control byte per bucket).
fn table_bytes_per_entry(entry: usize, entries: usize) -> f64 {
    let buckets = (entries * 8 / 7).next_power_of_two();
    (buckets * (entry + 1)) as f64 / entries as f64
}

fn print_sizes(peers: usize) {
    use std::mem::size_of;
    println!("-- sizes (bytes) --");
    let rows: [(&str, usize); 16] = [
        (
            "Node (inline, wherever the shell keeps it)",
            size_of::<Node>(),
        ),
        ("Peer (boxed, per peer)", size_of::<Peer>()),
        (
            "  3 x Option<Box<Session>> slots",
            3 * size_of::<Option<Box<Session>>>(),
        ),
        ("  PeerStats", size_of::<PeerStats>()),
        ("    of which ReceiveStats", size_of::<ReceiveStats>()),
        ("  PeerConfig", size_of::<PeerConfig>()),
        (
            "  ConnectionTracker (its table boxed, while flows live)",
            size_of::<ConnectionTracker>(),
        ),
        ("  PeerCounters", size_of::<PeerCounters>()),
        (
            "InitiatorCookie (boxed, from an initiation until a handshake)",
            size_of::<InitiatorCookie>(),
        ),
        ("Session (boxed, per session)", size_of::<Session>()),
        ("  of which ReplayWindow", size_of::<ReplayWindow>()),
        (
            "    + its full bitmap (boxed, past counter 63)",
            32 * size_of::<u64>(),
        ),
        (
            "  + ring LessSafeKey (boxed, per busy direction)",
            size_of::<ring::aead::LessSafeKey>(),
        ),
        (
            "InitiatorHandshake (boxed, while in flight)",
            size_of::<InitiatorHandshake>(),
        ),
        (
            "2 x RttEstimator (boxed with the pings, once pinged)",
            2 * size_of::<RttEstimator>(),
        ),
        ("NodePrefix", size_of::<NodePrefix>()),
    ];
    for (name, bytes) in rows {
        println!("{name:<52} {bytes:>6}");
    }
    println!("-- node tables at {peers} peers (bytes per peer, with hash-table slack) --");
    let tables: [(&str, usize); 4] = [
        (
            "peers by ID: HashMap<AgentId, PeerSlot>",
            size_of::<(AgentId, PeerSlot)>(),
        ),
        (
            "by_noise_key: HashMap<[u8; 32], PeerSlot>",
            size_of::<([u8; 32], PeerSlot)>(),
        ),
        (
            "by_prefix: HashMap<NodePrefix, PeerSlot>",
            size_of::<(NodePrefix, PeerSlot)>(),
        ),
        (
            "by_index: HashMap<u32, PeerSlot> (1 session)",
            size_of::<(u32, PeerSlot)>(),
        ),
    ];
    for (name, entry) in tables {
        println!("{name:<52} {:>8.0}", table_bytes_per_entry(entry, peers));
    }
    println!(
        "{:<52} {:>8}",
        "peer slab: Vec<Option<Box<Peer>>>",
        format!("{}-16", size_of::<Option<Box<Peer>>>())
    );
    println!("{:<52} {:>8}", "peer_order: Vec<PeerSlot>", "4-8");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.peers >= 2, "--peers must be at least 2");
    let start = Instant::now();
    let mut now = start;

    let base = live_bytes();
    let mut hub = node(0, now)?;
    hub.set_handshake_load_threshold(u32::MAX);
    let empty = live_bytes() - base;

    add_peer(&mut hub, 1, now)?;
    let one = live_bytes() - base;

    for number in 2..args.peers {
        now += Duration::from_millis(1);
        add_peer(&mut hub, number, now)?;
    }
    // The last peer is traced: the hub's tables have room by then (unless
    // a resize falls exactly here), so what it leaves is its own.
    now += Duration::from_millis(1);
    let before_last = live_bytes();
    TRACE_LEN.store(0, Ordering::Relaxed);
    TRACING.store(true, Ordering::Relaxed);
    let traced = add_peer(&mut hub, args.peers, now);
    TRACING.store(false, Ordering::Relaxed);
    traced?;
    let last_delta = live_bytes() as isize - before_last as isize;
    let left: Vec<usize> = (0..TRACE_LEN.load(Ordering::Relaxed).min(TRACE_SLOTS))
        .map(|slot| TRACE_SIZES[slot].load(Ordering::Relaxed))
        .filter(|size| *size > 0)
        .collect();

    hub.handle_timeout(now);
    while hub.poll_transmit().is_some() {}
    while hub.poll_event().is_some() {}
    let all = live_bytes() - base;
    let blocks = LIVE_BLOCKS.load(Ordering::Relaxed);

    let up = (1..=args.peers)
        .filter_map(|number| identity(number).ok())
        .filter(|peer| hub.peer_path(now, &peer.agent_id()).is_some())
        .count();
    ensure!(up == args.peers as usize, "only {up} sessions up");

    let per_peer = (all - one) as f64 / f64::from(args.peers - 1);
    println!("peers with a session up: {up}");
    println!("heap of the node, no peer:  {empty} bytes");
    println!("heap of the node, 1 peer:   {one} bytes");
    println!(
        "heap of the node, {} peers: {all} bytes (live blocks in the process: {blocks})",
        args.peers
    );
    println!(
        "heap per additional idle peer: {per_peer:.0} bytes ({:.2} KiB; goal <= 2048)",
        per_peer / 1024.0
    );
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for size in &left {
        *counts.entry(*size).or_default() += 1;
    }
    let mut by_size: Vec<(usize, usize)> = counts.into_iter().collect();
    by_size.sort_unstable_by_key(|&(size, _)| std::cmp::Reverse(size));
    println!(
        "last peer: heap +{last_delta} bytes; blocks it left: {}",
        by_size
            .iter()
            .map(|(size, count)| format!("{count}x{size}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    print_sizes(args.peers as usize);
    println!("(took {:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}
