//! One TCP connection relayed between a local socket (a SOCKS5 client, a
//! forwarded connection, or the local service behind an exposed port) and a
//! smoltcp socket on the overlay.
//!
//! Flow control is end to end and nothing is buffered outside the two
//! sockets: bytes leave smoltcp's receive buffer only as fast as the local
//! socket takes them (so a slow local reader shrinks the window the remote
//! sender sees), and the local socket is read only while smoltcp's send
//! buffer has room (so a slow overlay stops the local writer through the
//! kernel's own buffers). Closes travel both ways: a FIN becomes a
//! half-close (`shutdown(SHUT_WR)`), a reset or a local error becomes a
//! reset on the other side.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::IpEndpoint;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::socks5::{self, Reply};

/// Who opened the connection, which decides how a failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A SOCKS5 client: failures become SOCKS5 replies.
    Socks,
    /// A `--forward` listener: failures reset the local connection.
    Forward,
    /// An exposed port: the local service was connected first.
    Expose,
}

/// Where a relay is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound: our SYN is out; the local client waits for the outcome.
    Connecting {
        /// When to give up (the peer never answered).
        deadline: Instant,
    },
    /// Inbound: a listener armed for the SYN of `remote`.
    Accepting {
        /// When to give up.
        deadline: Instant,
        /// The peer whose SYN the listener was armed for.
        remote: IpEndpoint,
    },
    /// Bytes flow.
    Open,
}

/// What the stack must do with a relay after pumping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep it.
    Continue,
    /// Both sides closed cleanly: drop it.
    Closed,
    /// One side failed or reset: reset the other, drop it.
    Reset,
    /// The connection could not be set up.
    Failed(Reply),
}

/// Bytes a pump moved (for the stack's statistics and its poll loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Overlay → local.
    pub(crate) to_local: u64,
    /// Local → overlay.
    pub(crate) to_overlay: u64,
}

impl Moved {
    /// Whether anything moved.
    pub(crate) fn any(&self) -> bool {
        self.to_local > 0 || self.to_overlay > 0
    }
}

/// One relayed connection.
#[derive(Debug)]
pub(crate) struct TcpRelay {
    /// The smoltcp socket.
    pub(crate) handle: SocketHandle,
    /// Our port on the overlay (outbound connections; 0 for inbound).
    pub(crate) overlay_port: u16,
    /// The remote endpoint and exposed port (inbound connections).
    pub(crate) flow: Option<(IpEndpoint, u16)>,
    /// Outbound: where to try next if the target refuses or never
    /// answers (a name's IPv6 address after its IPv4 one).
    pub(crate) fallback: Option<SocketAddr>,
    pub(crate) origin: Origin,
    pub(crate) phase: Phase,
    local: TcpStream,
    /// Bytes for the local side before any relayed data (the SOCKS5 reply).
    preface: Vec<u8>,
    preface_sent: usize,
    /// The local side sent EOF; our FIN is queued.
    local_eof: bool,
    /// The remote side's FIN was passed on (`shutdown(SHUT_WR)`).
    local_shut: bool,
    /// The last pump stopped on a local read that would block.
    want_read: bool,
    /// The last pump stopped on a local write that would block.
    want_write: bool,
}

impl TcpRelay {
    /// A relay for a local connection to be connected out.
    pub(crate) fn outbound(
        handle: SocketHandle,
        local: TcpStream,
        origin: Origin,
        overlay_port: u16,
        deadline: Instant,
    ) -> Self {
        Self::new(
            handle,
            local,
            origin,
            overlay_port,
            Phase::Connecting { deadline },
        )
    }

    /// A relay for an exposed port whose local service is connected; the
    /// listener is armed for `remote`'s SYN.
    pub(crate) fn inbound(
        handle: SocketHandle,
        local: TcpStream,
        flow: (IpEndpoint, u16),
        deadline: Instant,
    ) -> Self {
        let mut relay = Self::new(
            handle,
            local,
            Origin::Expose,
            0,
            Phase::Accepting {
                deadline,
                remote: flow.0,
            },
        );
        relay.flow = Some(flow);
        relay
    }

    fn new(
        handle: SocketHandle,
        local: TcpStream,
        origin: Origin,
        overlay_port: u16,
        phase: Phase,
    ) -> Self {
        Self {
            handle,
            overlay_port,
            flow: None,
            fallback: None,
            origin,
            phase,
            local,
            preface: Vec::new(),
            preface_sent: 0,
            local_eof: false,
            local_shut: false,
            want_read: false,
            want_write: false,
        }
    }

