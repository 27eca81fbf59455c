//! `agentnet fleet`: a fleet signing key and the endorsements it gives
//! the fleet's agents, for targets that approve them without an operator.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use agentnet::core::address::{DEFAULT_NETWORK_NAME, NetworkId};
use agentnet::core::identity::AgentId;
use agentnet::core::policy::Policy;
use agentnet::core::trust::request::Endorsement;
use agentnet::state::fleet::{create_fleet_key, endorsement_token, load_fleet_key};
use agentnet::state::unix_now;

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
