//! The TUN interface: created with the agent address at prefix length 48 (so
//! the whole network routes into it) and the tunnel MTU; it disappears when
//! its file descriptor closes.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv6Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use tun_rs::{DeviceBuilder, SyncDevice};

use super::calls;
use crate::core::address::OverlayAddresses;
use crate::core::address::{IPV4_PREFIX_LEN, NETWORK_PREFIX_LEN};

/// Outer overhead per inner packet: IPv6 header 40 + UDP 8 + our transport
/// header 32 + relay envelope 12.
pub const TUNNEL_OVERHEAD: u16 = 92;
/// The smallest MTU IPv6 allows (RFC 8200).
pub const MIN_TUNNEL_MTU: u16 = 1280;
/// Underlay MTU assumed when no interface tells.
pub const FALLBACK_UNDERLAY_MTU: u16 = 1500;
/// Packets the kernel may queue towards the daemon.
const TX_QUEUE_LEN: u32 = 1000;
/// Default interface name.
pub const DEFAULT_INTERFACE: &str = "agentnet0";

/// Errors creating the TUN interface.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// IPv6 is disabled in this network namespace, so the overlay address
    /// cannot be assigned.
    #[error(
        "cannot set up TUN interface {interface}: IPv6 is disabled here (sysctl net.ipv6.conf.all.disable_ipv6 or .default.disable_ipv6 is 1); the overlay is IPv6, enable it with `sysctl -w net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0`"
    )]
    Ipv6Disabled {
        /// The interface name.
        interface: String,
    },
    /// The process may not create interfaces.
    #[error(
        "cannot create TUN interface {interface}: {source} (needs root or CAP_NET_ADMIN, and /dev/net/tun)"
    )]
    NotPermitted {
        /// The interface name.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The name is taken.
    #[error(
        "cannot create TUN interface {interface}: {source} (another agentnet in this network namespace? choose another name with --interface)"
    )]
    Busy {
        /// The interface name.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Anything else.
    #[error("cannot create TUN interface {interface}: {source}")]
    Other {
        /// The interface name.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The name is not a valid interface name.
    #[error("bad interface name `{0}`: use 1-15 characters, no `/`, spaces or `:`")]
    BadName(String),
    /// Another interface of this namespace already routes the network.
    #[error(
        "cannot set up TUN interface {interface}: {other} already holds {address} in this network's {network}, so another agent of this network runs in this network namespace; the kernel would send every overlay packet to one of the two. Run this agent in a namespace of its own (see Containers in the README), as `up --userspace`, or stop the other (`agentnet down` with its --state-dir)"
    )]
    NetworkInUse {
        /// The interface name asked for.
        interface: String,
        /// The interface that holds an address of the network.
        other: String,
        /// That address.
        address: std::net::Ipv6Addr,
        /// The network's prefix.
        network: String,
    },
}

/// Checks an interface name (Linux: 1-15 bytes, no `/`, whitespace or `:`).
pub fn validate_interface_name(name: &str) -> Result<(), TunError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(TunError::BadName(name.to_string()))
    }
}

/// The largest MTU of the up, non-loopback interfaces of this network
/// namespace, or 1500 if there is none.
pub fn underlay_mtu() -> u16 {
    let names: BTreeSet<String> = match getifaddrs() {
        Ok(interfaces) => interfaces
            .filter(|ifa| {
                ifa.flags.contains(InterfaceFlags::IFF_UP)
                    && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            })
            .map(|ifa| ifa.interface_name)
            .collect(),
        Err(errno) => {
            tracing::warn!(%errno, "cannot list interfaces; assuming underlay MTU {FALLBACK_UNDERLAY_MTU}");
            return FALLBACK_UNDERLAY_MTU;
        }
    };
    names
        .iter()
        .filter_map(|name| calls::interface_mtu(name).ok())
        .max()
        .map(|mtu| u16::try_from(mtu).unwrap_or(u16::MAX))
        .unwrap_or(FALLBACK_UNDERLAY_MTU)
}

/// The tunnel MTU for an underlay MTU: minus [`TUNNEL_OVERHEAD`], at least
/// [`MIN_TUNNEL_MTU`].
pub fn tunnel_mtu(underlay_mtu: u16) -> u16 {
    underlay_mtu
        .saturating_sub(TUNNEL_OVERHEAD)
        .max(MIN_TUNNEL_MTU)
}

