//! Rootless mode (`agentnet up --userspace`, DESIGN.md §6): the overlay
//! without a TUN and without privileges. An in-process TCP/IP stack
//! (smoltcp, `Medium::Ip`) holds the agent's addresses (IPv6, and IPv4 in
//! `100.64.0.0/10` unless IPv4 is off) and stands where the kernel stands
//! in TUN mode; the daemon's event loop, node, sessions,
//! policy, names and status are the same. Local programs reach the overlay
//! through a SOCKS5 proxy (`--socks5`, with remote DNS for
//! `NAME.agent.internal`, or a peer's IPv6 or IPv4 address) and port
//! forwards (`--forward`); peers reach local services through exposed
//! ports (`--expose`), over either family.
//!
//! The stack runs on its own thread with its own tokio runtime and talks
//! to the daemon through two bounded channels of IP packets: the daemon
//! sees [`Userspace`] as its packet device, as it sees a TUN. The daemon
//! never waits for the stack (a full channel drops the packet, as a full
//! TUN queue does; TCP recovers), and the stack waits for the daemon only
//! through smoltcp's own flow control.

#![forbid(unsafe_code)]

mod device;
mod expose;
mod forward;
mod ports;
mod relay;
pub mod socks5;
pub mod spec;
mod stack;
mod udp;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use self::forward::ListenerContext;
use self::socks5::OverlayPeers;
use self::spec::{ExposeSpec, ForwardSpec, Transport};
use self::stack::{Stack, StackConfig};
use crate::core::address::NetworkId;
use crate::core::address::OverlayAddresses;
use crate::names::dns::NameTable;
use crate::sys::wake::{Wake, WakeWhenGone};

/// Packets queued between the daemon and the stack, each way.
const CHANNEL_PACKETS: usize = 1024;
/// Requests (new connections) queued for the stack.
const CHANNEL_REQUESTS: usize = 1024;

/// What `up --userspace` serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserspaceOptions {
    /// Where the SOCKS5 proxy listens, if anywhere.
    pub socks5: Option<SocketAddr>,
    /// Local listeners forwarded to peers.
    pub forwards: Vec<ForwardSpec>,
    /// Ports of the agent address handed to local services.
    pub exposes: Vec<ExposeSpec>,
    /// `agentnet serve`: the book in which connections to served ports'
    /// fronts record their peer ([`crate::serve::SourceBook`]).
    pub served_sources: Option<crate::serve::SourceBook>,
}

/// Errors starting the userspace stack.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    /// A local listener could not be bound.
    #[error("cannot listen on {address} for {what}: {source}")]
    Bind {
        /// `--socks5` or the forward.
        what: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The same port is exposed twice.
    #[error("port {port}/{transport} is exposed twice")]
    DuplicateExpose {
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        transport: &'static str,
    },
    /// The stack's thread or runtime could not be started.
    #[error("cannot start the userspace stack: {0}")]
    Thread(#[source] io::Error),
}

/// Counters of the stack, shared between its thread and the daemon.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    packets_dropped: AtomicU64,
    tcp_active: AtomicU64,
    tcp_opened: AtomicU64,
    tcp_failed: AtomicU64,
    tcp_reset: AtomicU64,
    bytes_to_local: AtomicU64,
    bytes_to_overlay: AtomicU64,
    socks_requests: AtomicU64,
    socks_refused: AtomicU64,
    udp_flows: AtomicU64,
    udp_datagrams: AtomicU64,
    udp_dropped: AtomicU64,
}

