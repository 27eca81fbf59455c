//! Merging the TCP packets of one write batch back into large segments
//! before they go to a TUN with offloads (generic receive offload done in
//! the daemon): the kernel's TCP then handles one 64 KiB segment where it
//! would have handled forty-five 1.4 KiB packets.
//!
//! Only what the overlay carries is merged: IPv6 (no extension headers) or
//! IPv4 (no options, not a fragment) with TCP, data segments with just ACK
//! (and PSH, which ends a segment), in sequence, with the same
//! acknowledgement, options, traffic class / TOS, flow label, hop limit /
//! TTL and DF bit, all of one payload size but a shorter last one.
//! Everything else is written as it came, in order: a packet that cannot
//! join its flow's segment closes that segment, so no byte of a flow
//! overtakes another.
//!
//! Every buffer starts with [`VIRTIO_NET_HDR_LEN`] bytes of room for the
//! virtio-net header the TUN expects in front of each packet; [`coalesce`]
//! fills it in (all zero for a packet as it came; GSO type, sizes and a
//! partial checksum for a merged segment).
//!
//! Nothing is copied: a merged segment is its first packet's buffer (whose
//! headers are rewritten for the whole segment) followed by the payloads
//! of the packets that joined it, in their own buffers, written with one
//! gather write ([`WritePlan::pieces`]). The kernel copies them once, as it
//! would have copied one long buffer.

use tun_rs::VIRTIO_NET_HDR_LEN;

use crate::core::wire::emit::{add_tcp_flags, finish_grown_tcp};
use crate::core::wire::packet::{IPV6_HEADER_LEN, IpVersion, MAX_IP_LENGTH};
use crate::core::wire::segment::TcpSegmentInfo;
use crate::core::wire::transport::{TcpFlags, tcp_field};

/// Largest IPv6 payload (the payload length field is 16 bits).
const MAX_IPV6_PAYLOAD: usize = MAX_IP_LENGTH;
/// Largest IPv4 packet (the total length field is 16 bits).
const MAX_IPV4_PACKET: usize = MAX_IP_LENGTH;

/// virtio-net header: the checksum is partial, from `csum_start`.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// virtio-net header: a TCP over IPv4 segment to be cut at `gso_size`.
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// virtio-net header: a TCP over IPv6 segment to be cut at `gso_size`.
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// The most buffers one merged segment is written from (one `iovec`
/// each): 47 full-sized packets fill 64 KiB, so this only stops segments
/// of tiny packets early.
pub const MAX_PIECES: usize = 64;
/// No next piece.
const NONE: usize = usize::MAX;

/// A segment being built behind the buffer of its first packet.
struct OpenSegment {
    head: usize,
    /// The last packet joined so far (the head while none has).
    last: usize,
    first: TcpSegmentInfo,
    next_seq: u32,
    merged: usize,
    /// The merged IP packet's length so far.
    len: usize,
}

/// What [`coalesce`] decided: the writes, in order, and what each is made
/// of.
#[derive(Debug, Default)]
pub struct WritePlan {
    /// The buffer each write starts with (a segment's head, or a packet
    /// going as it came), in order.
    pub heads: Vec<usize>,
    /// For each buffer: the next packet of its segment ([`NONE`]: none).
    next: Vec<usize>,
    /// For each packet that joined a segment: where its payload starts.
    payload_start: Vec<usize>,
}

impl WritePlan {
    /// The pieces of the write that starts with `buffers[head]`: the head
    /// whole (virtio-net header, rewritten headers, its payload), then the
    /// payload of each packet that joined it.
    pub fn pieces<'a>(
        &'a self,
        buffers: &'a [Vec<u8>],
        head: usize,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut at = head;
        let mut first = true;
        std::iter::from_fn(move || {
            let buffer = buffers.get(at)?;
            let piece = if first {
                first = false;
                buffer.as_slice()
            } else {
                buffer.get(*self.payload_start.get(at)?..)?
            };
            at = self.next.get(at).copied().unwrap_or(NONE);
            Some(piece)
        })
    }

    fn reset(&mut self, buffers: usize) {
        self.heads.clear();
        self.next.clear();
        self.next.resize(buffers, NONE);
        self.payload_start.clear();
        self.payload_start.resize(buffers, 0);
    }
}