/// Creates the TUN interface `name` with the agent address at `/48` (the
/// IPv6 network routes into it), the IPv4 address at `/10` when IPv4 is on
/// (`100.64.0.0/10` routes into it) and `mtu`, and brings it up. With `offload`, TCP segmentation offloads are asked for (see
/// [`super::tun_batch`]); a kernel that refuses them gets a plain TUN.
pub(crate) fn create(
    name: &str,
    addresses: OverlayAddresses,
    mtu: u16,
    offload: bool,
) -> Result<SyncDevice, TunError> {
    validate_interface_name(name)?;
    refuse_a_second_agent(name, addresses.v6)?;
    let classify = |source: io::Error| {
        let interface = name.to_string();
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) if ipv6_disabled() => {
                TunError::Ipv6Disabled { interface }
            }
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::NotPermitted { interface, source },
            Some(libc::ENOENT) if source.kind() == io::ErrorKind::NotFound => {
                TunError::NotPermitted { interface, source }
            }
            Some(libc::EBUSY) => TunError::Busy { interface, source },
            _ => TunError::Other { interface, source },
        }
    };
    let build = |offload: bool| {
        let builder = DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .ipv6(addresses.v6, NETWORK_PREFIX_LEN);
        let builder = match addresses.v4 {
            Some(v4) => builder.ipv4(v4, IPV4_PREFIX_LEN, None),
            None => builder,
        };
        builder
            // The kernel queues packets here while the daemon is busy; the
            // tun default (500) drops bursts a single-threaded loop can absorb.
            .tx_queue_len(TX_QUEUE_LEN)
            .offload(offload)
            // Up only after the IPv6 knobs below are set, so the kernel never
            // starts router solicitation on an overlay that has no routers.
            .enable(false)
            .build_sync()
    };
    let device = match build(offload) {
        Ok(device) => device,
        Err(error) if offload && error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(%error, "this kernel refuses TUN offloads; one packet per read and write");
            build(false).map_err(classify)?
        }
        Err(error) => return Err(classify(error)),
    };
    // Read and written by the datapath thread, which waits in its own
    // `epoll`: a read finds the queue empty rather than blocking.
    device.set_nonblocking(true).map_err(classify)?;
    quiet_ipv6_autoconf(name);
    device.enabled(true).map_err(classify)?;
    Ok(device)
}

/// Refuses when another interface of this namespace holds an address in the
/// network of `agent_address` (its `/48`): two agents of one network in one
/// namespace would both route the network, and the kernel sends every
/// overlay packet to the interface it finds first.
fn refuse_a_second_agent(interface: &str, agent_address: Ipv6Addr) -> Result<(), TunError> {
    let Ok(addresses) = getifaddrs() else {
        return Ok(());
    };
    let holders = addresses.filter_map(|ifa| {
        let address = ifa.address?.as_sockaddr_in6()?.ip();
        Some((ifa.interface_name, address))
    });
    match other_holder(interface, agent_address, holders) {
        Some((other, address)) => Err(TunError::NetworkInUse {
            interface: interface.to_string(),
            other,
            address,
            network: format!("{}/{NETWORK_PREFIX_LEN}", network_of(agent_address)),
        }),
        None => Ok(()),
    }
}

/// The first of `holders` (interface, address) other than `interface` whose
/// address is in the network of `agent_address`.
fn other_holder(
    interface: &str,
    agent_address: Ipv6Addr,
    holders: impl IntoIterator<Item = (String, Ipv6Addr)>,
) -> Option<(String, Ipv6Addr)> {
    let network = network_of(agent_address);
    holders
        .into_iter()
        .find(|(name, address)| name != interface && network_of(*address) == network)
}

/// The first 48 bits of an address.
fn network_of(address: Ipv6Addr) -> Ipv6Addr {
    let kept = u128::MAX << (128 - u32::from(NETWORK_PREFIX_LEN));
    Ipv6Addr::from(u128::from(address) & kept)
}

/// Whether IPv6 is switched off in this network namespace (then assigning
/// the overlay address fails with a permission error that would mislead).
fn ipv6_disabled() -> bool {
    ["all", "default"].iter().any(|scope| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"))
            .is_ok_and(|value| value.trim() == "1")
    })
}

/// Turns off IPv6 router solicitation and autoconfiguration on the overlay
/// interface: there are no routers there, and such packets would only be
/// counted as unroutable. Best effort: a missing knob changes nothing else.
fn quiet_ipv6_autoconf(interface: &str) {
    for (knob, value) in [
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("router_solicitations", "0"),
        ("dad_transmits", "0"),
    ] {
        let path = format!("/proc/sys/net/ipv6/conf/{interface}/{knob}");
        if let Err(error) = std::fs::write(&path, value) {
            tracing::debug!(%error, path, "cannot set IPv6 knob");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_mtu_subtracts_overhead_and_respects_ipv6_minimum() {
        assert_eq!(tunnel_mtu(1500), 1408);
        assert_eq!(tunnel_mtu(9000), 8908);
        assert_eq!(tunnel_mtu(1280), 1280);
        assert_eq!(tunnel_mtu(0), 1280);
    }

    #[test]
    fn underlay_mtu_is_at_least_plausible() {
        assert!(underlay_mtu() >= 576);
    }

    #[test]
    fn a_second_interface_in_the_same_network_is_found() {
        let ours: Ipv6Addr = "fd40:37b1:4f8d:d534:750b:79a6:3554:1".parse().expect("ip");
        let other_agent: Ipv6Addr = "fd40:37b1:4f8d:11:22:33:44:1".parse().expect("ip");
        let other_network: Ipv6Addr = "fd40:37b1:4f8e::1".parse().expect("ip");
        let holders = |list: &[(&str, Ipv6Addr)]| {
            list.iter()
                .map(|(name, address)| (name.to_string(), *address))
                .collect::<Vec<_>>()
        };
        // Our own interface (a restart's leftover) and other networks pass.
        let clear = holders(&[("an-b", ours), ("eth0", other_network)]);
        assert_eq!(other_holder("an-b", ours, clear), None);
        let taken = holders(&[("eth0", other_network), ("an-a", other_agent)]);
        assert_eq!(
            other_holder("an-b", ours, taken),
            Some(("an-a".to_string(), other_agent))
        );
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(validate_interface_name("agentnet0").is_ok());
        assert!(validate_interface_name("a-1.b").is_ok());
        for bad in ["", "x/y", "a b", "a:1", &"x".repeat(16), ".."] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
    }
}
