//! The trust store's contents (DESIGN.md §3): the agents this agent will talk
//! to, each with a local name and an allow-policy. Reading and writing the
//! file is the shell's job (`crate::state`); this module is the data and its
//! rules.

use serde::{Deserialize, Serialize};

use super::identity::AgentId;
use super::policy::Policy;

/// Longest local name: one DNS label, so `NAME.agent.internal` resolves.
pub const MAX_NAME_LEN: usize = 63;

/// Errors in trust-store edits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// The local name is not a DNS label.
    #[error(
        "bad name `{0}`: use 1-63 characters a-z, 0-9 and `-`, not starting or ending with `-`"
    )]
    BadName(String),
    /// Another peer already has this local name.
    #[error("the name `{name}` is already used by {other}")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The agent that already has it.
        other: AgentId,
    },
    /// The agent is not in the store.
    #[error("{0} is not in the trust store")]
    NotFound(AgentId),
    /// The agent is this agent itself.
    #[error("an agent cannot trust itself")]
    IsSelf,
}

/// Checks a local name (one lowercase DNS label).
pub fn validate_name(name: &str) -> Result<(), TrustError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(TrustError::BadName(name.to_string()))
    }
}

/// How far trust with a peer has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrustState {
    /// Trusted: sessions may form.
    #[default]
    Trusted,
    /// This agent asked the peer for trust and trusts it already.
    Requested,
}

/// One trusted (or requested) peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustEntry {
    /// The peer's agent ID.
    pub id: AgentId,
    /// Local name, reachable as `NAME.agent.internal`.
    pub name: String,
    /// Optional underlay endpoint hint, `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What the peer may open towards this agent.
    #[serde(default)]
    pub allow: Policy,
    /// Trusted, or requested by us.
    #[serde(default)]
    pub state: TrustState,
    /// When the entry was added (seconds since the Unix epoch).
    #[serde(default)]
    pub added_unix: u64,
}

/// The whole trust store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStore {
    /// Peers, in the order they were added.
    #[serde(default, rename = "peer")]
    pub peers: Vec<TrustEntry>,
}

impl TrustStore {
    /// The entry of an agent.
    pub fn get(&self, id: &AgentId) -> Option<&TrustEntry> {
        self.peers.iter().find(|entry| entry.id == *id)
    }

    /// The entry with a local name.
    pub fn by_name(&self, name: &str) -> Option<&TrustEntry> {
        self.peers.iter().find(|entry| entry.name == name)
    }

    /// Adds or replaces an entry, keeping names unique.
    pub fn upsert(&mut self, own_id: &AgentId, entry: TrustEntry) -> Result<(), TrustError> {
        if entry.id == *own_id {
            return Err(TrustError::IsSelf);
        }
        validate_name(&entry.name)?;
        if let Some(other) = self.by_name(&entry.name)
            && other.id != entry.id
        {
            return Err(TrustError::NameTaken {
                name: entry.name.clone(),
                other: other.id,
            });
        }
        match self
            .peers
            .iter_mut()
            .find(|existing| existing.id == entry.id)
        {
            Some(existing) => *existing = entry,
            None => self.peers.push(entry),
        }
        Ok(())
    }

    /// Removes an entry, returning it.
    pub fn remove(&mut self, id: &AgentId) -> Result<TrustEntry, TrustError> {
        let position = self
            .peers
            .iter()
            .position(|entry| entry.id == *id)
            .ok_or(TrustError::NotFound(*id))?;
        Ok(self.peers.remove(position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;

    fn id(seed: u8) -> AgentId {
        Identity::from_secret_bytes(&[seed; 32])
            .expect("32 bytes")
            .agent_id()
    }

    fn entry(seed: u8, name: &str) -> TrustEntry {
        TrustEntry {
            id: id(seed),
            name: name.to_string(),
            endpoint: None,
            allow: Policy::All,
            state: TrustState::Trusted,
            added_unix: 0,
        }
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(validate_name("bob-2").is_ok());
        for bad in ["", "Bob", "-bob", "bob-", "bo.b", "bob_1", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn upsert_replaces_and_keeps_names_unique() {
        let me = id(0);
        let mut store = TrustStore::default();
        store.upsert(&me, entry(1, "bob")).expect("added");
        store.upsert(&me, entry(1, "robert")).expect("renamed");
        assert_eq!(store.peers.len(), 1);
        assert_eq!(store.peers[0].name, "robert");
        assert!(matches!(
            store.upsert(&me, entry(2, "robert")),
            Err(TrustError::NameTaken { .. })
        ));
        assert_eq!(store.upsert(&me, entry(0, "me")), Err(TrustError::IsSelf));
    }

    #[test]
    fn toml_round_trips() {
        let me = id(0);
        let mut store = TrustStore::default();
        let mut bob = entry(1, "bob");
        bob.allow = "tcp:80,icmp".parse().expect("valid");
        bob.endpoint = Some("10.0.0.2:7400".to_string());
        store.upsert(&me, bob).expect("added");
        let text = toml::to_string(&store).expect("serializes");
        let back: TrustStore = toml::from_str(&text).expect("parses");
        assert_eq!(back, store);
    }

    #[test]
    fn remove_of_unknown_peer_is_an_error() {
        let mut store = TrustStore::default();
        assert_eq!(store.remove(&id(3)), Err(TrustError::NotFound(id(3))));
    }
}
