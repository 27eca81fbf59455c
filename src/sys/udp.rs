//! The underlay: one UDP socket on `[::]:PORT`, dual-stack, so IPv4 and IPv6
//! peers share it. The kernel shows IPv4 peers as v4-mapped IPv6 addresses;
//! the core only ever sees plain IPv4 ones ([`normalize`]), and they are
//! mapped back when sending.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::udp_batch::{OutgoingDatagram, ReceivedRun, UdpOffload, send_in_runs, send_run_waiting};
use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn6, setsockopt, sockopt};

use crate::core::address::NetworkId;
use crate::core::api::Transmit;

/// Socket buffer size asked for (the kernel caps it at `net.core.*mem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Errors setting up the underlay or resolving endpoints.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// The socket could not be created or bound.
    #[error("cannot bind UDP port {port}: {source}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An endpoint is not `HOST:PORT`.
    #[error("bad endpoint {0:?}: expected HOST:PORT, e.g. 192.0.2.7:7400 or [2001:db8::7]:7400")]
    BadEndpoint(String),
    /// An endpoint's host name does not resolve.
    #[error("cannot resolve endpoint {endpoint:?}: {reason}")]
    Unresolved {
        /// The endpoint text.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// The bound underlay socket: a plain non-blocking socket, waited on by
/// the datapath thread's own `epoll` ([`super::poller`]), not by a runtime.
#[derive(Debug)]
pub struct Underlay {
    socket: std::net::UdpSocket,
    offload: UdpOffload,
    dual_stack: bool,
    port: u16,
}

impl Underlay {
    /// Binds `[::]:port` dual-stack, or `0.0.0.0:port` where the host has no
    /// IPv6. Port 0 picks a free port (see [`Underlay::port`]). With
    /// `offload`, UDP GSO and GRO are used where the kernel has them.
    pub fn bind(port: u16, offload: bool) -> Result<Self, UnderlayError> {
        let bind_error = |source: io::Error| UnderlayError::Bind { port, source };
        let (std_socket, dual_stack) = match bind_dual_stack(port) {
            Ok(socket) => (socket, true),
            Err(Errno::EAFNOSUPPORT) => {
                tracing::warn!("no IPv6 on this host; the underlay is IPv4 only");
                let socket =
                    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(bind_error)?;
                socket.set_nonblocking(true).map_err(bind_error)?;
                (socket, false)
            }
            Err(errno) => return Err(bind_error(io::Error::from(errno))),
        };
        enlarge_buffers(&std_socket);
        let offload = UdpOffload::enable(&std_socket, offload);
        let port = std_socket.local_addr().map_err(bind_error)?.port();
        Ok(Self {
            socket: std_socket,
            offload,
            dual_stack,
            port,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The offloads in use.
    pub fn offload(&self) -> UdpOffload {
        self.offload
    }

    /// Takes a run of datagrams if one is queued (`WouldBlock` if not).
    pub fn try_recv_run(&self, run: &mut ReceivedRun) -> io::Result<()> {
        run.receive(&self.socket)
    }

    /// Sends datagrams to normalized addresses (see [`send_in_runs`]),
    /// waiting while the socket buffer is full, at most
    /// [`SEND_WAIT`](super::udp_batch::SEND_WAIT) for the whole batch.
    /// Returns the failures (usually none).
    pub fn send_batch<D: OutgoingDatagram>(
        &mut self,
        datagrams: &[D],
    ) -> Vec<(SocketAddr, io::Error)> {
        let dual_stack = self.dual_stack;
        let socket = &self.socket;
        // Set when the buffer is first found full (no clock read otherwise).
        let mut deadline = None;
        send_in_runs(
            datagrams,
            &mut self.offload,
            |destination| socket_address(destination, dual_stack),
            |to, parts, segment| send_run_waiting(socket, to, parts, segment, &mut deadline),
        )
    }

    /// The addresses peers may reach this socket at directly: every address
    /// of an up, non-loopback interface of this network namespace (IPv6 only
    /// if the socket is dual-stack), with the socket's port. Leaves out
    /// link-local addresses and the overlay itself (`overlay_interface` and
    /// any address inside `network`).
    pub fn local_candidates(&self, overlay_interface: &str, network: NetworkId) -> Vec<SocketAddr> {
        let interfaces = match getifaddrs() {
            Ok(interfaces) => interfaces,
            Err(errno) => {
                tracing::debug!(%errno, "cannot list local addresses");
                return Vec::new();
            }
        };
        let mut candidates: Vec<SocketAddr> = interfaces
            .filter(|ifa| {
                ifa.interface_name != overlay_interface
                    && ifa.flags.contains(InterfaceFlags::IFF_UP)
                    && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            })
            .filter_map(|ifa| {
                let address = ifa.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .filter(|ip| is_candidate(ip, self.dual_stack, network))
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        candidates.sort();
        candidates.dedup();
        candidates
    }
}

impl AsFd for Underlay {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Asks for larger socket buffers (best effort: the kernel caps them at
/// `net.core.rmem_max`/`wmem_max`).
pub fn enlarge_buffers(socket: &std::net::UdpSocket) {
    for (option, name) in [(Buffer::Receive, "receive"), (Buffer::Send, "send")] {
        if let Err(errno) = option.set(socket) {
            tracing::debug!(%errno, buffer = name, "cannot enlarge socket buffer");
        }
    }
}

/// The address a socket (dual-stack or not) needs for a normalized
/// destination.
fn socket_address(destination: SocketAddr, dual_stack: bool) -> io::Result<SocketAddr> {
    match (destination, dual_stack) {
        (SocketAddr::V4(v4), true) => Ok(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        (SocketAddr::V6(_), false) => Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "IPv6 destination on an IPv4-only underlay",
        )),
        (destination, _) => Ok(destination),
    }
}

#[derive(Clone, Copy)]
enum Buffer {
    Receive,
    Send,
}

impl Buffer {
    fn set(self, socket: &std::net::UdpSocket) -> Result<(), Errno> {
        match self {
            Buffer::Receive => setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES),
            Buffer::Send => setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER_BYTES),
        }
    }
}

fn bind_dual_stack(port: u16) -> Result<std::net::UdpSocket, Errno> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // Explicit, whatever net.ipv6.bindv6only says: one socket for both
    // families.
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let address = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    socket::bind(fd.as_raw_fd(), &address)?;
    Ok(std::net::UdpSocket::from(fd))
}

fn is_candidate(ip: &IpAddr, dual_stack: bool, network: NetworkId) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local()),
        IpAddr::V6(v6) => {
            dual_stack
                && !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unicast_link_local()
                    || v6.is_multicast()
                    || network.contains(v6))
        }
    }
}

