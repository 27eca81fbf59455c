//! What root checks before it acts on `attachments.json`.
//!
//! The record sits in the state directory, which belongs to the daemon's
//! user after `up`: that user can rewrite it (root opens it without
//! following links, see [`crate::sys::nofollow`], but its contents are the
//! writer's). `attach` and `detach` run as root and delete interfaces,
//! install nftables rules and reset forwarding from it, so nothing in it is
//! acted on merely because it says so:
//!
//! - an entry's host-side veth must have the name [`host_interface_name`]
//!   gives its address, and that address must be an attachment address of
//!   this agent's node prefix ([`check_entry`]); an interface of that name
//!   that exists must be a veth whose peer is in another namespace — the
//!   recorded one, where it still exists, matched by interface index from
//!   inside it ([`verify_entry`]);
//! - the TUN must be a TUN device that carries this agent's address
//!   ([`verify_tun`]). A recorded name that is no interface now is kept (the
//!   daemon is down and its TUN went with it; rules naming it match no
//!   packet, and `up` reinstalls the filter on the TUN it creates);
//! - forwarding is reset only through [`super::FORWARDING_SWITCHES`]: the
//!   record holds two booleans, never a path.
//!
//! The kernel is the ground truth: making a veth, a TUN or an address needs
//! `CAP_NET_ADMIN`, which the daemon's user keeps only for
//! systemd-resolved (see `agent::privilege`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    AttachError, Attachment, FIRST_ATTACHMENT_ID, HOST_IPV4_GATEWAY, IPV4_BLOCK, IPV4_BLOCK_LEN,
    LAST_ATTACHMENT_ID, filter, host_interface_name, in_netns, ip,
};
use crate::core::address::NodePrefix;

/// What root checks the record against.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The record's path, named in errors.
    pub file: PathBuf,
    /// This agent's node prefix (from its key and network).
    pub prefix: NodePrefix,
    /// The TUN the running daemon reports, if one answers: preferred to
    /// the record's, and it must pass the same check (the daemon runs as
    /// the same user that can rewrite the file).
    pub daemon_tun: Option<String>,
}

/// One link as `ip -j -d addr show` prints it: the fields the checks read.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Link {
    /// Its index in its namespace.
    ifindex: u32,
    /// Its name.
    #[serde(default)]
    ifname: String,
    /// A veth's peer index (in the peer's namespace).
    #[serde(default)]
    link_index: Option<u32>,
    /// Present when the peer lives in another namespace.
    #[serde(default)]
    link_netnsid: Option<serde_json::Value>,
    /// `loopback`, `ether`, `none` (a TUN)…
    #[serde(default)]
    link_type: Option<String>,
    /// The driver (`veth`, `tun`), if it has one.
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
    /// Its addresses.
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: Option<String>,
}

impl Link {
    /// The driver, or the link type for links without one.
    fn kind(&self) -> &str {
        self.linkinfo
            .as_ref()
            .and_then(|info| info.info_kind.as_deref())
            .or(self.link_type.as_deref())
            .unwrap_or("unknown")
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addr_info
            .iter()
            .filter_map(|a| a.local.as_deref()?.parse().ok())
    }
}

/// Parses the JSON of `ip -j ... show`.
pub(super) fn parse_links(json: &str) -> Result<Vec<Link>, String> {
    serde_json::from_str(json).map_err(|e| format!("cannot read `ip -j` output: {e}"))
}

/// Why `attachment` cannot be one that `attach` made for `prefix`, if it
/// cannot: its address must be an attachment address of the prefix, its
/// host-side name the one [`host_interface_name`] gives that address, and
/// its IPv4 address one of [`IPV4_BLOCK`]'s.
pub fn check_entry(attachment: &Attachment, prefix: NodePrefix) -> Result<(), String> {
    let address = attachment.address;
    let id = address.segments()[7];
    if !prefix.contains(&address) || !(FIRST_ATTACHMENT_ID..=LAST_ATTACHMENT_ID).contains(&id) {
        return Err(format!(
            "address {address} is not an attachment address of this agent's prefix {prefix}"
        ));
    }
    let name = host_interface_name(address);
    if attachment.host_interface != name {
        return Err(format!(
            "host_interface {:?} is not the name attach gives {address} ({name})",
            attachment.host_interface
        ));
    }
    if let Some(address4) = attachment.address4
        && !is_attachment_address4(address4)
    {
        return Err(format!(
            "address4 {address4} is not an attachment address of {IPV4_BLOCK}/{IPV4_BLOCK_LEN}"
        ));
    }
    Ok(())
}

