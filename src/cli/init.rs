//! `agentnet init` and `agentnet id`: this agent's identity and
//! configuration, on the state directory alone.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::Instance;
use agentnet::core::address::{NetworkId, NodePrefix, agent_address4};
use agentnet::core::trust::store::validate_name;
use agentnet::state::{AgentConfig, default_agent_name, validate_network_name};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// This agent's name, sent to peers (a DNS label) [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// The overlay network's name; agents in different networks never talk
    /// [default: agentnet].
    #[arg(long, value_name = "NAME")]
    pub(crate) network: Option<String>,
    /// Replace an existing identity (this changes the agent's ID and address).
    #[arg(long)]
    pub(crate) force: bool,
}

/// `agentnet init`.
pub(super) fn init(context: &Instance, args: InitArgs) -> Result<()> {
    let state = &context.state;
    if let Some(name) = &args.name {
        validate_name(name)?;
    }
    if let Some(network) = &args.network {
        validate_network_name(network)?;
    }
    if args.force
        && state.has_identity()
        && let Some(pid) = state.running_pid()
    {
        bail!(
            "agentnet is running for {} (pid {pid}); stop it with `agentnet down` before replacing its identity",
            state.root().display()
        );
    }
    // A damaged config is replaced on --force, and reported otherwise.
    let existing = match state.load_config() {
        Ok(existing) => existing,
        Err(_) if args.force => None,
        Err(error) => return Err(error.into()),
    };
    let identity = state.create_identity(args.force)?;
    let config = AgentConfig {
        name: args
            .name
            .or_else(|| existing.as_ref().map(|c| c.name.clone()))
            .unwrap_or_else(default_agent_name),
        network: args
            .network
            .or_else(|| existing.as_ref().map(|c| c.network.clone()))
            .unwrap_or_else(|| AgentConfig::default_for_host().network),
        rendezvous: existing
            .as_ref()
            .map(|c| c.rendezvous.clone())
            .unwrap_or_default(),
        ipv4: existing.as_ref().is_none_or(|c| c.ipv4),
    };
    state.write_config(&config)?;
    let id = identity.agent_id();
    let network = NetworkId::from_name(&config.network);
    let prefix = NodePrefix::of_agent(network, &id);
    say!("created identity in {}", state.root().display());
    say!("id       {id}");
    say!("address  {}", prefix.agent_address());
    if config.ipv4 {
        say!("address4 {}", agent_address4(network, &id));
    }
    say!("name     {}", config.name);
    say!("network  {}", config.network);
    say!("");
    say!("Give the ID to the operators of the agents this one should talk to;");
    say!("they run `agentnet trust add {id} --name {}`.", config.name);
    Ok(())
}

/// `agentnet id`.
pub(super) fn id(context: &Instance, json: bool) -> Result<()> {
    let identity = context.state.load_identity()?;
    let (config, network) = context.network()?;
    let id = identity.agent_id();
    let prefix = NodePrefix::of_agent(network, &id);
    let address4 = config.ipv4.then(|| agent_address4(network, &id));
    if json {
        let value = json!({
            "id": id.to_string(),
            "address": prefix.agent_address().to_string(),
            "address4": address4.map(|address| address.to_string()),
            "node_prefix": prefix.to_string(),
            "did": id.to_did_key(),
            "name": config.name,
            "network": config.network,
        });
        say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        say!("id           {id}");
        say!("address      {}", prefix.agent_address());
        match address4 {
            Some(address4) => say!("address4     {address4}"),
            None => say!("address4     none (ipv4 = false in config.toml)"),
        }
        say!("node prefix  {prefix}");
        say!("did          {}", id.to_did_key());
        say!("name         {}", config.name);
        say!("network      {}", config.network);
    }
    Ok(())
}
