//! The trust-request workflow on the command line: `trust request`,
//! `pending`, `approve`, `deny`, and the fleet commands that create a fleet
//! key and its endorsements.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};

use super::Instance;
use super::render::human_duration;
use agentnet::control::{Request, Response};
use agentnet::core::address::{DEFAULT_NETWORK_NAME, NetworkId};
use agentnet::core::identity::AgentId;
use agentnet::core::trust::pending::PendingStatus;
use agentnet::core::policy::Policy;
use agentnet::core::text::escape_untrusted;
use agentnet::core::trust::store::{TrustEntry, TrustState, validate_name};
use agentnet::core::trust::request::{Endorsement, MAX_JUSTIFICATION_LEN};
use agentnet::state::fleet::{
    create_fleet_key, endorsement_token, load_fleet_key, parse_endorsement_token,
};
use agentnet::state::unix_now;

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

/// The `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Create a fleet signing key (mode 0600) and print its fleet ID.
    #[command(long_about = "Create a fleet signing key and print its fleet ID.\n\n\
        The fleet ID goes into `fleet_keys` of the `[auto_approve]` table in the \
        config.toml of every agent that should accept the fleet's members without an \
        operator. Keep the key file where the fleet is deployed from, not on the agents.")]
    Keygen {
        /// Where to create the key file (never overwritten).
        #[arg(long, value_name = "FILE")]
        fleet_key: PathBuf,
    },
    /// Endorse an agent: print a token for its `trust request --endorsement`.
    #[command(long_about = "Endorse an agent as a member of the fleet.\n\n\
        Prints a token (the fleet ID, the expiry, the cap and the fleet key's signature over \
        the agent's ID, the network, the expiry and the cap) that the agent passes to \
        `agentnet trust request --endorsement TOKEN`. A target in that network whose \
        config.toml lists the fleet ID under [auto_approve] fleet_keys approves such a \
        request at once, until the expiry, with the ports it asks for within the cap.")]
    Endorse {
        /// The fleet key file (from `agentnet fleet keygen`).
        #[arg(long, value_name = "FILE")]
        fleet_key: PathBuf,
        /// The agent to endorse.
        #[arg(value_name = "ID")]
        id: AgentId,
        /// The overlay network the endorsement holds in.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_NETWORK_NAME)]
        network: String,
        /// Days the endorsement holds.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        valid_days: u64,
        /// The most auto-approval grants on its strength: `all`, or a list
        /// such as `tcp:8080,icmp`.
        #[arg(long, value_name = "POLICY", default_value = "all")]
        allow: Policy,
    },
}

/// `agentnet trust request`.
pub(super) fn request(context: &Instance, args: RequestArgs) -> Result<()> {
    if let Some(name) = &args.name {
        validate_name(name)?;
    }
    if args.justification.len() > MAX_JUSTIFICATION_LEN {
        bail!(
            "the justification is {} bytes; at most {MAX_JUSTIFICATION_LEN} are sent",
            args.justification.len()
        );
    }
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
pub(super) fn expiry_note(entry: &TrustEntry, now_unix: u64) -> String {
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
pub(super) fn pending(context: &Instance, json: bool) -> Result<()> {
    let mut client = context.require_daemon()?;
    let answer = client.request(&Request::TrustPending)?;
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

/// One pending request for a terminal. Everything the requester wrote is
/// escaped: it must not drive the operator's terminal.
fn render_pending(request: &PendingStatus) -> String {
    let from = if request.via_relay {
        format!("via rendezvous {}", request.from)
    } else {
        format!("from {}", request.from)
    };
    let mut text = format!(
        "{} asks for {}  ({} ago, {from})\n  id             {}\n  justification  {}\n",
        escape_untrusted(&request.name),
        request.requested,
        human_duration(request.age_s),
        request.id,
        escape_untrusted(&request.justification)
    );
    if let Some(fleet) = &request.endorsed_by {
        text.push_str(&format!("  endorsed by    fleet {fleet}\n"));
    }
    text
}

/// `agentnet trust approve`.
pub(super) fn approve(context: &Instance, args: ApproveArgs) -> Result<()> {
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
pub(super) fn deny(context: &Instance, id: AgentId) -> Result<()> {
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

/// `agentnet fleet ...`.
pub(super) fn fleet(command: FleetCommand) -> Result<()> {
    match command {
        FleetCommand::Keygen { fleet_key } => {
            let key = create_fleet_key(&fleet_key)?;
            let id = key.agent_id();
            say!("created fleet key {} (mode 0600)", fleet_key.display());
            say!("fleet id  {id}");
            say!("agents that accept this fleet's members add to their config.toml:");
            say!("  [auto_approve]");
            say!("  fleet_keys = [\"{id}\"]");
        }
        FleetCommand::Endorse {
            fleet_key,
            id,
            network,
            valid_days,
            allow,
        } => {
            if valid_days == 0 {
                bail!("--valid-days must be at least 1");
            }
            let key = load_fleet_key(&fleet_key)?;
            let expires = unix_now().saturating_add(valid_days.saturating_mul(24 * 3600));
            let network = NetworkId::from_name(&network);
            say!(
                "{}",
                endorsement_token(&Endorsement::sign(&key, &id, network, expires, allow))
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_text_cannot_drive_the_terminal() {
        assert_eq!(escape_untrusted("plain text"), "plain text");
        let escaped = escape_untrusted("a\u{1b}[2Jb\nc\u{202e}d");
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
        assert!(!escaped.contains('\u{202e}'), "{escaped}");
        assert!(escaped.contains("\\u{1b}"), "{escaped}");
    }
}
