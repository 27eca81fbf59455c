//! The userspace stack (`up --userspace`) in-process, no root, no
//! namespaces: two stacks, alice's and bob's, wired packet to packet (as
//! two daemons with a session would carry them), and real local sockets on
//! the loopback interface around them. Alice's SOCKS5 proxy and forwards
//! reach the services bob exposes, over IPv6 and over IPv4.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentnet::core::address::OverlayAddresses;
use agentnet::core::address::{NetworkId, NodePrefix, agent_address4};
use agentnet::core::identity::Identity;
use agentnet::core::trust::store::{TrustEntry, TrustState, TrustStore};
use agentnet::names::dns::NameTable;
use agentnet::userspace::spec::{ExposeSpec, ForwardSpec};
use agentnet::userspace::{Userspace, UserspaceOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const MTU: u16 = 1408;
/// The exposed echo service.
const ECHO_PORT: u16 = 8080;
/// Exposed, but nothing listens behind it.
const DEAD_PORT: u16 = 8081;
/// Exposed: a server that writes as fast as it may.
const FIREHOSE_PORT: u16 = 8082;
/// Exposed UDP echo.
const UDP_PORT: u16 = 5353;
/// Exposed: a server that says goodbye and closes at once.
const CLOSER_PORT: u16 = 8083;
/// Not exposed: bob's stack answers with a reset.
const CLOSED_PORT: u16 = 9999;
/// Limit for any one step.
const STEP: Duration = Duration::from_secs(60);

fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

fn identity(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32]).expect("key")
}

fn address_of(identity: &Identity) -> Ipv6Addr {
    NodePrefix::of_agent(network(), &identity.agent_id()).agent_address()
}

fn address4_of(identity: &Identity) -> Ipv4Addr {
    agent_address4(network(), &identity.agent_id())
}

fn addresses_of(identity: &Identity) -> OverlayAddresses {
    OverlayAddresses {
        v6: address_of(identity),
        v4: Some(address4_of(identity)),
    }
}

fn names(peer: &Identity, names: &[&str]) -> NameTable {
    let store = TrustStore {
        peers: names
            .iter()
            .map(|name| TrustEntry {
                id: peer.agent_id(),
                name: (*name).into(),
                endpoint: None,
                allow: Default::default(),
                state: TrustState::Trusted,
                added_unix: 0,
                expires_unix: None,
            })
            .collect(),
    };
    NameTable::from_trust(&store, network())
}

/// An IPv4 address alice believes is bob's under the name `bob-v6only`
/// (it is nobody's: bob's stack never answers it), so connections by that
/// name must fall back to bob's IPv6 address.
fn unanswered4(bob4: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(bob4) ^ 1)
}

/// Local services behind bob's exposed ports.
struct Services {
    echo: SocketAddr,
    dead: SocketAddr,
    firehose: SocketAddr,
    /// Bytes the firehose managed to write so far.
    firehose_written: Arc<AtomicU64>,
    udp_echo: SocketAddr,
    closer: SocketAddr,
}

const FIREHOSE_BYTES: u64 = 48 << 20;

async fn start_services() -> Services {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    // A port nothing listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let firehose = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let firehose_addr = firehose.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = firehose.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let chunk = vec![0x5a; 64 * 1024];
                let mut sent = 0u64;
                while sent < FIREHOSE_BYTES {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                    counter.store(sent, Ordering::SeqCst);
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    let closer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closer_addr = closer.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = closer.accept().await {
            // A FIN after the goodbye; what arrives later is answered
            // with a reset by the kernel.
            let _ = stream.write_all(b"bye").await;
        }
    });
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let udp_addr = udp.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..len], from).await;
        }
    });
    Services {
        echo: echo_addr,
        dead,
        firehose: firehose_addr,
        firehose_written: written,
        udp_echo: udp_addr,
        closer: closer_addr,
    }
}

/// Alice (SOCKS5, forwards) and bob (exposed ports), wired together.
struct Pair {
    alice: UserspaceOptions,
    alice_address4: Ipv4Addr,
    bob_address: Ipv6Addr,
    bob_address4: Ipv4Addr,
    services: Services,
}

