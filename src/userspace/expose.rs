//! Exposed TCP ports: an overlay connection is accepted only once the local
//! service took a connection for it.
//!
//! The SYN of a new flow to an exposed port is held back while the stack
//! connects to the local service; then a listener is armed for it and the
//! SYN is handed to smoltcp. If the service refuses, the SYN goes to
//! smoltcp with no listener, and smoltcp answers with a reset: the remote
//! client sees "connection refused", as from a kernel. Retransmitted SYNs
//! of a held flow are dropped (the held one stands for them).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::IpEndpoint;

use crate::core::address::OverlayAddresses;
use crate::core::wire::packet::IpPacket;
use crate::core::wire::transport::TcpFlags;

/// Flows held while their local connection is made; more are dropped
/// (the remote retransmits its SYN), as with a full listen backlog.
const MAX_HELD: usize = 512;

/// An inbound flow: the remote endpoint and our (exposed) port.
pub(crate) type FlowKey = (IpEndpoint, u16);

/// What to do with a packet from the overlay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Hand it to smoltcp.
    Stack(Vec<u8>),
    /// A new flow to an exposed port: connect to `target`, then call
    /// [`TcpExposer::take_held`].
    Connect {
        /// The flow.
        key: FlowKey,
        /// The local service.
        target: SocketAddr,
    },
    /// Drop it.
    Drop,
}

/// The exposed TCP ports and the flows to them.
#[derive(Debug, Default)]
pub(crate) struct TcpExposer {
    ports: HashMap<u16, SocketAddr>,
    held: HashMap<FlowKey, Vec<u8>>,
    live: HashSet<FlowKey>,
}

impl TcpExposer {
    /// Exposes `port` as `local`.
    pub(crate) fn add(&mut self, port: u16, local: SocketAddr) {
        self.ports.insert(port, local);
    }

    /// Sorts a packet from the overlay.
    pub(crate) fn classify(&mut self, packet: Vec<u8>, own: OverlayAddresses) -> Inbound {
        let Some(key) = inbound_syn(&packet, own) else {
            return Inbound::Stack(packet);
        };
        let Some(&target) = self.ports.get(&key.1) else {
            // Not exposed: smoltcp resets it.
            return Inbound::Stack(packet);
        };
        if self.live.contains(&key) {
            return Inbound::Stack(packet);
        }
        if self.held.contains_key(&key) || self.held.len() >= MAX_HELD {
            return Inbound::Drop;
        }
        self.held.insert(key, packet);
        Inbound::Connect { key, target }
    }

    /// The held SYN of a flow whose local connection finished (or failed).
    pub(crate) fn take_held(&mut self, key: &FlowKey) -> Option<Vec<u8>> {
        self.held.remove(key)
    }

    /// A listener is armed for the flow: its packets go to smoltcp.
    pub(crate) fn opened(&mut self, key: FlowKey) {
        self.live.insert(key);
    }

    /// The flow's relay is gone.
    pub(crate) fn closed(&mut self, key: &FlowKey) {
        self.live.remove(key);
    }

    /// Flows waiting for their local connection.
    #[cfg(test)]
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }
}

