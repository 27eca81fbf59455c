//! `agentnet rendezvous`: the I/O shell around
//! [`crate::core::rendezvous::RendezvousServer`] — one UDP socket, an
//! optional TCP listener for agents whose UDP is blocked, signals. Relayed
//! datagrams move in runs (UDP GRO in, GSO out) where the kernel allows.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::core::address::NetworkId;
use crate::core::rendezvous::{ClientAddr, RelayCounters, RendezvousConfig, RendezvousServer};
use crate::daemon::udp::{enlarge_buffers, normalize};
use crate::daemon::udp_batch::{BatchedSocket, ReceivedRun};
use crate::state::{StateDir, StateError};
use crate::tcp_frames::{read_frame, write_frame};

/// Frames queued per TCP client before new ones are dropped.
const TCP_QUEUE: usize = 1024;
/// How many extra datagram runs one wake-up takes before the answers and
/// relayed datagrams go out.
const BATCH: usize = 16;

/// What `agentnet rendezvous` was asked to do.
#[derive(Debug, Clone)]
pub struct RendezvousOptions {
    /// State directory holding the server's identity.
    pub state: StateDir,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// TCP address to listen on (the fallback), if any.
    pub tcp_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<crate::metrics::MetricsListen>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The state directory or identity failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A socket could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The runtime could not start.
    #[error("cannot start the event loop: {0}")]
    Runtime(#[source] io::Error),
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

enum TcpEvent {
    Opened(u64, mpsc::Sender<Vec<u8>>),
    Frame(u64, SocketAddr, Vec<u8>),
    Closed(u64, SocketAddr),
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: RendezvousOptions) -> Result<(), RendezvousError> {
    options.state.create()?;
    let (identity, _) = options.state.load_or_create_identity()?;
    let network = match options.state.load_config()? {
        Some(config) => NetworkId::from_name(&config.network),
        None => NetworkId::from_name(crate::core::address::DEFAULT_NETWORK_NAME),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RendezvousError::Runtime)?;
    runtime.block_on(serve(options, identity, network))
}

async fn serve(
    options: RendezvousOptions,
    identity: crate::core::identity::Identity,
    network: NetworkId,
) -> Result<(), RendezvousError> {
    let bind = |address: SocketAddr| move |source| RendezvousError::Bind { address, source };
    let mut udp = std::net::UdpSocket::bind(options.listen)
        .and_then(|socket| {
            socket.set_nonblocking(true)?;
            enlarge_buffers(&socket);
            BatchedSocket::new(socket, true)
        })
        .map_err(bind(options.listen))?;
    let listener = match options.tcp_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(bind(address))?),
        None => None,
    };
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut_slice());
    let id = identity.agent_id();
    let (counters_tx, counters_rx) = tokio::sync::watch::channel(RelayCounters::default());
    if let Some(listen) = options.metrics {
        let metrics = listen.bind().await?;
        tracing::info!(address = %listen.address, "serving metrics on /metrics");
        let (id_text, started) = (std::sync::Arc::<str>::from(id.to_string()), Instant::now());
        tokio::spawn(crate::metrics::serve(metrics, move || {
            let counters = *counters_rx.borrow();
            let id_text = std::sync::Arc::clone(&id_text);
            async move {
                Ok(crate::metrics::rendezvous_metrics(
                    &id_text,
                    &counters,
                    started.elapsed(),
                ))
            }
        }));
    }
    let mut server = RendezvousServer::new(
        RendezvousConfig::new(identity, network),
        *seed,
        Instant::now(),
    );
    let mut sigterm = signal(SignalKind::terminate()).map_err(RendezvousError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RendezvousError::Runtime)?;
    let (tcp_events, mut tcp_rx) = mpsc::channel::<TcpEvent>(4096);
    let mut tcp_clients: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut next_connection: u64 = 1;
    tracing::info!(%id, udp = %options.listen, tcp = ?options.tcp_listen, "rendezvous is up");
    println!(
        "rendezvous {id} listening on {} (udp){}",
        options.listen,
        options
            .tcp_listen
            .map(|a| format!(" and {a} (tcp)"))
            .unwrap_or_default()
    );

    let mut run = ReceivedRun::default();
    let mut udp_out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        let deadline = tokio::time::Instant::from_std(server.poll_timeout());
        tokio::select! {
            received = udp.recv_run(&mut run) => {
                on_udp_run(&mut server, received, &run);
                for _ in 0..BATCH {
                    match udp.try_recv_run(&mut run) {
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        received => on_udp_run(&mut server, received, &run),
                    }
                }
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let connection = next_connection;
                    next_connection += 1;
                    spawn_client(stream, connection, normalize(peer), tcp_events.clone());
                }
                Err(error) => tracing::debug!(%error, "TCP accept failed"),
            },
            Some(event) = tcp_rx.recv() => match event {
                TcpEvent::Opened(connection, sender) => { tcp_clients.insert(connection, sender); }
                TcpEvent::Frame(connection, peer, frame) => {
                    server.handle_datagram(Instant::now(), ClientAddr::Tcp(connection, peer), &frame);
                }
                TcpEvent::Closed(connection, peer) => {
                    tcp_clients.remove(&connection);
                    server.connection_closed(ClientAddr::Tcp(connection, peer));
                }
            },
            () = tokio::time::sleep_until(deadline) => server.handle_timeout(Instant::now()),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        while let Some((to, datagram)) = server.poll_transmit() {
            match to {
                ClientAddr::Udp(address) => udp_out.push((address, datagram)),
                ClientAddr::Tcp(connection, _) => {
                    // A full queue drops the datagram: never grow without bound.
                    if let Some(sender) = tcp_clients.get(&connection) {
                        let _ = sender.try_send(datagram);
                    }
                }
            }
        }
        if !udp_out.is_empty() {
            let datagrams: Vec<(SocketAddr, &[u8])> = udp_out
                .iter()
                .map(|(address, datagram)| (*address, datagram.as_slice()))
                .collect();
            // The socket's own family takes plain IPv4 destinations too.
            for (address, error) in udp.send_batch(&datagrams, Ok).await {
                tracing::debug!(%error, %address, "UDP send failed");
            }
            udp_out.clear();
        }
        if options.metrics.is_some() {
            counters_tx.send_replace(server.counters());
        }
    }
    let counters = server.counters();
    tracing::info!(?counters, "rendezvous stopped");
    Ok(())
}

