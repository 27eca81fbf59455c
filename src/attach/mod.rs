//! `agentnet attach`: a network namespace (a container) gets a veth pair to
//! the daemon's namespace, an address from this node's prefix (DESIGN.md
//! §1: `::2` … `::fffe`), and a route for the overlay `/48` through the host.
//! When the agent has IPv4 on the overlay, the namespace also gets an IPv4
//! address from [`IPV4_BLOCK`] and a route for `100.64.0.0/10` through the
//! host, which masquerades its packets into the TUN as the agent's own
//! IPv4 address (the node sends IPv4 only from that address, and peers
//! accept IPv4 only from it).
//!
//! The plumbing, for attachment addresses `A` in network `N/48` and `X`
//! in [`IPV4_BLOCK`]:
//!
//! ```text
//! daemon's namespace                      attached namespace
//!   HOST (veth) fe80::1/64  <---------->  IFACE (veth) A/128
//!               198.19.0.1/32                          X/32
//!   route A/128 dev HOST                  route N/48 via fe80::1 dev IFACE
//!   route X/32 dev HOST                   route 100.64.0.0/10 via 198.19.0.1
//!   net.ipv6.conf.all.forwarding=1              dev IFACE onlink
//!   net.ipv4.ip_forward=1
//!   N/48 and 100.64.0.0/10 dev agentnet0 (the TUN, from `up`)
//!   masquerade X -> the agent's IPv4 address on the way into the TUN
//! ```
//!
//! The IPv4 block is `198.19.0.0/24`, in the benchmarking range of RFC 2544
//! (`198.18.0.0/15`, never routed on the internet): not the overlay's
//! `100.64.0.0/10`, not the link-local `169.254.0.0/16` that clouds use for
//! their metadata service (169.254.169.254) and that routers must not
//! forward, not the RFC 1918 ranges LANs, Docker and Kubernetes use, and
//! away from `198.18.0.0/16`, which some VPN clients use for fake-IP DNS.
//! The addresses never leave the host: every packet is masqueraded. A peer
//! reaches a service inside an attached namespace over IPv4 through
//! `agentnet serve --tcp PORT X:PORT` on the host.
//!
//! The host forwards between the veth and the TUN; no proxy NDP is needed
//! because the host routes `A/128` onto the veth and the attached side
//! routes the overlay to the host's fixed link-local address. A packet
//! from `A` leaves through the TUN, and a peer accepts it as this node's
//! (its source lies in our node prefix) under that peer's policy for us.
//!
//! The commands are run with iproute2 (`ip`), the way `wg-quick` does; the
//! attached side's ones from a thread that entered the target namespace
//! (`setns`), so a namespace known only by a PID (a container) works too.
//! Forwarding is one switch for every interface on Linux, so before it is
//! turned on an nftables table ([`crate::attach::filter`]) confines it to
//! the TUN and the attachments' veths, each veth admitting only its own
//! address as source.
//! What is attached is recorded in `STATE_DIR/attachments.json`
//! ([`crate::state::attachments`]), which the daemon reads to keep names in
//! the attached namespaces up to date. The daemon's user can rewrite that
//! file, so root checks every name and switch in it against the naming
//! scheme and the kernel before acting on it ([`crate::attach::verify`]).

#![forbid(unsafe_code)]

pub mod filter;
pub mod verify;

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use self::filter::{FilterError, FilteredVeth};
pub use self::verify::Expected;
use crate::core::address::{
    IPV4_NETWORK, IPV4_PREFIX_LEN, NETWORK_PREFIX_LEN, NetworkId, NodePrefix,
};
use crate::state::StateError;
pub use crate::state::attachments::{ATTACHMENTS_FILE, AttachTarget, Attachment, Attachments};
use crate::sys::netns::NetnsId;
use crate::sys::programs::system_program;

