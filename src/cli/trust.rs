//! `agentnet trust`: the agents this agent will talk to. `add`, `list` and
//! `remove` go through the daemon when it runs and edit `trust.toml`
//! otherwise; the trust-request workflow (`request`, `pending`, `approve`,
//! `deny`) needs the daemon.

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};

use super::Instance;
use super::render::{human_duration, table};
use agentnet::control::{Request, Response, TrustedPeer};
use agentnet::core::address::agent_address4;
use agentnet::core::identity::AgentId;
use agentnet::core::policy::Policy;
use agentnet::core::text::{escape_untrusted, keep_inert};
use agentnet::core::trust::pending::PendingStatus;
use agentnet::core::trust::request::check_justification;
use agentnet::core::trust::store::{TrustEntry, TrustState, TrustUpdate, validate_name};
use agentnet::state::fleet::parse_endorsement_token;
use agentnet::state::{TrustChange, unix_now};
use agentnet::sys::udp::resolve_endpoint;

/// Help text of `agentnet trust`: the whole workflow in a few lines.
pub(super) const TRUST_LONG_ABOUT: &str = "\
Manage the agents this agent will talk to. Trust is per peer and scoped to ports; \
a session forms only when both agents trust each other.

Either both operators exchange agent IDs and each runs `trust add`, or one agent asks \
and the other approves:

  alice$ agentnet trust request BOB_ID --endpoint 192.0.2.7:7400 \\
             --allow tcp:8080 --justification \"nightly log summaries\"
  bob$   agentnet trust pending                # who asks, why, for which ports
  bob$   agentnet trust approve ALICE_ID       # or: agentnet trust deny ALICE_ID

The request is sealed to Bob's key and signed by Alice; Bob never answers it. Alice \
trusts Bob from the moment she asks (state \"requested\"), but only so far that his \
approval can connect: he may answer her connections and open none of his own (allow \
\"none\"; `trust add BOB_ID --allow ...` widens it), and the entry lapses after 7 days \
([trust_requests] requested_ttl_s in config.toml) unless Bob approves. Approving trusts \
Alice with the ports she asked for (--allow may narrow them, never widen them) and \
connects at once.

`agentnet trust revoke ID` ends trust immediately: the peer's sessions and keys are \
destroyed before the command returns and the peer gets a signed notice. Fleets can \
skip the operator: `agentnet fleet endorse` plus `[auto_approve]` in config.toml.";

