//! The data path: datagrams in (dispatch, decryption, control frames,
//! inbound cryptokey routing and policy) and TUN packets out (outbound
//! cryptokey routing, MTU, sealing).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::core::address::{NodeId, NodePrefix};
use crate::core::api::{Event, TunPacket};
use crate::core::peer::{Inbound, Slot};
use crate::core::wire::control_frame::{CONTROL_FRAME_LIMIT, ControlFrame};
use crate::core::wire::emit;
use crate::core::wire::packet::{IpPacket, IpVersion};
use crate::core::wire::path::PathAddr;
use crate::core::wire::{self, Datagram};

use super::{Node, peer_by_index, revocation_context};

impl Node {
    /// Feeds one UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match Datagram::parse(datagram) {
            Ok(Datagram::Relay(relay)) if self.ctx.is_rendezvous_endpoint(from) => {
                // A rendezvous delivers a datagram from the node it names.
                let source = NodeId(relay.destination());
                match Datagram::parse(relay.inner()) {
                    Ok(Datagram::Relay(_)) | Err(_) => self.ctx.dropped.malformed += 1,
                    Ok(Datagram::TrustRequest(bytes)) => self.handle_trust_request(
                        now,
                        PathAddr::Relay(from),
                        Some((source, relay.source_tag())),
                        bytes,
                    ),
                    Ok(inner) => self.dispatch(now, PathAddr::Relay(from), Some(source), inner),
                }
            }
            Ok(Datagram::Relay(_)) => self.ctx.dropped.malformed += 1,
            Ok(parsed) => self.dispatch(now, PathAddr::Direct(from), None, parsed),
            Err(_) => self.ctx.dropped.malformed += 1,
        }
    }

    /// Feeds one datagram received on probe socket `socket` (see
    /// [`PathAddr::Probe`]): only direct traffic of a peer uses those.
    pub fn handle_datagram_on_probe(
        &mut self,
        now: Instant,
        socket: u16,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        match Datagram::parse(datagram) {
            Ok(Datagram::Data(data)) => {
                self.handle_data(now, PathAddr::Probe(socket, from), None, &data)
            }
            Ok(Datagram::Initiation(initiation)) => {
                self.handle_initiation(now, PathAddr::Probe(socket, from), None, &initiation)
            }
            Ok(Datagram::Response(response)) => {
                self.handle_response(now, PathAddr::Probe(socket, from), None, &response)
            }
            Ok(Datagram::CookieReply(reply)) => self.handle_cookie_reply(now, None, &reply),
            _ => self.ctx.dropped.malformed += 1,
        }
    }

    pub(super) fn dispatch(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        datagram: Datagram<'_>,
    ) {
        match datagram {
            Datagram::Initiation(initiation) => {
                self.handle_initiation(now, from, relayed_by, &initiation)
            }
            Datagram::Response(response) => self.handle_response(now, from, relayed_by, &response),
            Datagram::Data(data) => self.handle_data(now, from, relayed_by, &data),
            Datagram::TrustRequest(bytes) => {
                self.handle_trust_request(now, from, relayed_by.map(|node| (node, 0)), bytes)
            }
            Datagram::CookieReply(reply) => self.handle_cookie_reply(now, relayed_by, &reply),
            Datagram::Relay(_) => self.ctx.dropped.malformed += 1,
        }
    }

    pub(super) fn handle_data(
        &mut self,
        now: Instant,
        from: PathAddr,
        relayed_by: Option<NodeId>,
        data: &wire::Data<'_>,
    ) {
        let ctx = &mut self.ctx;
        let local_index = data.receiver_index();
        let Some(peer) = peer_by_index(&ctx.by_index, &mut self.peers, local_index) else {
            ctx.dropped.unknown_session += 1;
            return;
        };
        if relayed_by.is_some_and(|node| node != peer.node_id()) {
            ctx.dropped.unknown_session += 1;
            return;
        }
        let counter = data.counter();
        // Decrypted in place in a reused buffer, behind the room the shell
        // asked for: the packet goes to the TUN as it is, no copy.
        let headroom = ctx.tun_headroom;
        let mut buffer = ctx.take_buffer();
        buffer.resize(headroom, 0);
        buffer.extend_from_slice(data.ciphertext());
        let Some((slot, len)) =
            peer.open_data(ctx, now, local_index, counter, &mut buffer[headroom..])
        else {
            ctx.recycle_buffer(buffer);
            return;
        };
        buffer.truncate(headroom + len);
        let control = buffer
            .get(headroom)
            .is_some_and(|first| *first < CONTROL_FRAME_LIMIT);
        peer.note_arrival(now, from.is_relay(), control);
        if slot == Slot::Next {
            peer.confirm_next(ctx, now);
        }
        let frame = match buffer.get(headroom) {
            Some(&first) if first < CONTROL_FRAME_LIMIT => {
                ControlFrame::decode(&buffer[headroom..])
            }
            _ => None,
        };
        // A ping only proves the way here; a pong answers only its ping;
        // anything else answers something we sent along a path we already
        // use.
        match frame {
            Some(ControlFrame::PathPong { id }) => peer.observe_pong_path(ctx, now, id, from),
            Some(ControlFrame::PathPing { .. }) => peer.observe_path(ctx, now, from, false),
            _ => peer.observe_path(ctx, now, from, true),
        }
        if from.is_relay() && !control {
            peer.note_relayed_data(ctx, now);
        }
        peer.observe_receive(now, len > 0);
        if peer.wants_rekey_on_receive(now) {
            peer.start_handshake_if_idle(ctx, now);
        }
        let Some(&first) = buffer.get(headroom) else {
            ctx.recycle_buffer(buffer);
            return; // keepalive
        };
        if first < CONTROL_FRAME_LIMIT {
            ctx.recycle_buffer(buffer);
            let Some(frame) = frame else {
                return;
            };
            let mut registered = None;
            match frame {
                ControlFrame::PathPing { id } => {
                    peer.answer_ping(ctx, now, id, from);
                    peer.ping_back(ctx, now, from);
                }
                ControlFrame::PathPong { id } => peer.handle_pong(ctx, now, id, from),
                ControlFrame::Punch { round } => peer.punch_requested(ctx, now, round),
                ControlFrame::SkippedCounters { count } => {
                    peer.note_skipped_counters(now, local_index, count);
                }
                ControlFrame::Candidates { candidates, nat } if !peer.is_rendezvous() => {
                    peer.set_remote_candidates(now, candidates);
                    peer.set_remote_nat(nat);
                }
                ControlFrame::Registered {
                    reflexive,
                    lifetime_s,
                } if peer.is_rendezvous() => {
                    registered = Some((peer.id(), reflexive, lifetime_s));
                }
                ControlFrame::Revoked { signature } => {
                    let revoker = peer.id();
                    if peer.may_check_revocation(now)
                        && revoker.verify(&revocation_context(&revoker, &ctx.own_id), &signature)
                    {
                        tracing::info!(peer = %revoker, "peer revoked its trust; dropping its sessions");
                        let was_up = peer.has_session();
                        peer.clear_sessions(ctx);
                        peer.forget_learned_services(ctx);
                        if was_up {
                            ctx.events.push_back(Event::PeerDown { id: revoker });
                        }
                    }
                }
                ControlFrame::Services {
                    generation,
                    entries,
                    ..
                } => peer.learn_services(ctx, now, generation, entries),
                ControlFrame::ServicesAck { generation } => peer.services_acknowledged(generation),
                ControlFrame::Candidates { .. }
                | ControlFrame::Register { .. }
                | ControlFrame::Registered { .. } => {}
            }
            if let Some((rendezvous, reflexive, lifetime_s)) = registered {
                self.handle_registered(now, rendezvous, reflexive, lifetime_s);
            }
            return;
        }
        match peer.accept_inbound(ctx, now, &buffer[headroom..]) {
            Inbound::Deliver { tcp_segment } => ctx.tun_out.push_back(TunPacket {
                buffer,
                tcp_segment,
            }),
            Inbound::Drop => ctx.recycle_buffer(buffer),
        }
    }

    /// Feeds one IP packet read from the TUN.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) {
        let Some(parsed) = IpPacket::new_checked(packet) else {
            self.ctx.dropped.no_route += 1;
            return;
        };
        // Cryptokey routing outbound: the destination names the peer. Only
        // this node's own addresses may send into the overlay (the agent
        // address and attached namespaces, all in its node prefix; over
        // IPv4 the agent's address, which attachments are masqueraded
        // behind): not a LAN neighbour routing through the host, nor a
        // spoofer.
        let (slot, own_source) = match parsed.version() {
            IpVersion::V6 => (
                self.by_prefix
                    .get(&NodePrefix::of_octets(&parsed.destination())),
                NodePrefix::of_octets(&parsed.source()) == self.ctx.own_prefix,
            ),
            IpVersion::V4 => match (parsed.destination_ip(), self.ctx.own_address4) {
                (IpAddr::V4(destination), Some(own)) => (
                    self.by_address4.get(&destination),
                    parsed.source_ip() == IpAddr::V4(own),
                ),
                _ => (None, false),
            },
        };
        let Some(peer) = slot.and_then(|slot| self.peers.at_mut(*slot)) else {
            self.ctx.dropped.no_route += 1;
            return;
        };
        if !own_source {
            self.ctx.dropped.foreign_source += 1;
            return;
        }
        if packet.len() > usize::from(self.ctx.tunnel_mtu) {
            self.ctx.dropped.too_big += 1;
            peer.count_too_big();
            // Never fragment outer packets: the sender learns the tunnel MTU
            // (IPv4 without DF is dropped; the kernel fragments those before
            // the TUN, so only forged ones get here).
            let reply = match (parsed.version(), self.ctx.own_address4) {
                (IpVersion::V6, _) => Some(emit::packet_too_big(
                    self.ctx.own_prefix.agent_address().octets(),
                    &parsed,
                    u32::from(self.ctx.tunnel_mtu),
                )),
                // From the peer's address, as an on-path router would: the
                // kernel drops IPv4 from its own address arriving on a
                // non-loopback device.
                (IpVersion::V4, Some(_)) if parsed.dont_fragment() => match parsed.destination_ip()
                {
                    IpAddr::V4(peer) => Some(emit::fragmentation_needed(
                        peer,
                        &parsed,
                        self.ctx.tunnel_mtu,
                    )),
                    IpAddr::V6(_) => None,
                },
                (IpVersion::V4, _) => None,
            };
            if let Some(reply) = reply {
                self.ctx.queue_tun_packet(&reply);
            }
            return;
        }
        peer.track_outbound(now, &parsed);
        peer.send(&mut self.ctx, now, packet);
    }
}