/// Default name of the interface inside the attached namespace.
pub const DEFAULT_INTERFACE: &str = "agentnet0";
/// The host side's link-local address: the attached side's next hop.
pub const HOST_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Lowest interface ID an attachment may use (`::1` is the agent).
pub const FIRST_ATTACHMENT_ID: u16 = 2;
/// Highest interface ID an attachment may use.
pub const LAST_ATTACHMENT_ID: u16 = 0xfffe;
/// The IPv6 forwarding switch of the daemon's namespace.
const FORWARDING_SYSCTL: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
/// The IPv4 forwarding switch of the daemon's namespace.
const FORWARDING4_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
/// Every sysctl `detach` may turn back off: the record says only which of
/// these `attach` turned on (two booleans), never a path.
pub const FORWARDING_SWITCHES: [&str; 2] = [FORWARDING_SYSCTL, FORWARDING4_SYSCTL];
/// The block attachments' IPv4 addresses come from (see the module docs).
pub const IPV4_BLOCK: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// Its prefix length: 253 attachments with IPv4 per host.
pub const IPV4_BLOCK_LEN: u8 = 24;
/// The host side's IPv4 address on every attachment veth: the attached
/// side's next hop for `100.64.0.0/10`.
pub const HOST_IPV4_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// Errors attaching or detaching a namespace.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The forwarding filter could not be installed or removed.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The target namespace cannot be opened.
    #[error("cannot open the network namespace of {target}: {source}")]
    NoSuchNamespace {
        /// The target as given.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The target is the daemon's own namespace.
    #[error("{0} is the daemon's own network namespace: nothing to attach")]
    OwnNamespace(String),
    /// The target is attached already.
    #[error("{target} is attached already, as {address}; `agentnet detach` it first")]
    AlreadyAttached {
        /// The target as given.
        target: String,
        /// Its address.
        address: Ipv6Addr,
    },
    /// The address asked for is not one an attachment can have.
    #[error(
        "bad attachment address `{0}`: give `::N` with N from 2 to fffe, or a full address in this node's prefix"
    )]
    BadAddress(String),
    /// Another attachment has the address.
    #[error("{address} is attached already (to {target})")]
    AddressTaken {
        /// The address.
        address: Ipv6Addr,
        /// Who has it.
        target: String,
    },
    /// Every address of the node prefix is in use.
    #[error("no free address is left in this node's prefix")]
    NoFreeAddress,
    /// Every IPv4 address of [`IPV4_BLOCK`] is in use on this host.
    #[error(
        "no free IPv4 address is left in 198.19.0.0/24 for attachments on this host; \
         detach one, or turn IPv4 off (`up --no-ipv4`)"
    )]
    NoFreeAddress4,
    /// Nothing matches what `detach` was given.
    #[error("nothing is attached as {0}")]
    NotAttached(String),
    /// An entry of `attachments.json` names an interface agentnet did not
    /// make (the daemon's user can rewrite the file; see [`verify`]).
    #[error(
        "{}: {entry}: {problem}; refusing to act on it. The daemon's user can rewrite this \
         file: check what changed, correct or remove the entry (compare `ip -d link`), \
         then run the command again",
        file.display()
    )]
    Untrusted {
        /// The record.
        file: PathBuf,
        /// Which entry.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The running daemon reports a TUN that is not this agent's.
    #[error(
        "the daemon reports {interface} as its TUN, but {problem}; refusing to route \
         attachments through it (restart it: `agentnet down`, then `sudo agentnet up`)"
    )]
    NotOurTun {
        /// The interface it reports.
        interface: String,
        /// Why it is not this agent's TUN.
        problem: String,
    },
    /// An `ip` command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it said, or why it did not run.
        message: String,
    },
    /// Another system call failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Where the daemon publishes the names of one attached namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentNames {
    /// The attached namespace.
    pub target: AttachTarget,
    /// Its address.
    pub address: Ipv6Addr,
    /// The hosts file that lists the trusted names for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// Why it has no hosts file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl AttachTarget {
    /// The identity of the namespace.
    pub fn netns_id(&self) -> Result<NetnsId, AttachError> {
        self.netns_path()
            .and_then(|path| NetnsId::of_path(&path))
            .map_err(|source| AttachError::NoSuchNamespace {
                target: self.to_string(),
                source,
            })
    }

    /// How `ip link ... netns X` names it.
    fn ip_netns_arg(&self) -> String {
        match self {
            Self::Netns(name) => name.clone(),
            Self::Pid(pid) => pid.to_string(),
        }
    }
}

impl Attachment {
    /// Whether the attached namespace is still the one recorded.
    pub fn namespace_is_current(&self) -> bool {
        self.target.netns_id().is_ok_and(|id| id == self.netns)
    }
}