/// Merges what can be merged among `buffers` (each a packet behind
/// [`VIRTIO_NET_HDR_LEN`] bytes of room), fills in every virtio-net header,
/// and puts into `plan` the writes, in order: a merged packet is left out
/// of `plan.heads`, its payload is a piece of its segment's write.
///
/// `segments[i]` describes the TCP segment in `buffers[i]`, as the core
/// read it when it checked the packet (`None`: not a segment to merge);
/// the packets are not parsed again here.
pub fn coalesce(
    buffers: &mut [Vec<u8>],
    segments: &[Option<TcpSegmentInfo>],
    plan: &mut WritePlan,
) {
    plan.reset(buffers.len());
    let mut open: Vec<OpenSegment> = Vec::new();
    for index in 0..buffers.len() {
        let Some(segment) = segments.get(index).copied().flatten() else {
            if buffers[index].len() >= VIRTIO_NET_HDR_LEN {
                plain_header(&mut buffers[index]);
            }
            plan.heads.push(index);
            continue;
        };
        let position = open.iter().position(|o| o.first.flow == segment.flow);
        let mergeable = segment.flags.only(TcpFlags::ACK.union(TcpFlags::PSH))
            && segment.flags.contains(TcpFlags::ACK)
            && segment.payload_len > 0;
        if let Some(position) = position
            && mergeable
            && fits(
                &open[position],
                &segment,
                &buffers[open[position].head][VIRTIO_NET_HDR_LEN..],
                &buffers[index][VIRTIO_NET_HDR_LEN..],
            )
        {
            let entry = &mut open[position];
            plan.next[entry.last] = index;
            plan.payload_start[index] = VIRTIO_NET_HDR_LEN + segment.header_len;
            entry.last = index;
            entry.len += segment.payload_len;
            let push = segment.flags.intersection(TcpFlags::PSH);
            // The head's headers were checked when it was parsed.
            let _ = add_tcp_flags(
                &mut buffers[entry.head][VIRTIO_NET_HDR_LEN..],
                segment.ip_header_len,
                push,
            );
            entry.merged += 1;
            entry.next_seq = entry.next_seq.wrapping_add(segment.payload_len as u32);
            // A shorter packet or a push ends the segment.
            if segment.payload_len < entry.first.payload_len
                || segment.flags.contains(TcpFlags::PSH)
            {
                let closed = open.swap_remove(position);
                finish(buffers, plan, &closed);
            }
            continue;
        }
        // It starts a segment of its own, or goes as it is; either way the
        // flow's open segment (if any) is complete.
        if let Some(position) = position {
            let closed = open.swap_remove(position);
            finish(buffers, plan, &closed);
        }
        plan.heads.push(index);
        if mergeable && !segment.flags.contains(TcpFlags::PSH) {
            open.push(OpenSegment {
                head: index,
                last: index,
                first: segment,
                next_seq: segment.seq.wrapping_add(segment.payload_len as u32),
                merged: 0,
                len: buffers[index].len().saturating_sub(VIRTIO_NET_HDR_LEN),
            });
        } else {
            plain_header(&mut buffers[index]);
        }
    }
    for closed in open {
        finish(buffers, plan, &closed);
    }
}

/// Whether `segment` (in `packet`) may be appended to `open`'s segment
/// (whose first packet is `head`).
fn fits(open: &OpenSegment, segment: &TcpSegmentInfo, head: &[u8], packet: &[u8]) -> bool {
    let first = &open.first;
    let within_length_field = match first.flow.version {
        IpVersion::V4 => open.len + segment.payload_len <= MAX_IPV4_PACKET,
        IpVersion::V6 => {
            open.len.saturating_sub(IPV6_HEADER_LEN) + segment.payload_len <= MAX_IPV6_PAYLOAD
        }
    };
    within_length_field
        && open.merged + 1 < MAX_PIECES
        && segment.seq == open.next_seq
        && segment.ack == first.ack
        && segment.header_len == first.header_len
        && segment.payload_len <= first.payload_len
        && segment.ip == first.ip
        && first.options(head) == segment.options(packet)
}

