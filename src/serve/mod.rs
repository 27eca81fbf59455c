//! `agentnet serve`: publishing a loopback service to trusted peers.
//!
//! For each served port the daemon listens on its overlay addresses (the
//! IPv6 agent address, and the IPv4 one when IPv4 is on), port PORT. A
//! peer reaches the service there or at `NAME.agent.internal:PORT`, under
//! this agent's packet policy for it (the node enforces that before a SYN
//! reaches the kernel). Each accepted connection is first tied to a caller:
//! its source address goes to the event loop, which asks the node whose it
//! is ([`crate::core::node::Node::peer_of_address`]: the peer's node prefix
//! for IPv6, its routed address for IPv4) and names it from the trust
//! store. A source no trusted peer holds (a local program dialling the
//! overlay address, say) is closed at once.
//!
//! Then, by mode: `--tcp` splices bytes both ways ([`splice`]), `--http`
//! is a reverse proxy ([`proxy`]) that tells the service who calls in
//! `Agentnet-Peer-Id` and `Agentnet-Peer-Name`. What is served is kept in
//! `STATE_DIR/served.json` ([`crate::state::served`]).

#![forbid(unsafe_code)]

pub mod proxy;
pub mod splice;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::core::identity::AgentId;
use crate::state::{StateDir, StateError};

pub use crate::state::served::{
    MAX_SERVED, SERVED_FILE, ServeMode, ServeSpec, ServeSpecError, ServedStore, parse_target,
};
/// Most connections open at once to one served port; more are closed.
const MAX_CONNECTIONS_PER_PORT: usize = 1024;
/// Caller questions that may wait for the event loop.
const CALLER_QUEUE: usize = 256;
/// Userspace connections to served ports waiting to be accepted, at most.
const MAX_PENDING_SOURCES: usize = 4096;

/// Why a service cannot be served (or the request about it failed).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The spec is not one that can be served.
    #[error(transparent)]
    Spec(#[from] ServeSpecError),
    /// The port is already served.
    #[error(
        "port {port} is already served ({mode} to {target}); `agentnet serve --off {port}` first"
    )]
    AlreadyServed {
        /// The port.
        port: u16,
        /// Its mode.
        mode: ServeMode,
        /// Its target.
        target: SocketAddr,
    },
    /// The port is not served.
    #[error("port {0} is not served (see `agentnet serve --list`)")]
    NotServed(u16),
    /// Too many services.
    #[error("at most {MAX_SERVED} ports may be served")]
    TooMany,
    /// Another program holds the port on an overlay address.
    #[error(
        "port {port} is taken on the overlay address {address}: another program listens there; \
         stop it, or serve another port"
    )]
    PortTaken {
        /// The port.
        port: u16,
        /// The overlay address.
        address: IpAddr,
    },
    /// A port below 1024 after the daemon dropped its privileges.
    #[error(
        "port {port} is below 1024 and the running daemon has dropped the privilege to bind it; \
         stop agentnet (`agentnet down`), run this `agentnet serve` again (it is then saved for \
         the next start) and `agentnet up`: ports in served.json are bound before the drop"
    )]
    PrivilegedPort {
        /// The port.
        port: u16,
    },
    /// The target is the served port itself: connections would loop.
    #[error("TARGET {0} is the served port itself; connections would loop")]
    Loop(SocketAddr),
    /// `--userspace`: the served ports are fixed at start.
    #[error(
        "with `up --userspace` the served ports are set at start: `agentnet down`, then \
         `agentnet serve ...` (saved for the next start), then `agentnet up --userspace ...`"
    )]
    FixedInUserspace,
    /// Binding failed for another reason.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `served.json` could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A served port as the daemon runs it (`serve --list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeStatus {
    /// The service.
    #[serde(flatten)]
    pub spec: ServeSpec,
    /// The overlay sockets it listens on (empty when the daemon is down
    /// or binding failed).
    #[serde(default)]
    pub listening: Vec<SocketAddr>,
    /// Why it does not listen, if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Who opened a connection to a served port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The peer's agent ID.
    pub id: AgentId,
    /// Its name in this agent's trust store.
    pub name: String,
    /// The overlay address the connection came from.
    pub address: IpAddr,
}