/// The plumbing side of the record (its file is [`crate::state::attachments`]):
/// the forwarding filter and free addresses.
impl Attachments {
    /// Installs the forwarding filter for these attachments on `tun` (the
    /// daemon at `up`, still root, on the TUN it made for the agent of
    /// `prefix`: from then on nothing forwarded by the host, such as a
    /// Docker bridge masqueraded by Docker's own rules, reaches the TUN
    /// except from an attachment). Entries that fail
    /// [`verify::verify_entry`] for that agent are left out with a warning
    /// rather than failing: without the filter the TUN would take whatever
    /// the host forwards.
    pub fn install_filter_on(&self, tun: &str, prefix: NodePrefix) -> Result<(), AttachError> {
        let expected = Expected {
            file: PathBuf::from(ATTACHMENTS_FILE),
            prefix,
            daemon_tun: None,
        };
        let veths: Vec<FilteredVeth> = (0..self.attached.len())
            .filter_map(|index| match self.filtered_veth(&expected, index) {
                Ok(veth) => Some(veth),
                Err(error) => {
                    tracing::warn!(%error, "attachment left out of the forwarding filter");
                    None
                }
            })
            .collect();
        Ok(filter::install(tun, &veths)?)
    }

    /// Entry `index` as the filter sees it, once checked.
    fn filtered_veth(
        &self,
        expected: &Expected,
        index: usize,
    ) -> Result<FilteredVeth, AttachError> {
        let a = &self.attached[index];
        verify::verify_entry(expected, index, a)?;
        Ok(FilteredVeth {
            host_interface: a.host_interface.clone(),
            address: a.address,
            address4: a.address4,
        })
    }

    /// Installs the forwarding filter for these attachments and `planned`
    /// (one about to be made), or, with none left and `forwarding_off`
    /// (this record turned forwarding on and the last detach turns it
    /// off), removes it. See [`crate::attach::filter`]. The TUN and every
    /// entry are checked first ([`verify`]): a rule naming another
    /// interface would let it forward into the overlay.
    pub fn apply_filter(
        &self,
        expected: &Expected,
        planned: Option<FilteredVeth>,
        forwarding_off: bool,
    ) -> Result<(), AttachError> {
        if self.attached.is_empty() && planned.is_none() && forwarding_off {
            return Ok(filter::remove()?);
        }
        let tun = verify::verify_tun(expected, self.tun_interface.as_deref())?;
        let mut veths = (0..self.attached.len())
            .map(|index| self.filtered_veth(expected, index))
            .collect::<Result<Vec<_>, _>>()?;
        veths.extend(planned);
        Ok(filter::install(&tun, &veths)?)
    }

    /// The lowest free interface ID.
    pub fn free_address(&self, prefix: NodePrefix) -> Result<Ipv6Addr, AttachError> {
        (FIRST_ATTACHMENT_ID..=LAST_ATTACHMENT_ID)
            .map(|id| prefix.address(id))
            .find(|address| self.attached.iter().all(|a| a.address != *address))
            .ok_or(AttachError::NoFreeAddress)
    }

    /// The lowest IPv4 address of [`IPV4_BLOCK`] that no attachment has
    /// and `in_use` (e.g. a route of another agent's attachment on this
    /// host) does not rule out.
    pub fn free_address4(
        &self,
        in_use: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Ipv4Addr, AttachError> {
        let base = u32::from(IPV4_BLOCK);
        let size = 1u32 << (32 - u32::from(IPV4_BLOCK_LEN));
        (2..size - 1)
            .map(|host| Ipv4Addr::from(base | host))
            .filter(|address| *address != HOST_IPV4_GATEWAY)
            .find(|address| {
                self.attached.iter().all(|a| a.address4 != Some(*address)) && !in_use(*address)
            })
            .ok_or(AttachError::NoFreeAddress4)
    }
}

/// Parses `--address`: `::N` (N from 2 to fffe) or a full address inside
/// `prefix` with such an interface ID.
pub fn parse_address(text: &str, prefix: NodePrefix) -> Result<Ipv6Addr, AttachError> {
    let bad = || AttachError::BadAddress(text.to_string());
    let address: Ipv6Addr = text.trim().parse().map_err(|_| bad())?;
    let segments = address.segments();
    let id = segments[7];
    let is_suffix = segments[..7].iter().all(|s| *s == 0);
    if !(is_suffix || prefix.contains(&address))
        || !(FIRST_ATTACHMENT_ID..=LAST_ATTACHMENT_ID).contains(&id)
    {
        return Err(bad());
    }
    Ok(prefix.address(id))
}

/// The host-side veth name for an attachment: `an` + the first 32 bits of
/// the node ID + `-` + the interface ID, so that agents of several
/// networks in one namespace never pick the same name (at most 15 bytes).
pub fn host_interface_name(address: Ipv6Addr) -> String {
    let s = address.segments();
    format!("an{:04x}{:04x}-{:x}", s[3], s[4], s[7])
}

/// What [`attach`] needs.
#[derive(Debug, Clone)]
pub struct AttachPlan {
    /// The namespace.
    pub target: AttachTarget,
    /// Its identity, checked by the caller.
    pub netns: NetnsId,
    /// The address to give it.
    pub address: Ipv6Addr,
    /// The IPv4 address to give it, if the agent has IPv4 on.
    pub address4: Option<Ipv4Addr>,
    /// The overlay network (its `/48` is routed through the host).
    pub network: NetworkId,
    /// The interface name inside the namespace.
    pub interface: String,
    /// MTU of the veth pair: the tunnel MTU.
    pub mtu: u16,
}

/// Whether `attach` turned forwarding on, per family (so the last
/// `detach` turns it off again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnabledForwarding {
    /// IPv6 forwarding was off.
    pub ipv6: bool,
    /// IPv4 forwarding was off.
    pub ipv4: bool,
}