/// Writes the virtio-net header of a packet that goes as it came.
fn plain_header(buffer: &mut [u8]) {
    buffer[..VIRTIO_NET_HDR_LEN].fill(0);
}

/// Completes a segment: a plain header if nothing joined it; else the IP
/// length (and for IPv4 the header checksum) and the partial checksum (the
/// pseudo header's sum; the kernel adds the rest, or trusts it for local
/// delivery), then the GSO header.
fn finish(buffers: &mut [Vec<u8>], plan: &mut WritePlan, segment: &OpenSegment) {
    let buffer = &mut buffers[segment.head];
    if segment.merged == 0 {
        plain_header(buffer);
        return;
    }
    let (header, packet) = buffer.split_at_mut(VIRTIO_NET_HDR_LEN);
    let first = &segment.first;
    // `fits` kept the lengths within 16 bits; should that ever fail, the
    // packet goes without offload rather than with wrong lengths.
    if finish_grown_tcp(packet, segment.len, first.flow.version, first.ip_header_len).is_none() {
        tracing::debug!(len = segment.len, "merged TCP segment cannot be finished");
        // Every packet then goes as it came (their buffers are untouched).
        header.fill(0);
        let mut at = std::mem::replace(&mut plan.next[segment.head], NONE);
        while let Some(buffer) = buffers.get_mut(at) {
            plain_header(buffer);
            plan.heads.push(at);
            at = std::mem::replace(&mut plan.next[at], NONE);
        }
        return;
    }
    let gso_type = match first.flow.version {
        IpVersion::V4 => VIRTIO_NET_HDR_GSO_TCPV4,
        IpVersion::V6 => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    let as_u16 = |value: usize| u16::try_from(value).unwrap_or(u16::MAX);
    header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    header[1] = gso_type;
    header[2..4].copy_from_slice(&as_u16(first.header_len).to_le_bytes());
    header[4..6].copy_from_slice(&as_u16(first.payload_len).to_le_bytes());
    header[6..8].copy_from_slice(&as_u16(first.ip_header_len).to_le_bytes());
    header[8..10].copy_from_slice(&as_u16(tcp_field::CHECKSUM).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::packet::IpPacket;
    use etherparse::PacketBuilder;

    /// Merges `buffers` with the segment facts the core hands over with
    /// each received packet, and puts in each written buffer what its
    /// gather write hands the kernel (the pieces, joined).
    fn coalesce_as_delivered(buffers: &mut [Vec<u8>], to_write: &mut Vec<usize>) {
        let segments: Vec<Option<TcpSegmentInfo>> = buffers
            .iter()
            .map(|buffer| {
                let packet = IpPacket::new_checked(buffer.get(VIRTIO_NET_HDR_LEN..)?)?;
                TcpSegmentInfo::of(&packet)
            })
            .collect();
        let mut plan = WritePlan::default();
        coalesce(buffers, &segments, &mut plan);
        let written: Vec<Vec<u8>> = plan
            .heads
            .iter()
            .map(|&head| {
                let pieces: Vec<&[u8]> = plan.pieces(buffers, head).collect();
                assert!(pieces.len() <= MAX_PIECES, "one iovec per piece");
                pieces.concat()
            })
            .collect();
        for (&head, bytes) in plan.heads.iter().zip(written) {
            buffers[head] = bytes;
        }
        to_write.clone_from(&plan.heads);
    }

    const A: [u8; 16] = [0xfd, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B: [u8; 16] = [0xfd, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    struct Segment {
        port: u16,
        seq: u32,
        payload: Vec<u8>,
        psh: bool,
        fin: bool,
    }

    fn data(port: u16, seq: u32, len: usize) -> Segment {
        Segment {
            port,
            seq,
            payload: (0..len).map(|i| (seq as usize + i) as u8).collect(),
            psh: false,
            fin: false,
        }
    }

    /// A packet as the node hands it over: IPv6/TCP with a full checksum,
    /// behind the header room.
    fn buffer(segment: &Segment) -> Vec<u8> {
        let mut builder = PacketBuilder::ipv6(A, B, 64)
            .tcp(segment.port, 80, segment.seq, 1000)
            .ack(77)
            .options(&[etherparse::TcpOptionElement::Timestamp(5, 6)])
            .expect("options");
        if segment.psh {
            builder = builder.psh();
        }
        if segment.fin {
            builder = builder.fin();
        }
        let mut buffer = vec![0xaa; VIRTIO_NET_HDR_LEN];
        builder
            .write(&mut buffer, &segment.payload)
            .expect("builds");
        buffer
    }

    fn run(segments: &[Segment]) -> (Vec<Vec<u8>>, Vec<usize>) {
        let mut buffers: Vec<Vec<u8>> = segments.iter().map(buffer).collect();
        let mut to_write = Vec::new();
        coalesce_as_delivered(&mut buffers, &mut to_write);
        (buffers, to_write)
    }

    /// What the kernel does with a partial checksum: sum the TCP bytes
    /// from `csum_start` (the field holding the pseudo header's sum) and
    /// store the complement. The result must be the packet's real checksum.
    fn complete_checksum(packet: &mut [u8]) {
        let mut sum: u64 = 0;
        for pair in packet[IPV6_HEADER_LEN..].chunks(2) {
            let high = u64::from(pair[0]) << 8;
            sum += high | pair.get(1).map_or(0, |low| u64::from(*low));
        }
        while sum > 0xffff {
            sum = (sum >> 16) + (sum & 0xffff);
        }
        let at = IPV6_HEADER_LEN + 16;
        packet[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }

    fn tcp_of(packet: &[u8]) -> (etherparse::Ipv6Header, etherparse::TcpHeader, Vec<u8>) {
        let (ip, rest) = etherparse::Ipv6Header::from_slice(packet).expect("ipv6");
        let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).expect("tcp");
        (ip, tcp, payload.to_vec())
    }

    #[test]
    fn consecutive_segments_merge_into_one_with_a_gso_header() {
        let segments = [data(1, 100, 1000), data(1, 1100, 1000), data(1, 2100, 400)];
        let (mut buffers, to_write) = run(&segments);
        assert_eq!(to_write, vec![0]);
        let header = &buffers[0][..VIRTIO_NET_HDR_LEN];
        assert_eq!(header[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(header[1], VIRTIO_NET_HDR_GSO_TCPV6);
        let tcp_header_len = 20 + 12; // timestamps, padded
        assert_eq!(
            u16::from_le_bytes([header[2], header[3]]),
            40 + tcp_header_len
        );
        assert_eq!(u16::from_le_bytes([header[4], header[5]]), 1000);
        assert_eq!(u16::from_le_bytes([header[6], header[7]]), 40);
        assert_eq!(u16::from_le_bytes([header[8], header[9]]), 16);
        let packet = &mut buffers[0][VIRTIO_NET_HDR_LEN..];
        complete_checksum(packet);
        let (ip, tcp, payload) = tcp_of(packet);
        let want: Vec<u8> = segments.iter().flat_map(|s| s.payload.clone()).collect();
        assert_eq!(payload, want);
        assert_eq!(
            usize::from(ip.payload_length),
            usize::from(tcp_header_len) + 2400
        );
        assert_eq!(tcp.sequence_number, 100);
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv6(&ip, &payload).expect("checksum"),
            "the partial checksum completes to the real one"
        );
    }

    #[test]
    fn a_lone_packet_goes_as_it_came_with_an_empty_header() {
        let (buffers, to_write) = run(&[data(1, 100, 1000)]);
        assert_eq!(to_write, vec![0]);
        assert_eq!(&buffers[0][..VIRTIO_NET_HDR_LEN], &[0; VIRTIO_NET_HDR_LEN]);
        assert_eq!(buffers[0], {
            let mut original = buffer(&data(1, 100, 1000));
            original[..VIRTIO_NET_HDR_LEN].fill(0);
            original
        });
    }

    #[test]
    fn gaps_other_flows_and_non_tcp_are_kept_apart_in_order() {
        let mut udp = vec![0u8; VIRTIO_NET_HDR_LEN];
        PacketBuilder::ipv6(A, B, 64)
            .udp(53, 53)
            .write(&mut udp, b"query")
            .expect("udp");
        let mut buffers = vec![
            buffer(&data(1, 100, 1000)),
            buffer(&data(2, 5000, 1000)),
            buffer(&data(1, 1100, 1000)), // joins 0
            udp,
            buffer(&data(1, 3100, 1000)), // gap: a new segment
            buffer(&data(2, 6000, 1000)), // joins 1
        ];
        let mut to_write = Vec::new();
        coalesce_as_delivered(&mut buffers, &mut to_write);
        assert_eq!(to_write, vec![0, 1, 3, 4]);
        let payload_len = |index: usize| tcp_of(&buffers[index][VIRTIO_NET_HDR_LEN..]).2.len();
        assert_eq!(payload_len(0), 2000);
        assert_eq!(payload_len(1), 2000);
        assert_eq!(payload_len(4), 1000);
        assert_eq!(&buffers[3][..VIRTIO_NET_HDR_LEN], &[0; VIRTIO_NET_HDR_LEN]);
    }

    #[test]
    fn a_fin_ends_the_segment_and_keeps_its_place() {
        let mut fin = data(1, 2100, 0);
        fin.fin = true;
        let (buffers, to_write) = run(&[
            data(1, 100, 1000),
            data(1, 1100, 1000),
            fin,
            data(1, 2101, 1000), // after the FIN: never merged before it
        ]);
        assert_eq!(to_write, vec![0, 2, 3]);
        assert_eq!(tcp_of(&buffers[0][VIRTIO_NET_HDR_LEN..]).2.len(), 2000);
        assert!(tcp_of(&buffers[2][VIRTIO_NET_HDR_LEN..]).1.fin);
    }

    #[test]
    fn a_push_joins_and_closes_the_segment() {
        let mut push = data(1, 1100, 1000);
        push.psh = true;
        let (buffers, to_write) = run(&[data(1, 100, 1000), push, data(1, 2100, 1000)]);
        assert_eq!(to_write, vec![0, 2]);
        let (_, tcp, payload) = tcp_of(&buffers[0][VIRTIO_NET_HDR_LEN..]);
        assert!(tcp.psh);
        assert_eq!(payload.len(), 2000);
    }

    #[test]
    fn segments_stop_below_the_ipv6_payload_limit() {
        let segments: Vec<Segment> = (0..80).map(|i| data(1, i * 1400, 1400)).collect();
        let (buffers, to_write) = run(&segments);
        assert!(to_write.len() >= 2);
        let mut total = 0;
        for &index in &to_write {
            let packet = &buffers[index][VIRTIO_NET_HDR_LEN..];
            assert!(packet.len() - IPV6_HEADER_LEN <= MAX_IPV6_PAYLOAD);
            total += tcp_of(packet).2.len();
        }
        assert_eq!(total, 80 * 1400);
    }

    #[test]
    fn segments_of_tiny_packets_stop_at_the_gather_limit() {
        let segments: Vec<Segment> = (0..100).map(|i| data(1, 100 + i * 10, 10)).collect();
        let (mut buffers, to_write) = run(&segments);
        assert_eq!(to_write, vec![0, MAX_PIECES]);
        let lengths: Vec<usize> = to_write
            .iter()
            .map(|&index| tcp_of(&buffers[index][VIRTIO_NET_HDR_LEN..]).2.len())
            .collect();
        assert_eq!(lengths, vec![MAX_PIECES * 10, (100 - MAX_PIECES) * 10]);
        // Each is a valid segment once the kernel completes the checksum.
        for &index in &to_write {
            let packet = &mut buffers[index][VIRTIO_NET_HDR_LEN..];
            complete_checksum(packet);
            let (ip, tcp, payload) = tcp_of(packet);
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv6(&ip, &payload).expect("checksum")
            );
        }
    }

    /// An IPv4/TCP packet (DF, no options) as the node hands it over.
    fn buffer4(segment: &Segment, identification: u16) -> Vec<u8> {
        let mut buffer = vec![0xaa; VIRTIO_NET_HDR_LEN];
        PacketBuilder::ipv4([100, 64, 0, 1], [100, 64, 0, 2], 64)
            .tcp(segment.port, 80, segment.seq, 1000)
            .ack(77)
            .write(&mut buffer, &segment.payload)
            .expect("builds");
        // The sender's kernel numbers its packets; merging ignores that.
        let at = VIRTIO_NET_HDR_LEN + 4;
        buffer[at..at + 2].copy_from_slice(&identification.to_be_bytes());
        buffer[VIRTIO_NET_HDR_LEN + 6] |= 0x40;
        let (mut ip, _) =
            etherparse::Ipv4Header::from_slice(&buffer[VIRTIO_NET_HDR_LEN..]).expect("ipv4");
        ip.header_checksum = ip.calc_header_checksum();
        buffer[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + 20].copy_from_slice(&ip.to_bytes());
        buffer
    }

    #[test]
    fn consecutive_ipv4_segments_merge_with_a_tcpv4_gso_header() {
        let segments = [data(1, 100, 1000), data(1, 1100, 1000), data(1, 2100, 300)];
        let mut buffers: Vec<Vec<u8>> = segments
            .iter()
            .enumerate()
            .map(|(i, segment)| buffer4(segment, 7 + i as u16))
            .collect();
        let mut to_write = Vec::new();
        coalesce_as_delivered(&mut buffers, &mut to_write);
        assert_eq!(to_write, vec![0]);
        let header = &buffers[0][..VIRTIO_NET_HDR_LEN];
        assert_eq!(header[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(header[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([header[2], header[3]]), 40);
        assert_eq!(u16::from_le_bytes([header[4], header[5]]), 1000);
        assert_eq!(u16::from_le_bytes([header[6], header[7]]), 20);
        assert_eq!(u16::from_le_bytes([header[8], header[9]]), 16);
        let packet = &mut buffers[0][VIRTIO_NET_HDR_LEN..];
        // Complete the partial checksum as the kernel would.
        let mut sum: u64 = packet[20..]
            .chunks(2)
            .map(|pair| (u64::from(pair[0]) << 8) | pair.get(1).map_or(0, |low| u64::from(*low)))
            .sum();
        while sum > 0xffff {
            sum = (sum >> 16) + (sum & 0xffff);
        }
        packet[36..38].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let (ip, rest) = etherparse::Ipv4Header::from_slice(packet).expect("ipv4");
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(usize::from(ip.total_len), packet.len());
        assert!(ip.dont_fragment);
        let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).expect("tcp");
        let want: Vec<u8> = segments.iter().flat_map(|s| s.payload.clone()).collect();
        assert_eq!(payload, &want[..]);
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv4(&ip, payload).expect("checksum"),
            "the partial checksum completes to the real one"
        );
    }

    #[test]
    fn ipv4_fragments_options_and_other_families_stay_apart() {
        let first = buffer4(&data(1, 100, 1000), 1);
        let mut fragment = buffer4(&data(1, 1100, 1000), 2);
        fragment[VIRTIO_NET_HDR_LEN + 6] |= 0x20; // more fragments
        let mut not_df = buffer4(&data(1, 2100, 1000), 3);
        not_df[VIRTIO_NET_HDR_LEN + 6] &= !0x40;
        let same_ports_ipv6 = buffer(&data(1, 1100, 1000));
        let mut buffers = vec![first, fragment, not_df, same_ports_ipv6];
        let mut to_write = Vec::new();
        coalesce_as_delivered(&mut buffers, &mut to_write);
        assert_eq!(to_write, vec![0, 1, 2, 3]);
        for buffer in &buffers {
            assert_eq!(buffer[1], 0, "nothing was merged");
        }
    }

    #[test]
    fn garbage_passes_through_untouched_but_for_the_header() {
        let mut buffers = vec![
            vec![0x55; VIRTIO_NET_HDR_LEN + 3],
            vec![0x66; VIRTIO_NET_HDR_LEN],
        ];
        let mut to_write = Vec::new();
        coalesce_as_delivered(&mut buffers, &mut to_write);
        assert_eq!(to_write, vec![0, 1]);
        assert_eq!(&buffers[0][VIRTIO_NET_HDR_LEN..], &[0x55; 3]);
    }
}