/// The userspace part of `status --json` (key `userspace`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserspaceStatus {
    /// Where the SOCKS5 proxy listens.
    pub socks5: Option<SocketAddr>,
    /// The forwards, as given.
    pub forwards: Vec<String>,
    /// The exposed ports, as given.
    pub exposes: Vec<String>,
    /// Packets from the overlay into the stack.
    pub packets_in: u64,
    /// Packets from the stack to the overlay.
    pub packets_out: u64,
    /// Packets dropped because the stack did not keep up.
    pub packets_dropped: u64,
    /// TCP connections relayed now.
    pub tcp_active: u64,
    /// TCP connections opened since start (both directions).
    pub tcp_opened: u64,
    /// Connections that could not be set up (refused, unreachable, limits).
    pub tcp_failed: u64,
    /// Connections ended by a reset.
    pub tcp_reset: u64,
    /// Bytes from the overlay to local sockets.
    pub bytes_to_local: u64,
    /// Bytes from local sockets to the overlay.
    pub bytes_to_overlay: u64,
    /// SOCKS5 clients accepted.
    pub socks_requests: u64,
    /// SOCKS5 requests refused (bad request, unknown name, untrusted address).
    pub socks_refused: u64,
    /// UDP flows now.
    pub udp_flows: u64,
    /// UDP datagrams relayed.
    pub udp_datagrams: u64,
    /// UDP datagrams dropped (too large, buffer full, unreachable).
    pub udp_dropped: u64,
}

/// The daemon's handle on the userspace stack: its packet device.
#[derive(Debug)]
pub struct Userspace {
    to_stack: mpsc::Sender<Vec<u8>>,
    from_stack: mpsc::Receiver<Vec<u8>>,
    /// Written by the stack's thread after it queued packets for the
    /// daemon, while the daemon's datapath sleeps.
    wake: Arc<Wake>,
    peers: watch::Sender<OverlayPeers>,
    stats: Arc<Stats>,
    options: UserspaceOptions,
    /// Dropping it stops the stack.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Starts the stack's thread (taken at the first receive).
    launch: Option<Launch>,
    thread: Option<JoinHandle<()>>,
}

/// Spawns the stack's thread.
struct Launch(Box<dyn FnOnce() -> io::Result<JoinHandle<()>> + Send>);

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launch")
    }
}

impl Userspace {
    /// Binds the local listeners (errors such as a port in use come back
    /// here) and prepares the stack with the agent's `addresses` in
    /// `network` and the tunnel `mtu`; its thread starts at the first
    /// receive (see [`Userspace::try_recv`]).
    pub fn start(
        options: &UserspaceOptions,
        addresses: OverlayAddresses,
        network: NetworkId,
        mtu: u16,
    ) -> Result<Self, UserspaceError> {
        check_exposes(&options.exposes)?;
        crate::sys::calls::raise_fd_limit();
        let mut options = options.clone();
        let listeners = Listeners::bind(&mut options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(UserspaceError::Thread)?;
        let (to_stack, packets_in) = mpsc::channel(CHANNEL_PACKETS);
        let (packets_out, from_stack) = mpsc::channel(CHANNEL_PACKETS);
        let wake = Arc::new(Wake::new().map_err(UserspaceError::Thread)?);
        let stack_wake = wake.clone();
        let (peers, peers_rx) = watch::channel(OverlayPeers::default());
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let stats = Arc::new(Stats::default());
        let config = StackConfig {
            addresses,
            network,
            mtu,
            seed: rand::random(),
            sources: options.served_sources.clone(),
        };
        let exposes = options.exposes.clone();
        let thread_stats = stats.clone();
        let launch = move || {
            std::thread::Builder::new()
                .name("agentnet-userspace".into())
                .spawn(move || {
                    // However the stack ends, the daemon hears it.
                    let _gone = WakeWhenGone(stack_wake.clone());
                    runtime.block_on(async move {
                        let (stack, requests) =
                            match listeners.start(config, exposes, peers_rx, thread_stats) {
                                Ok(started) => started,
                                Err(error) => {
                                    tracing::error!(%error, "userspace stack failed to start");
                                    return;
                                }
                            };
                        tokio::select! {
                            () = stack.run(packets_in, packets_out, &stack_wake, requests) => {}
                            _ = stop_rx => {}
                        }
                    });
                })
        };
        tracing::info!(
            socks5 = ?options.socks5,
            forwards = options.forwards.len(),
            exposes = options.exposes.len(),
            "userspace stack ready (no TUN)"
        );
        Ok(Self {
            to_stack,
            from_stack,
            wake,
            peers,
            stats,
            options,
            stop: Some(stop),
            launch: Some(Launch(Box::new(launch))),
            thread: None,
        })
    }

    /// Starts the stack's thread if it has not started yet. It starts at
    /// the first receive, i.e. once the event loop runs: after the daemon
    /// dropped its privileges, which must happen while the process has a
    /// single thread. Until then packets wait in the channel.
    fn launch(&mut self) -> Result<(), StackStopped> {
        let Some(Launch(launch)) = self.launch.take() else {
            return Ok(());
        };
        match launch() {
            Ok(thread) => {
                self.thread = Some(thread);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the userspace stack's thread");
                Err(StackStopped)
            }
        }
    }

    /// What the stack serves, with the ports the OS chose for port 0.
    pub fn options(&self) -> &UserspaceOptions {
        &self.options
    }

    /// What the stack's thread writes after it queued packets for the
    /// daemon (see [`Wake`]).
    pub fn wake(&self) -> &Wake {
        &self.wake
    }

    /// Whether packets from the stack are queued for the daemon.
    pub fn has_queued(&self) -> bool {
        !self.from_stack.is_empty()
    }

    /// A packet if one is queued: `Ok(None)` if not, `Err` once the stack
    /// has stopped. The first call starts the stack's thread.
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>, StackStopped> {
        self.launch()?;
        match self.from_stack.try_recv() {
            Ok(packet) => Ok(Some(packet)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(StackStopped),
        }
    }

    /// Hands a packet from the overlay to the stack without waiting (its
    /// buffer, without a copy): when the stack is behind, the packet is
    /// dropped and counted.
    pub fn send(&self, packet: Vec<u8>) -> Result<(), StackStopped> {
        match self.to_stack.try_send(packet) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StackStopped),
        }
    }