    /// The deadline of a connection being set up.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { deadline } | Phase::Accepting { deadline, .. } => Some(deadline),
            Phase::Open => None,
        }
    }

    /// Registers for local readiness where the last pump would have
    /// blocked; `Ready` if some is there already.
    pub(crate) fn poll_local(&self, cx: &mut Context<'_>) -> Poll<()> {
        let readable = self.want_read && self.local.poll_read_ready(cx).is_ready();
        let writable = self.want_write && self.local.poll_write_ready(cx).is_ready();
        if readable || writable {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Advances the connection: set-up, bytes both ways, closes.
    pub(crate) fn pump(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        now: Instant,
        moved: &mut Moved,
    ) -> Step {
        self.want_read = false;
        self.want_write = false;
        match self.phase {
            Phase::Connecting { deadline } => match socket.state() {
                State::SynSent | State::SynReceived if now >= deadline => {
                    socket.abort();
                    return Step::Failed(Reply::HostUnreachable);
                }
                State::SynSent | State::SynReceived => return Step::Continue,
                State::Closed | State::Listen | State::TimeWait => {
                    // A reset answered our SYN.
                    return Step::Failed(Reply::ConnectionRefused);
                }
                _ => {
                    self.phase = Phase::Open;
                    if self.origin == Origin::Socks {
                        // Our end on the overlay, in the target's family.
                        let bound = socket.local_endpoint().map_or_else(
                            || SocketAddr::from((Ipv6Addr::UNSPECIFIED, self.overlay_port)),
                            SocketAddr::from,
                        );
                        self.preface = socks5::encode_reply(Reply::Succeeded, bound);
                    }
                }
            },
            Phase::Accepting { deadline, remote } => match socket.state() {
                State::Listen | State::SynReceived if now >= deadline => {
                    socket.abort();
                    return Step::Failed(Reply::HostUnreachable);
                }
                State::Listen => return Step::Continue,
                State::SynReceived => {
                    if socket.remote_endpoint() != Some(remote) {
                        socket.abort();
                        return Step::Failed(Reply::GeneralFailure);
                    }
                    return Step::Continue;
                }
                State::Closed | State::TimeWait => return Step::Failed(Reply::ConnectionRefused),
                _ => self.phase = Phase::Open,
            },
            Phase::Open => {}
        }
        if let Some(step) = self.pump_to_local(socket, moved) {
            return step;
        }
        if let Some(step) = self.pump_to_overlay(socket, moved) {
            return step;
        }
        if self.local_eof
            && self.local_shut
            && matches!(socket.state(), State::Closed | State::TimeWait)
        {
            return Step::Closed;
        }
        if !self.local_eof && !socket.is_open() {
            // The overlay side ended (a reset or a timeout) before the
            // local side did. After the peer's FIN smoltcp answers every
            // receive with `Finished` and nothing may be sent, so neither
            // direction above notices: without this the relay, its rings
            // and the local connection would wait forever.
            return Step::Reset;
        }
        Step::Continue
    }

    /// Overlay → local: the preface, then smoltcp's receive buffer; the
    /// remote FIN as a half-close.
    fn pump_to_local(&mut self, socket: &mut tcp::Socket<'_>, moved: &mut Moved) -> Option<Step> {
        while self.preface_sent < self.preface.len() {
            match self.local.try_write(&self.preface[self.preface_sent..]) {
                Ok(n) => self.preface_sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.want_write = true;
                    return None;
                }
                Err(_) => return Some(self.local_failed(socket)),
            }
        }
        loop {
            let local = &self.local;
            let received = socket.recv(|buf| {
                if buf.is_empty() {
                    return (0, Ok(0));
                }
                match local.try_write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(error) => (0, Err(error)),
                }
            });
            match received {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => moved.to_local += n as u64,
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.want_write = true;
                    return None;
                }
                Ok(Err(_)) => return Some(self.local_failed(socket)),
                Err(RecvError::Finished) => {
                    if !self.local_shut {
                        self.local_shut = true;
                        // The local peer may have gone already; its close shows on read.
                        let _ = nix::sys::socket::shutdown(
                            self.local.as_raw_fd(),
                            nix::sys::socket::Shutdown::Write,
                        );
                    }
                    return None;
                }
                // Closed without a FIN: reset by the peer, or timed out.
                Err(RecvError::InvalidState) => return Some(Step::Reset),
            }
        }
    }

    /// Local → overlay, while smoltcp's send buffer has room; local EOF as
    /// our FIN.
    fn pump_to_overlay(&mut self, socket: &mut tcp::Socket<'_>, moved: &mut Moved) -> Option<Step> {
        while !self.local_eof && socket.may_send() && socket.send_queue() < socket.send_capacity() {
            let local = &self.local;
            let sent = socket.send(|buf| {
                if buf.is_empty() {
                    return (0, Err(io::ErrorKind::WouldBlock.into()));
                }
                match local.try_read(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(error) => (0, Err(error)),
                }
            });
            match sent {
                Ok(Ok(0)) => {
                    self.local_eof = true;
                    socket.close();
                }
                Ok(Ok(n)) => moved.to_overlay += n as u64,
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.want_read = true;
                    return None;
                }
                Ok(Err(_)) => return Some(self.local_failed(socket)),
                Err(_) => return None,
            }
        }
        None
    }

    /// The local socket failed (reset, broken pipe): reset the overlay side.
    fn local_failed(&mut self, socket: &mut tcp::Socket<'_>) -> Step {
        socket.abort();
        Step::Reset
    }

    /// The local connection, to be connected again elsewhere (the
    /// fallback) without telling the local side anything yet.
    pub(crate) fn into_local(self) -> TcpStream {
        self.local
    }

    /// Ends the local side after `step`: a SOCKS5 error reply, a reset,
    /// or a clean close (the drop).
    pub(crate) fn finish(self, step: Step) {
        match (step, self.origin) {
            (Step::Failed(reply), Origin::Socks) => {
                // A fresh socket's buffer takes 22 bytes; if not, the
                // client sees the connection close instead.
                let _ = self.local.try_write(&socks5::error_reply(reply));
            }
            (Step::Failed(_) | Step::Reset, _) => reset_on_close(&self.local),
            (Step::Closed | Step::Continue, _) => {}
        }
    }
}

/// Makes the close of `stream` send a reset instead of a FIN (`SO_LINGER`
/// with a zero timeout, which never blocks).
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(errno) =
        nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger)
    {
        tracing::debug!(%errno, "cannot set SO_LINGER");
    }
}