fn is_attachment_address4(address: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(IPV4_BLOCK_LEN));
    let host = u32::from(address) & !mask;
    u32::from(address) & mask == u32::from(IPV4_BLOCK)
        && address != HOST_IPV4_GATEWAY
        && host != 0
        && host != !mask
}

/// Why `link` cannot be this agent's TUN, if it cannot: it must be a TUN
/// device that carries the agent address of `prefix` (`up` gives it that
/// address, and refuses to when another interface of the namespace holds
/// an address of the network).
pub(super) fn check_tun_link(link: &Link, prefix: NodePrefix) -> Result<(), String> {
    if link.kind() != "tun" {
        return Err(format!(
            "{} is not a TUN interface (it is {}), so not this agent's",
            link.ifname,
            link.kind()
        ));
    }
    let agent = prefix.agent_address();
    if !link.addresses().any(|a| a == IpAddr::V6(agent)) {
        return Err(format!(
            "{} does not carry this agent's address {agent}, so it is not this agent's TUN",
            link.ifname
        ));
    }
    Ok(())
}

/// The peer's index if `link` is a veth whose peer is in another
/// namespace, as every attachment's host side is.
pub(super) fn check_veth_link(link: &Link) -> Result<u32, String> {
    if link.kind() != "veth" {
        return Err(format!(
            "{} is not a veth (it is {}), so attach did not make it",
            link.ifname,
            link.kind()
        ));
    }
    match (link.link_index, &link.link_netnsid) {
        (Some(peer), Some(_)) => Ok(peer),
        _ => Err(format!(
            "the peer of {} is not in another namespace, so attach did not make it",
            link.ifname
        )),
    }
}

/// Whether `inside` (the links of the recorded namespace) holds the other
/// end of `host`, whose peer has index `peer` there.
pub(super) fn check_peer(host: &Link, peer: u32, inside: &[Link]) -> Result<(), String> {
    let found = inside
        .iter()
        .any(|l| l.ifindex == peer && l.kind() == "veth" && l.link_index == Some(host.ifindex));
    if found {
        Ok(())
    } else {
        Err(format!(
            "the peer of {} is not in the recorded namespace",
            host.ifname
        ))
    }
}

/// The link `name` of this namespace with its addresses, or `None` if
/// there is none.
fn show_link(name: &str) -> Result<Option<Link>, AttachError> {
    match ip(&["-j", "-d", "addr", "show", "dev", name]) {
        Ok(json) => parse_links(&json)
            .map(|links| links.into_iter().next())
            .map_err(|message| AttachError::Command {
                command: format!("ip -j -d addr show dev {name}"),
                message,
            }),
        Err(AttachError::Command { message, .. }) if message.contains("does not exist") => Ok(None),
        Err(error) => Err(error),
    }
}

/// How an entry is named in errors.
fn describe(index: usize, attachment: &Attachment) -> String {
    format!(
        "attached[{index}] ({}, {})",
        attachment.target, attachment.address
    )
}

/// Checks entry `index` of the record before root acts on its veth: the
/// naming scheme ([`check_entry`]), then the live interface, if there is
/// one. Returns whether the veth exists.
pub fn verify_entry(
    expected: &Expected,
    index: usize,
    attachment: &Attachment,
) -> Result<bool, AttachError> {
    let untrusted = |problem: String| AttachError::Untrusted {
        file: expected.file.clone(),
        entry: describe(index, attachment),
        problem,
    };
    check_entry(attachment, expected.prefix).map_err(untrusted)?;
    let Some(link) = show_link(&attachment.host_interface)? else {
        return Ok(false);
    };
    let peer = check_veth_link(&link).map_err(untrusted)?;
    if attachment.namespace_is_current() {
        let path =
            attachment
                .target
                .netns_path()
                .map_err(|source| AttachError::NoSuchNamespace {
                    target: attachment.target.to_string(),
                    source,
                })?;
        let inside = in_netns(&path, attachment.netns, || {
            parse_links(&ip(&["-j", "-d", "link", "show"])?).map_err(|message| {
                AttachError::Command {
                    command: "ip -j -d link show".into(),
                    message,
                }
            })
        })?;
        check_peer(&link, peer, &inside).map_err(untrusted)?;
    }
    Ok(true)
}

