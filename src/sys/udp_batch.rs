//! Many datagrams per system call on the underlay socket.
//!
//! Sending, UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18):
//! one `sendmsg` hands the kernel a run of datagrams for one destination,
//! all of one size except a shorter last one, gathered from the separate
//! buffers the node produced; the kernel (or the NIC) cuts them apart.
//! Receiving, UDP generic receive offload (`UDP_GRO`, Linux 5.0): one
//! `recvmsg` returns a run of datagrams from one source that arrived back to
//! back, concatenated, with their size in a control message.
//!
//! Both are optional: without them every `sendmsg` carries one datagram and
//! every `recvmsg` returns one, through the same code. Sending gives GSO up
//! for good when the kernel says the device cannot do it (`EIO`), as
//! wireguard-go does.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::gather_list::GatherList;

/// Most datagrams the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes of one GSO send: what fits one UDP/IP datagram
/// (65,535 minus the largest IPv6 and UDP headers).
pub const MAX_RUN_BYTES: usize = 65_535 - 40 - 8;
/// Receive buffer: the largest coalesced run.
pub const RECEIVE_BUFFER_LEN: usize = 65_536;

/// What the socket does beyond one datagram per call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpOffload {
    /// Sends use `UDP_SEGMENT`.
    pub gso: bool,
    /// Receives are coalesced (`UDP_GRO`).
    pub gro: bool,
}

impl UdpOffload {
    /// Turns on what `wanted` allows and the kernel supports.
    pub fn enable(socket: &impl AsFd, wanted: bool) -> Self {
        if !wanted {
            return Self::default();
        }
        // Setting the default segment size of 0 only asks whether the
        // kernel knows the option.
        let gso = setsockopt(socket, sockopt::UdpGsoSegment, &0).is_ok();
        let gro = setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok();
        Self { gso, gro }
    }
}

/// A UDP socket that moves runs of datagrams (see the module comment).
#[derive(Debug)]
pub struct BatchedSocket {
    socket: UdpSocket,
    offload: UdpOffload,
}

impl BatchedSocket {
    /// Wraps a bound, non-blocking socket, turning on the offloads if
    /// `offload` and the kernel has them. Must be called inside a tokio
    /// runtime.
    pub fn new(socket: std::net::UdpSocket, offload: bool) -> io::Result<Self> {
        let offload = UdpOffload::enable(&socket, offload);
        Ok(Self {
            socket: UdpSocket::from_std(socket)?,
            offload,
        })
    }

    /// The offloads in use.
    pub fn offload(&self) -> UdpOffload {
        self.offload
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for a run of datagrams (one, without GRO).
    pub async fn recv_run(&self, run: &mut ReceivedRun) -> io::Result<()> {
        self.socket
            .async_io(Interest::READABLE, || run.receive(&self.socket))
            .await
    }

    /// Takes a run of datagrams if one is queued (`WouldBlock` if not).
    pub fn try_recv_run(&self, run: &mut ReceivedRun) -> io::Result<()> {
        self.socket
            .try_io(Interest::READABLE, || run.receive(&self.socket))
    }

    /// Sends datagrams (see [`send_in_runs`]) without waiting: one the
    /// socket buffer has no room for is dropped, as a router's full queue
    /// drops, and the task never holds up the runtime's other tasks;
    /// `address` gives the socket address for a destination (or why there
    /// is none). Returns the failures (usually none).
    pub fn send_batch<D: OutgoingDatagram>(
        &mut self,
        datagrams: &[D],
        address: impl Fn(SocketAddr) -> io::Result<SocketAddr>,
    ) -> Vec<(SocketAddr, io::Error)> {
        let socket = &self.socket;
        send_in_runs(
            datagrams,
            &mut self.offload,
            address,
            |to, parts, segment| send_run(socket, to, parts, segment),
        )
    }
}

/// One `recvmsg`'s worth: a run of datagrams from one source.
#[derive(Debug)]
pub struct ReceivedRun {
    buffer: Vec<u8>,
    /// Room for the GRO segment size the kernel passes up: made once, not
    /// allocated (and freed) at every receive.
    control: Vec<u8>,
    len: usize,
    segment: usize,
    source: Option<SocketAddr>,
}

impl Default for ReceivedRun {
    fn default() -> Self {
        Self {
            buffer: vec![0; RECEIVE_BUFFER_LEN],
            control: nix::cmsg_space!(i32),
            len: 0,
            segment: 0,
            source: None,
        }
    }
}

impl ReceivedRun {
    /// The sender (`None` for a source the socket could not name, which the
    /// caller drops).
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The datagrams, in the order they arrived.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        let segment = if self.segment == 0 {
            self.len.max(1)
        } else {
            self.segment
        };
        self.buffer[..self.len].chunks(segment)
    }

