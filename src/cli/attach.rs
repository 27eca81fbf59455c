//! `agentnet attach` and `agentnet detach`: the plumbing is in
//! [`agentnet::attach`]; this file checks the arguments against the running
//! daemon, records the result and tells the daemon, which then publishes
//! the trusted names inside the attached namespace.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};

use super::Instance;
use super::render::table;
use agentnet::attach::filter::FilteredVeth;
use agentnet::attach::{
    self, ATTACHMENTS_FILE, AttachPlan, AttachTarget, Attachment, AttachmentNames, Attachments,
    DEFAULT_INTERFACE, Expected,
};
use agentnet::control::{Request, Response};
use agentnet::core::address::{NetworkId, NodePrefix};
use agentnet::sys::netns::NetnsId;

/// Arguments of `attach`.
#[derive(Debug, Args)]
#[command(after_help = "\
The namespace gets an IPv6 address in this node's prefix and, when the agent has IPv4 on, an IPv4
address from 198.19.0.0/24 (RFC 2544 benchmarking range: not the overlay, not link-local, not a LAN
range). It reaches trusted peers over both: IPv6 from its own address, IPv4 masqueraded as the
agent's IPv4 address (peers see the agent). Peers reach a service inside it at its IPv6 address, or
over IPv4 (and by the agent's name) through `agentnet serve --tcp PORT 198.19.0.N:PORT` on this host.")]
#[command(group(ArgGroup::new("target").args(["netns", "pid", "list"]).required(true)))]
pub(crate) struct AttachArgs {
    /// The network namespace to attach, by its `ip netns` name.
    #[arg(long, value_name = "NAME")]
    pub(crate) netns: Option<String>,
    /// The network namespace to attach, by the PID of a process in it (for a
    /// Docker container: `docker inspect -f '{{.State.Pid}}' NAME`).
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Option<u32>,
    /// Its address: `::N` in this node's prefix, N from 2 to fffe [default:
    /// the lowest free one].
    #[arg(long, value_name = "::N")]
    pub(crate) address: Option<String>,
    /// Name of the interface inside the namespace.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INTERFACE)]
    pub(crate) interface: String,
    /// List the attached namespaces instead.
    #[arg(long)]
    pub(crate) list: bool,
}

/// Arguments of `detach`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").args(["netns", "pid", "address"]).required(true)))]
pub(crate) struct DetachArgs {
    /// The namespace, by its `ip netns` name.
    #[arg(long, value_name = "NAME")]
    pub(crate) netns: Option<String>,
    /// The namespace, by the PID given to `attach`.
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Option<u32>,
    /// The namespace, by its address (`::N` or the full address).
    #[arg(long, value_name = "::N")]
    pub(crate) address: Option<String>,
}

/// `agentnet attach`.
pub(crate) fn attach(context: &Instance, args: AttachArgs) -> Result<()> {
    if args.list {
        return list(context);
    }
    agentnet::sys::tun::validate_interface_name(&args.interface)?;
    let target = match (&args.netns, args.pid) {
        (Some(name), _) => AttachTarget::Netns(name.clone()),
        (None, Some(pid)) => AttachTarget::Pid(pid),
        (None, None) => bail!("give --netns NAME or --pid PID"),
    };
    let mut client = context.require_daemon()?;
    let info = match client.request(&Request::Hello {})? {
        Response::Hello(info) => info,
        other => bail!("unexpected answer to `hello`: {other:?}"),
    };
    let own = NetnsId::current().context("cannot identify this network namespace")?;
    let daemon = NetnsId::of_pid(info.pid).context("cannot identify the daemon's namespace")?;
    if own != daemon {
        bail!(
            "the daemon (pid {}) runs in another network namespace: run `agentnet attach` in its \
             namespace (e.g. `ip netns exec NAME agentnet attach ...` or `nsenter -t {} -n ...`)",
            info.pid,
            info.pid
        );
    }
    let netns = target.netns_id()?;
    if netns == own {
        return Err(attach::AttachError::OwnNamespace(target.to_string()).into());
    }
    let network = NetworkId::from_name(&info.network);
    let prefix = own_prefix(context, network)?;
    if info.address != prefix.agent_address() {
        bail!(
            "the daemon answering on {} has address {}, not this agent's {} (from {}): \
             refusing to attach through it",
            context.socket.display(),
            info.address,
            prefix.agent_address(),
            context.state.root().display()
        );
    }
    // The daemon runs as the user who can rewrite the record: its TUN and
    // the record are checked against the kernel before root acts on them.
    let expected = Expected {
        file: context.state.root().join(ATTACHMENTS_FILE),
        prefix,
        daemon_tun: Some(info.interface.clone()),
    };
    let ipv4 = daemon_ipv4(&mut client)?.is_some();
    let attachment = Attachments::edit(&context.state, |record| {
        // A namespace that was deleted took its veth pair along.
        record
            .attached
            .retain(|a| attach::link_exists(&a.host_interface));
        if let Some(existing) = record.find_netns(netns) {
            return Err(attach::AttachError::AlreadyAttached {
                target: target.to_string(),
                address: existing.address,
            });
        }
        let address = match &args.address {
            Some(text) => attach::parse_address(text, prefix)?,
            None => record.free_address(prefix)?,
        };
        if let Some(other) = record.attached.iter().find(|a| a.address == address) {
            return Err(attach::AttachError::AddressTaken {
                address,
                target: other.target.to_string(),
            });
        }
        let address4 = if ipv4 {
            Some(record.free_address4(attach::host_route4_exists)?)
        } else {
            None
        };
        // The filter first: forwarding is never on without it.
        record.tun_interface = Some(info.interface.clone());
        let planned = FilteredVeth {
            host_interface: attach::host_interface_name(address),
            address,
            address4,
        };
        record.apply_filter(&expected, Some(planned), false)?;
        let made = attach::attach(&AttachPlan {
            target: target.clone(),
            netns,
            address,
            address4,
            network,
            interface: args.interface.clone(),
            mtu: info.mtu,
        });
        let (attachment, enabled_forwarding) = match made {
            Ok(made) => made,
            Err(error) => {
                if let Err(filter) = record.apply_filter(&expected, None, false) {
                    tracing::warn!(%filter, "cannot restore the forwarding filter");
                }
                return Err(error);
            }
        };
        record.enabled_forwarding |= enabled_forwarding.ipv6;
        record.enabled_forwarding4 |= enabled_forwarding.ipv4;
        record.attached.push(attachment.clone());
        Ok(attachment)
    })?;
    say_attached(&attachment, &info.interface);
    let names = reload(&mut client)?;
    say_names(&names, &attachment);
    Ok(())
}

fn say_attached(attachment: &Attachment, tun: &str) {
    let address4 = attachment
        .address4
        .map(|a| format!(" and {a} (IPv4, masqueraded as the agent's)"))
        .unwrap_or_default();
    say!(
        "attached {}: address {}{address4} on {} (host side {}, routed through {tun})",
        attachment.target,
        attachment.address,
        attachment.interface,
        attachment.host_interface,
    );
}

/// This agent's node prefix in `network`, from the key in the state
/// directory.
fn own_prefix(context: &Instance, network: NetworkId) -> Result<NodePrefix> {
    let own = context.state.load_identity()?.agent_id();
    Ok(NodePrefix::of_agent(network, &own))
}

/// The daemon's IPv4 overlay address, if IPv4 is on.
fn daemon_ipv4(client: &mut agentnet::control::ControlClient) -> Result<Option<Ipv4Addr>> {
    match client.request(&Request::Status {})? {
        Response::Status(value) => Ok(value["address4"].as_str().and_then(|a| a.parse().ok())),
        other => bail!("unexpected answer to `status`: {other:?}"),
    }
}

fn say_names(names: &[AttachmentNames], attachment: &Attachment) {
    match names.iter().find(|n| n.address == attachment.address) {
        Some(AttachmentNames {
            hosts_file: Some(file),
            ..
        }) => say!("names of trusted agents: {}", file.display()),
        Some(AttachmentNames {
            note: Some(note), ..
        }) => say!("names of trusted agents: not managed ({note})"),
        _ => {}
    }
}

fn reload(client: &mut agentnet::control::ControlClient) -> Result<Vec<AttachmentNames>> {
    match client.request(&Request::ReloadAttachments {})? {
        Response::AttachmentsReloaded { attachments } => Ok(attachments),
        other => bail!("unexpected answer to `reload_attachments`: {other:?}"),
    }
}

/// `agentnet detach`.
pub(crate) fn detach(context: &Instance, args: DetachArgs) -> Result<()> {
    let mut client = context.daemon()?;
    if let Some(client) = &mut client
        && let Response::Hello(info) = client.request(&Request::Hello {})?
        && NetnsId::of_pid(info.pid).ok() != NetnsId::current().ok()
    {
        bail!(
            "the daemon (pid {}) runs in another network namespace: run `agentnet detach` in its namespace",
            info.pid
        );
    }
    let (_, network) = context.network()?;
    let prefix = own_prefix(context, network)?;
    let address = match &args.address {
        Some(text) => Some(attach::parse_address(text, prefix)?),
        None => None,
    };
    // The record is the daemon's user's to rewrite: every name in it is
    // checked against the naming scheme and the kernel before root acts on
    // it (`attach::verify`). Its TUN is checked as is (a TUN carrying this
    // agent's address), also while a daemon runs: the daemon may be one
    // without a TUN (`--userspace`), and detach must still work.
    let expected = Expected {
        file: context.state.root().join(ATTACHMENTS_FILE),
        prefix,
        daemon_tun: None,
    };
    // The namespace may be gone already: then only its name or PID matches.
    let target = match (&args.netns, args.pid) {
        (Some(name), _) => Some(AttachTarget::Netns(name.clone())),
        (None, Some(pid)) => Some(AttachTarget::Pid(pid)),
        _ => None,
    };
    let netns = target.as_ref().and_then(|t| t.netns_id().ok());
    let description = target
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| address.map(|a| a.to_string()))
        .unwrap_or_default();
    let (removed, restore) =
        Attachments::edit::<_, attach::AttachError>(&context.state, |record| {
            let index = record
                .attached
                .iter()
                .position(|a| {
                    Some(a.address) == address
                        || target.as_ref() == Some(&a.target)
                        || netns.is_some_and(|id| id == a.netns)
                })
                .ok_or_else(|| attach::AttachError::NotAttached(description.clone()))?;
            // The TUN the filter is rebuilt on is checked before anything
            // is removed: a record that names another interface changes
            // nothing.
            attach::verify::verify_tun(&expected, record.tun_interface.as_deref())?;
            attach::detach(&expected, index, &record.attached[index])?;
            let removed = record.attached.remove(index);
            let last = record.attached.is_empty();
            let restore = attach::EnabledForwarding {
                ipv6: last && record.enabled_forwarding,
                ipv4: last && record.enabled_forwarding4,
            };
            if restore.ipv6 {
                record.enabled_forwarding = false;
            }
            if restore.ipv4 {
                record.enabled_forwarding4 = false;
            }
            if !restore.ipv6 {
                record.apply_filter(&expected, None, false)?;
            }
            Ok((removed, restore))
        })?;
    attach::restore_forwarding(restore)?;
    if restore.ipv6 && !attach::forwarding_on() && client.is_none() {
        // Forwarding is off in both families and no daemon runs: nothing
        // is left for the filter to confine. Otherwise it stays, without
        // attachments: it keeps the TUN out of whatever the host forwards
        // (a running daemon installed it at `up` for that; see
        // `daemon::guard_tun_forwarding`).
        Attachments::load(&context.state)?.apply_filter(&expected, None, true)?;
    } else if restore.ipv6 || restore.ipv4 {
        Attachments::load(&context.state)?.apply_filter(&expected, None, false)?;
    }
    if let Some(client) = &mut client {
        reload(client)?;
    }
    say!("detached {} ({})", removed.target, removed.address);
    Ok(())
}