/// A question for the event loop: which trusted peer holds `address`?
#[derive(Debug)]
pub struct CallerQuery {
    /// The connection's source address.
    pub address: IpAddr,
    /// Where the answer goes: the peer's ID and local name, or `None`.
    pub reply: oneshot::Sender<Option<(AgentId, String)>>,
}

/// Asks the event loop (which owns the node) who is behind an address.
#[derive(Debug, Clone)]
pub struct CallerLookup {
    queries: mpsc::Sender<CallerQuery>,
}

impl CallerLookup {
    /// A lookup and the queue of its questions, for the event loop.
    pub fn new() -> (Self, mpsc::Receiver<CallerQuery>) {
        let (queries, receiver) = mpsc::channel(CALLER_QUEUE);
        (Self { queries }, receiver)
    }

    /// The trusted peer behind `address`, or `None` (also when the event
    /// loop is gone or too busy to ask).
    pub async fn identify(&self, address: IpAddr) -> Option<Caller> {
        let address = address.to_canonical();
        let (reply, answer) = oneshot::channel();
        self.queries.try_send(CallerQuery { address, reply }).ok()?;
        let (id, name) = answer.await.ok()??;
        Some(Caller { id, name, address })
    }
}

/// The served ports of a running daemon and their listeners.
#[derive(Debug)]
pub struct Services {
    state: StateDir,
    addresses: Vec<IpAddr>,
    lookup: CallerLookup,
    /// `--userspace`: who stands behind each loopback connection from
    /// the stack (`None`: the kernel's overlay sockets say it themselves).
    sources: Option<SourceBook>,
    proxy: proxy::Upstream,
    running: BTreeMap<u16, Running>,
}

