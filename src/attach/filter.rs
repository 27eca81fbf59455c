//! The forwarding filter of attachments: an nftables table owned by
//! agentnet (`table inet agentnet`) that confines what the host forwards
//! once `attach` has turned IPv6 (and IPv4) forwarding on, and masquerades
//! attachments' IPv4 into the overlay.
//!
//! Linux has no per-interface IPv6 forwarding switch: `ip6_forward` looks
//! only at `net.ipv6.conf.all.forwarding`, and `conf.<if>.forwarding` only
//! changes router behaviour (RA, ND flags). So with forwarding on, a LAN
//! neighbour could route overlay traffic through the host, and an attached
//! namespace could send with any source (the host's own agent address
//! included, whose flows connection tracking would then treat as the
//! host's). The table's forward chain drops:
//!
//! - on each attachment's veth: anything whose source is not one of the
//!   attachment's own addresses (IPv6, and IPv4 if it has one; IPv4 at all
//!   if it has none), and anything not going to the TUN; towards the veth,
//!   anything not coming from the TUN;
//! - on the TUN: anything forwarded in from, or out to, an interface that
//!   is not an attachment's veth.
//!
//! Its postrouting chain masquerades IPv4 from each attachment (its veth
//! and its own address, both) leaving through the TUN: the packets take
//! the agent's IPv4 address, the only IPv4 source the node sends and the
//! peers accept, and replies are translated back by connection tracking.
//! Nothing else is translated: a namespace or veth that is not an
//! attachment is dropped by the forward chain before it gets there.
//!
//! It is rebuilt from the record at every `attach` and `detach` (one `nft
//! -f` transaction: the old table goes and the new one comes atomically).
//! The daemon installs it at `up` when IPv4 is on (a host that forwards and
//! masquerades IPv4 for its own containers, as Docker does, would
//! otherwise hand their packets to the TUN as the agent's own). It is
//! removed only by a `detach` that turns forwarding off while no daemon
//! runs; otherwise it stays, without attachments, and keeps the TUN out of
//! forwarding entirely (also after `down`, which runs without the
//! privilege to remove it; it names only agentnet's interfaces). The chain's policy is accept:
//! forwarding between other interfaces (containers, VMs) is not ours.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use crate::sys::programs::system_program;

/// The nftables table (family `inet`) agentnet owns.
pub const TABLE: &str = "agentnet";

/// Why the filter could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// An interface name that cannot be put in an nftables rule safely.
    #[error("interface name {0:?} cannot be used in a forwarding rule")]
    BadInterfaceName(String),
    /// `nft` failed or is missing.
    #[error(
        "cannot install the forwarding filter (nft -f): {0}; attach needs nftables (`nft`) \
         to keep other interfaces from forwarding into the overlay"
    )]
    Nft(String),
}

/// One attachment as the filter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredVeth {
    /// The host side of its veth pair.
    pub host_interface: String,
    /// The only IPv6 source address allowed in from it.
    pub address: Ipv6Addr,
    /// The only IPv4 source address allowed in from it (masqueraded into
    /// the TUN); without one, no IPv4 is.
    pub address4: Option<Ipv4Addr>,
}

/// The `nft -f` script that replaces the table with one for `tun` and
/// `veths`.
pub fn ruleset(tun: &str, veths: &[FilteredVeth]) -> Result<String, FilterError> {
    check_name(tun)?;
    for veth in veths {
        check_name(&veth.host_interface)?;
    }
    let mut rules = String::new();
    let mut line = |rule: String| {
        let _ = writeln!(rules, "    {rule}");
    };
    if veths.is_empty() {
        line(format!("iifname \"{tun}\" drop"));
        line(format!("oifname \"{tun}\" drop"));
    } else {
        let set = veths
            .iter()
            .map(|v| format!("\"{}\"", v.host_interface))
            .collect::<Vec<_>>()
            .join(", ");
        line(format!("iifname \"{tun}\" oifname != {{ {set} }} drop"));
        line(format!("oifname \"{tun}\" iifname != {{ {set} }} drop"));
    }
    let mut masquerade = String::new();
    for veth in veths {
        let name = &veth.host_interface;
        match veth.address4 {
            Some(address4) => {
                line(format!("iifname \"{name}\" ip saddr != {address4} drop"));
                let _ = writeln!(
                    masquerade,
                    "    iifname \"{name}\" oifname \"{tun}\" ip saddr {address4} masquerade"
                );
            }
            None => line(format!("iifname \"{name}\" meta nfproto != ipv6 drop")),
        }
        line(format!(
            "iifname \"{name}\" ip6 saddr != {} drop",
            veth.address
        ));
        line(format!("iifname \"{name}\" oifname != \"{tun}\" drop"));
        line(format!("oifname \"{name}\" iifname != \"{tun}\" drop"));
    }
    let nat = if masquerade.is_empty() {
        String::new()
    } else {
        format!(
            "  chain postrouting {{\n    \
             type nat hook postrouting priority srcnat; policy accept;\n{masquerade}  }}\n"
        )
    };
    Ok(format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n\
         table inet {TABLE} {{\n  chain forward {{\n    \
         type filter hook forward priority filter - 5; policy accept;\n{rules}  }}\n{nat}}}\n"
    ))
}

