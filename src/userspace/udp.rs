//! UDP through the userspace stack: `--forward udp:…` (a local socket whose
//! datagrams go to a peer, each local client with its own overlay port so
//! replies find it) and `--expose udp:…` (datagrams to an exposed port go
//! to a local service, each remote sender with its own local socket).
//!
//! Datagrams up to the tunnel MTU less the IPv6 and UDP headers pass, over
//! either family (DNS
//! and most request/response protocols); larger ones, and datagrams that
//! find a full buffer, are dropped and counted, as UDP allows.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::Stats;
use super::ports::PortAllocator;
use super::socks5::{self, OverlayPeers, TargetHost};
use super::spec::{ExposeSpec, ForwardSpec, PeerHost};
use crate::core::address::NetworkId;
use crate::names::dns::resolver_address;

/// A flow without traffic for this long is forgotten.
pub(crate) const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Flows per forward or exposed port; more senders are dropped.
const MAX_FLOWS: usize = 1024;
/// Datagrams each smoltcp UDP socket buffers per direction.
const PACKETS: usize = 64;
/// Payload bytes each smoltcp UDP socket buffers per direction.
const PAYLOAD: usize = 64 * 1024;
/// IPv6 header plus UDP header.
const HEADERS: usize = 40 + 8;
/// Datagrams moved per socket and pump, so one busy flow cannot starve the
/// rest of the stack.
const BURST: usize = 64;

fn new_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; PACKETS], vec![0; PAYLOAD]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; PACKETS], vec![0; PAYLOAD]),
    )
}

/// One local client of a UDP forward.
#[derive(Debug)]
struct ForwardFlow {
    handle: SocketHandle,
    port: u16,
    last: Instant,
}

/// `--forward udp:…`.
#[derive(Debug)]
struct UdpForward {
    spec: ForwardSpec,
    local: UdpSocket,
    flows: HashMap<SocketAddr, ForwardFlow>,
}

/// One remote sender to an exposed UDP port.
#[derive(Debug)]
struct ExposeFlow {
    local: UdpSocket,
    last: Instant,
}

/// `--expose udp:…`.
#[derive(Debug)]
struct UdpExpose {
    spec: ExposeSpec,
    handle: SocketHandle,
    flows: HashMap<IpEndpoint, ExposeFlow>,
}

/// What the UDP relays need from the stack for one pump.
pub(crate) struct UdpContext<'a> {
    pub(crate) sockets: &'a mut SocketSet<'static>,
    pub(crate) ports: &'a mut PortAllocator,
    pub(crate) peers: &'a OverlayPeers,
    pub(crate) network: NetworkId,
    pub(crate) mtu: usize,
    pub(crate) now: Instant,
    pub(crate) stats: &'a Stats,
}

/// All UDP forwards and exposed UDP ports.
#[derive(Debug, Default)]
pub(crate) struct UdpRelays {
    forwards: Vec<UdpForward>,
    exposes: Vec<UdpExpose>,
    buf: Vec<u8>,
}

impl UdpRelays {
    /// Adds a forward whose local socket is bound already.
    pub(crate) fn add_forward(&mut self, spec: ForwardSpec, local: UdpSocket) {
        self.forwards.push(UdpForward {
            spec,
            local,
            flows: HashMap::new(),
        });
    }

    /// Exposes a UDP port: binds a smoltcp socket on the agent's
    /// addresses (both families; the node delivers only datagrams to them).
    pub(crate) fn add_expose(
        &mut self,
        spec: ExposeSpec,
        sockets: &mut SocketSet<'static>,
    ) -> Result<(), udp::BindError> {
        let mut socket = new_socket();
        socket.bind(IpListenEndpoint {
            addr: None,
            port: spec.port,
        })?;
        let handle = sockets.add(socket);
        self.exposes.push(UdpExpose {
            spec,
            handle,
            flows: HashMap::new(),
        });
        Ok(())
    }

    /// Whether there is no UDP forward or exposed UDP port.
    pub(crate) fn is_empty(&self) -> bool {
        self.forwards.is_empty() && self.exposes.is_empty()
    }

    /// Live flows.
    pub(crate) fn flows(&self) -> usize {
        self.forwards.iter().map(|f| f.flows.len()).sum::<usize>()
            + self.exposes.iter().map(|e| e.flows.len()).sum::<usize>()
    }