/// The `trust` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust an agent (or update its name, endpoint and policy).
    #[command(
        long_about = "Trust an agent, or update the entry of one already trusted.\n\n\
        A session forms only when both agents trust each other. With the daemon running the \
        change applies at once (and a handshake starts if an endpoint is known); otherwise \
        it is written to STATE_DIR/trust.toml for the next `up`.\n\n\
        An update sets the name and what else it names: without --endpoint or --allow the \
        stored endpoint and policy stay as they are (renaming a peer never widens what it \
        may open). An entry of an agent this agent asked for trust becomes an ordinary \
        trusted one, still with policy `none` unless --allow says otherwise."
    )]
    Add {
        /// The agent's ID (from its `agentnet id`).
        #[arg(value_name = "ID")]
        id: AgentId,
        /// Local name for it (a DNS label), reachable as NAME.agent.internal.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where to reach it on the underlay, e.g. 192.0.2.7:7400 or [2001:db8::7]:7400
        /// (an update without it keeps the stored endpoint).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// What it may open towards this agent: `all`, or a list such as
        /// `tcp:22,tcp:8000-8100,udp:53,icmp`, or `none` [default for a new
        /// agent: all; an update without it keeps the stored policy].
        #[arg(long, value_name = "POLICY")]
        allow: Option<Policy>,
    },
    /// List the trusted agents.
    List {
        /// Print a JSON array of entries (with each agent's address).
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting an agent: its sessions and keys are destroyed at once.
    #[command(
        visible_alias = "revoke",
        override_usage = "agentnet trust remove <ID>\n       agentnet trust revoke <ID>",
        long_about = "Stop trusting an agent (`trust revoke` is the same command).\n\n\
        With the daemon running, the peer's sessions and keys are destroyed before the \
        command returns, the peer gets a signed revocation notice over its session, and no \
        packet of the peer is delivered afterwards. Without the daemon, the entry is removed \
        from STATE_DIR/trust.toml."
    )]
    Remove {
        /// The agent's ID (or its local name).
        #[arg(value_name = "ID")]
        peer: String,
    },
    /// Ask an agent for trust with a signed justification (needs the daemon).
    #[command(long_about = "Ask an agent for trust with a signed justification.\n\n\
        Sends a sealed trust request (only the target can open it; it is signed by this \
        agent) to the target's endpoint and through every rendezvous, and records the target \
        here at once (state \"requested\", policy `none`, expiring after \
        `[trust_requests] requested_ttl_s`, 7 days by default), so that its handshake after \
        approval is accepted. Asking opens nothing on this agent: the target may only answer \
        this agent's own connections, also after approval, until `trust add ID --allow ...` \
        here says otherwise. The target never answers the request; when its operator \
        approves, it connects. Needs the running daemon.")]
    Request(RequestArgs),
    /// List the trust requests waiting for approval.
    Pending {
        /// Print a JSON array: id, name (claimed), justification, requested, age_s,
        /// from, via_relay, endorsed_by.
        #[arg(long)]
        json: bool,
    },
    /// Approve a trust request: trust the requester and connect to it at once.
    Approve(ApproveArgs),
    /// Deny a trust request: drop it; the requester is not told.
    Deny {
        /// The requester's agent ID.
        #[arg(value_name = "ID")]
        id: AgentId,
    },
}

/// Arguments of `trust request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The agent asked (its ID, from its `agentnet id`).
    #[arg(value_name = "ID")]
    pub(crate) id: AgentId,
    /// Why this agent asks, shown to the other operator (at most 1 KiB).
    #[arg(long, value_name = "TEXT")]
    pub(crate) justification: String,
    /// The ports this agent asks to open on the other: `all`, or a list such as
    /// `tcp:8080,icmp`.
    #[arg(long, value_name = "POLICY", default_value = "all")]
    pub(crate) allow: Policy,
    /// Where the other agent listens on the underlay, e.g. 192.0.2.7:7400.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) endpoint: Option<String>,
    /// Local name for the other agent [default: `peer-` and the start of its ID].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// A fleet endorsement of this agent (from `agentnet fleet endorse`), for
    /// targets that auto-approve the fleet.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) endorsement: Option<String>,
}

/// Arguments of `trust approve`.
#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// The requester's agent ID (from `agentnet trust pending`).
    #[arg(value_name = "ID")]
    pub(crate) id: AgentId,
    /// Local name for it [default: the name it claims, made a unique DNS label].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// What it may open towards this agent [default: what it asked for]. Must
    /// not be wider than the request.
    #[arg(long, value_name = "POLICY")]
    pub(crate) allow: Option<Policy>,
}

/// Runs a `trust` subcommand.
pub(super) fn run(context: &Instance, command: TrustCommand) -> Result<()> {
    match command {
        TrustCommand::Add {
            id,
            name,
            endpoint,
            allow,
        } => add(context, id, name, endpoint, allow),
        TrustCommand::List { json } => list(context, json),
        TrustCommand::Remove { peer } => remove(context, &peer),
        TrustCommand::Request(args) => request(context, args),
        TrustCommand::Pending { json } => pending(context, json),
        TrustCommand::Approve(args) => approve(context, args),
        TrustCommand::Deny { id } => deny(context, id),
    }
}