    /// How many datagrams the run holds.
    pub fn count(&self) -> usize {
        self.datagrams().count()
    }

    /// Reads one run from `socket` (non-blocking: `WouldBlock` if none).
    pub fn receive(&mut self, socket: &impl AsRawFd) -> io::Result<()> {
        let mut iov = [IoSliceMut::new(&mut self.buffer)];
        let message = socket::recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut self.control),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut segment = 0;
        if let Ok(cmsgs) = message.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                    segment = usize::try_from(size).unwrap_or(0);
                }
            }
        }
        let truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
        self.len = if truncated { 0 } else { message.bytes };
        self.segment = segment;
        self.source = message.address.as_ref().and_then(socket_address);
        Ok(())
    }
}

fn socket_address(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v6) = address.as_sockaddr_in6() {
        Some(SocketAddr::V6(std::net::SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        )))
    } else {
        address
            .as_sockaddr_in()
            .map(|v4| SocketAddr::V4(std::net::SocketAddrV4::new(v4.ip(), v4.port())))
    }
}

/// A datagram to send: where to, and its bytes.
pub trait OutgoingDatagram {
    /// Where it goes.
    fn destination(&self) -> SocketAddr;
    /// The UDP payload.
    fn payload(&self) -> &[u8];
}

impl OutgoingDatagram for (SocketAddr, &[u8]) {
    fn destination(&self) -> SocketAddr {
        self.0
    }
    fn payload(&self) -> &[u8] {
        self.1
    }
}

impl OutgoingDatagram for (SocketAddr, Vec<u8>) {
    fn destination(&self) -> SocketAddr {
        self.0
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
}

/// A run of datagrams one GSO send can carry: indexes `start..end` into the
/// caller's list, all `segment` bytes long but the last, which may be
/// shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub end: usize,
    pub segment: usize,
}

/// Cuts a list of datagrams into the longest runs GSO allows: same
/// destination, same length but a shorter last one, at most
/// [`MAX_SEGMENTS`] and [`MAX_RUN_BYTES`]. Without `gso` every datagram is
/// a run of its own. Lazily, without allocating: this is on every packet's
/// path.
pub fn runs<D: OutgoingDatagram>(datagrams: &[D], gso: bool) -> impl Iterator<Item = Run> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = datagrams.get(start)?;
        let destination = first.destination();
        let segment = first.payload().len();
        let mut end = start + 1;
        let mut bytes = segment;
        if gso && segment > 0 {
            while end < datagrams.len() && end - start < MAX_SEGMENTS {
                let next = &datagrams[end];
                let len = next.payload().len();
                if next.destination() != destination
                    || len > segment
                    || len == 0
                    || bytes + len > MAX_RUN_BYTES
                {
                    break;
                }
                bytes += len;
                end += 1;
                if len < segment {
                    break; // a shorter datagram ends the run
                }
            }
        }
        let run = Run {
            start,
            end,
            segment,
        };
        start = end;
        Some(run)
    })
}

/// How long one batch of sends may wait, in all, for room in a full socket
/// buffer before what is left of it is given up (as a full queue on the
/// path would drop it).
pub const SEND_WAIT: Duration = Duration::from_millis(100);

