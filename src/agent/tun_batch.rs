//! Many packets per TUN read and write.
//!
//! With TUN offloads (Linux `IFF_VNET_HDR` and `TUNSETOFFLOAD`; tun-rs does
//! the virtio-net header work) the kernel hands the daemon one TCP segment
//! of up to 64 KiB per read, which is cut into MTU-sized packets here
//! (checksums included) before the node sees them; on the way in, packets of
//! one TCP flow decrypted together are merged back into one large segment
//! per write ([`super::tcp_gro`]). Without offloads every read and write is
//! one packet, through the same types.

use std::io;

use bytes::BytesMut;
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::tcp_gro::WritePlan;
use crate::core::api::TunPacket;
use crate::core::wire::segment::TcpSegmentInfo;

/// Room kept before every packet written, for the virtio-net header.
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;
/// One read with offloads: the header and the largest segment.
const RAW_READ_LEN: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Packets cut from one read at most (a 64 KiB segment at an MSS of 512).
pub const MAX_PACKETS_PER_READ: usize = IDEAL_BATCH_SIZE;
/// Packets written in one go at most.
pub const MAX_PACKETS_PER_WRITE: usize = IDEAL_BATCH_SIZE;
/// A write buffer that grew past this while merging is given back.
const KEEP_WRITE_BUFFER: usize = 4 * 1024;

/// The packets of one TUN read.
pub struct TunReadBatch {
    /// The raw read: virtio-net header and segment (offloads only).
    raw: Vec<u8>,
    /// One slot per packet (the MTU and 256 bytes), views of one allocation:
    /// the allocator maps it lazily, so slots never written cost no memory.
    /// Built once: cutting the slots on every read (and carrying them in
    /// the read's future) was ~18 % of the loop's instructions per packet.
    slots: Vec<BytesMut>,
    sizes: [usize; MAX_PACKETS_PER_READ],
    pub(crate) count: usize,
}

impl TunReadBatch {
    /// Buffers for packets of up to `mtu` bytes; `offload` adds the buffer
    /// for whole segments.
    pub fn new(mtu: u16, offload: bool) -> Self {
        // Room for a packet a little over the MTU (the kernel's own
        // packets, such as an ICMPv6 error, respect it anyway).
        let packet_len = usize::from(mtu) + 256;
        let (slots, raw) = if offload {
            (MAX_PACKETS_PER_READ, vec![0; RAW_READ_LEN])
        } else {
            (1, Vec::new())
        };
        let mut storage = BytesMut::zeroed(slots * packet_len);
        let slots = (0..slots).map(|_| storage.split_to(packet_len)).collect();
        Self {
            raw,
            slots,
            sizes: [0; MAX_PACKETS_PER_READ],
            count: 0,
        }
    }

    /// What a read fills: the raw buffer, the packet slots and as many
    /// sizes.
    pub(crate) fn parts(&mut self) -> (&mut Vec<u8>, &mut [BytesMut], &mut [usize]) {
        let sizes = &mut self.sizes[..self.slots.len()];
        (&mut self.raw, &mut self.slots, sizes)
    }

    /// The packets read last.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.slots
            .iter()
            .zip(&self.sizes)
            .take(self.count)
            .map(|(slot, &len)| &slot[..len.min(slot.len())])
    }
}

/// Packets waiting to be written to the packet device, each behind the
/// device's headroom: [`HEADROOM`] for a TUN, none for the userspace stack.
pub struct TunWriteBatch {
    /// Bytes before each packet.
    headroom: usize,
    pub(crate) buffers: Vec<Vec<u8>>,
    /// What the core read of the TCP segment in each buffer (same index).
    segments: Vec<Option<TcpSegmentInfo>>,
    pub(crate) used: usize,
    /// The writes after merging, in order.
    plan: WritePlan,
}