/// `agentnet trust add`.
fn add(
    context: &Instance,
    id: AgentId,
    name: String,
    endpoint: Option<String>,
    allow: Option<Policy>,
) -> Result<()> {
    validate_name(&name)?;
    let running = context.daemon()?;
    let (peer, change) = match running {
        Some(mut client) => match client.request(&Request::TrustAdd {
            id,
            name,
            endpoint,
            allow,
        })? {
            Response::TrustAdded { peer, change } => (peer, change),
            other => bail!("unexpected answer to `trust add`: {other:?}"),
        },
        None => {
            if let Some(text) = &endpoint {
                resolve_endpoint(text)?;
            }
            let own = context.state.load_identity()?.agent_id();
            let (_, network) = context.network()?;
            let update = TrustUpdate {
                id,
                name,
                endpoint,
                allow,
            };
            let (config, _) = context.network()?;
            let (stored, change) = context.state.trust_update(&own, update)?;
            let store = context.state.load_trust()?;
            let peer = TrustedPeer::list_offline(store.peers, network, &own, config.ipv4)
                .into_iter()
                .find(|peer| peer.entry.id == stored.id)
                .unwrap_or_else(|| TrustedPeer::new(stored, network));
            (peer, change)
        }
    };
    let verb = match change {
        TrustChange::Added => "trusted",
        TrustChange::Updated => "updated",
    };
    let endpoint = peer
        .entry
        .endpoint
        .as_deref()
        .map(|e| format!(", endpoint {e}"))
        .unwrap_or_default();
    say!(
        "{verb} {} ({}): address {}{}, allow {}{endpoint}",
        peer.entry.name,
        peer.entry.id,
        peer.address,
        match peer.address4 {
            Some(address4) => format!(" and {address4}"),
            None => String::new(),
        },
        peer.entry.allow
    );
    if let Some(holder) = peer.address4_taken_by {
        say!(
            "note: {}'s IPv4 address {} is already {}; {} is reachable over IPv6 only (its name resolves to AAAA only)",
            peer.entry.name,
            agent_address4(context.network()?.1, &peer.entry.id),
            ipv4_holder_text(context, &holder),
            peer.entry.name
        );
    }
    if context.state.running_pid().is_none() {
        say!("agentnet is not running; this applies at the next `agentnet up`");
    }
    Ok(())
}

