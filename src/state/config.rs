//! `config.toml`: this agent's name, network, rendezvous servers and IPv4
//! switch ([`AgentConfig`]); other tables (`[auto_approve]`,
//! `[trust_requests]`) are read by their modules through
//! [`StateDir::load_config_tables`].

use std::fs;

use serde::{Deserialize, Serialize};

use super::{CONFIG_FILE, StateDir, StateError};
use crate::core::address::DEFAULT_NETWORK_NAME;
use crate::core::trust::store::{MAX_NAME_LEN, validate_name};

/// Longest network name accepted.
pub const MAX_NETWORK_NAME_LEN: usize = 64;
/// Name used when the host name gives no usable DNS label.
const FALLBACK_AGENT_NAME: &str = "agent";
/// The comment at the top of `config.toml`.
const CONFIG_FILE_HEADER: &str = "# agentnet agent configuration.\n\
     # name: this agent's name, sent to peers (one DNS label).\n\
     # network: the overlay network; it determines the address prefix.\n";

/// The agent's own settings, `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// This agent's name (one DNS label), sent to peers in handshakes.
    pub name: String,
    /// The overlay network's name; agents in different networks never talk.
    #[serde(default = "default_network_name")]
    pub network: String,
    /// Rendezvous servers to register with, as `HOST:PORT=ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rendezvous: Vec<String>,
    /// Whether the agent has an IPv4 overlay address next to its IPv6 one
    /// (`ipv4 = false`: IPv6 only; `up --no-ipv4` does the same once).
    #[serde(default = "enabled", skip_serializing_if = "is_enabled")]
    pub ipv4: bool,
}

fn default_network_name() -> String {
    DEFAULT_NETWORK_NAME.to_string()
}

fn enabled() -> bool {
    true
}

fn is_enabled(value: &bool) -> bool {
    *value
}

impl AgentConfig {
    /// The configuration used when none was written: host name and default
    /// network.
    pub fn default_for_host() -> Self {
        Self {
            name: default_agent_name(),
            network: default_network_name(),
            rendezvous: Vec::new(),
            ipv4: true,
        }
    }
}

/// Checks a network name: 1-64 printable characters, no whitespace.
pub fn validate_network_name(name: &str) -> Result<(), StateError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NETWORK_NAME_LEN
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(StateError::BadNetworkName(name.to_string()))
    }
}

/// This host's name turned into a DNS label (the first label, lowercased,
/// other characters replaced by `-`), or `agent` if nothing usable remains.
pub fn default_agent_name() -> String {
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    sanitize_label(&hostname)
}

/// Turns any text into a DNS label (see [`default_agent_name`]).
pub fn sanitize_label(text: &str) -> String {
    let first = text.trim().split('.').next().unwrap_or_default();
    let mapped: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    let label = mapped.trim_matches('-');
    if validate_name(label).is_ok() {
        label.to_string()
    } else {
        FALLBACK_AGENT_NAME.to_string()
    }
}

impl StateDir {
    /// Reads `config.toml`, or `None` if there is none.
    pub fn load_config(&self) -> Result<Option<AgentConfig>, StateError> {
        let Some(config) = self.read_toml::<AgentConfig>(CONFIG_FILE)? else {
            return Ok(None);
        };
        validate_name(&config.name).map_err(|source| StateError::BadConfigName {
            path: self.config_path(),
            source,
        })?;
        validate_network_name(&config.network)?;
        Ok(Some(config))
    }

    /// Reads `config.toml` as a `T` that picks the tables it wants (other
    /// keys are ignored); `None` when there is no `config.toml`.
    pub fn load_config_tables<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Option<T>, StateError> {
        self.read_toml(CONFIG_FILE)
    }

    /// Reads `config.toml`, or the host defaults if there is none.
    pub fn config_or_default(&self) -> Result<AgentConfig, StateError> {
        Ok(self
            .load_config()?
            .unwrap_or_else(AgentConfig::default_for_host))
    }

    /// Writes `config.toml` atomically.
    pub fn write_config(&self, config: &AgentConfig) -> Result<(), StateError> {
        validate_name(&config.name)?;
        validate_network_name(&config.network)?;
        self.create()?;
        self.replace_toml(CONFIG_FILE, "the configuration", CONFIG_FILE_HEADER, config)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::state::test_support::state;

    #[test]
    fn config_round_trips_and_defaults_network() {
        let (_temp, state) = state();
        assert_eq!(state.load_config().expect("none"), None);
        let config = AgentConfig {
            name: "alice".into(),
            network: "lab".into(),
            rendezvous: Vec::new(),
            ipv4: false,
        };
        state.write_config(&config).expect("written");
        assert_eq!(state.load_config().expect("read"), Some(config));
        fs::write(state.config_path(), "name = \"bob\"\n").expect("write");
        let config = state.load_config().expect("read").expect("some");
        assert_eq!(config.network, DEFAULT_NETWORK_NAME);
        assert!(config.ipv4, "IPv4 is on unless the file says otherwise");
    }

    #[test]
    fn host_names_become_dns_labels() {
        assert_eq!(sanitize_label("My_Host.example.com\n"), "my-host");
        assert_eq!(sanitize_label("--x--"), "x");
        assert_eq!(sanitize_label(""), "agent");
        assert_eq!(sanitize_label("___"), "agent");
        assert_eq!(sanitize_label(&"a".repeat(80)).len(), MAX_NAME_LEN);
    }
}
