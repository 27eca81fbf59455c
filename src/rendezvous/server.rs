//! `agentnet rendezvous`: the I/O shell around
//! [`crate::core::rendezvous::RendezvousServer`] — one UDP socket, an
//! optional TCP listener for agents whose UDP is blocked, signals. Relayed
//! datagrams move in runs (UDP GRO in, GSO out) where the kernel allows.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::core::address::NetworkId;
use crate::core::limit::address_key;
use crate::core::rendezvous::{ClientAddr, RelayCounters, RendezvousConfig, RendezvousServer};
use crate::state::{StateDir, StateError};
use crate::sys::tcp_frames::{read_frame_within, write_frame};
use crate::sys::udp::{enlarge_buffers, normalize};
use crate::sys::udp_batch::{BatchedSocket, ReceivedRun};

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
    /// Limits of the TCP listener.
    pub tcp_limits: TcpLimits,
}

/// What the TCP fallback allows before any authentication: anyone can
/// connect, so connections are capped per source address and in all, and
/// idle or slow ones are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once from one source (an IPv4 address or an
    /// IPv6 /64).
    pub per_source: usize,
    /// Connections open at once in all.
    pub total: usize,
    /// Longest wait for the next frame to begin (agents re-register every
    /// 25 s, so a live connection is never this quiet).
    pub idle_timeout: Duration,
    /// Longest time one frame may take to arrive, or to be written out,
    /// once begun.
    pub frame_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            per_source: 64,
            total: 4096,
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// How long the listener rests after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Open TCP connections by source (an IPv4 address or an IPv6 /64: one
/// host commonly holds a whole /64) and in all.
#[derive(Debug, Default)]
struct OpenConnections {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

impl OpenConnections {
    /// Counts a new connection from `source` if the limits allow it.
    fn admit(&mut self, limits: &TcpLimits, source: IpAddr) -> bool {
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if self.total >= limits.total || from_source >= limits.per_source {
            return false;
        }
        self.per_source.insert(source, from_source + 1);
        self.total += 1;
        true
    }

    /// Forgets a closed connection from `source`.
    fn release(&mut self, source: IpAddr) {
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

/// Releases a connection's place in [`OpenConnections`] when its task ends,
/// however it ends.
struct ConnectionSlot {
    open: Arc<Mutex<OpenConnections>>,
    source: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            open.release(self.source);
        }
    }
}

/// The TCP listener of the fallback: admits connections within the
/// [`TcpLimits`] and runs one task per admitted connection.
struct TcpFallback {
    listener: TcpListener,
    limits: TcpLimits,
    open: Arc<Mutex<OpenConnections>>,
    next_connection: u64,
    events: mpsc::Sender<TcpEvent>,
}

impl TcpFallback {
    fn new(listener: TcpListener, limits: TcpLimits, events: mpsc::Sender<TcpEvent>) -> Self {
        Self {
            listener,
            limits,
            open: Arc::default(),
            next_connection: 1,
            events,
        }
    }