/// `agentnet trust list`.
fn list(context: &Instance, json: bool) -> Result<()> {
    let peers = match context.daemon()? {
        Some(mut client) => match client.request(&Request::TrustList {})? {
            Response::TrustList { peers } => peers,
            other => bail!("unexpected answer to `trust list`: {other:?}"),
        },
        None => {
            let (config, network) = context.network()?;
            let own = context.state.load_identity()?.agent_id();
            let entries = context.state.load_trust()?.peers;
            TrustedPeer::list_offline(entries, network, &own, config.ipv4)
        }
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    if peers.is_empty() {
        say!("no trusted agents; add one with `agentnet trust add ID --name NAME`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|peer| {
            let state = match peer.entry.state {
                TrustState::Trusted => String::new(),
                TrustState::Requested => {
                    format!(" (requested{})", expiry_note(&peer.entry, unix_now()))
                }
            };
            let address4 = match (peer.address4, peer.address4_taken_by) {
                (Some(address4), _) => address4.to_string(),
                (None, Some(_)) => "- (IPv4 address taken)".into(),
                (None, None) => "-".into(),
            };
            vec![
                format!("{}{state}", peer.entry.name),
                peer.address.to_string(),
                address4,
                peer.entry.allow.to_string(),
                peer.entry.endpoint.clone().unwrap_or_else(|| "-".into()),
                peer.entry.id.to_string(),
            ]
        })
        .collect();
    say!(
        "{}",
        table(
            &["NAME", "ADDRESS", "IPV4", "ALLOW", "ENDPOINT", "ID"],
            &rows
        )
        .trim_end()
    );
    Ok(())
}

/// "this agent's own" or "held by NAME (ID)", for an IPv4 collision.
fn ipv4_holder_text(context: &Instance, holder: &AgentId) -> String {
    let own = context
        .state
        .load_identity()
        .map(|identity| identity.agent_id());
    if own.as_ref().ok() == Some(holder) {
        return "this agent's own".into();
    }
    let name = context
        .state
        .load_trust()
        .ok()
        .and_then(|store| store.peers.into_iter().find(|entry| entry.id == *holder))
        .map(|entry| entry.name)
        .unwrap_or_else(|| "another agent".into());
    format!("held by {name} ({holder}), trusted earlier")
}

/// `agentnet trust remove`.
fn remove(context: &Instance, peer: &str) -> Result<()> {
    let (removed, live) = match context.daemon()? {
        Some(mut client) => match client.request(&Request::TrustRemove {
            peer: peer.to_string(),
        })? {
            Response::TrustRemoved { peer } => (peer, true),
            other => bail!("unexpected answer to `trust remove`: {other:?}"),
        },
        None => {
            let (_, network) = context.network()?;
            (
                TrustedPeer::new(context.state.trust_remove(peer)?, network),
                false,
            )
        }
    };
    let effect = if live {
        "sessions and keys destroyed, peer notified"
    } else {
        "agentnet is not running"
    };
    say!(
        "removed {} ({}, {}): {effect}",
        removed.entry.name,
        removed.entry.id,
        removed.address
    );
    Ok(())
}

/// `agentnet trust request`.
fn request(context: &Instance, args: RequestArgs) -> Result<()> {
    if let Some(name) = &args.name {
        validate_name(name)?;
    }
    check_justification(&args.justification)?;
    if let Some(token) = &args.endorsement {
        parse_endorsement_token(token)?;
    }
    let mut client = context.daemon()?.ok_or_else(|| {
        anyhow!(
            "`trust request` needs the running daemon: the sealed request is sent from this \
             agent's own UDP socket (nothing answers on {}). Start it with `agentnet up`",
            context.socket.display()
        )
    })?;
    let requested = args.allow.to_string();
    let answer = client.request(&Request::TrustRequest {
        id: args.id,
        name: args.name,
        justification: args.justification,
        allow: args.allow,
        endpoint: args.endpoint,
        endorsement: args.endorsement,
    })?;
    let Response::TrustRequestSent {
        peer,
        to,
        rendezvous,
    } = answer
    else {
        bail!("unexpected answer to `trust request`: {answer:?}");
    };
    let route = match (to, rendezvous) {
        (Some(to), 0) => format!("at {to}"),
        (Some(to), n) => format!("at {to} and through {n} rendezvous"),
        (None, n) => format!("through {n} rendezvous"),
    };
    say!(
        "sent a trust request to {} ({}) {route}, asking for {requested}",
        peer.entry.name,
        peer.entry.id
    );
    match peer.entry.state {
        TrustState::Requested => say!(
            "{} is trusted here as requested (allow {}: it may open only what this lists; \
             replies to this agent's own connections pass){}; once its operator approves, \
             it connects to this agent (see `agentnet trust list`)",
            peer.entry.name,
            peer.entry.allow,
            expiry_note(&peer.entry, unix_now())
        ),
        TrustState::Trusted => say!(
            "{} was already trusted here (allow {})",
            peer.entry.name,
            peer.entry.allow
        ),
    }
    Ok(())
}

/// `, expires in 6d 23h` for a requested entry (`, expired` once past),
/// nothing for a trusted one.
fn expiry_note(entry: &TrustEntry, now_unix: u64) -> String {
    match (entry.state, entry.expires_unix) {
        (TrustState::Requested, Some(expires)) if expires > now_unix => {
            format!(
                ", expires in {}",
                human_duration((expires - now_unix) as f64)
            )
        }
        (TrustState::Requested, Some(_)) => ", expired".to_string(),
        _ => String::new(),
    }
}

/// `agentnet trust pending`.
fn pending(context: &Instance, json: bool) -> Result<()> {
    let mut client = context.require_daemon()?;
    let answer = client.request(&Request::TrustPending {})?;
    let Response::TrustPending { requests } = answer else {
        bail!("unexpected answer to `trust pending`: {answer:?}");
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&requests)?);
        return Ok(());
    }
    if requests.is_empty() {
        say!("no pending trust requests");
        return Ok(());
    }
    for request in &requests {
        say!("{}", render_pending(request));
    }
    say!(
        "approve: agentnet trust approve ID [--name NAME] [--allow POLICY]; \
         deny: agentnet trust deny ID"
    );
    Ok(())
}