impl TunWriteBatch {
    /// An empty batch whose packets sit behind `headroom` bytes.
    pub fn new(headroom: usize) -> Self {
        Self {
            headroom,
            buffers: Vec::new(),
            segments: Vec::new(),
            used: 0,
            plan: WritePlan::default(),
        }
    }

    /// Bytes before each queued packet.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Queues a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) {
        if self.used == self.buffers.len() {
            self.buffers
                .push(Vec::with_capacity(self.headroom + packet.len()));
            self.segments.push(None);
        }
        self.segments[self.used] = None;
        let buffer = &mut self.buffers[self.used];
        buffer.clear();
        buffer.resize(self.headroom, 0);
        buffer.extend_from_slice(packet);
        self.used += 1;
    }

    /// Queues a packet the node delivered, whose buffer already holds it
    /// behind the batch's headroom (the node decrypts into such buffers,
    /// see `Node::set_tun_headroom`), without copying it. Returns a spare
    /// buffer for the caller to reuse (empty if there is none).
    pub fn push_with_headroom(&mut self, packet: TunPacket) -> Vec<u8> {
        let TunPacket {
            buffer,
            tcp_segment,
        } = packet;
        debug_assert!(
            buffer.len() >= self.headroom,
            "a packet behind its headroom"
        );
        let spare = if self.used == self.buffers.len() {
            self.buffers.push(buffer);
            self.segments.push(tcp_segment);
            Vec::new()
        } else {
            self.segments[self.used] = tcp_segment;
            std::mem::replace(&mut self.buffers[self.used], buffer)
        };
        self.used += 1;
        spare
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Whether the batch should be written before more is queued.
    pub fn is_full(&self) -> bool {
        self.used >= MAX_PACKETS_PER_WRITE
    }

    /// The queued packets, with their headroom.
    pub(crate) fn queued(&mut self) -> &mut [Vec<u8>] {
        &mut self.buffers[..self.used]
    }

    /// For a TUN with offloads: merges TCP packets and writes the virtio-net
    /// headers; returns the buffers and the plan of the writes (each one
    /// gather write of [`WritePlan::pieces`], header included).
    pub(crate) fn merged(&mut self) -> (&[Vec<u8>], &WritePlan) {
        super::tcp_gro::coalesce(
            &mut self.buffers[..self.used],
            &self.segments[..self.used],
            &mut self.plan,
        );
        (&self.buffers[..self.used], &self.plan)
    }

    /// Empties the batch, keeping small buffers for reuse.
    pub(crate) fn clear(&mut self) {
        for buffer in &mut self.buffers[..self.used] {
            if buffer.capacity() > KEEP_WRITE_BUFFER {
                *buffer = Vec::new();
            }
        }
        self.used = 0;
    }
}