async fn start_pair() -> Pair {
    let services = start_services().await;
    let (alice_id, bob_id) = (identity(1), identity(2));
    let bob4 = address4_of(&bob_id);
    let loopback = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let alice_options = UserspaceOptions {
        socks5: Some(loopback(0)),
        forwards: vec![
            "127.0.0.1:0:bob:8080".parse::<ForwardSpec>().expect("spec"),
            "127.0.0.1:0:nobody:8080".parse().expect("spec"),
            "udp:127.0.0.1:0:bob.agent.internal:5353"
                .parse()
                .expect("spec"),
            format!("127.0.0.1:0:{bob4}:8080").parse().expect("spec"),
            format!("udp:127.0.0.1:0:{bob4}:5353")
                .parse()
                .expect("spec"),
        ],
        exposes: Vec::new(),
        served_sources: None,
    };
    let bob_options = UserspaceOptions {
        socks5: None,
        forwards: Vec::new(),
        exposes: vec![
            expose(ECHO_PORT, services.echo, "tcp"),
            expose(DEAD_PORT, services.dead, "tcp"),
            expose(FIREHOSE_PORT, services.firehose, "tcp"),
            expose(UDP_PORT, services.udp_echo, "udp"),
            expose(CLOSER_PORT, services.closer, "tcp"),
        ],
        served_sources: None,
    };
    let mut alice = Userspace::start(&alice_options, addresses_of(&alice_id), network(), MTU)
        .expect("alice's stack");
    let mut bob =
        Userspace::start(&bob_options, addresses_of(&bob_id), network(), MTU).expect("bob's stack");
    alice.publish_names(&names(&bob_id, &["bob", "bob-v6only"]));
    bob.publish_names(&names(&alice_id, &["alice"]));
    alice.publish_ipv4_routes(&BTreeMap::from([
        ("bob".to_string(), bob4),
        ("bob-v6only".to_string(), unanswered4(bob4)),
    ]));
    bob.publish_ipv4_routes(&BTreeMap::from([(
        "alice".to_string(),
        address4_of(&alice_id),
    )]));
    let alice_bound = alice.options().clone();
    // The wire between the two stacks: what the daemons and their session
    // would carry, with the daemons' drop-when-full behaviour, woken as the
    // daemon's datapath is (armed, then a last look, then the wait).
    std::thread::spawn(move || {
        loop {
            alice.wake().arm();
            bob.wake().arm();
            let Some(moved) = carry(&mut alice, &bob).zip(carry(&mut bob, &alice)) else {
                return;
            };
            let moved = moved.0 || moved.1;
            if !moved {
                let mut wakes = [
                    PollFd::new(alice.wake().as_fd(), PollFlags::POLLIN),
                    PollFd::new(bob.wake().as_fd(), PollFlags::POLLIN),
                ];
                poll(&mut wakes, PollTimeout::NONE).expect("poll");
                alice.wake().reset();
                bob.wake().reset();
            }
        }
    });
    Pair {
        alice: alice_bound,
        alice_address4: address4_of(&alice_id),
        bob_address: address_of(&bob_id),
        bob_address4: bob4,
        services,
    }
}

/// Moves what `from` queued to `to`: whether it moved any, `None` once
/// `from` has stopped.
fn carry(from: &mut Userspace, to: &Userspace) -> Option<bool> {
    let mut moved = false;
    loop {
        match from.try_recv() {
            Ok(Some(packet)) => {
                let _ = to.send(packet);
                moved = true;
            }
            Ok(None) => return Some(moved),
            Err(_) => return None,
        }
    }
}

fn expose(port: u16, local: SocketAddr, transport: &str) -> ExposeSpec {
    format!(
        "{transport}:{port}:{}:{}",
        bracket(local.ip()),
        local.port()
    )
    .parse()
    .expect("spec")
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Where a SOCKS5 request goes.
enum Target<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Connects through the SOCKS5 proxy: the stream, or the reply code.
async fn socks_connect(proxy: SocketAddr, target: Target<'_>, port: u16) -> Result<TcpStream, u8> {
    socks_connect_bound(proxy, target, port)
        .await
        .map(|(stream, _)| stream)
}

/// Connects through the SOCKS5 proxy: the stream and the bound address
/// the proxy reported, or the reply code.
async fn socks_connect_bound(
    proxy: SocketAddr,
    target: Target<'_>,
    port: u16,
) -> Result<(TcpStream, SocketAddr), u8> {
    let mut stream = TcpStream::connect(proxy).await.expect("proxy reachable");
    stream.write_all(&[5, 1, 0]).await.expect("greeting");
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.expect("method");
    assert_eq!(choice, [5, 0]);
    let mut request = vec![5, 1, 0];
    match target {
        Target::Name(name) => {
            request.push(3);
            request.push(u8::try_from(name.len()).expect("short name"));
            request.extend_from_slice(name.as_bytes());
        }
        Target::V4(v4) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        Target::V6(v6) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.expect("request");
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.expect("reply");
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("reply address type {other}"),
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).await.expect("bound address");
    let (address, port) = bound.split_at(rest - 2);
    let ip = match <[u8; 4]>::try_from(address) {
        Ok(v4) => IpAddr::from(v4),
        Err(_) => IpAddr::from(<[u8; 16]>::try_from(address).expect("16 bytes")),
    };
    let bound = SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]));
    if head[1] == 0 {
        Ok((stream, bound))
    } else {
        Err(head[1])
    }
}

