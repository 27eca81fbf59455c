//! `trust.toml`: the trust store ([`TrustStore`]), edited under an
//! exclusive `flock` on `trust.lock` ([`StateDir::edit_locked`]) and
//! replaced atomically.

use serde::{Deserialize, Serialize};

use super::lock::LockedFile;
use super::{StateDir, StateError, TRUST_FILE, TRUST_LOCK_FILE, unix_now};
use crate::core::identity::AgentId;
use crate::core::trust::store::{TrustEntry, TrustStore, TrustUpdate};

/// The comment at the top of `trust.toml`.
const TRUST_FILE_HEADER: &str = "# agentnet trust store: the agents this agent will talk to.\n\
     # Edit with `agentnet trust add/remove`; written atomically.\n\n";

/// Whether a trust-store upsert added a new peer or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustChange {
    /// The peer was not in the store before.
    Added,
    /// The peer was in the store; its entry was replaced.
    Updated,
}

impl LockedFile for TrustStore {
    const LOCK_FILE: &'static str = TRUST_LOCK_FILE;

    fn load(state: &StateDir) -> Result<Self, StateError> {
        state.load_trust()
    }

    fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.replace_toml(TRUST_FILE, "the trust store", TRUST_FILE_HEADER, self)
    }
}

impl StateDir {
    /// Reads the trust store (empty if there is no file). Needs no lock:
    /// writers replace the file atomically.
    pub fn load_trust(&self) -> Result<TrustStore, StateError> {
        Ok(self.read_toml(TRUST_FILE)?.unwrap_or_default())
    }

    /// Edits the trust store under the exclusive trust lock: reads it, runs
    /// `edit`, and if `edit` succeeds and changed it writes the result
    /// atomically. Concurrent edits from any process serialize; none is lost.
    pub fn edit_trust<T>(
        &self,
        edit: impl FnOnce(&mut TrustStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.edit_locked(edit)
    }

    /// Applies `trust add`: a new peer, or the named fields of an existing
    /// one (see [`TrustUpdate::apply_to`]). Returns the stored entry.
    pub fn trust_update(
        &self,
        own_id: &AgentId,
        update: TrustUpdate,
    ) -> Result<(TrustEntry, TrustChange), StateError> {
        self.edit_trust(|store| {
            let existing = store.get(&update.id);
            let change = if existing.is_some() {
                TrustChange::Updated
            } else {
                TrustChange::Added
            };
            let entry = update.apply_to(existing, unix_now());
            store.upsert(own_id, entry.clone())?;
            Ok((entry, change))
        })
    }

    /// Removes a peer, named by agent ID or by local name. Returns its entry.
    pub fn trust_remove(&self, peer: &str) -> Result<TrustEntry, StateError> {
        self.edit_trust(|store| {
            let id = resolve_peer(store, peer)?;
            Ok(store.remove(&id)?)
        })
    }
}

/// Finds the peer a command names: an agent ID, or a local name.
pub fn resolve_peer(store: &TrustStore, peer: &str) -> Result<AgentId, StateError> {
    if let Ok(id) = peer.parse::<AgentId>() {
        return Ok(id);
    }
    store
        .by_name(peer)
        .map(|entry| entry.id)
        .ok_or_else(|| StateError::UnknownPeer(peer.to_string()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::core::identity::Identity;
    use crate::state::test_support::{mode_of, peer, state};

    /// `trust add` naming every field of `entry`.
    fn add(state: &StateDir, me: &AgentId, entry: &TrustEntry) -> (TrustEntry, TrustChange) {
        let update = TrustUpdate {
            id: entry.id,
            name: entry.name.clone(),
            endpoint: entry.endpoint.clone(),
            allow: Some(entry.allow.clone()),
        };
        state.trust_update(me, update).expect("trust add")
    }

    #[test]
    fn failed_edit_leaves_trust_store_untouched() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        add(&state, &me, &peer(1, "bob"));
        let before = fs::read(state.trust_path()).expect("read");
        let result: Result<(), _> = state.edit_trust(|store| {
            store.peers.clear();
            Err(StateError::BadNetworkName("abort".into()))
        });
        assert!(result.is_err());
        assert_eq!(fs::read(state.trust_path()).expect("read"), before);
    }

    #[test]
    fn trust_update_of_a_name_keeps_the_stored_endpoint_and_policy() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        let mut bob = peer(1, "bob");
        bob.endpoint = Some("192.0.2.7:7400".into());
        bob.allow = "tcp:8080".parse().expect("policy");
        add(&state, &me, &bob);
        let rename = TrustUpdate {
            id: bob.id,
            name: "robert".into(),
            endpoint: None,
            allow: None,
        };
        let (stored, change) = state.trust_update(&me, rename).expect("updated");
        assert_eq!(change, TrustChange::Updated);
        let on_disk = state.load_trust().expect("load");
        assert_eq!(on_disk.peers, vec![stored.clone()]);
        assert_eq!(stored.name, "robert");
        assert_eq!(stored.endpoint, bob.endpoint);
        assert_eq!(stored.allow, bob.allow);
    }

    #[test]
    fn trust_update_reports_added_then_updated_and_keeps_added_time() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        let (first, change) = add(&state, &me, &peer(1, "bob"));
        assert_eq!(change, TrustChange::Added);
        assert!(first.added_unix > 0);
        let (second, change) = add(&state, &me, &peer(1, "robert"));
        assert_eq!(change, TrustChange::Updated);
        assert_eq!(second.added_unix, first.added_unix);
        let store = state.load_trust().expect("load");
        assert_eq!(store.peers.len(), 1);
        assert_eq!(store.peers[0].name, "robert");
        assert_eq!(mode_of(&state.trust_path()), 0o600);
    }

    #[test]
    fn trust_remove_accepts_id_or_name() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        let bob = peer(1, "bob");
        let carol = peer(2, "carol");
        add(&state, &me, &bob);
        add(&state, &me, &carol);
        assert_eq!(state.trust_remove("carol").expect("by name").id, carol.id);
        assert_eq!(
            state.trust_remove(&bob.id.to_string()).expect("by id").id,
            bob.id
        );
        assert!(state.trust_remove("bob").is_err());
        assert!(state.load_trust().expect("load").peers.is_empty());
    }

    #[test]
    fn concurrent_trust_edits_serialize_and_none_is_lost() {
        let (_temp, state) = state();
        let state = Arc::new(state);
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        let threads: Vec<_> = (1..=16u8)
            .map(|seed| {
                let state = Arc::clone(&state);
                thread::spawn(move || {
                    // Each edit reads, waits, then writes: without the lock
                    // the read-modify-write cycles would overwrite each other.
                    state
                        .edit_trust(|store| {
                            thread::sleep(Duration::from_millis(2));
                            Ok(store.upsert(&me, peer(seed, &format!("peer{seed}")))?)
                        })
                        .expect("edit");
                })
            })
            .collect();
        for handle in threads {
            handle.join().expect("thread");
        }
        let store = state.load_trust().expect("load");
        assert_eq!(store.peers.len(), 16);
    }
}
