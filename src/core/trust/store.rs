//! The trust store's contents (DESIGN.md §3): the agents this agent will talk
//! to, each with a local name and an allow-policy. Reading and writing the
//! file is the shell's job (`crate::state`); this module is the data and its
//! rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::identity::AgentId;
use crate::core::policy::Policy;

/// Longest local name: one DNS label, so `NAME.agent.internal` resolves.
pub const MAX_NAME_LEN: usize = 63;

/// How long an agent we asked for trust stays in the store without
/// answering (its approval shows as a session): as long as our request
/// waits in its pending list.
pub const DEFAULT_REQUESTED_TTL: Duration = crate::core::trust::pending::PENDING_TTL;

/// Errors in trust-store edits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// The local name is not a DNS label.
    #[error(
        "bad name {0:?}: use 1-63 characters a-z, 0-9 and `-`, not starting or ending with `-`"
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
    /// This agent asked the peer for trust and waits for its approval: the
    /// peer's handshake is accepted, but it may open nothing here (policy
    /// `none` unless set otherwise), and the entry expires.
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
    /// When a requested entry lapses unless the peer approved by then
    /// (seconds since the Unix epoch). Trusted entries do not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

impl TrustEntry {
    /// The entry of an agent trusted to open what `allow` lists, added at
    /// `added_unix` (0: stamped with the time `trust.toml` first stores it).
    pub fn trusted(
        id: AgentId,
        name: String,
        endpoint: Option<String>,
        allow: Policy,
        added_unix: u64,
    ) -> Self {
        Self {
            id,
            name,
            endpoint,
            allow,
            state: TrustState::Trusted,
            added_unix,
            expires_unix: None,
        }
    }

    /// The entry of an agent this agent asks for trust at `now_unix`: it may
    /// open nothing here (replies to our own flows pass), and it lapses
    /// after `ttl` unless it approves.
    pub fn requested(
        id: AgentId,
        name: String,
        endpoint: Option<String>,
        now_unix: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            id,
            name,
            endpoint,
            allow: Policy::none(),
            state: TrustState::Requested,
            added_unix: now_unix,
            expires_unix: Some(now_unix.saturating_add(ttl.as_secs())),
        }
    }

    /// Whether this is a requested entry whose time ran out at `now_unix`.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.state == TrustState::Requested
            && self.expires_unix.is_some_and(|expires| expires <= now_unix)
    }

    /// The peer approved (a session formed): an ordinary trusted entry with
    /// the same policy, no longer expiring.
    pub fn mark_approved(&mut self) {
        self.state = TrustState::Trusted;
        self.expires_unix = None;
    }
}

/// What `trust add` asks: the name always, the endpoint and the policy only
/// when given. An update keeps what it does not name: renaming a peer must
/// neither forget where it is nor widen what it may open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustUpdate {
    /// The peer's agent ID.
    pub id: AgentId,
    /// Its local name.
    pub name: String,
    /// Its underlay endpoint, if the request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What it may open, if the request says; a new entry without one may
    /// open anything (`all`), an existing one keeps its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Policy>,
}

impl TrustUpdate {
    /// The entry this update makes: `existing` with the name and whatever
    /// else was given (trusted from now on, no longer expiring), or a new
    /// trusted entry added at `added_unix`.
    pub fn apply_to(self, existing: Option<&TrustEntry>, added_unix: u64) -> TrustEntry {
        let Some(existing) = existing else {
            let allow = self.allow.unwrap_or(Policy::All);
            return TrustEntry::trusted(self.id, self.name, self.endpoint, allow, added_unix);
        };
        TrustEntry {
            id: self.id,
            name: self.name,
            endpoint: self.endpoint.or_else(|| existing.endpoint.clone()),
            allow: self.allow.unwrap_or_else(|| existing.allow.clone()),
            state: TrustState::Trusted,
            added_unix: existing.added_unix,
            expires_unix: None,
        }
    }
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

