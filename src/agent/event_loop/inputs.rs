//! The loop's two packet inputs, the UDP socket and the TUN: a wake-up
//! takes what is queued on one of them, up to [`PACKETS_PER_WAKE`], and
//! hands each packet to the node (or the name service).

use std::io;
use std::time::Instant;

use super::{Daemon, PACKETS_PER_WAKE};
use crate::agent::DaemonError;
use crate::agent::tun_batch::{self, TunReadBatch};
use crate::sys::udp::normalize;
use crate::sys::udp_batch::ReceivedRun;

impl Daemon {
    pub(super) fn on_udp_run(&mut self, received: io::Result<()>, run: &ReceivedRun) {
        match received {
            Ok(()) => {
                // A source the socket cannot name cannot be answered either.
                let Some(from) = run.source().map(normalize) else {
                    return;
                };
                let now = Instant::now();
                self.links
                    .handle_udp_run(now, from, run.datagrams(), &mut self.node);
            }
            Err(error) => {
                if let Some(suppressed) = self.udp_recv_warnings.allow(Instant::now()) {
                    tracing::warn!(%error, suppressed, "UDP receive failed");
                }
            }
        }
    }

    /// Takes queued runs until the socket has none or `taken` (the
    /// datagrams this wake has taken so far) reaches [`PACKETS_PER_WAKE`].
    /// Returns how many runs it took.
    pub(super) fn drain_underlay(&mut self, run: &mut ReceivedRun, mut taken: usize) -> usize {
        let mut runs = 0;
        while taken < PACKETS_PER_WAKE {
            match self.underlay.try_recv_run(run) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                received => {
                    self.on_udp_run(received, run);
                    taken += run.count().max(1);
                    runs += 1;
                }
            }
        }
        runs
    }

    pub(super) fn on_tun_read(
        &mut self,
        read: io::Result<()>,
        batch: &TunReadBatch,
    ) -> Result<(), DaemonError> {
        match read {
            Ok(()) => {
                let now = Instant::now();
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

    /// Takes queued reads until the TUN has none or `taken` (the packets
    /// this wake has taken so far) reaches [`PACKETS_PER_WAKE`]. Returns
    /// how many reads it took.
    pub(super) fn drain_tun(
        &mut self,
        batch: &mut TunReadBatch,
        mut taken: usize,
    ) -> Result<usize, DaemonError> {
        let mut reads = 0;
        while taken < PACKETS_PER_WAKE {
            match self.tun.try_recv_batch(batch) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                read => {
                    self.on_tun_read(read, batch)?;
                    taken += batch.packets().count().max(1);
                    reads += 1;
                }
            }
        }
        Ok(reads)
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
