//! Probe sockets: extra UDP sockets the core asks for when it punches
//! through a hard NAT by birthday probing (see `core::path::PathAddr::Probe`).
//! Opened on first use, each with a task that hands its datagrams to the
//! event loop, and closed after a while without traffic.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, MsgFlags, SockaddrIn6};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::udp::normalize;

/// A probe socket unused for this long is closed (a punched path through it
/// would have lost its NAT mapping by then anyway).
const IDLE_CLOSE: Duration = Duration::from_secs(120);
/// Most probe sockets open at once.
const MAX_PROBE_SOCKETS: usize = 512;
/// Datagrams queued from all probe sockets towards the event loop.
const QUEUE: usize = 4096;

/// A datagram received on probe socket `.0` from `.1`.
pub type ProbeDatagram = (u16, SocketAddr, Vec<u8>);

struct ProbeSocket {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    last_used: Instant,
}

/// The open probe sockets.
pub struct ProbeSockets {
    sockets: HashMap<u16, ProbeSocket>,
    received: mpsc::Sender<ProbeDatagram>,
}

impl std::fmt::Debug for ProbeSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeSockets")
            .field("open", &self.sockets.len())
            .finish()
    }
}

impl ProbeSockets {
    /// No sockets yet; their datagrams arrive on the returned receiver.
    pub fn new() -> (Self, mpsc::Receiver<ProbeDatagram>) {
        let (received, receiver) = mpsc::channel(QUEUE);
        (
            Self {
                sockets: HashMap::new(),
                received,
            },
            receiver,
        )
    }

    fn open(&mut self, index: u16, now: Instant) -> io::Result<&mut ProbeSocket> {
        if !self.sockets.contains_key(&index) {
            if self.sockets.len() >= MAX_PROBE_SOCKETS {
                return Err(io::Error::other("too many probe sockets"));
            }
            let std_socket = std::net::UdpSocket::bind("[::]:0")?;
            std_socket.set_nonblocking(true)?;
            let socket = Arc::new(UdpSocket::from_std(std_socket)?);
            let reader_socket = Arc::clone(&socket);
            let received = self.received.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((len, from)) = reader_socket.recv_from(&mut buf).await {
                    if received
                        .send((index, normalize(from), buf[..len].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            self.sockets.insert(
                index,
                ProbeSocket {
                    socket,
                    reader,
                    last_used: now,
                },
            );
        }
        self.sockets
            .get_mut(&index)
            .ok_or_else(|| io::Error::other("probe socket vanished"))
    }

    /// Sends from probe socket `index`, opening it if needed. Never waits:
    /// a probe the socket has no room for is lost, as on the path.
    pub fn send(
        &mut self,
        now: Instant,
        index: u16,
        payload: &[u8],
        destination: SocketAddr,
    ) -> io::Result<()> {
        let probe = self.open(index, now)?;
        probe.last_used = now;
        let destination = match destination {
            SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
            SocketAddr::V6(v6) => v6,
        };
        socket::sendto(
            probe.socket.as_raw_fd(),
            payload,
            &SockaddrIn6::from(destination),
            MsgFlags::MSG_DONTWAIT,
        )
        .map(|_| ())
        .map_err(io::Error::from)
    }

    /// Notes traffic received on a probe socket (keeps it open).
    pub fn touch(&mut self, now: Instant, index: u16) {
        if let Some(probe) = self.sockets.get_mut(&index) {
            probe.last_used = now;
        }
    }

    /// Whether no probe socket is open (nothing to sweep).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Closes sockets idle for too long.
    pub fn sweep(&mut self, now: Instant) {
        self.sockets.retain(|_, probe| {
            let keep = now.saturating_duration_since(probe.last_used) < IDLE_CLOSE;
            if !keep {
                probe.reader.abort();
            }
            keep
        });
    }
}

impl Drop for ProbeSockets {
    fn drop(&mut self) {
        for probe in self.sockets.values() {
            probe.reader.abort();
        }
    }
}
