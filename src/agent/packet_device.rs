//! Where the event loop reads and writes the overlay's IP packets: the TUN
//! interface (the kernel's stack behind it), or the in-process userspace
//! stack of `up --userspace` ([`crate::userspace`]). Everything else in the
//! daemon — node, sessions, policy, the resolver at `PREFIX::53`, status —
//! is the same for both.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use tun_rs::SyncDevice;

use super::tcp_gro::MAX_PIECES;
use super::tun_batch::{HEADROOM, TunReadBatch, TunWriteBatch};
use super::{DaemonError, DaemonOptions};
use crate::core::address::{NetworkId, OverlayAddresses};
use crate::core::api::Ipv4Route;
use crate::core::node::Node;
use crate::core::trust::store::{TrustState, TrustStore};
use crate::names::dns::NameTable;
use crate::sys::gather_list::GatherList;
use crate::sys::poller::{Poller, Source};
use crate::userspace::{Userspace, UserspaceStatus};

/// The name `status` and `up` show for the userspace stack's "interface".
pub const USERSPACE_INTERFACE: &str = "userspace";

/// The daemon's packet device.
pub(crate) enum PacketDevice {
    /// A kernel TUN interface (non-blocking).
    Tun(SyncDevice),
    /// The userspace stack (no TUN, no privileges).
    Userspace(Box<Userspace>),
}

fn stopped() -> io::Error {
    io::Error::other("the userspace stack has stopped")
}

impl PacketDevice {
    /// The userspace stack if `options` ask for it, else the TUN.
    pub(crate) fn open(
        options: &DaemonOptions,
        addresses: OverlayAddresses,
        network: NetworkId,
        mtu: u16,
    ) -> Result<Self, DaemonError> {
        Ok(match &options.userspace {
            Some(userspace) => Self::Userspace(Box::new(Userspace::start(
                userspace, addresses, network, mtu,
            )?)),
            None => Self::Tun(crate::sys::tun::create(
                &options.interface,
                addresses,
                mtu,
                options.offload,
            )?),
        })
    }

    /// The interface name.
    pub(crate) fn name(&self) -> io::Result<String> {
        match self {
            Self::Tun(tun) => tun.name(),
            Self::Userspace(_) => Ok(USERSPACE_INTERFACE.to_string()),
        }
    }

    /// Has the datapath's `poller` watch this device's input: the TUN's
    /// descriptor, or the wake the userspace stack's thread writes.
    pub(crate) fn watch(&self, poller: &Poller) -> io::Result<()> {
        match self {
            Self::Tun(tun) => poller.watch(tun.as_fd(), Source::Tun),
            Self::Userspace(stack) => poller.watch(stack.wake().as_fd(), Source::Tun),
        }
    }

    /// Whether a write can bring an answer at once, within the write: a
    /// TUN, where the kernel answers in the writer's system call; not the
    /// userspace stack, which answers on its own thread.
    pub(crate) fn answers_within_write(&self) -> bool {
        matches!(self, Self::Tun(_))
    }

    /// Whether packets wait that no descriptor shows: those the userspace
    /// stack queued while the datapath was awake (its wake was not armed).
    /// Always `false` for a TUN, whose descriptor says it.
    pub(crate) fn has_queued(&self) -> bool {
        match self {
            Self::Tun(_) => false,
            Self::Userspace(stack) => stack.has_queued(),
        }
    }

    /// Before the datapath sleeps: has the userspace stack wake it for the
    /// next packet. The caller checks [`PacketDevice::has_queued`] after.
    pub(crate) fn arm_wake(&self) {
        if let Self::Userspace(stack) = self {
            stack.wake().arm();
        }
    }

    /// Once the datapath is awake: the userspace stack need not write its
    /// wake any more.
    pub(crate) fn disarm_wake(&self) {
        if let Self::Userspace(stack) = self {
            stack.wake().disarm();
        }
    }

    /// After the poller reported the device readable: empties the userspace
    /// stack's wake (a TUN has none).
    pub(crate) fn reset_wake(&self) {
        if let Self::Userspace(stack) = self {
            stack.wake().reset();
        }
    }

    /// Bytes the node leaves before each packet it decrypts for this
    /// device (`Node::set_tun_headroom`), so that the packet is written
    /// from its own buffer: room for the virtio-net header on a TUN; none
    /// for the userspace stack, which takes the buffer itself.
    pub(crate) fn headroom(&self) -> usize {
        match self {
            Self::Tun(_) => HEADROOM,
            Self::Userspace(_) => 0,
        }
    }