#[derive(Debug)]
struct Running {
    spec: ServeSpec,
    listening: Vec<SocketAddr>,
    problem: Option<String>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

impl Services {
    /// Starts serving what `served.json` lists, on `addresses` (the
    /// overlay addresses on this host's interface). A port that cannot be
    /// bound is logged and listed with its problem; the others run. Must
    /// run inside the tokio runtime, before privileges are dropped.
    pub fn start(state: StateDir, addresses: Vec<IpAddr>, lookup: CallerLookup) -> Self {
        let mut services = Self {
            state,
            addresses,
            lookup,
            sources: None,
            proxy: proxy::Upstream::new(),
            running: BTreeMap::new(),
        };
        let stored = match ServedStore::load(&services.state) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(%error, "cannot read the served services; serving none");
                return services;
            }
        };
        for spec in stored.served {
            let running = match services.listen(&spec) {
                Ok(running) => {
                    tracing::info!(port = spec.port, mode = %spec.mode, target = %spec.target, "serving");
                    running
                }
                Err(error) => {
                    tracing::error!(port = spec.port, %error, "cannot serve");
                    Running {
                        spec: spec.clone(),
                        listening: Vec::new(),
                        problem: Some(error.to_string()),
                        accept_loops: Vec::new(),
                    }
                }
            };
            services.running.insert(spec.port, running);
        }
        services
    }

    /// `--userspace`: serves the loopback fronts [`UserspaceFronts::bind`]
    /// made (the stack hands them the connections to the served ports);
    /// `address` is the agent address the peers use.
    pub fn start_userspace(
        state: StateDir,
        address: IpAddr,
        fronts: UserspaceFronts,
        lookup: CallerLookup,
    ) -> Self {
        let mut services = Self {
            state,
            addresses: vec![address],
            lookup,
            sources: Some(fronts.sources.clone()),
            proxy: proxy::Upstream::new(),
            running: BTreeMap::new(),
        };
        for (spec, listener) in fronts.listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(port = spec.port, %error, "cannot serve");
                    continue;
                }
            };
            tracing::info!(port = spec.port, mode = %spec.mode, target = %spec.target, "serving through the userspace stack");
            let handler = services.handler(&spec);
            let running = Running {
                spec: spec.clone(),
                listening: vec![SocketAddr::new(address, spec.port)],
                problem: None,
                accept_loops: vec![tokio::spawn(accept_loop(listener, handler))],
            };
            services.running.insert(spec.port, running);
        }
        services
    }

    fn handler(&self, spec: &ServeSpec) -> Handler {
        Handler {
            spec: spec.clone(),
            lookup: self.lookup.clone(),
            proxy: self.proxy.clone(),
            sources: self.sources.clone(),
        }
    }

    /// Starts serving `spec` and records it in `served.json`.
    pub fn add(&mut self, spec: ServeSpec) -> Result<ServeStatus, ServeError> {
        spec.validate()?;
        if self.sources.is_some() {
            return Err(ServeError::FixedInUserspace);
        }
        if let Some(existing) = self.running.get(&spec.port) {
            // A stored port that failed to bind may be retried as it was.
            if existing.problem.is_none() || existing.spec != spec {
                return Err(ServeError::AlreadyServed {
                    port: spec.port,
                    mode: existing.spec.mode,
                    target: existing.spec.target,
                });
            }
        } else if self.running.len() >= MAX_SERVED {
            return Err(ServeError::TooMany);
        }
        let running = self.listen(&spec)?;
        ServedStore::edit(&self.state, |store| {
            store.served.retain(|stored| stored.port != spec.port);
            store.served.push(spec.clone());
            Ok::<_, ServeError>(())
        })?;
        tracing::info!(port = spec.port, mode = %spec.mode, target = %spec.target, "serving");
        let status = running.status();
        self.running.insert(spec.port, running);
        Ok(status)
    }

    /// Stops serving `port` (open connections end) and removes it from
    /// `served.json`.
    pub fn remove(&mut self, port: u16) -> Result<ServeSpec, ServeError> {
        if self.sources.is_some() {
            return Err(ServeError::FixedInUserspace);
        }
        let spec = ServedStore::edit(&self.state, |store| {
            let Some(index) = store.served.iter().position(|spec| spec.port == port) else {
                return Err(ServeError::NotServed(port));
            };
            Ok(store.served.remove(index))
        });
        // The listeners stop only once the file says so (or never said
        // otherwise): a failed write leaves the port served, as listed.
        let spec = match spec {
            Ok(spec) => {
                self.running.remove(&port);
                spec
            }
            Err(ServeError::NotServed(_)) => match self.running.remove(&port) {
                Some(running) => running.spec.clone(),
                None => return Err(ServeError::NotServed(port)),
            },
            Err(error) => return Err(error),
        };
        tracing::info!(port, target = %spec.target, "no longer serving");
        Ok(spec)
    }

    /// The served ports, by port.
    pub fn list(&self) -> Vec<ServeStatus> {
        self.running.values().map(Running::status).collect()
    }

    /// Binds the listeners of `spec` and starts accepting.
    fn listen(&self, spec: &ServeSpec) -> Result<Running, ServeError> {
        let mut listeners = Vec::new();
        for address in &self.addresses {
            let local = SocketAddr::new(*address, spec.port);
            if local == spec.target {
                return Err(ServeError::Loop(spec.target));
            }
            listeners.push(bind(local)?);
        }
        let mut running = Running {
            spec: spec.clone(),
            listening: Vec::new(),
            problem: None,
            accept_loops: Vec::new(),
        };
        for listener in listeners {
            running.listening.extend(listener.local_addr().ok());
            let handler = self.handler(spec);
            running
                .accept_loops
                .push(tokio::spawn(accept_loop(listener, handler)));
        }
        Ok(running)
    }
}

impl Running {
    fn status(&self) -> ServeStatus {
        ServeStatus {
            spec: self.spec.clone(),
            listening: self.listening.clone(),
            problem: self.problem.clone(),
        }
    }
}