/// The TUN the forwarding filter may name: the daemon's, which must be
/// this agent's TUN, or else the record's `recorded` (the default name if
/// none), which must be this agent's TUN if an interface has that name.
pub fn verify_tun(expected: &Expected, recorded: Option<&str>) -> Result<String, AttachError> {
    if let Some(name) = &expected.daemon_tun {
        let problem = match filter::check_name(name) {
            Err(error) => Some(error.to_string()),
            Ok(()) => match show_link(name)? {
                None => Some(format!(
                    "there is no interface {name} (a daemon started with --userspace has no \
                     TUN, and attach needs one)"
                )),
                Some(link) => check_tun_link(&link, expected.prefix).err(),
            },
        };
        return match problem {
            None => Ok(name.clone()),
            Some(problem) => Err(AttachError::NotOurTun {
                interface: name.clone(),
                problem,
            }),
        };
    }
    let name = recorded.unwrap_or(crate::sys::tun::DEFAULT_INTERFACE);
    let untrusted = |problem: String| AttachError::Untrusted {
        file: expected.file.clone(),
        entry: format!("tun_interface {name:?}"),
        problem,
    };
    filter::check_name(name).map_err(|e| untrusted(e.to_string()))?;
    if let Some(link) = show_link(name)? {
        check_tun_link(&link, expected.prefix).map_err(untrusted)?;
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::tests::prefix;
    use crate::attach::{AttachTarget, Attachments, DEFAULT_INTERFACE, EnabledForwarding};
    use crate::core::address::NetworkId;
    use crate::core::identity::Identity;
    use crate::sys::netns::NetnsId;

    fn entry(id: u16) -> Attachment {
        let address = prefix().address(id);
        Attachment {
            target: AttachTarget::Netns("web".into()),
            netns: NetnsId { dev: 4, ino: 7 },
            address,
            address4: Some(Ipv4Addr::new(198, 19, 0, 2)),
            host_interface: host_interface_name(address),
            interface: DEFAULT_INTERFACE.into(),
        }
    }

    fn link(json: &str) -> Link {
        parse_links(json).expect("json").remove(0)
    }

    #[test]
    fn an_entry_is_trusted_only_with_the_name_attach_gives_its_address() {
        assert_eq!(check_entry(&entry(2), prefix()), Ok(()));
        // The audit's case: the daemon's user points detach at eth0.
        let mut tampered = entry(2);
        tampered.host_interface = "eth0".into();
        let problem = check_entry(&tampered, prefix()).expect_err("eth0");
        assert!(problem.contains("\"eth0\""), "{problem}");
        // Another attachment's name, or one for an address not ours.
        tampered.host_interface = host_interface_name(prefix().address(3));
        assert!(check_entry(&tampered, prefix()).is_err());
        let mut foreign = entry(2);
        foreign.address = "fd00:1:2:3:4:5:6:2".parse().expect("address");
        foreign.host_interface = host_interface_name(foreign.address);
        assert!(check_entry(&foreign, prefix()).is_err());
        let mut agent = entry(2);
        agent.address = prefix().agent_address();
        agent.host_interface = host_interface_name(agent.address);
        assert!(check_entry(&agent, prefix()).is_err(), "::1 is the agent");
        for bad4 in [[198, 19, 0, 1], [198, 19, 0, 255], [192, 168, 1, 2]] {
            let mut entry = entry(2);
            entry.address4 = Some(Ipv4Addr::from(bad4));
            assert!(check_entry(&entry, prefix()).is_err(), "{bad4:?}");
        }
    }

    const ETH0: &str = r#"[{"ifindex":2,"ifname":"eth0","link_type":"ether",
        "addr_info":[{"family":"inet6","local":"fe80::1"}]}]"#;

    #[test]
    fn a_tun_that_is_not_this_agents_is_refused() {
        let agent = prefix().agent_address();
        let ours = format!(
            r#"[{{"ifindex":5,"ifname":"agentnet0","link_type":"none",
            "linkinfo":{{"info_kind":"tun"}},
            "addr_info":[{{"family":"inet6","local":"{agent}"}}]}}]"#
        );
        assert_eq!(check_tun_link(&link(&ours), prefix()), Ok(()));
        let problem = check_tun_link(&link(ETH0), prefix()).expect_err("eth0");
        assert!(problem.contains("eth0 is not a TUN"), "{problem}");
        // Another agent's TUN (another key) is not ours either.
        let other = Identity::from_secret_bytes(&[6; 32])
            .expect("key")
            .agent_id();
        let theirs = NodePrefix::of_agent(NetworkId::from_name("agentnet"), &other);
        let problem = check_tun_link(&link(&ours), theirs).expect_err("theirs");
        assert!(problem.contains("does not carry"), "{problem}");
        // A name that could break out of a rule is refused before any `ip`.
        let expected = Expected {
            file: "/state/attachments.json".into(),
            prefix: prefix(),
            daemon_tun: None,
        };
        let error = verify_tun(&expected, Some("eth0\" accept")).expect_err("bad name");
        let text = error.to_string();
        assert!(
            text.starts_with("/state/attachments.json: tun_interface"),
            "{text}"
        );
    }

    #[test]
    fn a_veth_is_ours_only_with_its_peer_in_the_recorded_namespace() {
        let host = link(
            r#"[{"ifindex":7,"ifname":"an1-2","link_index":3,"link_netnsid":0,
            "linkinfo":{"info_kind":"veth"}}]"#,
        );
        assert_eq!(check_veth_link(&host), Ok(3));
        assert!(check_veth_link(&link(ETH0)).is_err());
        let local_pair = link(
            r#"[{"ifindex":7,"ifname":"an1-2","link_index":8,"linkinfo":{"info_kind":"veth"}}]"#,
        );
        assert!(check_veth_link(&local_pair).is_err());
        let inside = parse_links(
            r#"[{"ifindex":1,"ifname":"lo","link_type":"loopback"},
            {"ifindex":3,"ifname":"agentnet0","link_index":7,"link_netnsid":0,
            "linkinfo":{"info_kind":"veth"}}]"#,
        )
        .expect("json");
        assert_eq!(check_peer(&host, 3, &inside), Ok(()));
        assert!(check_peer(&host, 3, &inside[..1]).is_err());
        let elsewhere = parse_links(
            r#"[{"ifindex":3,"ifname":"eth0","link_index":9,"link_netnsid":0,
            "linkinfo":{"info_kind":"veth"}}]"#,
        )
        .expect("json");
        assert!(check_peer(&host, 3, &elsewhere).is_err());
    }

    #[test]
    fn forwarding_is_reset_only_through_the_known_switches() {
        let all = EnabledForwarding {
            ipv6: true,
            ipv4: true,
        };
        let touched: Vec<_> = super::super::forwarding_switches(all).collect();
        assert_eq!(touched, super::super::FORWARDING_SWITCHES);
        assert_eq!(
            super::super::forwarding_switches(EnabledForwarding::default()).count(),
            0
        );
        // The record cannot name a switch: a path where the flag goes does
        // not parse, and an unknown key is no switch.
        let path = r#"{"attached":[],"enabled_forwarding":"/proc/sys/kernel/core_pattern"}"#;
        assert!(serde_json::from_str::<Attachments>(path).is_err());
        let extra = r#"{"attached":[],"enabled_forwarding":true,
            "forwarding_sysctl":"/proc/sys/kernel/core_pattern"}"#;
        let record: Attachments = serde_json::from_str(extra).expect("parses");
        assert_eq!(
            record,
            Attachments {
                enabled_forwarding: true,
                ..Attachments::default()
            }
        );
    }
}
