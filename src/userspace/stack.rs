//! The userspace TCP/IP stack: a smoltcp interface with the agent's
//! addresses (IPv6 `/48` and IPv4 `100.64.0.0/10`, both on-link),
//! the relays between its sockets and local sockets, and the loop that
//! drives them on the stack's own thread.
//!
//! Each turn of [`Stack::run`] polls smoltcp with the current time (tokio's
//! clock, read once per turn and passed in), pumps every relay, sends what
//! smoltcp wrote towards the daemon, then sleeps until a packet arrives, a
//! request arrives, a local socket becomes ready where a relay would have
//! blocked, or smoltcp's next deadline.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, CongestionControl};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Stats;
use super::device::QueueDevice;
use super::expose::{FlowKey, Inbound, TcpExposer};
use super::ports::PortAllocator;
use super::relay::{Moved, Origin, Step, TcpRelay, reset_on_close};
use super::socks5::{OverlayPeers, Reply};
use super::udp::{UdpContext, UdpRelays};
use crate::core::address::OverlayAddresses;
use crate::core::address::{IPV4_PREFIX_LEN, NETWORK_PREFIX_LEN, NetworkId};
use crate::sys::wake::Wake;

/// Receive buffer of each TCP socket: the window the remote sender sees.
pub(crate) const TCP_RX_BUFFER: usize = 256 * 1024;
/// Send buffer of each TCP socket: how much of a local sender's data may
/// wait for acknowledgement.
pub(crate) const TCP_TX_BUFFER: usize = 256 * 1024;
/// Relayed TCP connections at most (each also holds a local socket).
pub(crate) const MAX_TCP_RELAYS: usize = 4096;
/// Packets smoltcp may have written that the daemon has not taken yet.
const TX_QUEUE: usize = 512;
/// Packets taken from the daemon per wake-up before smoltcp runs.
const RX_BATCH: usize = 256;
/// Rounds of poll-and-pump per turn (each moves a window's worth at most).
const ROUNDS: usize = 8;
/// How long an outbound connection may take to be answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an armed listener waits for its SYN to complete a handshake.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the local service of an exposed port may take to accept.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a connection is probed.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Time without any answer after which a connection is given up (it
/// covers three unanswered keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(200);
/// How long an aborted socket is kept for its reset to go out.
const ZOMBIE_TIME: Duration = Duration::from_secs(1);
/// Sleep when nothing has a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(60);

/// Work handed to the stack by the SOCKS5 and forward tasks, and by its
/// own local-connect tasks.
#[derive(Debug)]
pub(crate) enum StackRequest {
    /// Connect a local client to `target` on the overlay.
    Connect {
        /// The local connection.
        local: TcpStream,
        /// Where to (either family).
        target: SocketAddr,
        /// Where to try next if `target` refuses or never answers.
        fallback: Option<SocketAddr>,
        /// SOCKS5 (reply on the outcome) or forward.
        origin: Origin,
    },
    /// The local connection for an exposed flow finished.
    Exposed {
        /// The flow.
        key: FlowKey,
        /// The local service's connection, or why not.
        result: std::io::Result<TcpStream>,
    },
}

/// What the stack is built from.
#[derive(Debug, Clone)]
pub(crate) struct StackConfig {
    pub(crate) addresses: OverlayAddresses,
    pub(crate) network: NetworkId,
    pub(crate) mtu: u16,
    pub(crate) seed: u64,
    /// Where connections to `agentnet serve` fronts record their peer.
    pub(crate) sources: Option<crate::serve::SourceBook>,
}

/// The stack's state; see the module docs.
pub(crate) struct Stack {
    config: StackConfig,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    relays: Vec<TcpRelay>,
    /// Aborted sockets whose reset has not gone out yet.
    zombies: Vec<(SocketHandle, Instant)>,
    tcp_ports: PortAllocator,
    udp_ports: PortAllocator,
    exposer: TcpExposer,
    udp: UdpRelays,
    peers: watch::Receiver<OverlayPeers>,
    requests: mpsc::Sender<StackRequest>,
    stats: Arc<Stats>,
    epoch: Instant,
}