fn list(context: &Instance) -> Result<()> {
    let record = Attachments::load(&context.state)?;
    if record.attached.is_empty() {
        say!("nothing is attached; attach a namespace with `agentnet attach --netns NAME`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = record
        .attached
        .iter()
        .map(|a| {
            vec![
                a.target.to_string(),
                a.address.to_string(),
                a.address4
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
                a.interface.clone(),
                a.host_interface.clone(),
                if a.namespace_is_current() {
                    "attached"
                } else {
                    "gone"
                }
                .to_string(),
            ]
        })
        .collect();
    say!(
        "{}",
        table(
            &[
                "TARGET",
                "ADDRESS",
                "IPV4",
                "INTERFACE",
                "HOST SIDE",
                "STATE"
            ],
            &rows
        )
        .trim_end()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use agentnet::names::resolver_config::HostResolverMode;

    #[test]
    fn attach_needs_exactly_one_target() {
        let cli = Cli::try_parse_from(["agentnet", "attach", "--pid", "42", "--address", "::5"])
            .expect("parses");
        let Command::Attach(args) = cli.command else {
            panic!("not attach");
        };
        assert_eq!((args.pid, args.address.as_deref()), (Some(42), Some("::5")));
        assert_eq!(args.interface, "agentnet0");
        assert!(Cli::try_parse_from(["agentnet", "attach"]).is_err());
        assert!(Cli::try_parse_from(["agentnet", "attach", "--netns", "a", "--pid", "1"]).is_err());
        assert!(Cli::try_parse_from(["agentnet", "detach"]).is_err());
        assert!(Cli::try_parse_from(["agentnet", "detach", "--address", "::2"]).is_ok());
    }

    #[test]
    fn up_names_defaults_to_auto() {
        let cli = Cli::try_parse_from(["agentnet", "up"]).expect("parses");
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.names, HostResolverMode::Auto);
        let off = Cli::try_parse_from(["agentnet", "up", "--names", "off"]).expect("parses");
        assert!(matches!(off.command, Command::Up(args) if args.names == HostResolverMode::Off));
        assert!(Cli::try_parse_from(["agentnet", "up", "--names", "dns"]).is_err());
    }
}
