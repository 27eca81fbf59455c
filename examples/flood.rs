//! Handshake flood generator for `scripts/flood.sh` (issue 9): sends
//! handshake initiations (type 1) to an agent at a fixed rate.
//!
//! - `--mode garbage`: initiation-shaped random bytes; mac1 does not verify
//!   (a stranger who does not know the target's key).
//! - `--mode mac1`: real Noise IK initiations from random, untrusted keys
//!   with a valid mac1 (someone who knows the target's public key). A pool
//!   of distinct initiations is made once; each send takes the next one,
//!   gives it a fresh sender index and seals mac1 again (one BLAKE2s), so
//!   the generator can go far faster than the target could do the
//!   Diffie-Hellman they ask for.
//! - `--mode trust-request --spoof-from 10.213.0.0/16`: type-6 datagrams
//!   (trust requests) with a valid mac1 and no valid request inside, each
//!   from a new source address of that range (raw socket, root only; the
//!   target needs a route back to the range, though nothing is ever
//!   answered). Issue #17 item 1: the target's limiter must cost O(1) per
//!   new source, and its peers' traffic must go on.
//!
//! ```text
//! cargo run --release --example flood -- --target 10.0.0.2:7400 \
//!     --id <AGENT_ID> --mode mac1 --rate 100000 --seconds 30
//! ```
//!
//! Prints one line of totals at the end (sent, send errors, achieved rate).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use agentnet::core::address::NetworkId;
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::handshake::{InitiationPayload, InitiatorHandshake};
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::rng::core_rng;
use agentnet::core::wire::path::NatHint;
use agentnet::core::wire::{TYPE_INITIATION, TYPE_TRUST_REQUEST};
use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
};
use rand::{Rng, RngCore};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Bad mac1: dropped after one BLAKE2s.
    Garbage,
    /// Valid mac1, untrusted key.
    Mac1,
    /// Type-6 datagrams with a valid mac1 from many spoofed sources.
    TrustRequest,
}

#[derive(Debug, Parser)]
#[command(about = "Flood an agent with handshake initiations (benchmark tool)")]
struct Args {
    /// The agent's UDP endpoint.
    #[arg(long)]
    target: SocketAddr,
    /// The agent's ID (mac1 is keyed by it).
    #[arg(long)]
    id: AgentId,
    /// The overlay network's name.
    #[arg(long, default_value = "agentnet")]
    network: String,
    /// What to send.
    #[arg(long, value_enum, default_value = "mac1")]
    mode: Mode,
    /// Initiations per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// How long to flood.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Distinct initiations made in advance (`mac1`).
    #[arg(long, default_value_t = 1024)]
    pool: usize,
    /// IPv4 range the sources of `trust-request` are drawn from, in turn
    /// (`A.B.C.D/LEN`).
    #[arg(long)]
    spoof_from: Option<String>,
}

/// An IPv4 range `A.B.C.D/LEN`: its first address and size.
fn parse_range(text: &str) -> anyhow::Result<(u32, u32)> {
    let (address, len) = text.split_once('/').context("expected A.B.C.D/LEN")?;
    let address: Ipv4Addr = address.parse().context("bad address")?;
    let len: u32 = len.parse().context("bad prefix length")?;
    if !(8..=30).contains(&len) {
        bail!("prefix length must be 8..=30");
    }
    let size = 1u32 << (32 - len);
    Ok((u32::from(address) & !(size - 1), size))
}