/// Replaces the table with one for `tun` and `veths` (atomically).
pub fn install(tun: &str, veths: &[FilteredVeth]) -> Result<(), FilterError> {
    nft(&ruleset(tun, veths)?)
}

/// Removes the table (nothing happens if there is none).
pub fn remove() -> Result<(), FilterError> {
    nft(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"))
}

/// Refuses a name that is not plain enough to put in a rule (or on an `ip`
/// command line) as is.
pub(super) fn check_name(name: &str) -> Result<(), FilterError> {
    let plain = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        Ok(())
    } else {
        Err(FilterError::BadInterfaceName(name.to_string()))
    }
}

fn nft(script: &str) -> Result<(), FilterError> {
    let mut child = system_program("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FilterError::Nft(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| FilterError::Nft(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| FilterError::Nft(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FilterError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, address: &str) -> FilteredVeth {
        FilteredVeth {
            host_interface: name.into(),
            address: address.parse().expect("address"),
            address4: None,
        }
    }

    #[test]
    fn ipv4_of_an_attachment_is_confined_to_its_address_and_masqueraded_into_the_tun() {
        let mut with_v4 = veth("an-2", "fd40::2");
        with_v4.address4 = Some(Ipv4Addr::new(198, 19, 0, 2));
        let script = ruleset("agentnet0", &[with_v4, veth("an-3", "fd40::3")]).expect("ruleset");
        for rule in [
            "iifname \"an-2\" ip saddr != 198.19.0.2 drop",
            "iifname \"an-2\" ip6 saddr != fd40::2 drop",
            "iifname \"an-2\" oifname != \"agentnet0\" drop",
            // The IPv6-only attachment still may not send IPv4.
            "iifname \"an-3\" meta nfproto != ipv6 drop",
            "type nat hook postrouting priority srcnat; policy accept;",
            "iifname \"an-2\" oifname \"agentnet0\" ip saddr 198.19.0.2 masquerade",
        ] {
            assert!(script.contains(rule), "missing {rule:?} in\n{script}");
        }
        assert_eq!(
            script.matches("masquerade").count(),
            1,
            "only the IPv4 attachment is masqueraded:\n{script}"
        );
        // Without IPv4 attachments there is no NAT chain at all.
        let script = ruleset("agentnet0", &[veth("an-3", "fd40::3")]).expect("ruleset");
        assert!(!script.contains("postrouting"), "{script}");
    }

    #[test]
    fn each_veth_admits_only_its_own_source_and_only_towards_the_tun() {
        let script = ruleset(
            "agentnet0",
            &[veth("an-2", "fd40::2"), veth("an-3", "fd40::3")],
        )
        .expect("ruleset");
        for rule in [
            "iifname \"agentnet0\" oifname != { \"an-2\", \"an-3\" } drop",
            "oifname \"agentnet0\" iifname != { \"an-2\", \"an-3\" } drop",
            "iifname \"an-2\" ip6 saddr != fd40::2 drop",
            "iifname \"an-3\" ip6 saddr != fd40::3 drop",
            "iifname \"an-2\" meta nfproto != ipv6 drop",
            "iifname \"an-2\" oifname != \"agentnet0\" drop",
            "oifname \"an-3\" iifname != \"agentnet0\" drop",
            "type filter hook forward priority filter - 5; policy accept;",
        ] {
            assert!(script.contains(rule), "missing {rule:?} in\n{script}");
        }
        assert!(script.starts_with("table inet agentnet\ndelete table inet agentnet\n"));
    }

    #[test]
    fn without_attachments_the_tun_forwards_nothing() {
        let script = ruleset("agentnet0", &[]).expect("ruleset");
        assert!(script.contains("iifname \"agentnet0\" drop"), "{script}");
        assert!(script.contains("oifname \"agentnet0\" drop"), "{script}");
    }

    #[test]
    fn names_that_could_break_out_of_a_rule_are_refused() {
        for bad in ["a\" accept", "x;y", "", "a b", "waytoolonginterface0"] {
            assert!(ruleset(bad, &[]).is_err(), "{bad:?}");
        }
        assert!(ruleset("agentnet0", &[veth("an-2\"", "fd40::2")]).is_err());
    }
}