/// Builds the veth pair, addresses and routes of `plan` (see the module
/// docs) and turns on forwarding. Returns the attachment and which
/// forwarding was off before. On failure nothing stays behind.
pub fn attach(plan: &AttachPlan) -> Result<(Attachment, EnabledForwarding), AttachError> {
    let host = host_interface_name(plan.address);
    let mtu = plan.mtu.to_string();
    let target = plan.target.ip_netns_arg();
    ip(&[
        "link",
        "add",
        &host,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        &plan.interface,
        "mtu",
        &mtu,
        "netns",
        &target,
    ])?;
    let attachment = Attachment {
        target: plan.target.clone(),
        netns: plan.netns,
        address: plan.address,
        address4: plan.address4,
        host_interface: host.clone(),
        interface: plan.interface.clone(),
    };
    match configure(plan, &attachment) {
        Ok(enabled_forwarding) => Ok((attachment, enabled_forwarding)),
        Err(error) => {
            // Deleting one end deletes the pair, and the routes with it.
            if let Err(cleanup) = ip(&["link", "del", &host]) {
                tracing::warn!(%cleanup, "cannot remove the half-built attachment");
            }
            Err(error)
        }
    }
}

fn configure(plan: &AttachPlan, attachment: &Attachment) -> Result<EnabledForwarding, AttachError> {
    let host = attachment.host_interface.as_str();
    let address = format!("{}/128", plan.address);
    let link_local = format!("{HOST_LINK_LOCAL}/64");
    let address4 = plan.address4.map(|a| format!("{a}/32"));
    // Host side: a fixed next hop for the namespace, and the route to it.
    set_sysctl(&format!("/proc/sys/net/ipv6/conf/{host}/accept_ra"), "0");
    ip(&["-6", "addr", "add", &link_local, "dev", host, "nodad"])?;
    if address4.is_some() {
        let gateway = format!("{HOST_IPV4_GATEWAY}/32");
        ip(&["-4", "addr", "add", &gateway, "dev", host])?;
    }
    ip(&["link", "set", host, "up"])?;
    ip(&["-6", "route", "replace", &address, "dev", host])?;
    if let Some(address4) = &address4 {
        // `add`, not `replace`: another agent's attachment may have it.
        ip(&["-4", "route", "add", address4, "dev", host])?;
    }
    let mut enabled = EnabledForwarding {
        ipv6: enable_forwarding(FORWARDING_SYSCTL)?,
        ipv4: false,
    };
    if address4.is_some() {
        enabled.ipv4 = enable_forwarding(FORWARDING4_SYSCTL)?;
    }

    // Inside: the address, and the overlay through the host.
    let network = format!("{}/{NETWORK_PREFIX_LEN}", plan.network.prefix());
    let gateway = HOST_LINK_LOCAL.to_string();
    let inside = plan.interface.as_str();
    let path = plan
        .target
        .netns_path()
        .map_err(|source| AttachError::NoSuchNamespace {
            target: plan.target.to_string(),
            source,
        })?;
    in_netns(&path, plan.netns, || {
        // Docker turns IPv6 off in containers on IPv4-only networks; this
        // thread's /proc/sys/net is the target's.
        set_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{inside}/disable_ipv6"),
            "0",
        );
        ip(&["link", "set", "lo", "up"])?;
        ip(&["-6", "addr", "add", &address, "dev", inside, "nodad"])?;
        if let Some(address4) = &address4 {
            ip(&["-4", "addr", "add", address4, "dev", inside])?;
        }
        ip(&["link", "set", inside, "up"])?;
        ip(&[
            "-6", "route", "replace", &network, "via", &gateway, "dev", inside, "onlink",
        ])?;
        if address4.is_some() {
            let overlay4 = format!("{IPV4_NETWORK}/{IPV4_PREFIX_LEN}");
            let gateway4 = HOST_IPV4_GATEWAY.to_string();
            ip(&[
                "-4", "route", "replace", &overlay4, "via", &gateway4, "dev", inside, "onlink",
            ])?;
        }
        Ok(())
    })?;
    Ok(enabled)
}