    /// Tells the SOCKS5 proxy and the forwards the trusted names.
    pub fn publish_names(&self, names: &NameTable) {
        self.peers.send_if_modified(|current| {
            if current.names == *names {
                false
            } else {
                current.names = names.clone();
                true
            }
        });
    }

    /// Tells the SOCKS5 proxy and the forwards the IPv4 addresses routed to
    /// trusted peers, by lowercase name: the only IPv4 targets they accept,
    /// and what those names resolve to.
    pub fn publish_ipv4_routes(&self, routes: &BTreeMap<String, Ipv4Addr>) {
        self.peers.send_if_modified(|current| {
            if current.ipv4 == *routes {
                false
            } else {
                current.ipv4 = routes.clone();
                true
            }
        });
    }

    /// Counters and listeners, for `status`.
    pub fn status(&self) -> UserspaceStatus {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &self.stats;
        UserspaceStatus {
            socks5: self.options.socks5,
            forwards: self
                .options
                .forwards
                .iter()
                .map(ToString::to_string)
                .collect(),
            exposes: self
                .options
                .exposes
                .iter()
                .map(ToString::to_string)
                .collect(),
            packets_in: get(&stats.packets_in),
            packets_out: get(&stats.packets_out),
            packets_dropped: get(&stats.packets_dropped),
            tcp_active: get(&stats.tcp_active),
            tcp_opened: get(&stats.tcp_opened),
            tcp_failed: get(&stats.tcp_failed),
            tcp_reset: get(&stats.tcp_reset),
            bytes_to_local: get(&stats.bytes_to_local),
            bytes_to_overlay: get(&stats.bytes_to_overlay),
            socks_requests: get(&stats.socks_requests),
            socks_refused: get(&stats.socks_refused),
            udp_flows: get(&stats.udp_flows),
            udp_datagrams: get(&stats.udp_datagrams),
            udp_dropped: get(&stats.udp_dropped),
        }
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        // The stack's runtime goes with its thread: listeners close, local
        // connections close.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the userspace stack's thread panicked");
        }
    }
}