/// The flow of a TCP SYN (without ACK) to one of our addresses (`own`, of
/// the packet's family), if `packet` is one. Read through the checked view
/// of `core::wire`: extension headers before TCP are not followed (such a
/// SYN goes to smoltcp, which treats it as it would any other), and a
/// fragment is not a whole SYN (smoltcp drops it).
pub(crate) fn inbound_syn(packet: &[u8], own: OverlayAddresses) -> Option<FlowKey> {
    let packet = IpPacket::new_checked(packet)?;
    let to_us = match packet.destination_ip() {
        IpAddr::V6(destination) => destination == own.v6,
        IpAddr::V4(destination) => Some(destination) == own.v4,
    };
    if !to_us {
        return None;
    }
    let tcp = packet.tcp()?;
    let flags = tcp.flags();
    if !flags.is_bare_syn() || flags.contains(TcpFlags::RST) {
        return None;
    }
    let source = IpEndpoint::new(packet.source_ip().into(), tcp.source_port());
    Some((source, tcp.destination_port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
        TcpRepr, TcpSeqNumber,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn own() -> OverlayAddresses {
        OverlayAddresses {
            v6: "fd40::1:1".parse().expect("v6"),
            v4: Some(Ipv4Addr::new(100, 64, 1, 1)),
        }
    }

    fn remote() -> Ipv6Addr {
        "fd40::2:1".parse().expect("v6")
    }

    fn remote4() -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 2, 1)
    }

    fn tcp_packet(dst_port: u16, control: TcpControl, ack: bool) -> Vec<u8> {
        tcp_packet_between(
            IpAddr::V6(remote()),
            IpAddr::V6(own().v6),
            dst_port,
            control,
            ack,
        )
    }

    fn tcp_packet_between(
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
        control: TcpControl,
        ack: bool,
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.then_some(TcpSeqNumber(1)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let caps = ChecksumCapabilities::default();
        let (header_len, mut bytes) = match (src, dst) {
            (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
                let ip = Ipv6Repr {
                    src_addr,
                    dst_addr,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                };
                let mut bytes = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
                ip.emit(&mut Ipv6Packet::new_unchecked(&mut bytes));
                (ip.buffer_len(), bytes)
            }
            (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
                let ip = Ipv4Repr {
                    src_addr,
                    dst_addr,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                };
                let mut bytes = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
                ip.emit(&mut Ipv4Packet::new_unchecked(&mut bytes), &caps);
                (ip.buffer_len(), bytes)
            }
            _ => panic!("mixed families"),
        };
        let mut segment = TcpPacket::new_unchecked(&mut bytes[header_len..]);
        tcp.emit(&mut segment, &src.into(), &dst.into(), &caps);
        bytes
    }

    #[test]
    fn a_syn_to_an_exposed_port_is_held_until_the_local_connect() {
        let mut exposer = TcpExposer::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        exposer.add(80, local);
        let syn = tcp_packet(80, TcpControl::Syn, false);
        let key = (IpEndpoint::new(IpAddress::Ipv6(remote()), 40000), 80);
        assert_eq!(
            exposer.classify(syn.clone(), own()),
            Inbound::Connect { key, target: local }
        );
        // A retransmission while connecting is dropped.
        assert_eq!(exposer.classify(syn.clone(), own()), Inbound::Drop);
        assert_eq!(exposer.take_held(&key), Some(syn.clone()));
        exposer.opened(key);
        assert_eq!(exposer.classify(syn.clone(), own()), Inbound::Stack(syn));
        exposer.closed(&key);
        assert_eq!(exposer.held_len(), 0);
    }

    #[test]
    fn an_ipv4_syn_to_the_agents_ipv4_address_is_held_too() {
        let mut exposer = TcpExposer::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        exposer.add(80, local);
        let own4 = own().v4.expect("v4");
        let syn = tcp_packet_between(
            IpAddr::V4(remote4()),
            IpAddr::V4(own4),
            80,
            TcpControl::Syn,
            false,
        );
        let key = (IpEndpoint::new(IpAddress::Ipv4(remote4()), 40000), 80);
        assert_eq!(
            exposer.classify(syn.clone(), own()),
            Inbound::Connect { key, target: local }
        );
        assert_eq!(exposer.take_held(&key), Some(syn.clone()));
        // With IPv4 off, or to another IPv4 address, it is no exposed flow.
        let ipv6_only = OverlayAddresses { v4: None, ..own() };
        assert_eq!(
            exposer.classify(syn.clone(), ipv6_only),
            Inbound::Stack(syn)
        );
        let elsewhere = tcp_packet_between(
            IpAddr::V4(remote4()),
            IpAddr::V4(Ipv4Addr::new(100, 64, 9, 9)),
            80,
            TcpControl::Syn,
            false,
        );
        assert_eq!(
            exposer.classify(elsewhere.clone(), own()),
            Inbound::Stack(elsewhere)
        );
    }

    #[test]
    fn other_packets_go_straight_to_the_stack() {
        let mut exposer = TcpExposer::default();
        exposer.add(80, "127.0.0.1:80".parse().expect("addr"));
        for packet in [
            tcp_packet(81, TcpControl::Syn, false),
            tcp_packet(80, TcpControl::Syn, true),
            tcp_packet(80, TcpControl::None, true),
            tcp_packet(80, TcpControl::Rst, false),
            vec![0x60, 0, 0],
            vec![0x45, 0, 0],
            vec![],
        ] {
            assert_eq!(
                exposer.classify(packet.clone(), own()),
                Inbound::Stack(packet)
            );
        }
    }
}
