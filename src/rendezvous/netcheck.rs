//! `agentnet netcheck`: what the network between this host and its
//! rendezvous servers allows. A throwaway identity registers with each
//! server over UDP (reflexive endpoints, NAT mapping behaviour) and over TCP
//! (the fallback), without disturbing the running agent's registrations.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};

use crate::core::address::NetworkId;
use crate::core::api::NodeConfig;
use crate::core::identity::{AgentId, Identity};
use crate::core::node::Node;
use crate::sys::tcp_frames::{read_frame, write_frame};

/// How long each check waits for answers.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One rendezvous as seen by the checks.
#[derive(Debug, Clone, Serialize)]
pub struct RendezvousCheck {
    /// The server's ID.
    pub id: AgentId,
    /// Its endpoint.
    pub endpoint: SocketAddr,
    /// Our endpoint as it saw it over UDP (none: no UDP answer).
    pub reflexive: Option<SocketAddr>,
    /// Whether a registration over TCP succeeded.
    pub tcp: bool,
}

/// The verdict.
#[derive(Debug, Clone, Serialize)]
pub struct NetcheckReport {
    /// Per rendezvous.
    pub rendezvous: Vec<RendezvousCheck>,
    /// Whether any rendezvous answered over UDP.
    pub udp: bool,
    /// Whether any rendezvous answered over TCP.
    pub tcp: bool,
    /// "none" (reflexive = local address), "easy" (same mapping towards
    /// every server), "hard" (a new port per destination), or "unknown"
    /// (fewer than two answers over UDP).
    pub nat: String,
}

fn throwaway_node(network: NetworkId, rendezvous: &[(AgentId, SocketAddr)]) -> Option<Node> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut_slice());
    let identity = Identity::from_secret_bytes(secret.as_slice()).ok()?;
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = Instant::now();
    let mut node = Node::new(
        NodeConfig {
            identity,
            network,
            name: "netcheck".into(),
            tunnel_mtu: 1280,
        },
        *seed,
        now,
        unix_now,
    );
    // Every server is checked, not only the throwaway identity's own.
    node.register_with_every_rendezvous(now);
    for (id, endpoint) in rendezvous {
        node.add_rendezvous(now, *id, *endpoint);
    }
    Some(node)
}

fn all_registered(node: &Node) -> bool {
    node.rendezvous_status(Instant::now())
        .iter()
        .all(|status| status.registered)
}

async fn check_udp(
    network: NetworkId,
    rendezvous: &[(AgentId, SocketAddr)],
) -> Vec<Option<SocketAddr>> {
    let (Ok(socket), Some(mut node)) = (
        UdpSocket::bind("[::]:0").await,
        throwaway_node(network, rendezvous),
    ) else {
        return vec![None; rendezvous.len()];
    };
    let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
    let mut buf = vec![0u8; 65_536];
    node.handle_timeout(Instant::now());
    loop {
        while let Some(transmit) = node.poll_transmit() {
            let destination = match transmit.destination {
                SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
                v6 => v6,
            };
            let _ = socket.send_to(&transmit.payload, destination).await;
        }
        if all_registered(&node) {
            break;
        }
        let wake = node
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            received = socket.recv_from(&mut buf) => if let Ok((len, from)) = received {
                node.handle_datagram(Instant::now(), crate::sys::udp::normalize(from), &buf[..len]);
            },
            () = tokio::time::sleep_until(wake) => node.handle_timeout(Instant::now()),
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    node.rendezvous_status(Instant::now())
        .into_iter()
        .map(|status| status.registered.then_some(status.reflexive).flatten())
        .collect()
}

async fn check_tcp(network: NetworkId, rendezvous: (AgentId, SocketAddr)) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(rendezvous.1).await.ok()?;
        let (mut reader, mut writer) = stream.into_split();
        let mut node = throwaway_node(network, &[rendezvous])?;
        node.handle_timeout(Instant::now());
        let mut frame = Vec::new();
        loop {
            while let Some(transmit) = node.poll_transmit() {
                write_frame(&mut writer, &transmit.payload).await.ok()?;
            }
            if all_registered(&node) {
                return Some(());
            }
            let wake = node.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                read = read_frame(&mut reader, &mut frame) => {
                    read.ok()??;
                    node.handle_datagram(Instant::now(), rendezvous.1, &frame);
                }
                () = async {
                    match wake {
                        Some(wake) => tokio::time::sleep_until(wake).await,
                        None => std::future::pending().await,
                    }
                } => node.handle_timeout(Instant::now()),
            }
        }
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, attempt).await,
        Ok(Some(()))
    )
}

/// Runs every check against these rendezvous servers.
pub async fn run(
    network: NetworkId,
    rendezvous: &[(AgentId, SocketAddr)],
    local: &[SocketAddr],
) -> NetcheckReport {
    let reflexive = check_udp(network, rendezvous).await;
    let mut checks = Vec::new();
    for (index, (id, endpoint)) in rendezvous.iter().enumerate() {
        let tcp = check_tcp(network, (*id, *endpoint)).await;
        checks.push(RendezvousCheck {
            id: *id,
            endpoint: *endpoint,
            reflexive: reflexive.get(index).copied().flatten(),
            tcp,
        });
    }
    let seen: Vec<SocketAddr> = checks.iter().filter_map(|check| check.reflexive).collect();
    let nat = if seen
        .iter()
        .any(|address| local.iter().any(|local| local.ip() == address.ip()))
    {
        "none"
    } else if seen.len() < 2 {
        "unknown"
    } else if seen.iter().all(|address| *address == seen[0]) {
        "easy"
    } else {
        "hard"
    };
    NetcheckReport {
        udp: !seen.is_empty(),
        tcp: checks.iter().any(|check| check.tcp),
        nat: nat.to_string(),
        rendezvous: checks,
    }
}