/// Turns a v4-mapped IPv6 socket address into a plain IPv4 one; everything
/// else is returned unchanged (scope and flow info dropped).
pub fn normalize(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}

/// Longest endpoint text: a 253-character DNS name, a colon and a port.
const MAX_ENDPOINT_LEN: usize = 260;

/// Resolves an endpoint `HOST:PORT` (blocking DNS for names) to the first
/// address, normalized. The text may hold only what a host name, an IP
/// address (IPv6 in brackets, with a numeric zone) and a port are made
/// of: it comes from commands an agent's model may fill in, and is
/// stored, logged and printed.
pub fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr, UnderlayError> {
    let endpoint = endpoint.trim();
    let inert = endpoint.len() <= MAX_ENDPOINT_LEN
        && endpoint
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]%".contains(c));
    if !inert {
        return Err(UnderlayError::BadEndpoint(endpoint.to_string()));
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| UnderlayError::BadEndpoint(endpoint.to_string()))?;
    let port_ok = port.parse::<u16>().is_ok_and(|port| port != 0);
    if host.is_empty() || !port_ok {
        return Err(UnderlayError::BadEndpoint(endpoint.to_string()));
    }
    let unresolved = |reason: String| UnderlayError::Unresolved {
        endpoint: endpoint.to_string(),
        reason,
    };
    let mut addresses = endpoint
        .to_socket_addrs()
        .map_err(|e| unresolved(e.to_string()))?;
    addresses
        .next()
        .map(normalize)
        .ok_or_else(|| unresolved("no addresses".to_string()))
}