    /// Removes the requested entries whose time ran out at `now_unix`,
    /// returning them.
    pub fn remove_expired(&mut self, now_unix: u64) -> Vec<TrustEntry> {
        let (expired, kept) = std::mem::take(&mut self.peers)
            .into_iter()
            .partition(|entry| entry.is_expired(now_unix));
        self.peers = kept;
        expired
    }

    /// When the next requested entry expires, if any does.
    pub fn next_expiry(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter(|entry| entry.state == TrustState::Requested)
            .filter_map(|entry| entry.expires_unix)
            .min()
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
    use crate::core::policy::InboundKind;

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
            expires_unix: None,
        }
    }

    #[test]
    fn an_update_keeps_the_endpoint_and_policy_it_does_not_name() {
        let narrow: Policy = "tcp:8080,icmp".parse().expect("policy");
        let mut requested = TrustEntry::requested(
            id(1),
            "bob".into(),
            Some("192.0.2.7:7400".into()),
            100,
            DEFAULT_REQUESTED_TTL,
        );
        requested.allow = narrow.clone();
        let rename = TrustUpdate {
            id: id(1),
            name: "robert".into(),
            endpoint: None,
            allow: None,
        };
        let renamed = rename.clone().apply_to(Some(&requested), 999);
        assert_eq!(renamed.name, "robert");
        assert_eq!(renamed.endpoint.as_deref(), Some("192.0.2.7:7400"));
        assert_eq!(renamed.allow, narrow, "a rename must not widen the policy");
        assert_eq!(renamed.state, TrustState::Trusted);
        assert_eq!(renamed.expires_unix, None);
        assert_eq!(renamed.added_unix, 100);

        let changed = TrustUpdate {
            endpoint: Some("198.51.100.1:7400".into()),
            allow: Some(Policy::none()),
            ..rename.clone()
        }
        .apply_to(Some(&renamed), 999);
        assert_eq!(changed.endpoint.as_deref(), Some("198.51.100.1:7400"));
        assert_eq!(changed.allow, Policy::none());

        let new = rename.apply_to(None, 999);
        assert_eq!(
            new.allow,
            Policy::All,
            "a new entry without --allow may open anything"
        );
        assert_eq!(new.endpoint, None);
        assert_eq!(new.added_unix, 999);
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
    fn requested_entry_allows_nothing_inbound_and_expires() {
        let ttl = Duration::from_secs(3600);
        let requested = TrustEntry::requested(id(1), "bob".into(), None, 1_000, ttl);
        assert_eq!(requested.state, TrustState::Requested);
        assert_eq!(requested.allow, Policy::none());
        for kind in [
            InboundKind::Tcp(22),
            InboundKind::Udp(53),
            InboundKind::IcmpEcho,
            InboundKind::Other,
        ] {
            assert!(!requested.allow.allows(kind), "{kind:?} allowed");
        }
        assert_eq!(requested.expires_unix, Some(4_600));
        assert!(!requested.is_expired(4_599));
        assert!(requested.is_expired(4_600));

        let mut store = TrustStore::default();
        store.upsert(&id(0), requested.clone()).expect("added");
        store.upsert(&id(0), entry(2, "carol")).expect("added");
        assert_eq!(store.next_expiry(), Some(4_600));
        assert!(store.remove_expired(4_599).is_empty());
        assert_eq!(store.remove_expired(4_600), vec![requested.clone()]);
        assert_eq!(store.peers.len(), 1, "the trusted entry stays");
        assert_eq!(store.next_expiry(), None);

        // Approved: trusted, same (empty) policy, no expiry.
        let mut approved = requested;
        approved.mark_approved();
        assert_eq!(approved.state, TrustState::Trusted);
        assert_eq!(approved.allow, Policy::none());
        assert!(!approved.is_expired(u64::MAX));
        let text = toml::to_string(&TrustStore {
            peers: vec![approved.clone()],
        })
        .expect("serializes");
        assert!(!text.contains("expires_unix"), "{text}");
        assert!(text.contains("allow = \"none\""), "{text}");
    }

    #[test]
    fn remove_of_unknown_peer_is_an_error() {
        let mut store = TrustStore::default();
        assert_eq!(store.remove(&id(3)), Err(TrustError::NotFound(id(3))));
    }
}
