//! The datapath thread's one wait: a level-triggered `epoll` over the UDP
//! socket, the TUN and the wake-ups from other threads ([`super::wake`]).
//!
//! Level-triggered, so a source that still has data after the loop took its
//! share of a turn is reported again at the next wait, and the loop needs
//! no bookkeeping of its own for it.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// What a watched descriptor is to the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The underlay's UDP socket.
    Udp = 0,
    /// The TUN.
    Tun = 1,
    /// A wake-up from another thread.
    Wake = 2,
}

/// Which sources a wait found readable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The UDP socket has datagrams.
    pub udp: bool,
    /// The TUN has packets.
    pub tun: bool,
    /// Another thread woke the loop.
    pub wake: bool,
}

/// The `epoll` instance and room for one wait's events.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
    events: [EpollEvent; 8],
}

impl Poller {
    /// An `epoll` instance watching nothing yet.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            events: [EpollEvent::empty(); 8],
        })
    }

    /// Watches `fd` for input, reported as `source`. The descriptor must
    /// stay open while it is watched (the kernel drops it from the set
    /// when it is closed).
    pub fn watch(&self, fd: BorrowedFd<'_>, source: Source) -> io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, source as u64))?;
        Ok(())
    }

    /// Waits until a source is readable or `timeout` passed (`None`: no
    /// limit). The timeout is rounded up to the millisecond, so a deadline
    /// is never woken for early. A signal ends the wait with nothing ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Readiness> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            Some(timeout) => {
                let millis = timeout.as_nanos().div_ceil(1_000_000);
                EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
            }
        };
        let ready = match self.epoll.wait(&mut self.events, timeout) {
            Ok(ready) => ready,
            Err(Errno::EINTR) => 0,
            Err(error) => return Err(error.into()),
        };
        let mut readiness = Readiness::default();
        for event in &self.events[..ready] {
            match event.data() {
                0 => readiness.udp = true,
                1 => readiness.tun = true,
                _ => readiness.wake = true,
            }
        }
        Ok(readiness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::wake::Wake;
    use std::os::fd::AsFd;
    use std::time::Instant;

    #[test]
    fn reports_each_ready_source_and_times_out_otherwise() {
        let mut poller = Poller::new().expect("epoll");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let wake = Wake::new().expect("eventfd");
        poller.watch(udp.as_fd(), Source::Udp).expect("watch udp");
        poller
            .watch(wake.as_fd(), Source::Wake)
            .expect("watch wake");

        let start = Instant::now();
        let idle = poller
            .wait(Some(Duration::from_micros(1500)))
            .expect("wait");
        assert_eq!(idle, Readiness::default());
        assert!(
            start.elapsed() >= Duration::from_micros(1500),
            "a timeout is not cut short"
        );

        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sender
            .send_to(b"x", udp.local_addr().expect("addr"))
            .expect("send");
        wake.arm();
        wake.notify();
        let both = poller.wait(Some(Duration::from_secs(5))).expect("wait");
        assert_eq!(
            both,
            Readiness {
                udp: true,
                tun: false,
                wake: true
            }
        );
        // Level-triggered: still reported until taken.
        wake.reset();
        let again = poller.wait(Some(Duration::ZERO)).expect("wait");
        assert!(again.udp && !again.wake);
    }
}