/// Binds one overlay socket, turning the usual failures into clear errors.
fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    let bound = listen_freebind(address).and_then(tokio::net::TcpListener::from_std);
    bound.map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ServeError::PortTaken {
            port: address.port(),
            address: address.ip(),
        },
        io::ErrorKind::PermissionDenied if address.port() < 1024 => ServeError::PrivilegedPort {
            port: address.port(),
        },
        _ => ServeError::Bind { address, source },
    })
}

/// A listening socket on `address` with `IP_FREEBIND`: a TUN address just
/// assigned is still tentative for a moment (duplicate address detection),
/// and a plain bind would fail with `EADDRNOTAVAIL`; this one binds and
/// accepts once the address is usable.
fn listen_freebind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, setsockopt, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let socket = nix::sys::socket::socket(family, SockType::Stream, flags, None)?;
    setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    setsockopt(&socket, sockopt::IpFreebind, &true)?;
    if address.is_ipv6() {
        setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
    }
    nix::sys::socket::bind(socket.as_raw_fd(), &SockaddrStorage::from(address))?;
    nix::sys::socket::listen(&socket, Backlog::MAXCONN)?;
    Ok(std::net::TcpListener::from(socket))
}

/// What an accepted connection needs.
#[derive(Debug, Clone)]
struct Handler {
    spec: ServeSpec,
    lookup: CallerLookup,
    proxy: proxy::Upstream,
    sources: Option<SourceBook>,
}

impl Handler {
    async fn handle(self, stream: tokio::net::TcpStream, from: SocketAddr) {
        let overlay = match &self.sources {
            None => Some(from.ip()),
            Some(book) => book.take(from),
        };
        let Some(overlay) = overlay else {
            tracing::debug!(port = self.spec.port, %from, "a loopback connection the userspace stack did not make; closed");
            return;
        };
        let Some(caller) = self.lookup.identify(overlay).await else {
            tracing::debug!(port = self.spec.port, %from, "connection from an address no trusted peer holds; closed");
            return;
        };
        let _ = stream.set_nodelay(true);
        match self.spec.mode {
            ServeMode::Tcp => splice::splice(stream, &caller, &self.spec).await,
            ServeMode::Http => {
                proxy::serve_connection(stream, caller, &self.spec, &self.proxy).await
            }
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, handler: Handler) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    if connections.len() >= MAX_CONNECTIONS_PER_PORT {
                        // Its entry in the source book goes too: a later
                        // connection from the same loopback port must not
                        // inherit this caller.
                        if let Some(book) = &handler.sources {
                            book.take(from);
                        }
                        tracing::warn!(port = handler.spec.port, %from, "too many connections to a served port; closed one");
                        continue;
                    }
                    connections.spawn(handler.clone().handle(stream, from));
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(port = handler.spec.port, %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// `--userspace`: which overlay peer stands behind each loopback
/// connection the stack makes to a served port's front. The stack binds
/// its socket first and records the local address, then connects: the
/// entry is there before the front can accept.
#[derive(Debug, Clone, Default)]
pub struct SourceBook {
    fronts: Arc<HashSet<SocketAddr>>,
    /// Loopback source → the overlay peer, and when it was written: an
    /// entry older than [`SOURCE_TTL`] names nobody (a local program that
    /// later binds the same port must not inherit the peer).
    pending: Arc<Mutex<HashMap<SocketAddr, (IpAddr, std::time::Instant)>>>,
}

/// How long a source-book entry waits for the front to accept its
/// connection (on loopback, microseconds; the rest is a lost connection).
const SOURCE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes a source-book entry unless the connect it stands for completed
/// (a connect whose future is dropped, e.g. by the stack's timeout, must
/// not leave its entry behind).
struct PendingEntry<'a> {
    book: &'a SourceBook,
    local: SocketAddr,
    armed: bool,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.book.take(self.local);
        }
    }
}

impl PartialEq for SourceBook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pending, &other.pending)
    }
}

impl Eq for SourceBook {}

impl SourceBook {
    /// The peer behind a connection from `local`, forgotten once told
    /// (nobody, if the entry is older than [`SOURCE_TTL`]).
    fn take(&self, local: SocketAddr) -> Option<IpAddr> {
        let (peer, written) = self.pending.lock().ok()?.remove(&local)?;
        (written.elapsed() < SOURCE_TTL).then_some(peer)
    }