/// An IPv4/UDP packet from `source` to `target` carrying `payload` (for a
/// raw socket with `IPPROTO_RAW`: the kernel fills in the IP checksum; a
/// zero UDP checksum means none, which IPv4 allows).
fn ipv4_udp(source: SocketAddrV4, target: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&source.ip().octets());
    packet.extend_from_slice(&target.ip().octets());
    packet.extend_from_slice(&source.port().to_be_bytes());
    packet.extend_from_slice(&target.port().to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

/// Sends `--rate` type-6 datagrams a second, each from the next address of
/// the spoofed range, through a raw socket.
fn trust_request_flood(args: &Args, mac1: &Mac1Key) -> anyhow::Result<()> {
    let SocketAddr::V4(target) = args.target else {
        bail!("--mode trust-request floods an IPv4 target");
    };
    let (first, size) = parse_range(
        args.spoof_from
            .as_deref()
            .context("--mode trust-request needs --spoof-from A.B.C.D/LEN")?,
    )?;
    let mut payload = vec![0u8; 400];
    rand::thread_rng().fill_bytes(&mut payload);
    payload[..4].copy_from_slice(&[TYPE_TRUST_REQUEST, 0, 0, 0]);
    mac1.seal(&mut payload);
    let socket = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::Raw,
    )
    .context("raw socket (root only)")?;
    let destination = SockaddrIn::from(target);
    eprintln!(
        "flood: type-6 datagrams /s {} to {target} from {size} addresses for {} s",
        args.rate, args.seconds
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let (mut sent, mut errors, mut next) = (0u64, 0u64, 0u32);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now - start).as_secs_f64() * args.rate as f64;
        while (sent + errors) as f64 <= due {
            next = (next + 1) % size;
            let source = SocketAddrV4::new(
                Ipv4Addr::from(first + next),
                40_000 + (next % 20_000) as u16,
            );
            let packet = ipv4_udp(source, target, &payload);
            match sendto(socket.as_raw_fd(), &packet, &destination, MsgFlags::empty()) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "flood: mode=TrustRequest sent={sent} errors={errors} seconds={elapsed:.1} rate={:.0}/s",
        sent as f64 / elapsed
    );
    Ok(())
}

/// Distinct valid-mac1 initiations from random keys.
fn mac1_pool(network: NetworkId, target: &AgentId, size: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let mut rng = core_rng(seed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?;
    (0..size)
        .map(|i| {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let stranger = Identity::from_secret_bytes(&secret)?;
            let payload = InitiationPayload {
                timestamp: Tai64N::from_unix(now + Duration::from_millis(i as u64)),
                versions: vec![1],
                name: format!("flood-{i}"),
                candidates: Vec::new(),
                nat: NatHint::default(),
                ciphers: CipherSet::ALL,
            };
            let index = rng.r#gen();
            let (_, datagram) = InitiatorHandshake::start(
                &mut rng,
                network,
                &NoiseStatic::new(&stranger.noise_secret_key()),
                &target.noise_public_key(),
                index,
                &payload,
            )?;
            Ok(datagram)
        })
        .collect()
}

/// Initiation-shaped random bytes (right type and length, wrong mac1).
fn garbage_pool(size: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::thread_rng();
    (0..size)
        .map(|_| {
            let mut datagram = vec![0u8; 180];
            rng.fill_bytes(&mut datagram);
            datagram[..4].copy_from_slice(&[TYPE_INITIATION, 0, 0, 0]);
            datagram
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate == 0 || args.pool == 0 {
        bail!("--rate and --pool must be positive");
    }
    let network = NetworkId::from_name(&args.network);
    let mac1 = Mac1Key::for_responder(network, &args.id.noise_public_key());
    let made = Instant::now();
    let mut pool = match args.mode {
        Mode::Mac1 => mac1_pool(network, &args.id, args.pool)?,
        Mode::Garbage => garbage_pool(args.pool),
        Mode::TrustRequest => return trust_request_flood(&args, &mac1),
    };
    eprintln!(
        "flood: {} {:?} initiations made in {:?}; {} /s to {} for {} s",
        pool.len(),
        args.mode,
        made.elapsed(),
        args.rate,
        args.target,
        args.seconds
    );
    let bind: SocketAddr = if args.target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).context("bind")?;
    socket.connect(args.target).context("connect")?;

    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut index: u32 = rand::random();
    let mut next = 0usize;
    // Pace in 1 ms slices: after each slice, send up to what the rate allows
    // by now, then sleep to the next slice.
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now - start).as_secs_f64() * args.rate as f64;
        while (sent + errors) as f64 <= due {
            let slot = next;
            next = (next + 1) % pool.len();
            let datagram = &mut pool[slot];
            index = index.wrapping_add(1);
            datagram[4..8].copy_from_slice(&index.to_le_bytes());
            if matches!(args.mode, Mode::Mac1) {
                mac1.seal(datagram);
            }
            match socket.send(datagram) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "flood: mode={:?} sent={sent} errors={errors} seconds={elapsed:.1} rate={:.0}/s",
        args.mode,
        sent as f64 / elapsed
    );
    Ok(())
}