/// The stack has stopped (its thread ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the userspace stack has stopped")]
pub struct StackStopped;

fn check_exposes(exposes: &[ExposeSpec]) -> Result<(), UserspaceError> {
    let mut seen = std::collections::HashSet::new();
    for expose in exposes {
        if !seen.insert((expose.port, expose.transport)) {
            return Err(UserspaceError::DuplicateExpose {
                port: expose.port,
                transport: match expose.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                },
            });
        }
    }
    Ok(())
}

/// Local sockets bound on the daemon's thread (so errors are reported at
/// start), handed to the stack's runtime.
struct Listeners {
    socks5: Option<std::net::TcpListener>,
    tcp_forwards: Vec<(ForwardSpec, std::net::TcpListener)>,
    udp_forwards: Vec<(ForwardSpec, std::net::UdpSocket)>,
}

impl Listeners {
    /// Binds every local socket of `options`, and writes the addresses
    /// the OS chose for port 0 back into it.
    fn bind(options: &mut UserspaceOptions) -> Result<Self, UserspaceError> {
        let bind_error = |what: String, address: SocketAddr| {
            move |source: io::Error| UserspaceError::Bind {
                what,
                address,
                source,
            }
        };
        let tcp = |address: SocketAddr, what: String| {
            let listener = std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(bind_error(what, address))?;
            Ok::<_, UserspaceError>(listener)
        };
        let socks5 = match options.socks5 {
            Some(address) => {
                let listener = tcp(address, "--socks5".into())?;
                options.socks5 = Some(listener.local_addr().unwrap_or(address));
                Some(listener)
            }
            None => None,
        };
        let mut tcp_forwards = Vec::new();
        let mut udp_forwards = Vec::new();
        for spec in &mut options.forwards {
            let what = format!("--forward {spec}");
            match spec.transport {
                Transport::Tcp => {
                    let listener = tcp(spec.listen, what)?;
                    spec.listen = listener.local_addr().unwrap_or(spec.listen);
                    tcp_forwards.push((spec.clone(), listener));
                }
                Transport::Udp => {
                    let socket = std::net::UdpSocket::bind(spec.listen)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s))
                        .map_err(bind_error(what, spec.listen))?;
                    spec.listen = socket.local_addr().unwrap_or(spec.listen);
                    udp_forwards.push((spec.clone(), socket));
                }
            }
        }
        Ok(Self {
            socks5,
            tcp_forwards,
            udp_forwards,
        })
    }

    /// Inside the stack's runtime: registers the sockets with it, spawns
    /// the accept loops, and builds the stack.
    fn start(
        self,
        config: StackConfig,
        exposes: Vec<ExposeSpec>,
        peers: watch::Receiver<OverlayPeers>,
        stats: Arc<Stats>,
    ) -> io::Result<(Stack, mpsc::Receiver<stack::StackRequest>)> {
        let (requests, requests_rx) = mpsc::channel(CHANNEL_REQUESTS);
        let context = ListenerContext {
            peers: peers.clone(),
            network: config.network,
            requests: requests.clone(),
            stats: stats.clone(),
        };
        let reserved: Vec<u16> = exposes.iter().map(|e| e.port).collect();
        let mut stack = Stack::new(config, peers, requests, stats, &reserved);
        for expose in exposes {
            match expose.transport {
                Transport::Tcp => stack.expose_tcp(expose.port, expose.local),
                Transport::Udp => {
                    let (udp, sockets) = stack.udp_mut();
                    udp.add_expose(expose.clone(), sockets)
                        .map_err(|error| io::Error::other(format!("expose {expose}: {error}")))?;
                }
            }
        }
        for (spec, socket) in self.udp_forwards {
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            stack.udp_mut().0.add_forward(spec, socket);
        }
        if let Some(listener) = self.socks5 {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(forward::serve_socks5(listener, context.clone()));
        }
        for (spec, listener) in self.tcp_forwards {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(forward::serve_forward(listener, spec, context.clone()));
        }
        Ok((stack, requests_rx))
    }
}