/// Sends datagrams in as few calls of `send` as GSO allows (see [`runs`]):
/// `address` gives the socket address for a destination (or why there is
/// none), `send` sends one run. A run that fails is sent again one datagram
/// per call, so one bad datagram costs only itself, unless it failed for
/// want of room (`WouldBlock`: the others would find none either); a device
/// that cannot segment turns GSO off in `offload` for good. Returns the
/// failures (usually none).
pub fn send_in_runs<D: OutgoingDatagram>(
    datagrams: &[D],
    offload: &mut UdpOffload,
    address: impl Fn(SocketAddr) -> io::Result<SocketAddr>,
    mut send: impl FnMut(SocketAddr, &[IoSlice<'_>], u16) -> io::Result<usize>,
) -> Vec<(SocketAddr, io::Error)> {
    let mut failures = Vec::new();
    // One run's gather list, on the stack: no allocation per send.
    let mut gather = GatherList::<MAX_SEGMENTS>::new();
    for run in runs(datagrams, offload.gso) {
        let destination = datagrams[run.start].destination();
        let socket_address = match address(destination) {
            Ok(socket_address) => socket_address,
            Err(error) => {
                failures.push((destination, error));
                continue;
            }
        };
        debug_assert!(run.end - run.start <= MAX_SEGMENTS, "runs() caps a run");
        let parts = gather.of(datagrams[run.start..run.end].iter().map(D::payload));
        let segment = u16::try_from(run.segment).unwrap_or(u16::MAX);
        match send(socket_address, parts, segment) {
            Ok(_) => {}
            Err(error) if parts.len() > 1 && error.kind() != io::ErrorKind::WouldBlock => {
                if gso_unsupported(&error) {
                    tracing::warn!(%error, "UDP segmentation offload fails here; sending one datagram per call");
                    offload.gso = false;
                }
                for part in parts {
                    if let Err(error) = send(socket_address, std::slice::from_ref(part), 0) {
                        failures.push((destination, error));
                    }
                }
            }
            Err(error) => failures.push((destination, error)),
        }
    }
    failures
}

/// Sends one run as [`send_run`] does, waiting while the socket buffer is
/// full until `deadline` (then `WouldBlock`): the back-pressure of a
/// blocking socket for a thread that has nothing else to wait on, without
/// hanging it on a socket that never drains. One deadline for a whole
/// batch ([`SEND_WAIT`] from the first time its buffer was full, set in
/// `deadline` then) bounds the batch, however many runs find the buffer
/// full.
pub fn send_run_waiting(
    socket: &impl AsFd,
    destination: SocketAddr,
    parts: &[IoSlice<'_>],
    segment: u16,
    deadline: &mut Option<Instant>,
) -> io::Result<usize> {
    loop {
        match send_run(&socket.as_fd(), destination, parts, segment) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                let deadline = *deadline.get_or_insert(now + SEND_WAIT);
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(error);
                }
                let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(millis)) {
                    Ok(0) => return Err(error),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(errno) => return Err(errno.into()),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            sent => return sent,
        }
    }
}

/// Sends one run (non-blocking): `parts` are its datagrams, `segment` their
/// size when there is more than one.
pub fn send_run(
    socket: &impl AsRawFd,
    destination: SocketAddr,
    parts: &[IoSlice<'_>],
    segment: u16,
) -> io::Result<usize> {
    let destination = SockaddrStorage::from(destination);
    let gso = [ControlMessage::UdpGsoSegments(&segment)];
    let cmsgs: &[ControlMessage<'_>] = if parts.len() > 1 { &gso } else { &[] };
    socket::sendmsg(
        socket.as_raw_fd(),
        parts,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&destination),
    )
    .map_err(io::Error::from)
}

/// Whether a failed GSO send means the device cannot segment UDP (then
/// GSO is given up).
pub fn gso_unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(Errno::EIO as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const BYTES: [u8; 1500] = [0; 1500];

    /// A datagram of `len` bytes to `destination`.
    fn datagram(destination: SocketAddr, len: usize) -> (SocketAddr, &'static [u8]) {
        (destination, &BYTES[..len])
    }

    #[test]
    fn runs_group_equal_sizes_to_one_destination() {
        let list = [
            datagram(at(1), 100),
            datagram(at(1), 100),
            datagram(at(1), 60), // shorter: ends the run
            datagram(at(1), 100),
            datagram(at(2), 100), // other destination
            datagram(at(2), 120), // longer: a new run
        ];
        let got: Vec<Run> = runs(&list, true).collect();
        assert_eq!(
            got,
            vec![
                Run {
                    start: 0,
                    end: 3,
                    segment: 100
                },
                Run {
                    start: 3,
                    end: 4,
                    segment: 100
                },
                Run {
                    start: 4,
                    end: 5,
                    segment: 100
                },
                Run {
                    start: 5,
                    end: 6,
                    segment: 120
                },
            ]
        );
        let single: Vec<Run> = runs(&list, false).collect();
        assert_eq!(single.len(), list.len());
        assert!(single.iter().all(|run| run.end == run.start + 1));
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let many = vec![datagram(at(1), 100); 150];
        let got: Vec<Run> = runs(&many, true).collect();
        assert_eq!(
            got.iter()
                .map(|run| run.end - run.start)
                .collect::<Vec<_>>(),
            vec![64, 64, 22]
        );
        let big = vec![datagram(at(1), 1500); 64];
        let got: Vec<Run> = runs(&big, true).collect();
        assert!(
            got.iter()
                .all(|run| (run.end - run.start) * 1500 <= MAX_RUN_BYTES)
        );
        assert_eq!(got.iter().map(|run| run.end - run.start).sum::<usize>(), 64);
    }

    #[test]
    fn a_failed_run_is_retried_per_datagram_unless_the_buffer_was_full() {
        let payload = [0u8; 100];
        let datagrams = vec![(at(1), &payload[..]); 3];
        for (kind, calls_wanted, failures_wanted) in [
            (io::ErrorKind::WouldBlock, 1, 1),
            (io::ErrorKind::InvalidInput, 4, 3),
        ] {
            let mut offload = UdpOffload {
                gso: true,
                gro: false,
            };
            let mut calls = 0;
            let failures = send_in_runs(&datagrams, &mut offload, Ok, |_, _, _| {
                calls += 1;
                Err(io::Error::from(kind))
            });
            assert_eq!(calls, calls_wanted, "{kind:?}");
            assert_eq!(failures.len(), failures_wanted, "{kind:?}");
        }
    }

    #[test]
    fn each_run_goes_out_with_exactly_its_datagrams() {
        let bytes: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 100]).collect();
        let to = [at(1), at(1), at(1), at(2), at(1), at(1)];
        let datagrams: Vec<(SocketAddr, &[u8])> = to
            .iter()
            .zip(&bytes)
            .map(|(&destination, payload)| (destination, payload.as_slice()))
            .collect();
        let mut offload = UdpOffload {
            gso: true,
            gro: false,
        };
        let mut sent: Vec<(SocketAddr, Vec<u8>, u16)> = Vec::new();
        let failures = send_in_runs(
            &datagrams,
            &mut offload,
            Ok,
            |destination, parts, segment| {
                let firsts = parts.iter().map(|part| part[0]).collect();
                sent.push((destination, firsts, segment));
                Ok(parts.iter().map(|part| part.len()).sum())
            },
        );
        assert!(failures.is_empty());
        assert_eq!(
            sent,
            vec![
                (at(1), vec![0, 1, 2], 100),
                (at(2), vec![3], 100),
                (at(1), vec![4, 5], 100),
            ],
            "runs of three, one (a lone datagram) and two, each datagram once"
        );
    }

    #[test]
    fn a_received_run_splits_into_its_datagrams() {
        let mut run = ReceivedRun::default();
        run.buffer[..250].fill(7);
        run.len = 250;
        run.segment = 100;
        let lens: Vec<usize> = run.datagrams().map(<[u8]>::len).collect();
        assert_eq!(lens, vec![100, 100, 50]);
        run.segment = 0;
        assert_eq!(run.count(), 1);
        run.len = 0;
        assert_eq!(run.count(), 0);
    }

    /// Over loopback (which segments in software), a GSO send arrives as
    /// separate datagrams, and with GRO on they may come back coalesced:
    /// either way the receiver sees the same datagrams in order.
    #[test]
    fn gso_send_and_gro_receive_round_trip_over_loopback() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let offload = UdpOffload::enable(&receiver, true);
        let sender_offload = UdpOffload::enable(&sender, true);
        let datagrams: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 300 } else { 1000 }])
            .collect();
        let parts: Vec<IoSlice<'_>> = datagrams.iter().map(|d| IoSlice::new(d)).collect();
        let destination = receiver.local_addr().expect("addr");
        if sender_offload.gso {
            send_run(&sender, destination, &parts, 1000).expect("gso send");
        } else {
            for part in &parts {
                send_run(&sender, destination, std::slice::from_ref(part), 0).expect("send");
            }
        }
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut run = ReceivedRun::default();
        while got.len() < datagrams.len() {
            // Block until readable, then take what is there.
            let mut peek = [0u8; 1];
            receiver
                .peek_from(&mut peek)
                .expect("a datagram within 5 s");
            run.receive(&receiver).expect("receive");
            assert_eq!(run.source(), Some(sender.local_addr().expect("addr")));
            got.extend(run.datagrams().map(<[u8]>::to_vec));
        }
        assert_eq!(got, datagrams, "offload {offload:?}/{sender_offload:?}");
    }
}