impl Stack {
    /// A stack with the agent's addresses; `requests` is where its own
    /// local-connect tasks report.
    pub(crate) fn new(
        config: StackConfig,
        peers: watch::Receiver<OverlayPeers>,
        requests: mpsc::Sender<StackRequest>,
        stats: Arc<Stats>,
        reserved_ports: &[u16],
    ) -> Self {
        let epoch = Instant::now();
        let mut device = QueueDevice::new(config.mtu, TX_QUEUE);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = config.seed;
        let mut iface = Interface::new(iface_config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // The whole network is on-link: with Medium::Ip there is no
            // neighbour discovery, every packet goes to the daemon.
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv6(config.addresses.v6),
                NETWORK_PREFIX_LEN,
            ));
            // Likewise the IPv4 overlay: 100.64.0.0/10 goes to the daemon.
            if let Some(v4) = config.addresses.v4 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(v4), IPV4_PREFIX_LEN));
            }
        });
        let tcp_ports = PortAllocator::new(config.seed, reserved_ports.iter().copied());
        let udp_ports = PortAllocator::new(config.seed >> 16, reserved_ports.iter().copied());
        Self {
            config,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            relays: Vec::new(),
            zombies: Vec::new(),
            tcp_ports,
            udp_ports,
            exposer: TcpExposer::default(),
            udp: UdpRelays::default(),
            peers,
            requests,
            stats,
            epoch,
        }
    }

    /// Exposes a TCP port.
    pub(crate) fn expose_tcp(&mut self, port: u16, local: std::net::SocketAddr) {
        self.exposer.add(port, local);
    }

    /// The UDP relays, to add forwards and exposed ports to.
    pub(crate) fn udp_mut(&mut self) -> (&mut UdpRelays, &mut SocketSet<'static>) {
        (&mut self.udp, &mut self.sockets)
    }

    fn smol_time(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Runs until the daemon closes its end of the packet channel.
    pub(crate) async fn run(
        mut self,
        mut packets_in: mpsc::Receiver<Vec<u8>>,
        packets_out: mpsc::Sender<Vec<u8>>,
        daemon_wake: &Wake,
        mut requests: mpsc::Receiver<StackRequest>,
    ) {
        loop {
            // Back to the runtime every turn, so its I/O driver runs: when
            // packets keep arriving the `select!` below never waits, and
            // local sockets would not learn of new data (tokio delivers
            // readiness only when the driver is polled).
            tokio::task::yield_now().await;
            let now = Instant::now();
            self.turn(now);
            if self.send_out(&packets_out) {
                daemon_wake.notify();
            }
            let wake = self.next_wake(now);
            let relays = &self.relays;
            let udp = &self.udp;
            let local_ready = poll_fn(|cx| {
                for relay in relays {
                    if relay.poll_local(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                udp.poll_local(cx)
            });
            tokio::select! {
                packet = packets_in.recv() => {
                    let Some(packet) = packet else { break };
                    self.on_packet(packet);
                    for _ in 1..RX_BATCH {
                        match packets_in.try_recv() {
                            Ok(packet) => self.on_packet(packet),
                            Err(_) => break,
                        }
                    }
                }
                Some(request) = requests.recv() => self.on_request(Instant::now(), request),
                permit = packets_out.reserve(), if self.device.has_tx() => {
                    let Ok(permit) = permit else { break };
                    if let Some(packet) = self.device.pop_tx() {
                        self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                        permit.send(packet);
                        daemon_wake.notify();
                    }
                }
                () = local_ready => {}
                () = tokio::time::sleep(wake) => {}
            }
        }
        tracing::debug!("userspace stack stopped");
    }

    /// One turn: smoltcp, relays, smoltcp again while bytes move.
    fn turn(&mut self, now: Instant) {
        let time = self.smol_time(now);
        for _ in 0..ROUNDS {
            self.iface.poll(time, &mut self.device, &mut self.sockets);
            // `poll` sends one segment per socket; keep going while the
            // device takes more.
            while self
                .iface
                .poll_egress(time, &mut self.device, &mut self.sockets)
                == PollResult::SocketStateChanged
            {}
            if !self.pump(now) {
                break;
            }
        }
        self.reap(now);
    }

    /// Pumps every relay; returns whether bytes moved.
    fn pump(&mut self, now: Instant) -> bool {
        let mut moved = Moved::default();
        let mut index = 0;
        while index < self.relays.len() {
            let relay = &mut self.relays[index];
            let socket = self.sockets.get_mut::<tcp::Socket>(relay.handle);
            let step = relay.pump(socket, now, &mut moved);
            if step == Step::Continue {
                index += 1;
                continue;
            }
            let relay = self.relays.swap_remove(index);
            self.finish(relay, step, now);
        }
        self.stats
            .bytes_to_local
            .fetch_add(moved.to_local, Ordering::Relaxed);
        self.stats
            .bytes_to_overlay
            .fetch_add(moved.to_overlay, Ordering::Relaxed);
        if self.udp.is_empty() {
            return moved.any();
        }
        let peers = self.peers.borrow();
        let mut cx = UdpContext {
            sockets: &mut self.sockets,
            ports: &mut self.udp_ports,
            peers: &peers,
            network: self.config.network,
            mtu: usize::from(self.config.mtu),
            now,
            stats: &self.stats,
        };
        let udp_moved = self.udp.pump(&mut cx);
        moved.any() || udp_moved
    }

    /// Removes a finished relay: the local side learns the outcome, the
    /// socket goes (after its reset, if it has one to send).
    fn finish(&mut self, relay: TcpRelay, step: Step, now: Instant) {
        let handle = relay.handle;
        let socket = self.sockets.get::<tcp::Socket>(handle);
        let remote = socket.remote_endpoint();
        match step {
            Step::Failed(reply) => {
                self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(origin = ?relay.origin, ?reply, ?remote, "userspace: connection failed");
            }
            Step::Reset => {
                self.stats.tcp_reset.fetch_add(1, Ordering::Relaxed);
            }
            Step::Closed | Step::Continue => {}
        }
        match relay.flow {
            Some(flow) => self.exposer.closed(&flow),
            None => self.tcp_ports.release(relay.overlay_port),
        }
        let pending_reset = socket.state() == tcp::State::Closed && remote.is_some();
        let retry = match step {
            Step::Failed(Reply::ConnectionRefused | Reply::HostUnreachable) => relay.fallback,
            _ => None,
        };
        let origin = relay.origin;
        let local = match retry {
            Some(_) => Some(relay.into_local()),
            None => {
                relay.finish(step);
                None
            }
        };
        self.stats.tcp_active.fetch_sub(1, Ordering::Relaxed);
        if pending_reset {
            self.zombies.push((handle, now + ZOMBIE_TIME));
        } else {
            self.sockets.remove(handle);
        }
        if let (Some(fallback), Some(local)) = (retry, local) {
            tracing::debug!(%fallback, "userspace: trying the other address");
            self.connect(now, local, fallback, None, origin);
        }
    }

    /// Drops zombies whose reset went out (or that waited long enough) and
    /// idle UDP flows.
    fn reap(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        self.zombies.retain(|&(handle, until)| {
            let done = sockets
                .get::<tcp::Socket>(handle)
                .remote_endpoint()
                .is_none();
            if done || now >= until {
                sockets.remove(handle);
                false
            } else {
                true
            }
        });
        self.udp.expire(&mut self.sockets, &mut self.udp_ports, now);
        self.stats
            .udp_flows
            .store(self.udp.flows() as u64, Ordering::Relaxed);
    }

    /// Hands packets smoltcp wrote to the daemon while its channel has room.
    /// Returns whether it handed any.
    fn send_out(&mut self, packets_out: &mpsc::Sender<Vec<u8>>) -> bool {
        let mut sent = false;
        while let Some(packet) = self.device.pop_tx() {
            match packets_out.try_send(packet) {
                Ok(()) => {
                    self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    sent = true;
                }
                Err(mpsc::error::TrySendError::Full(packet)) => {
                    self.device.unpop_tx(packet);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        sent
    }

    /// The earliest of smoltcp's deadline, the set-up deadlines and the
    /// next UDP expiry.
    fn next_wake(&mut self, now: Instant) -> Duration {
        let time = self.smol_time(now);
        let mut wake = IDLE_WAKE;
        // With the outgoing queue full smoltcp may want to send "now"; the
        // channel's room wakes the loop instead.
        if !self.device.tx_full()
            && let Some(delay) = self.iface.poll_delay(time, &self.sockets)
        {
            wake = wake.min(Duration::from_micros(delay.total_micros()));
        }
        let deadlines = self
            .relays
            .iter()
            .filter_map(TcpRelay::deadline)
            .chain(self.udp.next_expiry())
            .chain(self.zombies.iter().map(|&(_, until)| until));
        for deadline in deadlines {
            wake = wake.min(deadline.saturating_duration_since(now));
        }
        wake
    }

    fn on_packet(&mut self, packet: Vec<u8>) {
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        match self.exposer.classify(packet, self.config.addresses) {
            // The queue is drained every turn; the bound is a safety net.
            Inbound::Stack(_) if self.device.rx_len() >= 4 * RX_BATCH => {
                self.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Inbound::Stack(packet) => self.device.push_rx(packet),
            Inbound::Drop => {}
            Inbound::Connect { key, target } => {
                let requests = self.requests.clone();
                let sources = self.config.sources.clone();
                tokio::spawn(async move {
                    // A served port's front learns which peer connects.
                    let connect = async {
                        match sources {
                            Some(book) => book.connect(target, key.0.addr.into()).await,
                            None => TcpStream::connect(target).await,
                        }
                    };
                    let result = match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, connect).await {
                        Ok(result) => result,
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    };
                    let _ = requests.send(StackRequest::Exposed { key, result }).await;
                });
            }
        }
    }

    fn on_request(&mut self, now: Instant, request: StackRequest) {
        match request {
            StackRequest::Connect {
                local,
                target,
                fallback,
                origin,
            } => self.connect(now, local, target, fallback, origin),
            StackRequest::Exposed { key, result } => self.exposed(now, key, result),
        }
    }

    /// The agent's address of `peer`'s family, if it has one.
    fn own_address(&self, peer: IpAddr) -> Option<IpAddress> {
        match peer {
            IpAddr::V6(_) => Some(IpAddress::Ipv6(self.config.addresses.v6)),
            IpAddr::V4(_) => self.config.addresses.v4.map(IpAddress::Ipv4),
        }
    }

    fn new_tcp_socket() -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TCP_TX_BUFFER]),
        );
        // The local application decides segment sizes; Nagle on top of the
        // remote's delayed ACKs would stall request/response protocols.
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(KEEPALIVE.into()));
        socket.set_timeout(Some(IDLE_TIMEOUT.into()));
        socket.set_congestion_control(CongestionControl::Cubic);
        socket
    }

    /// Opens an overlay connection for a local client; `fallback` is tried
    /// if `target` refuses or never answers.
    fn connect(
        &mut self,
        now: Instant,
        local: TcpStream,
        target: SocketAddr,
        fallback: Option<SocketAddr>,
        origin: Origin,
    ) {
        let fail = |local: TcpStream, reply: Reply| {
            if origin == Origin::Socks {
                let _ = local.try_write(&super::socks5::error_reply(reply));
            } else {
                reset_on_close(&local);
            }
        };
        if self.relays.len() >= MAX_TCP_RELAYS {
            self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max = MAX_TCP_RELAYS,
                "userspace: too many connections; refusing one"
            );
            return fail(local, Reply::GeneralFailure);
        }
        // The agent's address of the target's family (IPv4 may be off).
        let Some(own) = self.own_address(target.ip()) else {
            self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            return fail(local, Reply::NetworkUnreachable);
        };
        let Some(port) = self.tcp_ports.allocate() else {
            self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            return fail(local, Reply::GeneralFailure);
        };
        let mut socket = Self::new_tcp_socket();
        let remote = IpEndpoint::from(target);
        let local_endpoint = IpListenEndpoint {
            addr: Some(own),
            port,
        };
        if let Err(error) = socket.connect(self.iface.context(), remote, local_endpoint) {
            tracing::debug!(%error, %target, "userspace: cannot connect");
            self.tcp_ports.release(port);
            self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            return fail(local, Reply::GeneralFailure);
        }
        let handle = self.sockets.add(socket);
        let mut relay = TcpRelay::outbound(handle, local, origin, port, now + CONNECT_TIMEOUT);
        relay.fallback = fallback;
        self.relays.push(relay);
        self.stats.tcp_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.tcp_active.fetch_add(1, Ordering::Relaxed);
    }

    /// The local connection of an exposed flow finished: arm a listener
    /// and hand smoltcp the held SYN, or let smoltcp reset it.
    fn exposed(&mut self, now: Instant, key: FlowKey, result: std::io::Result<TcpStream>) {
        let Some(syn) = self.exposer.take_held(&key) else {
            return;
        };
        let (remote, port) = key;
        let local = match result {
            Ok(local) if self.relays.len() < MAX_TCP_RELAYS => local,
            Ok(local) => {
                tracing::warn!(
                    max = MAX_TCP_RELAYS,
                    "userspace: too many connections; refusing one"
                );
                reset_on_close(&local);
                self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
                self.device.push_rx(syn);
                return;
            }
            Err(error) => {
                tracing::debug!(%error, %remote, port, "userspace: the exposed service refused; resetting");
                self.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
                self.device.push_rx(syn);
                return;
            }
        };
        let mut socket = Self::new_tcp_socket();
        // The SYN was checked to be for our address of its family.
        let listen = IpListenEndpoint {
            addr: self.own_address(IpAddr::from(remote.addr)),
            port,
        };
        if let Err(error) = socket.listen(listen) {
            tracing::debug!(%error, port, "userspace: cannot listen");
            reset_on_close(&local);
            self.device.push_rx(syn);
            return;
        }
        let _ = local.set_nodelay(true);
        let handle = self.sockets.add(socket);
        self.relays
            .push(TcpRelay::inbound(handle, local, key, now + ACCEPT_TIMEOUT));
        self.exposer.opened(key);
        self.stats.tcp_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.tcp_active.fetch_add(1, Ordering::Relaxed);
        // One armed listener per turn: the next `turn` gives it this SYN.
        self.device.push_rx(syn);
    }
}