    /// Connects to `target` for the overlay peer at `remote`. A served
    /// port's front learns who that is; any other target is connected
    /// as it is.
    pub async fn connect(
        &self,
        target: SocketAddr,
        remote: IpAddr,
    ) -> io::Result<tokio::net::TcpStream> {
        if !self.fronts.contains(&target) {
            return tokio::net::TcpStream::connect(target).await;
        }
        let socket = match target {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(target.ip(), 0))?;
        let local = socket.local_addr()?;
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| io::Error::other("source book poisoned"))?;
            if pending.len() >= MAX_PENDING_SOURCES {
                // Only when full: forget what outlived its time.
                pending.retain(|_, (_, written)| written.elapsed() < SOURCE_TTL);
            }
            if pending.len() >= MAX_PENDING_SOURCES {
                return Err(io::Error::other(
                    "too many connections waiting for a served port",
                ));
            }
            pending.insert(local, (remote.to_canonical(), std::time::Instant::now()));
        }
        let mut entry = PendingEntry {
            book: self,
            local,
            armed: true,
        };
        let connected = socket.connect(target).await;
        // Connected: the front takes the entry when it accepts.
        entry.armed = connected.is_err();
        connected
    }
}

/// `--userspace`: a loopback listener per served port, exposed on the
/// stack in its place, and the book that ties their connections to peers.
#[derive(Debug, Default)]
pub struct UserspaceFronts {
    sources: SourceBook,
    listeners: Vec<(ServeSpec, std::net::TcpListener)>,
}

impl UserspaceFronts {
    /// Binds a front on 127.0.0.1 for each port in `served.json` and
    /// returns them with the `(port, front)` pairs to expose on the stack.
    pub fn bind(state: &StateDir) -> Result<(Self, Vec<(u16, SocketAddr)>), ServeError> {
        let stored = ServedStore::load(state)?;
        let mut listeners = Vec::new();
        let mut exposes = Vec::new();
        for spec in stored.served {
            let address = SocketAddr::from(([127, 0, 0, 1], 0));
            let listener = std::net::TcpListener::bind(address)
                .and_then(|listener| {
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .map_err(|source| ServeError::Bind { address, source })?;
            let front = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { address, source })?;
            exposes.push((spec.port, front));
            listeners.push((spec, listener));
        }
        let sources = SourceBook {
            fronts: Arc::new(exposes.iter().map(|(_, front)| *front).collect()),
            pending: Arc::default(),
        };
        Ok((Self { sources, listeners }, exposes))
    }

    /// The book the stack records its connections in.
    pub fn sources(&self) -> SourceBook {
        self.sources.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_book_entries_are_told_once_and_name_nobody_once_stale() {
        let book = SourceBook::default();
        let fresh: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        let stale: SocketAddr = "127.0.0.1:40002".parse().expect("addr");
        let peer: IpAddr = "fd00::1".parse().expect("ip");
        let now = std::time::Instant::now();
        let long_ago = now
            .checked_sub(SOURCE_TTL + std::time::Duration::from_secs(1))
            .expect("the clock is past the TTL");
        {
            let mut pending = book.pending.lock().expect("lock");
            pending.insert(fresh, (peer, now));
            pending.insert(stale, (peer, long_ago));
        }
        assert_eq!(book.take(fresh), Some(peer));
        assert_eq!(book.take(fresh), None, "told once");
        assert_eq!(book.take(stale), None, "a stale entry names nobody");
        assert!(book.pending.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_failed_connect_leaves_no_entry() {
        // A front nobody listens on: the connect is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let front = closed.local_addr().expect("addr");
        drop(closed);
        let book = SourceBook {
            fronts: Arc::new([front].into_iter().collect()),
            pending: Arc::default(),
        };
        let peer: IpAddr = "fd00::1".parse().expect("ip");
        assert!(book.connect(front, peer).await.is_err());
        assert!(book.pending.lock().expect("lock").is_empty());
    }
}