/// Whether a failed batch read or write concerns the packet (dropped, the
/// device carries on) rather than the device.
pub fn is_bad_packet(error: &io::Error) -> bool {
    error.raw_os_error().is_none()
        && matches!(
            error.kind(),
            io::ErrorKind::Other | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_batch_keeps_headroom_and_reuses_buffers() {
        let mut batch = TunWriteBatch::new(HEADROOM);
        assert!(batch.is_empty());
        batch.push(&[6, 1, 2]);
        batch.push(&[6, 3]);
        let queued = batch.queued();
        assert_eq!(queued.len(), 2);
        assert_eq!(&queued[0][HEADROOM..], &[6, 1, 2]);
        assert_eq!(&queued[1][HEADROOM..], &[6, 3]);
        batch.clear();
        assert!(batch.is_empty());
        batch.push(&[6, 9]);
        assert_eq!(&batch.queued()[0][HEADROOM..], &[6, 9]);
        assert_eq!(batch.buffers.len(), 2, "buffers are reused");
    }

    fn delivered(buffer: Vec<u8>) -> TunPacket {
        TunPacket {
            buffer,
            tcp_segment: None,
        }
    }

    #[test]
    fn buffers_with_headroom_are_queued_without_a_copy() {
        let mut batch = TunWriteBatch::new(HEADROOM);
        batch.push(&[6, 1]);
        batch.clear();
        let mut owned = vec![0u8; HEADROOM];
        owned.extend_from_slice(&[6, 7, 8]);
        let address = owned.as_ptr();
        let spare = batch.push_with_headroom(delivered(owned));
        assert!(spare.capacity() > 0, "the batch's old buffer comes back");
        let queued = batch.queued();
        assert_eq!(queued.len(), 1);
        assert_eq!(&queued[0][HEADROOM..], &[6, 7, 8]);
        assert_eq!(queued[0].as_ptr(), address, "the same allocation");
        let spare = batch.push_with_headroom(delivered(vec![0u8; HEADROOM]));
        assert_eq!(spare.capacity(), 0, "nothing to give back past the end");
        assert_eq!(batch.queued().len(), 2);
    }

    #[test]
    fn a_batch_without_headroom_holds_bare_packets() {
        // The userspace stack's batch: it takes each buffer as it is.
        let mut batch = TunWriteBatch::new(0);
        assert_eq!(batch.headroom(), 0);
        batch.push(&[6, 1, 2]);
        let spare = batch.push_with_headroom(delivered(vec![6, 7]));
        assert_eq!(spare.capacity(), 0);
        let queued = batch.queued();
        assert_eq!(queued, [vec![6, 1, 2], vec![6, 7]]);
        let taken = std::mem::take(&mut queued[1]);
        assert_eq!(taken, [6, 7]);
        batch.clear();
        batch.push(&[4, 5]);
        assert_eq!(batch.queued()[0], [4, 5]);
    }

    #[test]
    fn grown_buffers_are_given_back() {
        let mut batch = TunWriteBatch::new(HEADROOM);
        batch.push(&vec![0u8; 60_000]);
        batch.clear();
        assert!(batch.buffers[0].capacity() <= KEEP_WRITE_BUFFER);
    }

    #[test]
    fn read_batch_yields_only_the_packets_read() {
        let mut batch = TunReadBatch::new(1280, true);
        assert_eq!(batch.packets().count(), 0);
        let (_, slots, sizes) = batch.parts();
        slots[0][..2].copy_from_slice(&[6, 0]);
        sizes[0] = 2;
        sizes[1] = 3;
        batch.count = 2;
        let packets: Vec<&[u8]> = batch.packets().collect();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0], &[6, 0]);
        let mut plain = TunReadBatch::new(1280, false);
        let (_, slots, sizes) = plain.parts();
        assert!(slots[0].len() >= 1280);
        assert_eq!(slots.len(), 1, "one slot without offloads");
        assert_eq!(sizes.len(), 1, "as many sizes as slots");
    }

    #[test]
    fn read_slots_are_built_once_and_do_not_overlap() {
        let mut batch = TunReadBatch::new(1280, true);
        let first = batch.parts().1.as_ptr() as usize;
        let (_, slots, sizes) = batch.parts();
        assert_eq!(slots.as_ptr() as usize, first, "the same slots every read");
        assert_eq!(slots.len(), MAX_PACKETS_PER_READ);
        assert_eq!(sizes.len(), MAX_PACKETS_PER_READ);
        for (index, slot) in slots.iter_mut().enumerate() {
            slot.fill(u8::try_from(index % 251).unwrap_or(0));
        }
        for (index, slot) in batch.slots.iter().enumerate() {
            let mark = u8::try_from(index % 251).unwrap_or(0);
            assert!(
                slot.iter().all(|&byte| byte == mark),
                "slot {index} kept its bytes"
            );
        }
    }

    #[test]
    fn packet_errors_are_told_from_device_errors() {
        assert!(is_bad_packet(&io::Error::other("bufs error")));
        assert!(!is_bad_packet(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(!is_bad_packet(&io::Error::from(io::ErrorKind::WouldBlock)));
    }
}