    /// Accepts one connection: starts its task, or closes it at once when
    /// its source or the server is at the limit.
    async fn accept(&mut self) {
        let (stream, peer) = match self.listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (or another failure that repeats at
                // once): wait a little instead of spinning on it.
                tracing::debug!(%error, "TCP accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                return;
            }
        };
        let peer = normalize(peer);
        let admitted = self
            .open
            .lock()
            .is_ok_and(|mut open| open.admit(&self.limits, address_key(peer.ip())));
        if !admitted {
            tracing::debug!(%peer, "TCP connection over the limits; closed");
            return;
        }
        let slot = ConnectionSlot {
            open: Arc::clone(&self.open),
            source: address_key(peer.ip()),
        };
        let connection = self.next_connection;
        self.next_connection += 1;
        spawn_client(
            stream,
            connection,
            peer,
            self.events.clone(),
            self.limits,
            slot,
        );
    }
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
    // Relayed traffic churns packet buffers like an agent's data path.
    crate::sys::calls::keep_freed_heap();
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
    let (tcp_events, mut tcp_rx) = mpsc::channel::<TcpEvent>(4096);
    let mut tcp_fallback = match options.tcp_listen {
        Some(address) => Some(TcpFallback::new(
            TcpListener::bind(address).await.map_err(bind(address))?,
            options.tcp_limits,
            tcp_events,
        )),
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
    let mut tcp_clients: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
    // Set up: the code and constants only start-up used (and the loader's
    // relocation table) need not stay resident.
    crate::sys::file_pages::release();
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
            () = accept(tcp_fallback.as_mut()) => {}
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
            // The socket's own family takes plain IPv4 destinations too.
            for (address, error) in udp.send_batch(&udp_out, Ok) {
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

async fn accept(fallback: Option<&mut TcpFallback>) {
    match fallback {
        Some(fallback) => fallback.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_client(
    stream: TcpStream,
    connection: u64,
    peer: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
    limits: TcpLimits,
    slot: ConnectionSlot,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (sender, mut outgoing) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    tokio::spawn(async move {
        // Held until the task ends: the connection counts until then.
        let _slot = slot;
        if events
            .send(TcpEvent::Opened(connection, sender))
            .await
            .is_err()
        {
            return;
        }
        let mut writer_task = tokio::spawn(async move {
            while let Some(datagram) = outgoing.recv().await {
                // A client that does not read is dropped, not waited for.
                let written =
                    tokio::time::timeout(limits.frame_timeout, write_frame(&mut writer, &datagram))
                        .await;
                if !matches!(written, Ok(Ok(()))) {
                    break;
                }
            }
        });
        let mut frame = Vec::new();
        loop {
            tokio::select! {
                read = read_frame_within(&mut reader, &mut frame, limits.idle_timeout, limits.frame_timeout) => {
                    match read {
                        Ok(Some(())) => {}
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(%peer, %error, "closing TCP connection");
                            break;
                        }
                    }
                    let event = TcpEvent::Frame(connection, peer, std::mem::take(&mut frame));
                    if events.send(event).await.is_err() {
                        break;
                    }
                }
                _ = &mut writer_task => break,
            }
        }
        writer_task.abort();
        let _ = events.send(TcpEvent::Closed(connection, peer)).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    /// Upper bound on every wait below; the conditions end them far sooner.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A fallback listener on loopback, accepting in a task of its own.
    async fn listening(limits: TcpLimits) -> (SocketAddr, mpsc::Receiver<TcpEvent>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (events, receiver) = mpsc::channel(64);
        let mut fallback = TcpFallback::new(listener, limits, events);
        tokio::spawn(async move {
            loop {
                fallback.accept().await;
            }
        });
        (address, receiver)
    }

    async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("source"))
            .expect("bind source");
        socket.connect(server).await.expect("connect")
    }

    /// Waits for the connection to be closed by the server: end of stream
    /// (or a reset). Panics if it stays open past [`PATIENCE`].
    async fn closed_by_server(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
            Ok(Ok(_)) => panic!("the server sent data"),
            Err(_) => panic!("the server kept the connection open"),
        }
    }

    /// The next admitted connection's sender: the server keeps it while the
    /// connection lives (dropping it closes the connection).
    async fn next_opened(events: &mut mpsc::Receiver<TcpEvent>) -> mpsc::Sender<Vec<u8>> {
        loop {
            match tokio::time::timeout(PATIENCE, events.recv()).await {
                Ok(Some(TcpEvent::Opened(_, sender))) => return sender,
                Ok(Some(_)) => continue,
                _ => panic!("no connection was admitted"),
            }
        }
    }

    async fn next_frame(events: &mut mpsc::Receiver<TcpEvent>) -> Vec<u8> {
        loop {
            match tokio::time::timeout(PATIENCE, events.recv()).await {
                Ok(Some(TcpEvent::Frame(_, _, frame))) => return frame,
                Ok(Some(_)) => continue,
                _ => panic!("no frame arrived"),
            }
        }
    }

    #[test]
    fn one_ipv6_slash_64_is_one_source_for_the_connection_cap() {
        let limits = TcpLimits {
            per_source: 2,
            ..TcpLimits::default()
        };
        let mut open = OpenConnections::default();
        let host: Vec<IpAddr> = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"]
            .iter()
            .map(|text| text.parse().expect("address"))
            .collect();
        assert!(open.admit(&limits, address_key(host[0])));
        assert!(open.admit(&limits, address_key(host[1])));
        assert!(
            !open.admit(&limits, address_key(host[2])),
            "a third address of the same /64 got past the per-source cap"
        );
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert!(open.admit(&limits, address_key(elsewhere)));
        open.release(address_key(host[0]));
        assert!(open.admit(&limits, address_key(host[2])));
    }

    #[tokio::test]
    async fn connections_beyond_the_per_source_cap_are_closed_at_once() {
        let limits = TcpLimits {
            per_source: 2,
            total: 3,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(60),
        };
        let (server, mut events) = listening(limits).await;
        let mut first = connect_from("127.0.0.1", server).await;
        let _kept = next_opened(&mut events).await;
        let _second = connect_from("127.0.0.1", server).await;
        let _kept = next_opened(&mut events).await;

        let mut third = connect_from("127.0.0.1", server).await;
        closed_by_server(&mut third).await;

        // Another source still gets in, up to the total.
        let _other = connect_from("127.0.0.2", server).await;
        let _kept = next_opened(&mut events).await;
        let mut over_total = connect_from("127.0.0.3", server).await;
        closed_by_server(&mut over_total).await;

        // The admitted ones still work.
        write_frame(&mut first, b"still here").await.expect("write");
        assert_eq!(next_frame(&mut events).await, b"still here");

        // A closed connection frees its place.
        drop(first);
        let (mut again, _kept) = tokio::time::timeout(PATIENCE, async {
            loop {
                let mut stream = connect_from("127.0.0.1", server).await;
                let mut byte = [0u8; 1];
                // Closed at once while the old one is not yet released.
                let probe = Duration::from_millis(200);
                match tokio::time::timeout(probe, stream.read(&mut byte)).await {
                    Err(_) => break (stream, next_opened(&mut events).await),
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("the closed connection's place was never freed");
        write_frame(&mut again, b"back").await.expect("write");
        assert_eq!(next_frame(&mut events).await, b"back");
    }

    #[tokio::test]
    async fn idle_and_slow_connections_are_closed_after_their_timeouts() {
        let limits = TcpLimits {
            per_source: 8,
            total: 8,
            idle_timeout: Duration::from_millis(300),
            frame_timeout: Duration::from_millis(300),
        };
        let (server, mut events) = listening(limits).await;

        // Silent after connecting.
        let mut idle = connect_from("127.0.0.1", server).await;
        let _kept = next_opened(&mut events).await;
        let waited = closed_by_server(&mut idle).await;
        assert!(
            waited >= Duration::from_millis(200),
            "closed after {waited:?}"
        );

        // A frame that starts and never ends (a header claiming 64 KiB).
        let mut slow = connect_from("127.0.0.1", server).await;
        let _kept = next_opened(&mut events).await;
        slow.write_all(&[0xff, 0xff, 1, 2, 3]).await.expect("write");
        closed_by_server(&mut slow).await;

        // One that keeps talking stays open past the idle timeout.
        let mut busy = connect_from("127.0.0.1", server).await;
        let _kept = next_opened(&mut events).await;
        for round in 0..6u8 {
            write_frame(&mut busy, &[round]).await.expect("write");
            assert_eq!(next_frame(&mut events).await, [round]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