/// Removes the veth pair of entry `index` of the record (and so its
/// addresses and routes), once [`verify::verify_entry`] showed it is one
/// `attach` made. A pair that is gone already (its namespace was deleted)
/// is no error.
pub fn detach(
    expected: &Expected,
    index: usize,
    attachment: &Attachment,
) -> Result<(), AttachError> {
    if !verify::verify_entry(expected, index, attachment)? {
        return Ok(());
    }
    ip(&["link", "del", &attachment.host_interface]).map(drop)
}

/// Whether a link exists in this namespace.
pub fn link_exists(name: &str) -> bool {
    // Not /sys/class/net: sysfs shows the namespace it was mounted in.
    ip(&["link", "show", "dev", name]).is_ok()
}

/// Turns the forwarding switch `sysctl` on; returns whether it was off.
fn enable_forwarding(sysctl: &str) -> Result<bool, AttachError> {
    let current = std::fs::read_to_string(sysctl).map_err(|source| AttachError::Io {
        action: format!("read {sysctl}"),
        source,
    })?;
    if current.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(sysctl, "1").map_err(|source| AttachError::Io {
        action: format!("enable forwarding ({sysctl})"),
        source,
    })?;
    Ok(true)
}

/// Whether this namespace forwards IPv4 or IPv6 (whoever turned it on:
/// `attach`, Docker, a router config). While it does, the forwarding
/// filter must stay, or other interfaces could forward into the TUN.
pub fn forwarding_on() -> bool {
    [FORWARDING_SYSCTL, FORWARDING4_SYSCTL]
        .iter()
        .any(|sysctl| std::fs::read_to_string(sysctl).is_ok_and(|value| value.trim() != "0"))
}

/// The switches of [`FORWARDING_SWITCHES`] that `enabled` says `attach`
/// turned on.
pub fn forwarding_switches(enabled: EnabledForwarding) -> impl Iterator<Item = &'static str> {
    [enabled.ipv6, enabled.ipv4]
        .into_iter()
        .zip(FORWARDING_SWITCHES)
        .filter_map(|(on, sysctl)| on.then_some(sysctl))
}

/// Turns forwarding off again (after the last attachment that needed it),
/// for the families `enabled` says `attach` turned on.
pub fn restore_forwarding(enabled: EnabledForwarding) -> Result<(), AttachError> {
    for sysctl in forwarding_switches(enabled) {
        std::fs::write(sysctl, "0").map_err(|source| AttachError::Io {
            action: format!("disable forwarding ({sysctl})"),
            source,
        })?;
    }
    Ok(())
}

/// Whether the host has a route for exactly `address/32` (another agent's
/// attachment, or anything else that uses it).
pub fn host_route4_exists(address: Ipv4Addr) -> bool {
    let target = format!("{address}/32");
    ip(&["-4", "route", "show", "exact", &target]).is_ok_and(|out| !out.trim().is_empty())
}

fn set_sysctl(path: &str, value: &str) {
    if let Err(error) = std::fs::write(path, value) {
        tracing::debug!(%error, path, "cannot set sysctl");
    }
}