/// The node's datagrams go out as they are, without a copy or a list of
/// their own.
impl OutgoingDatagram for Transmit {
    fn destination(&self) -> SocketAddr {
        self.destination
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    #[test]
    fn v4_mapped_sources_become_plain_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:7400".parse().expect("addr");
        assert_eq!(normalize(mapped), "192.0.2.7:7400".parse().expect("addr"));
        let v6: SocketAddr = "[2001:db8::7]:7400".parse().expect("addr");
        assert_eq!(normalize(v6), v6);
    }

    #[test]
    fn endpoints_need_host_and_port() {
        assert_eq!(
            resolve_endpoint("127.0.0.1:7400").expect("resolves"),
            "127.0.0.1:7400".parse().expect("addr")
        );
        assert_eq!(
            resolve_endpoint("[::1]:7400").expect("resolves"),
            "[::1]:7400".parse().expect("addr")
        );
        assert!(matches!(
            resolve_endpoint("127.0.0.1"),
            Err(UnderlayError::BadEndpoint(_))
        ));
        assert!(matches!(
            resolve_endpoint("127.0.0.1:0"),
            Err(UnderlayError::BadEndpoint(_))
        ));
        assert!(matches!(
            resolve_endpoint(":7400"),
            Err(UnderlayError::BadEndpoint(_))
        ));
    }

    #[test]
    fn endpoint_text_beyond_host_and_port_is_refused_and_shown_escaped() {
        for text in [
            "evil.example\n2026-01-01 INFO forged:7400",
            "x\u{202e}gro.elpmaxe:7400",
            "\u{1b}[31mred:7400",
            "a b:7400",
        ] {
            let error = resolve_endpoint(text).expect_err(text);
            assert!(matches!(error, UnderlayError::BadEndpoint(_)), "{text:?}");
            let shown = error.to_string();
            assert!(
                !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{shown:?}"
            );
        }
        assert!(matches!(
            resolve_endpoint(&format!("{}:7400", "a".repeat(300))),
            Err(UnderlayError::BadEndpoint(_))
        ));
        assert!(resolve_endpoint("localhost:7400").is_ok());
        assert!(resolve_endpoint("[fe80::1%1]:7400").is_ok(), "a zone");
    }

    #[test]
    fn candidates_leave_out_loopback_link_local_and_the_overlay() {
        let network = NetworkId::from_name("agentnet");
        let overlay = std::net::IpAddr::V6(network.prefix());
        assert!(!is_candidate(&overlay, true, network));
        assert!(!is_candidate(
            &"fe80::1".parse().expect("ip"),
            true,
            network
        ));
        assert!(!is_candidate(
            &"127.0.0.1".parse().expect("ip"),
            true,
            network
        ));
        assert!(!is_candidate(
            &"2001:db8::1".parse().expect("ip"),
            false,
            network
        ));
        assert!(is_candidate(
            &"2001:db8::1".parse().expect("ip"),
            true,
            network
        ));
        assert!(is_candidate(
            &"192.0.2.7".parse().expect("ip"),
            false,
            network
        ));
    }

    #[test]
    fn dual_stack_socket_talks_to_ipv4_and_ipv6_peers() {
        let mut underlay = Underlay::bind(0, true).expect("bind");
        let port = underlay.port();
        for (peer_bind, target) in [
            ("127.0.0.1:0", SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            ("[::1]:0", SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
        ] {
            let Ok(peer) = std::net::UdpSocket::bind(peer_bind) else {
                continue; // no such loopback family here
            };
            let peer_address = peer.local_addr().expect("addr");
            peer.send_to(b"ping", target).expect("send");
            let mut run = ReceivedRun::default();
            let mut readable = [PollFd::new(underlay.as_fd(), PollFlags::POLLIN)];
            poll(&mut readable, PollTimeout::from(5_000u16)).expect("a datagram within 5 s");
            underlay.try_recv_run(&mut run).expect("recv");
            let from = run.source().map(normalize).expect("a source");
            assert_eq!(run.datagrams().collect::<Vec<_>>(), vec![b"ping"]);
            assert_eq!(from, peer_address, "source must be normalized");
            let failures = underlay.send_batch(&[(from, &b"pong"[..])]);
            assert!(failures.is_empty(), "{failures:?}");
            let mut buf = [0u8; 16];
            let (len, _) = peer.recv_from(&mut buf).expect("reply");
            assert_eq!(&buf[..len], b"pong");
        }
    }
}