/// Feeds a received run of datagrams to the server.
fn on_udp_run(server: &mut RendezvousServer, received: io::Result<()>, run: &ReceivedRun) {
    match received {
        Ok(()) => {
            let Some(from) = run.source().map(normalize) else {
                return;
            };
            let now = Instant::now();
            for datagram in run.datagrams() {
                server.handle_datagram(now, ClientAddr::Udp(from), datagram);
            }
        }
        Err(error) => tracing::debug!(%error, "UDP receive failed"),
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_client(
    stream: TcpStream,
    connection: u64,
    peer: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (sender, mut outgoing) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    tokio::spawn(async move {
        if events
            .send(TcpEvent::Opened(connection, sender))
            .await
            .is_err()
        {
            return;
        }
        let writer_task = tokio::spawn(async move {
            while let Some(datagram) = outgoing.recv().await {
                if write_frame(&mut writer, &datagram).await.is_err() {
                    break;
                }
            }
        });
        let mut frame = Vec::new();
        while let Ok(Some(())) = read_frame(&mut reader, &mut frame).await {
            if events
                .send(TcpEvent::Frame(
                    connection,
                    peer,
                    std::mem::take(&mut frame),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
        writer_task.abort();
        let _ = events.send(TcpEvent::Closed(connection, peer)).await;
    });
}