/// Runs `work` on a thread that entered the network namespace at `path`
/// (checked to still be `expected`); processes it starts live there too.
fn in_netns<T: Send>(
    path: &Path,
    expected: NetnsId,
    work: impl FnOnce() -> Result<T, AttachError> + Send,
) -> Result<T, AttachError> {
    let io_error = |action: &str, source: io::Error| AttachError::Io {
        action: format!("{action} {}", path.display()),
        source,
    };
    let file = File::open(path).map_err(|e| io_error("open", e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread changes namespace; it ends with `work`.
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io_error("enter", io::Error::from(e)))?;
                if NetnsId::current().map_err(|e| io_error("identify", e))? != expected {
                    return Err(io_error(
                        "enter",
                        io::Error::other("the namespace changed since it was checked"),
                    ));
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(AttachError::Io {
                    action: "configure the namespace".into(),
                    source: io::Error::other("the worker thread panicked"),
                })
            })
    })
}

/// Runs `ip ARGS` and requires success.
fn ip(args: &[&str]) -> Result<String, AttachError> {
    let command = format!("ip {}", args.join(" "));
    let output = system_program("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AttachError::Command {
            command: command.clone(),
            message: format!("{e} (attach needs iproute2)"),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(AttachError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;

    /// The node prefix the attachment tests use.
    pub(super) fn prefix() -> NodePrefix {
        let id = Identity::from_secret_bytes(&[5; 32])
            .expect("key")
            .agent_id();
        NodePrefix::of_agent(NetworkId::from_name("agentnet"), &id)
    }

    #[test]
    fn addresses_are_suffixes_or_inside_the_node_prefix() {
        let prefix = prefix();
        assert_eq!(
            parse_address("::2", prefix).expect("::2"),
            prefix.address(2)
        );
        assert_eq!(
            parse_address("::fffe", prefix).expect("::fffe"),
            prefix.address(0xfffe)
        );
        let full = prefix.address(0x42).to_string();
        assert_eq!(
            parse_address(&full, prefix).expect("full"),
            prefix.address(0x42)
        );
        for bad in ["::1", "::0", "::ffff", "fd00::2", "2", "nonsense"] {
            assert!(parse_address(bad, prefix).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_address_is_the_lowest_unused() {
        let prefix = prefix();
        let mut record = Attachments::default();
        assert_eq!(
            record.free_address(prefix).expect("free"),
            prefix.address(2)
        );
        for id in [2, 3, 5] {
            record.attached.push(Attachment {
                target: AttachTarget::Pid(u32::from(id)),
                netns: NetnsId {
                    dev: 0,
                    ino: u64::from(id),
                },
                address: prefix.address(id),
                address4: None,
                host_interface: host_interface_name(prefix.address(id)),
                interface: DEFAULT_INTERFACE.into(),
            });
        }
        assert_eq!(
            record.free_address(prefix).expect("free"),
            prefix.address(4)
        );
    }

    #[test]
    fn host_interface_names_fit_the_kernel_limit() {
        let name = host_interface_name(prefix().address(0xfffe));
        assert!(name.len() <= 15, "{name}");
        assert!(name.starts_with("an") && name.ends_with("-fffe"), "{name}");
    }

    #[test]
    fn ipv4_addresses_come_from_the_block_skip_the_gateway_and_used_ones() {
        let mut record = Attachments::default();
        let first = record.free_address4(|_| false).expect("free");
        assert_eq!(first, Ipv4Addr::new(198, 19, 0, 2));
        assert!(!crate::core::address::in_ipv4_overlay(first));
        record.attached.push(Attachment {
            target: AttachTarget::Pid(1),
            netns: NetnsId { dev: 0, ino: 1 },
            address: prefix().address(2),
            address4: Some(first),
            host_interface: host_interface_name(prefix().address(2)),
            interface: DEFAULT_INTERFACE.into(),
        });
        // 198.19.0.3 is routed already (another agent's attachment).
        let taken = Ipv4Addr::new(198, 19, 0, 3);
        assert_eq!(
            record.free_address4(|a| a == taken).expect("free"),
            Ipv4Addr::new(198, 19, 0, 4)
        );
        assert!(matches!(
            record.free_address4(|_| true),
            Err(AttachError::NoFreeAddress4)
        ));
        let last = record
            .free_address4(|a| a.octets()[3] < 254)
            .expect("the last");
        assert_eq!(last, Ipv4Addr::new(198, 19, 0, 254));
    }
}