    /// Whether reads and writes use TUN offloads (segments of up to 64 KiB).
    pub(crate) fn offload(&self) -> bool {
        match self {
            Self::Tun(tun) => tun.tcp_gso(),
            Self::Userspace(_) => false,
        }
    }

    /// Takes a read if one is queued (`WouldBlock` if not).
    pub(crate) fn try_recv_batch(&mut self, batch: &mut TunReadBatch) -> io::Result<()> {
        batch.count = 0;
        let (raw, slots, sizes) = batch.parts();
        let count = match self {
            Self::Tun(tun) => tun.recv_multiple(raw, slots, sizes, 0)?,
            // The stack hands over one packet at a time.
            Self::Userspace(stack) => {
                sizes[0] = match stack.try_recv() {
                    Ok(Some(packet)) => copy_packet(&packet, &mut slots[0])?,
                    Ok(None) => return Err(io::ErrorKind::WouldBlock.into()),
                    Err(_) => return Err(stopped()),
                };
                1
            }
        };
        batch.count = count;
        Ok(())
    }

    /// Writes the queued packets (merged where offloads allow) and empties
    /// the batch. A packet the device refuses is dropped; the error returned
    /// is the last one.
    pub(crate) fn send_batch(&self, batch: &mut TunWriteBatch) -> io::Result<()> {
        let mut result = Ok(());
        match self {
            // With offloads every write starts with a virtio-net header.
            Self::Tun(tun) if tun.tcp_gso() => {
                let (buffers, plan) = batch.merged();
                let mut gather = GatherList::<MAX_PIECES>::new();
                for &head in &plan.heads {
                    let sent = match gather.of(plan.pieces(buffers, head)) {
                        [] => continue,
                        [lone] => tun.send(lone),
                        pieces => tun.send_vectored(pieces),
                    };
                    if let Err(error) = sent {
                        result = Err(error);
                    }
                }
            }
            Self::Tun(tun) => {
                let headroom = batch.headroom();
                for buffer in batch.queued() {
                    if let Err(error) = tun.send(&buffer[headroom..]) {
                        result = Err(error);
                    }
                }
            }
            // The stack takes each buffer as it is (no headroom, no copy);
            // it never makes the loop wait: a packet it has no room for is
            // dropped, as a full TUN queue drops.
            Self::Userspace(stack) => {
                let headroom = batch.headroom();
                for buffer in batch.queued() {
                    let mut packet = std::mem::take(buffer);
                    if headroom > 0 {
                        packet.drain(..headroom);
                    }
                    if stack.send(packet).is_err() {
                        result = Err(stopped());
                    }
                }
            }
        }
        batch.clear();
        result
    }

    /// Hands the trusted names to the userspace stack (its SOCKS5 proxy
    /// resolves `NAME.agent.internal` in-process). The TUN needs nothing:
    /// the host's resolver and the responder serve it.
    pub(crate) fn publish_names(&self, names: &NameTable) {
        if let Self::Userspace(stack) = self {
            stack.publish_names(names);
        }
    }

    /// Hands the userspace stack the IPv4 addresses `node` routes to the
    /// trusted peers of `trust`, by name (the SOCKS5 proxy and the forwards
    /// accept only those, and resolve names to them). The TUN needs
    /// nothing: the kernel routes the /10.
    pub(crate) fn publish_ipv4_routes(&self, node: &Node, trust: &TrustStore) {
        if let Self::Userspace(stack) = self {
            let routes: BTreeMap<String, Ipv4Addr> = trust
                .peers
                .iter()
                .filter(|entry| entry.state == TrustState::Trusted)
                .filter_map(|entry| match node.peer_ipv4_route(&entry.id) {
                    Some(Ipv4Route::Routed(address)) => {
                        Some((entry.name.to_ascii_lowercase(), address))
                    }
                    _ => None,
                })
                .collect();
            stack.publish_ipv4_routes(&routes);
        }
    }

    /// The userspace stack's status, if this is it.
    pub(crate) fn userspace_status(&self) -> Option<UserspaceStatus> {
        match self {
            Self::Tun(_) => None,
            Self::Userspace(stack) => Some(stack.status()),
        }
    }
}

fn copy_packet(packet: &[u8], buf: &mut [u8]) -> io::Result<usize> {
    let target = buf.get_mut(..packet.len()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "packet larger than the buffer")
    })?;
    target.copy_from_slice(packet);
    Ok(packet.len())
}
