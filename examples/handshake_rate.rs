//! End-to-end handshake rate for `scripts/bench.sh` (issue #16, goal 3):
//! how many initiations from *trusted* agents one running daemon answers
//! per second, through everything a real one goes through (the UDP socket,
//! the event loop, mac1, cookies under load, the per-source limit, the trust
//! lookup, the response).
//!
//! A responder under load (more than 128 initiations a second) answers an
//! initiation without a valid mac2 with a cookie reply, and then processes
//! at most 20 a second from one IP address (WireGuard's rule). So the load
//! comes from `--identities` agents, each on its own source address
//! (`--source-base`, then the next ones), each sending at most
//! `--per-identity-rate` initiations a second with the cookie it got.
//!
//! ```text
//! # 1. before the daemon starts: trust the generated identities
//! handshake_rate trust --state-dir B --identities 1024 --source-base 10.210.4.1 --port 7500
//! # 2. with the daemon up and the source addresses on the generator's side
//! handshake_rate run --target 10.210.0.2:7400 --id <B's agent ID> \
//!     --identities 1024 --source-base 10.210.4.1 --port 7500 --seconds 4
//! ```
//!
//! `run` prints one line: initiations sent and answered (handshake responses)
//! per second after a one-second warm-up, and cookie replies.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use agentnet::core::address::NetworkId;
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::cookie::{CookieReplyKey, InitiatorCookie};
use agentnet::core::noise::handshake::{InitiationPayload, InitiatorHandshake};
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::policy::Policy;
use agentnet::core::rng::core_rng;
use agentnet::core::trust::store::TrustEntry;
use agentnet::core::wire::path::NatHint;
use agentnet::core::wire::{TYPE_COOKIE_REPLY, TYPE_RESPONSE};
use agentnet::state::StateDir;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg, setsockopt, sockopt};

#[derive(Debug, Parser)]
#[command(about = "Handshakes answered per second by one agentnet daemon (benchmark tool)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds the generated identities to a state directory's trust store,
    /// each with its source address as endpoint (run before `up`).
    Trust {
        /// The responder's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        #[command(flatten)]
        identities: IdentityArgs,
    },
    /// Sends initiations from the generated identities and counts answers.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct IdentityArgs {
    /// How many initiating agents.
    #[arg(long, default_value_t = 1024)]
    identities: u32,
    /// The first source address; identity N uses this address + N.
    #[arg(long)]
    source_base: Ipv4Addr,
    /// The UDP port every identity sends from.
    #[arg(long, default_value_t = 7500)]
    port: u16,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The daemon's UDP endpoint.
    #[arg(long)]
    target: SocketAddrV4,
    /// The daemon's agent ID.
    #[arg(long)]
    id: AgentId,
    /// The overlay network's name.
    #[arg(long, default_value = "agentnet")]
    network: String,
    #[command(flatten)]
    identities: IdentityArgs,
    /// Initiations per second from one identity (the responder processes
    /// 20 a second from one address under load).
    #[arg(long, default_value_t = 19.0)]
    per_identity_rate: f64,
    /// How long to send, the first second being a warm-up.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
}

impl IdentityArgs {
    /// Identity `n`: a fixed secret, so `trust` and `run` agree.
    fn identity(&self, n: u32) -> anyhow::Result<Identity> {
        let mut secret = [0x5au8; 32];
        secret[..4].copy_from_slice(&n.to_le_bytes());
        secret[4..8].copy_from_slice(b"hsrt");
        Ok(Identity::from_secret_bytes(&secret)?)
    }

    fn source(&self, n: u32) -> anyhow::Result<Ipv4Addr> {
        u32::from(self.source_base)
            .checked_add(n)
            .map(Ipv4Addr::from)
            .context("--source-base + --identities overflows IPv4")
    }
}

/// One initiating agent: its prepared initiations, cookie and pacing.
struct Initiator {
    source: Ipv4Addr,
    prepared: VecDeque<Vec<u8>>,
    cookie: InitiatorCookie,
    next_send: Instant,
}