    /// Registers for readability of every local socket; `Ready` if one is.
    pub(crate) fn poll_local(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ready = false;
        for forward in &self.forwards {
            ready |= forward.local.poll_recv_ready(cx).is_ready();
        }
        for expose in &self.exposes {
            for flow in expose.flows.values() {
                ready |= flow.local.poll_recv_ready(cx).is_ready();
            }
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Moves datagrams both ways. Returns whether any moved.
    pub(crate) fn pump(&mut self, cx: &mut UdpContext<'_>) -> bool {
        let max_payload = cx.mtu.saturating_sub(HEADERS);
        if self.buf.len() < 65_536 {
            self.buf.resize(65_536, 0);
        }
        let mut moved = false;
        for forward in &mut self.forwards {
            moved |= forward.pump(cx, &mut self.buf, max_payload);
        }
        for expose in &mut self.exposes {
            moved |= expose.pump(cx, &mut self.buf, max_payload);
        }
        moved
    }

    /// Forgets flows idle for [`FLOW_IDLE`].
    pub(crate) fn expire(
        &mut self,
        sockets: &mut SocketSet<'static>,
        ports: &mut PortAllocator,
        now: Instant,
    ) {
        for forward in &mut self.forwards {
            forward.flows.retain(|_, flow| {
                let keep = now.duration_since(flow.last) < FLOW_IDLE;
                if !keep {
                    sockets.remove(flow.handle);
                    ports.release(flow.port);
                }
                keep
            });
        }
        for expose in &mut self.exposes {
            expose
                .flows
                .retain(|_, flow| now.duration_since(flow.last) < FLOW_IDLE);
        }
    }

    /// When the next flow may expire.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let forwards = self
            .forwards
            .iter()
            .flat_map(|f| f.flows.values().map(|flow| flow.last));
        let exposes = self
            .exposes
            .iter()
            .flat_map(|e| e.flows.values().map(|flow| flow.last));
        forwards.chain(exposes).min().map(|last| last + FLOW_IDLE)
    }
}

impl UdpForward {
    fn pump(&mut self, cx: &mut UdpContext<'_>, buf: &mut [u8], max_payload: usize) -> bool {
        let mut moved = false;
        // Local → overlay.
        for _ in 0..BURST {
            let (len, client) = match self.local.try_recv_from(buf) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::debug!(%error, listen = %self.spec.listen, "udp forward: receive failed");
                    break;
                }
            };
            moved = true;
            let host = match &self.spec.peer {
                PeerHost::Name(name) => TargetHost::Name(name.clone()),
                PeerHost::Address(address) => TargetHost::Ip(*address),
            };
            let target = match resolve_forward(&self.spec, &host, cx) {
                Ok(target) => target,
                Err(reply) => {
                    tracing::debug!(peer = %self.spec.peer, ?reply, "udp forward: peer not reachable");
                    cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if len > max_payload {
                cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(flow) = self.flow(client, cx) else {
                cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            flow.last = cx.now;
            let socket = cx.sockets.get_mut::<udp::Socket>(flow.handle);
            let remote = IpEndpoint::from(target);
            if socket.send_slice(&buf[..len], remote).is_ok() {
                cx.stats.udp_datagrams.fetch_add(1, Ordering::Relaxed);
            } else {
                cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Overlay → local.
        for (client, flow) in &mut self.flows {
            let socket = cx.sockets.get_mut::<udp::Socket>(flow.handle);
            for _ in 0..BURST {
                let Ok((payload, _meta)) = socket.recv() else {
                    break;
                };
                moved = true;
                flow.last = cx.now;
                match self.local.try_send_to(payload, *client) {
                    Ok(_) => cx.stats.udp_datagrams.fetch_add(1, Ordering::Relaxed),
                    Err(_) => cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        moved
    }

    /// The flow of a local client, created on its first datagram.
    fn flow(&mut self, client: SocketAddr, cx: &mut UdpContext<'_>) -> Option<&mut ForwardFlow> {
        if !self.flows.contains_key(&client) {
            if self.flows.len() >= MAX_FLOWS {
                return None;
            }
            let port = cx.ports.allocate()?;
            let mut socket = new_socket();
            // Any of the agent's addresses: smoltcp sends from the one of
            // the target's family.
            if socket.bind(IpListenEndpoint { addr: None, port }).is_err() {
                cx.ports.release(port);
                return None;
            }
            let handle = cx.sockets.add(socket);
            self.flows.insert(
                client,
                ForwardFlow {
                    handle,
                    port,
                    last: cx.now,
                },
            );
        }
        self.flows.get_mut(&client)
    }
}

impl UdpExpose {
    fn pump(&mut self, cx: &mut UdpContext<'_>, buf: &mut [u8], max_payload: usize) -> bool {
        let mut moved = false;
        // Overlay → local.
        for _ in 0..BURST {
            let socket = cx.sockets.get_mut::<udp::Socket>(self.handle);
            let Ok((payload, meta)) = socket.recv() else {
                break;
            };
            moved = true;
            let remote = meta.endpoint;
            if !self.flows.contains_key(&remote) {
                if self.flows.len() >= MAX_FLOWS {
                    cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match connected_socket(self.spec.local) {
                    Ok(local) => {
                        self.flows.insert(
                            remote,
                            ExposeFlow {
                                local,
                                last: cx.now,
                            },
                        );
                    }
                    Err(error) => {
                        tracing::debug!(%error, local = %self.spec.local, "udp expose: cannot open a local socket");
                        cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let Some(flow) = self.flows.get_mut(&remote) else {
                continue;
            };
            flow.last = cx.now;
            match flow.local.try_send(payload) {
                Ok(_) => cx.stats.udp_datagrams.fetch_add(1, Ordering::Relaxed),
                Err(_) => cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
        // Local → overlay.
        let socket = cx.sockets.get_mut::<udp::Socket>(self.handle);
        for (remote, flow) in &mut self.flows {
            for _ in 0..BURST {
                let len = match flow.local.try_recv(buf) {
                    Ok(len) => len,
                    // Includes ECONNREFUSED from an ICMP error of the service.
                    Err(_) => break,
                };
                moved = true;
                flow.last = cx.now;
                if len <= max_payload && socket.send_slice(&buf[..len], *remote).is_ok() {
                    cx.stats.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                } else {
                    cx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        moved
    }
}

/// Where a UDP forward's datagrams go: a trusted peer (as for SOCKS5), or
/// the network's resolver at `PREFIX::53`, which the daemon answers itself
/// (so a local port can serve `NAME.agent.internal` to any DNS client).
fn resolve_forward(
    spec: &ForwardSpec,
    host: &TargetHost,
    cx: &UdpContext<'_>,
) -> Result<SocketAddr, socks5::Reply> {
    if let PeerHost::Address(IpAddr::V6(address)) = &spec.peer
        && *address == resolver_address(cx.network)
    {
        return Ok(SocketAddr::new(IpAddr::V6(*address), spec.port));
    }
    socks5::resolve(host, spec.port, cx.peers, cx.network)
}

/// A non-blocking UDP socket connected to `target`, bound to the
/// loopback or unspecified address of its family.
fn connected_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(v6) if v6.is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}
