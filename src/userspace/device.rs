//! The smoltcp side of the packet device: two queues of IPv6 packets
//! (`Medium::Ip`), filled and drained by the stack's loop, which moves them
//! to and from the daemon's event loop.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// IPv6 packets in both directions, bounded on the way out: when the
/// daemon does not keep up, smoltcp sees an exhausted device and keeps its
/// segments for later instead of anything being dropped.
#[derive(Debug)]
pub(crate) struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    tx_limit: usize,
}

impl QueueDevice {
    /// A device with the tunnel MTU and room for `tx_limit` outgoing packets.
    pub(crate) fn new(mtu: u16, tx_limit: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: usize::from(mtu),
            tx_limit,
        }
    }

    /// Queues a packet for smoltcp.
    pub(crate) fn push_rx(&mut self, packet: Vec<u8>) {
        self.rx.push_back(packet);
    }

    /// Packets waiting for smoltcp.
    pub(crate) fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// The next packet smoltcp sent.
    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Puts a packet back at the head of the outgoing queue.
    pub(crate) fn unpop_tx(&mut self, packet: Vec<u8>) {
        self.tx.push_front(packet);
    }

    /// Whether the outgoing queue is at its limit.
    pub(crate) fn tx_full(&self) -> bool {
        self.tx.len() >= self.tx_limit
    }

    /// Whether smoltcp sent packets that wait for the daemon.
    pub(crate) fn has_tx(&self) -> bool {
        !self.tx.is_empty()
    }
}

/// Hands one received packet to smoltcp.
pub(crate) struct RxToken(Vec<u8>);

/// Lets smoltcp write one packet.
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A reply to a received packet (an ACK, a RST) may go beyond the
        // limit: the limit is for what smoltcp sends on its own.
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        (self.tx.len() < self.tx_limit).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};

    #[test]
    fn transmit_stops_at_the_limit_and_replies_still_fit() {
        let mut device = QueueDevice::new(1280, 2);
        let now = Instant::from_millis(0);
        for _ in 0..2 {
            let token = device.transmit(now).expect("room");
            token.consume(3, |buf| buf.copy_from_slice(&[1, 2, 3]));
        }
        assert!(device.transmit(now).is_none());
        device.push_rx(vec![9]);
        let (rx, tx) = device.receive(now).expect("a packet");
        assert_eq!(rx.consume(|p| p.to_vec()), vec![9]);
        tx.consume(1, |buf| buf[0] = 7);
        assert_eq!(device.pop_tx(), Some(vec![1, 2, 3]));
        assert_eq!(device.capabilities().max_transmission_unit, 1280);
    }
}
