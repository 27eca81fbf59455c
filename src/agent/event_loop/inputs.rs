//! The loop's two packet inputs, the UDP socket and the TUN: a wake-up
//! takes what is queued on one of them, up to [`PACKETS_PER_WAKE`], and
//! hands each packet to the node (or the name service). How far a wake
//! reads is [`ReadAhead`]'s call; whether a turn reads the TUN once more
//! right after writing to it, [`reads_answer`]'s.

use std::io;
use std::time::Instant;

use super::{Daemon, PACKETS_PER_WAKE};
use crate::agent::DaemonError;
use crate::agent::tun_batch::{self, TunReadBatch};
use crate::sys::udp::normalize;
use crate::sys::udp_batch::ReceivedRun;

/// Whether a turn reads the TUN once more right after its flush wrote to
/// it: when the turn took one packet in all (`from_udp`, `from_tun`), it
/// wrote to the TUN a packet the kernel may answer
/// (`wrote_answerable`: not an echo reply, not UDP, see
/// `IpPacket::may_be_answered_on_delivery`) and the device answers within
/// the write.
///
/// The kernel handles a packet written to a TUN inside the `write`: an
/// echo request is answered there, a TCP segment may be acknowledged or
/// let more data leave, and the answer is queued on the TUN before the
/// call returns. Reading it at once sends it without the next turn's
/// bookkeeping and `epoll_wait` (the peer daemon B of an idle ping: 8.0 →
/// 4.1 µs from its `write` to the answer's `read`, traced). When nothing
/// was answered the read finds the queue empty after the packet has left,
/// off its path. Only after a one-packet turn, the idle round trip's: read
/// after every write, a bulk transfer lost 3–5 % (the answers to a batch
/// are better taken as one batch at the next turn). After an echo reply
/// or a UDP datagram the read would find nothing, every time: the side of
/// an idle ping that delivers the reply made one empty read per round trip.
pub(super) fn reads_answer(
    from_udp: Drained,
    from_tun: Drained,
    wrote_answerable: bool,
    device_answers_within_write: bool,
) -> bool {
    from_udp.packets + from_tun.packets == 1 && wrote_answerable && device_answers_within_write
}

/// How many reads a wake makes on one input.
///
/// Reading until the queue is empty batches the node's sends under load,
/// but at idle each wake brings one packet and the read after it only
/// learns that nothing followed: a system call per crossing, on the path
/// of every round trip. So an input that was quiet takes one read per
/// wake, and the level-triggered `epoll` reports at the next turn anything
/// left behind. An input is busy, and drained, when its last drain took
/// more than one packet (more than one read's worth, or a read the kernel
/// had coalesced), or when the last turn stopped at one read without
/// learning whether more was queued and it is ready again without the loop
/// having slept in between.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    /// The last drain took more than one packet.
    busy: bool,
    /// The previous turn read from this input and stopped before finding
    /// it empty.
    left_behind: bool,
}

impl ReadAhead {
    /// The most reads this turn's drain makes.
    pub(super) fn max_reads(&self) -> usize {
        if self.busy || self.left_behind {
            usize::MAX
        } else {
            1
        }
    }

    /// The loop slept since this input's last drain. A level-triggered
    /// `epoll` does not sleep while anything is left on an input, so what
    /// wakes the loop is new: a quiet input takes one read again instead of
    /// a second that finds the queue empty (the side of an idle ping that
    /// answers it made one every other round trip). Had something been
    /// left after all (the wait returned at once), that one read stops
    /// short of the queue's end again, and the next turn drains it.
    pub(super) fn slept(&mut self) {
        self.left_behind = false;
    }

    /// What this turn's drain took (nothing if the input was not ready).
    pub(super) fn record(&mut self, drained: Drained) {
        if drained.reads > 0 {
            self.busy = drained.packets > 1;
        }
        self.left_behind = drained.reads > 0 && !drained.emptied;
    }
}

/// What one drain of an input took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Drained {
    /// Reads that answered (with data or an error, not `WouldBlock`).
    pub(super) reads: usize,
    /// Packets they brought (at least one per read).
    pub(super) packets: usize,
    /// The drain ended on `WouldBlock`: nothing was left queued.
    pub(super) emptied: bool,
}

impl Daemon {
    pub(super) fn on_udp_run(&mut self, now: Instant, received: io::Result<()>, run: &ReceivedRun) {
        match received {
            Ok(()) => {
                // A source the socket cannot name cannot be answered either.
                let Some(from) = run.source().map(normalize) else {
                    return;
                };
                self.links
                    .handle_udp_run(now, from, run.datagrams(), &mut self.node);
            }
            Err(error) => {
                if let Some(suppressed) = self.udp_recv_warnings.allow(now) {
                    tracing::warn!(%error, suppressed, "UDP receive failed");
                }
            }
        }
    }