/// One pending request for a terminal. Everything the requester wrote
/// came escaped from the daemon (`PendingStatus`; `keep_inert` for an
/// older daemon that sent it raw): it cannot drive the operator's
/// terminal.
fn render_pending(request: &PendingStatus) -> String {
    let from = if request.via_relay {
        format!("via rendezvous {}", request.from)
    } else {
        format!("from {}", request.from)
    };
    let mut text = format!(
        "{} asks for {}  ({} ago, {from})\n  id             {}\n  justification  {}\n",
        keep_inert(&request.name),
        request.requested,
        human_duration(request.age_s),
        request.id,
        keep_inert(&request.justification)
    );
    if let Some(fleet) = &request.endorsed_by {
        text.push_str(&format!("  endorsed by    fleet {fleet}\n"));
    }
    text
}

/// `agentnet trust approve`.
fn approve(context: &Instance, args: ApproveArgs) -> Result<()> {
    if let Some(name) = &args.name {
        validate_name(name)?;
    }
    let mut client = context.require_daemon()?;
    let answer = client.request(&Request::TrustApprove {
        id: args.id,
        name: args.name,
        allow: args.allow,
    })?;
    let Response::TrustApproved { peer } = answer else {
        bail!("unexpected answer to `trust approve`: {answer:?}");
    };
    say!(
        "approved {} ({}): address {}{}, allow {}, endpoint {}; connecting",
        peer.entry.name,
        peer.entry.id,
        peer.address,
        peer.address4
            .map(|address4| format!(" and {address4}"))
            .unwrap_or_default(),
        peer.entry.allow,
        peer.entry.endpoint.as_deref().unwrap_or("-")
    );
    if peer.address4_taken_by.is_some() {
        say!(
            "note: {}'s IPv4 address is taken by an agent trusted earlier; it is reachable over IPv6 only",
            peer.entry.name
        );
    }
    Ok(())
}

/// `agentnet trust deny`.
fn deny(context: &Instance, id: AgentId) -> Result<()> {
    let mut client = context.require_daemon()?;
    let answer = client.request(&Request::TrustDeny { id })?;
    let Response::TrustDenied { id, name } = answer else {
        bail!("unexpected answer to `trust deny`: {answer:?}");
    };
    say!(
        "denied the trust request of {} ({id}); it is not told",
        escape_untrusted(&name)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    #[test]
    fn requester_text_cannot_drive_the_terminal() {
        assert_eq!(escape_untrusted("plain text"), "plain text");
        let escaped = escape_untrusted("a\u{1b}[2Jb\nc\u{202e}d");
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
        assert!(!escaped.contains('\u{202e}'), "{escaped}");
        assert!(escaped.contains("\\u{1b}"), "{escaped}");
    }

    #[test]
    fn trust_add_parses_id_and_policy() {
        let id = agentnet::core::identity::Identity::from_secret_bytes(&[3; 32])
            .expect("key")
            .agent_id()
            .to_string();
        let cli = Cli::try_parse_from([
            "agentnet",
            "trust",
            "add",
            &id,
            "--name",
            "bob",
            "--allow",
            "tcp:80,icmp",
        ])
        .expect("parses");
        let Command::Trust(TrustCommand::Add {
            allow, endpoint, ..
        }) = cli.command
        else {
            panic!("not trust add");
        };
        assert_eq!(
            allow.map(|policy| policy.to_string()).as_deref(),
            Some("tcp:80,icmp")
        );
        assert_eq!(endpoint, None);
        assert!(
            Cli::try_parse_from(["agentnet", "trust", "add", "nope", "--name", "bob"]).is_err()
        );
        let default =
            Cli::try_parse_from(["agentnet", "trust", "add", &id, "--name", "b"]).expect("parses");
        let Command::Trust(TrustCommand::Add { allow, .. }) = default.command else {
            panic!("not trust add");
        };
        assert_eq!(
            allow, None,
            "no --allow: a new entry gets `all`, an update keeps its own"
        );
    }
}