/// A connection through alice's SOCKS5 proxy to bob's `port`, by name.
async fn socks_to_bob(pair: &Pair, port: u16) -> TcpStream {
    let proxy = pair.alice.socks5.expect("socks5");
    within("connect", socks_connect(proxy, Target::Name("bob"), port))
        .await
        .expect("connected")
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

/// Writes `data` and reads the echo concurrently; the echo must match.
async fn echo_through(stream: TcpStream, data: Vec<u8>) {
    let (mut read, mut write) = stream.into_split();
    let expected = data.len();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.expect("write");
        write.shutdown().await.expect("shutdown");
        data
    });
    let mut echoed = Vec::with_capacity(expected);
    read.read_to_end(&mut echoed)
        .await
        .expect("read to the echo's EOF");
    let data = writer.await.expect("writer");
    assert_eq!(echoed.len(), expected);
    assert!(echoed == data, "the echo differs from what was sent");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_by_name_relays_both_ways_with_half_close() {
    let pair = start_pair().await;
    let proxy = pair.alice.socks5.expect("socks5");
    let stream = within(
        "connect by name",
        socks_connect(proxy, Target::Name("bob.agent.internal"), ECHO_PORT),
    )
    .await
    .expect("connected");
    within("4 MiB echoed", echo_through(stream, pattern(4 << 20, 7))).await;
    // By address, too.
    let stream = within(
        "connect by address",
        socks_connect(proxy, Target::V6(pair.bob_address), ECHO_PORT),
    )
    .await
    .expect("connected");
    within("small echo", echo_through(stream, b"hello".to_vec())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_and_forwards_reach_an_exposed_port_over_ipv4() {
    let pair = start_pair().await;
    let proxy = pair.alice.socks5.expect("socks5");
    let (stream, bound) = within(
        "connect to bob's IPv4 address",
        socks_connect_bound(proxy, Target::V4(pair.bob_address4), ECHO_PORT),
    )
    .await
    .expect("connected");
    assert_eq!(
        bound.ip(),
        IpAddr::V4(pair.alice_address4),
        "the proxy binds alice's IPv4 address"
    );
    within(
        "1 MiB echoed over IPv4",
        echo_through(stream, pattern(1 << 20, 5)),
    )
    .await;

    let tcp = pair.alice.forwards[3].listen;
    let stream = within("IPv4 forward connect", TcpStream::connect(tcp))
        .await
        .expect("connect");
    within(
        "IPv4 forward echo",
        echo_through(stream, pattern(64 * 1024, 4)),
    )
    .await;

    let udp = pair.alice.forwards[4].listen;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(udp).await.expect("connect");
    let datagram = pattern(1232, 8);
    let mut buf = vec![0u8; 2048];
    let echoed = within("udp echo over IPv4", async {
        loop {
            socket.send(&datagram).await.expect("send");
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
            {
                return buf[..n].to_vec();
            }
        }
    })
    .await;
    assert_eq!(echoed, datagram);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_ipv4_address_does_not_answer_falls_back_to_ipv6() {
    let pair = start_pair().await;
    let proxy = pair.alice.socks5.expect("socks5");
    let started = std::time::Instant::now();
    let (stream, bound) = within(
        "connect by name",
        socks_connect_bound(proxy, Target::Name("bob-v6only.agent.internal"), ECHO_PORT),
    )
    .await
    .expect("connected over IPv6 after IPv4 got no answer");
    eprintln!("connected after {:?}", started.elapsed());
    assert!(bound.is_ipv6(), "bound {bound}");
    within("echo", echo_through(stream, b"over IPv6".to_vec())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_errors_map_to_replies() {
    let pair = start_pair().await;
    let proxy = pair.alice.socks5.expect("socks5");
    let mut stranger = network().prefix().segments();
    stranger[3] = 0x1234;
    stranger[7] = 1;
    let cases = [
        (
            Target::Name("carol.agent.internal"),
            ECHO_PORT,
            4,
            "unknown name",
        ),
        (
            Target::Name("example.com"),
            ECHO_PORT,
            4,
            "name outside the overlay",
        ),
        (
            Target::V4(Ipv4Addr::new(192, 0, 2, 1)),
            80,
            3,
            "IPv4 outside the overlay",
        ),
        (
            Target::V4(Ipv4Addr::from(u32::from(pair.bob_address4) ^ 2)),
            80,
            4,
            "IPv4 of no trusted peer",
        ),
        (
            Target::V4(pair.bob_address4),
            CLOSED_PORT,
            5,
            "a port bob does not expose, over IPv4",
        ),
        (
            Target::V6("2001:db8::1".parse().expect("v6")),
            80,
            3,
            "outside the network",
        ),
        (
            Target::V6(Ipv6Addr::from(stranger)),
            80,
            4,
            "untrusted node",
        ),
        (
            Target::Name("bob"),
            CLOSED_PORT,
            5,
            "port bob does not expose",
        ),
        (
            Target::Name("bob"),
            DEAD_PORT,
            5,
            "exposed, but the service is down",
        ),
    ];
    for (target, port, code, what) in cases {
        let got = within(what, socks_connect(proxy, target, port)).await;
        assert_eq!(got.err(), Some(code), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_all_complete() {
    const CONNECTIONS: usize = 1000;
    let pair = start_pair().await;
    let proxy = pair.alice.socks5.expect("socks5");
    let mut streams = Vec::with_capacity(CONNECTIONS);
    // All open at once before any data flows.
    for _ in 0..CONNECTIONS {
        let stream = within(
            "connect",
            socks_connect(proxy, Target::Name("bob"), ECHO_PORT),
        )
        .await
        .expect("connected");
        streams.push(stream);
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| tokio::spawn(echo_through(stream, pattern(2048, i as u8))))
        .collect();
    for task in tasks {
        within("echo", task).await.expect("echo task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_stops_the_remote_writer() {
    let pair = start_pair().await;
    let mut stream = socks_to_bob(&pair, FIREHOSE_PORT).await;
    // Read nothing: every buffer on the way fills, then the writer stops.
    let written = &pair.services.firehose_written;
    let mut last = u64::MAX;
    let stalled = within("the writer to stall", async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = written.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await;
    eprintln!("the writer stalled after {stalled} bytes");
    assert!(
        stalled < FIREHOSE_BYTES / 2,
        "the writer got {stalled} bytes out with nobody reading"
    );
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    within("the rest to arrive", async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|&b| b == 0x5a));
            total += n as u64;
        }
    })
    .await;
    assert_eq!(total, FIREHOSE_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_peers_fin_reaches_the_local_writer() {
    // The remote service closes (FIN), the local client keeps writing,
    // the remote end answers with a reset. The client must learn of it:
    // smoltcp keeps reporting only the FIN, and a relay waiting for the
    // client's close kept the connection (and its buffers) forever.
    let pair = start_pair().await;
    let mut stream = socks_to_bob(&pair, CLOSER_PORT).await;
    let mut greeting = Vec::new();
    within("the goodbye and the FIN", stream.read_to_end(&mut greeting))
        .await
        .expect("read");
    assert_eq!(greeting, b"bye");
    let chunk = vec![0x42u8; 64 * 1024];
    let error = within("the write to fail", async {
        loop {
            if let Err(error) = stream.write_all(&chunk).await {
                return error;
            }
        }
    })
    .await;
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the client's writes end with a reset, not {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_relay_tcp_and_udp_and_reset_unknown_peers() {
    let pair = start_pair().await;
    let tcp = pair.alice.forwards[0].listen;
    let nobody = pair.alice.forwards[1].listen;
    let udp = pair.alice.forwards[2].listen;

    let stream = within("forward connect", TcpStream::connect(tcp))
        .await
        .expect("connect");
    within("forward echo", echo_through(stream, pattern(256 * 1024, 3))).await;

    // The reset may come before connect() returns, or on the first read.
    let got = within("reset", async {
        let mut stream = TcpStream::connect(nobody).await?;
        let mut buf = [0u8; 16];
        stream.read(&mut buf).await
    })
    .await;
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a forward to an unknown peer: {got:?}"
    );

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(udp).await.expect("connect");
    for size in [12, 512, 1232] {
        let datagram = pattern(size, 9);
        let mut buf = vec![0u8; 2048];
        // UDP may lose the first datagram while nothing is set up yet.
        let echoed = within("udp echo", async {
            loop {
                socket.send(&datagram).await.expect("send");
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
                {
                    return buf[..n].to_vec();
                }
            }
        })
        .await;
        assert_eq!(echoed, datagram, "{size}-byte datagram");
    }
}