fn trust(state_dir: PathBuf, identities: &IdentityArgs) -> anyhow::Result<()> {
    let state = StateDir::new(state_dir);
    let own = state
        .load_identity()
        .context("the responder's key")?
        .agent_id();
    let entries = (0..identities.identities)
        .map(|n| {
            let id = identities.identity(n)?.agent_id();
            let endpoint = SocketAddrV4::new(identities.source(n)?, identities.port);
            Ok(TrustEntry::trusted(
                id,
                format!("hs-{n}"),
                Some(endpoint.to_string()),
                Policy::none(),
                0,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    state.edit_trust(|store| {
        for entry in entries {
            store.upsert(&own, entry)?;
        }
        Ok(())
    })?;
    println!(
        "handshake_rate: {} identities trusted",
        identities.identities
    );
    Ok(())
}

/// Initiations made in advance, each with its own timestamp (a responder
/// refuses one that is not newer than the last it accepted from that peer).
fn prepare(
    args: &RunArgs,
    network: NetworkId,
    per_identity: usize,
) -> anyhow::Result<Vec<Initiator>> {
    let start = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("clock before 1970")?;
    let target_key = args.id.noise_public_key();
    let make = |n: u32| -> anyhow::Result<Initiator> {
        let identity = args.identities.identity(n)?;
        let noise = NoiseStatic::new(&identity.noise_secret_key());
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        let mut rng = core_rng(seed);
        let prepared = (0..per_identity)
            .map(|k| {
                let payload = InitiationPayload {
                    timestamp: Tai64N::from_unix(start + Duration::from_micros(k as u64)),
                    versions: vec![1],
                    name: format!("hs-{n}"),
                    candidates: Vec::new(),
                    nat: NatHint::default(),
                    ciphers: CipherSet::ALL,
                };
                let (_, datagram) =
                    InitiatorHandshake::start(&mut rng, network, &noise, &target_key, 0, &payload)?;
                Ok(datagram)
            })
            .collect::<anyhow::Result<VecDeque<_>>>()?;
        Ok(Initiator {
            source: args.identities.source(n)?,
            prepared,
            cookie: InitiatorCookie::default(),
            next_send: Instant::now(),
        })
    };
    // Two threads: preparing costs about one handshake each.
    let half = args.identities.identities / 2;
    std::thread::scope(|scope| {
        let first = scope.spawn(|| (0..half).map(make).collect::<anyhow::Result<Vec<_>>>());
        let mut second = (half..args.identities.identities)
            .map(make)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut all = first
            .join()
            .map_err(|_| anyhow::anyhow!("preparing thread panicked"))??;
        all.append(&mut second);
        Ok(all)
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.identities.identities == 0 || args.identities.identities > 65_535 {
        bail!("--identities must be 1..=65535");
    }
    if !args.per_identity_rate.is_finite() || args.per_identity_rate <= 0.0 || args.seconds < 2 {
        bail!("--per-identity-rate must be positive and --seconds at least 2");
    }
    let network = NetworkId::from_name(&args.network);
    let target_key = args.id.noise_public_key();
    let mac1 = Mac1Key::for_responder(network, &target_key);
    let cookie_key = CookieReplyKey::for_responder(network, &target_key);
    let per_identity = (args.per_identity_rate * args.seconds as f64).ceil() as usize + 2;
    let made = Instant::now();
    let mut initiators = prepare(&args, network, per_identity)?;
    eprintln!(
        "handshake_rate: {} initiations from {} identities made in {:.1?}",
        per_identity * initiators.len(),
        initiators.len(),
        made.elapsed()
    );

    let socket = UdpSocket::bind(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        args.identities.port,
    )))
    .context("bind the generator's port")?;
    socket.set_nonblocking(true)?;
    // Send from any of the identities' addresses (they are on this host).
    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).context("IP_PKTINFO")?;
    let destination = SockaddrIn::from(args.target);
    let interval = Duration::from_secs_f64(1.0 / args.per_identity_rate);

    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = start + Duration::from_secs(args.seconds);
    let (mut sent, mut answered, mut cookies, mut errors) = (0u64, 0u64, 0u64, 0u64);
    // The counts when the warm-up ended.
    let mut at_warm: Option<(u64, u64, u64)> = None;
    let mut buffer = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= warm && at_warm.is_none() {
            at_warm = Some((sent, answered, cookies));
        }
        for (n, initiator) in initiators.iter_mut().enumerate() {
            if now < initiator.next_send {
                continue;
            }
            let Some(mut datagram) = initiator.prepared.pop_front() else {
                continue;
            };
            initiator.next_send = now + interval;
            // The sender index names the identity in the answer.
            let index = u32::try_from(n)? << 16 | (sent as u32 & 0xffff);
            datagram[4..8].copy_from_slice(&index.to_le_bytes());
            mac1.seal(&mut datagram);
            initiator.cookie.stamp(now, index, &mut datagram);
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(initiator.source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let sent_ok = sendmsg(
                socket.as_raw_fd(),
                &[IoSlice::new(&datagram)],
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::MSG_DONTWAIT,
                Some(&destination),
            );
            match sent_ok {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        // Everything that came back so far.
        while let Ok(len) = socket.recv(&mut buffer) {
            let datagram = &buffer[..len];
            let index_at = |at: usize| {
                datagram
                    .get(at..at + 4)
                    .and_then(|bytes| bytes.try_into().ok())
                    .map(u32::from_le_bytes)
            };
            match datagram.first() {
                // A response to one of ours: its receiver index names an identity.
                Some(&TYPE_RESPONSE)
                    if index_at(8)
                        .is_some_and(|index| ((index >> 16) as usize) < initiators.len()) =>
                {
                    answered += 1
                }
                Some(&TYPE_COOKIE_REPLY) => {
                    let Some(index) = index_at(4) else { continue };
                    if let Some(initiator) = initiators.get_mut((index >> 16) as usize)
                        && initiator
                            .cookie
                            .handle_reply(Instant::now(), index, &datagram[8..], &cookie_key)
                            .is_ok()
                    {
                        cookies += 1;
                    }
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let measured = end.saturating_duration_since(warm).as_secs_f64();
    let (sent_warm, answered_warm, cookies_warm) = at_warm.unwrap_or_default();
    let rate = |total: u64, before: u64| total.saturating_sub(before) as f64 / measured;
    println!(
        "handshake_rate: identities={} seconds={measured:.1} sent/s={:.0} answered/s={:.0} cookie_replies/s={:.0} send_errors={errors}",
        initiators.len(),
        rate(sent, sent_warm),
        rate(answered, answered_warm),
        rate(cookies, cookies_warm),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Trust {
            state_dir,
            identities,
        } => trust(state_dir, &identities),
        Command::Run(args) => run(args),
    }
}