    /// Takes queued runs until the socket has none, `max_reads` runs were
    /// taken or the datagrams taken reach [`PACKETS_PER_WAKE`]; `now` is
    /// when the wake began.
    pub(super) fn drain_underlay(
        &mut self,
        now: Instant,
        run: &mut ReceivedRun,
        max_reads: usize,
    ) -> Drained {
        let mut drained = Drained::default();
        while drained.packets < PACKETS_PER_WAKE && drained.reads < max_reads {
            match self.underlay.try_recv_run(run) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    drained.emptied = true;
                    break;
                }
                received => {
                    self.on_udp_run(now, received, run);
                    drained.packets += run.count().max(1);
                    drained.reads += 1;
                }
            }
        }
        drained
    }

    pub(super) fn on_tun_read(
        &mut self,
        now: Instant,
        read: io::Result<()>,
        batch: &TunReadBatch,
    ) -> Result<(), DaemonError> {
        match read {
            Ok(()) => {
                for packet in batch.packets() {
                    // The resolver's (`PREFIX::53`), or the node's.
                    if !self.names.handle_tun_packet(packet) {
                        self.node.handle_tun_packet(now, packet);
                    }
                }
                Ok(())
            }
            Err(error) if is_transient(&error) => Ok(()),
            Err(error) if tun_batch::is_bad_packet(&error) => {
                tracing::debug!(%error, "dropped a TUN read that could not be cut into packets");
                Ok(())
            }
            Err(source) => Err(DaemonError::TunIo {
                interface: self.interface.clone(),
                source,
            }),
        }
    }

    /// One read of the TUN for what the kernel answered within the turn's
    /// write (see [`reads_answer`]): whether it brought a packet.
    pub(super) fn read_answer(
        &mut self,
        now: Instant,
        batch: &mut TunReadBatch,
    ) -> Result<bool, DaemonError> {
        Ok(self.drain_tun(now, batch, 1)?.reads > 0)
    }

    /// Takes queued reads until the TUN has none, `max_reads` reads were
    /// made or the packets taken reach [`PACKETS_PER_WAKE`]; `now` is when
    /// the wake began.
    pub(super) fn drain_tun(
        &mut self,
        now: Instant,
        batch: &mut TunReadBatch,
        max_reads: usize,
    ) -> Result<Drained, DaemonError> {
        let mut drained = Drained::default();
        while drained.packets < PACKETS_PER_WAKE && drained.reads < max_reads {
            match self.tun.try_recv_batch(batch) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    drained.emptied = true;
                    break;
                }
                read => {
                    self.on_tun_read(now, read, batch)?;
                    drained.packets += batch.packets().count().max(1);
                    drained.reads += 1;
                }
            }
        }
        Ok(drained)
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::{Drained, ReadAhead, reads_answer};

    /// A drain that stopped at its cap (`emptied` false) or on an empty
    /// queue.
    fn took(reads: usize, packets: usize, emptied: bool) -> Drained {
        Drained {
            reads,
            packets,
            emptied,
        }
    }

    #[test]
    fn a_quiet_input_takes_one_read_per_wake() {
        let mut ahead = ReadAhead::default();
        for _ in 0..3 {
            assert_eq!(ahead.max_reads(), 1);
            ahead.record(took(1, 1, false));
            // The next turns find it not ready: the packet came alone.
            ahead.record(Drained::default());
        }
        assert_eq!(ahead.max_reads(), 1);
    }

    #[test]
    fn an_input_ready_again_after_one_read_is_drained_until_it_quiets() {
        let mut ahead = ReadAhead::default();
        ahead.record(took(1, 1, false));
        assert_eq!(ahead.max_reads(), usize::MAX, "ready right after a read");
        ahead.record(took(5, 5, true));
        ahead.record(Drained::default());
        assert_eq!(ahead.max_reads(), usize::MAX, "the last drain was busy");
        ahead.record(took(1, 1, true));
        assert_eq!(
            ahead.max_reads(),
            1,
            "one packet was all there was: what is ready next is new"
        );
    }

    #[test]
    fn a_sleep_in_between_makes_the_next_wake_quiet() {
        let mut ahead = ReadAhead::default();
        ahead.record(took(1, 1, false));
        ahead.slept();
        assert_eq!(ahead.max_reads(), 1, "the loop slept: the queue was empty");
        // A wait that returned at once because a packet was left: the one
        // read stops short again, and the turn after drains.
        ahead.record(took(1, 1, false));
        assert_eq!(ahead.max_reads(), usize::MAX);
        // A busy input stays busy across a sleep: a burst's next wake
        // brings a batch.
        ahead.record(took(3, 90, true));
        ahead.slept();
        assert_eq!(ahead.max_reads(), usize::MAX);
    }

    #[test]
    fn a_coalesced_read_makes_the_input_busy() {
        let mut ahead = ReadAhead::default();
        ahead.record(took(1, 40, false));
        ahead.record(Drained::default());
        assert_eq!(ahead.max_reads(), usize::MAX);
    }

    #[test]
    fn only_a_one_packet_turn_that_wrote_to_a_tun_reads_its_answer() {
        let one = took(1, 1, false);
        let none = Drained::default();
        assert!(
            reads_answer(one, none, true, true),
            "a packet from a peer, delivered"
        );
        assert!(
            reads_answer(none, one, true, true),
            "a packet of ours, answered by the names"
        );
        assert!(
            !reads_answer(one, none, false, true),
            "nothing was written, or only what is never answered at once"
        );
        assert!(
            !reads_answer(one, none, true, false),
            "the userspace stack answers later"
        );
        assert!(
            !reads_answer(took(1, 40, false), none, true, true),
            "a batch: next turn"
        );
        assert!(!reads_answer(one, one, true, true), "two packets");
        assert!(!reads_answer(none, none, true, true), "a timer's packet");
    }
}
