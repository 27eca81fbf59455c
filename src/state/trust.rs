//! `trust.toml`: the trust store ([`TrustStore`]), edited under an
//! exclusive `flock` on `trust.lock` ([`StateDir::edit_locked`]) and
//! replaced atomically.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::lock::LockedFile;
use super::{StateDir, StateError, TRUST_FILE, TRUST_LOCK_FILE, unix_now};
use crate::core::identity::AgentId;
use crate::core::trust::store::{TrustEntry, TrustStore, TrustUpdate, validate_name};

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
    /// writers replace the file atomically. A file that breaks a rule every
    /// edit keeps (unique agent IDs and names, valid names) is refused: a hand edit with
    /// one agent twice would be listed twice, applied last-wins by the
    /// daemon, and `trust remove` would leave the second entry in place.
    pub fn load_trust(&self) -> Result<TrustStore, StateError> {
        self.load_trust_checked(None)
    }

    /// [`StateDir::load_trust`] that also refuses an entry for `own_id`,
    /// this agent itself, for callers that know it.
    pub fn load_trust_of(&self, own_id: &AgentId) -> Result<TrustStore, StateError> {
        self.load_trust_checked(Some(own_id))
    }

    fn load_trust_checked(&self, own_id: Option<&AgentId>) -> Result<TrustStore, StateError> {
        let store = self.read_toml(TRUST_FILE)?.unwrap_or_default();
        check_trust_store(&store, own_id).map_err(|problem| StateError::BadTrustStore {
            path: self.trust_path(),
            problem,
        })?;
        Ok(store)
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
            check_trust_store(store, Some(own_id)).map_err(|problem| {
                StateError::BadTrustStore {
                    path: self.trust_path(),
                    problem,
                }
            })?;
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

/// Checks what [`TrustStore::upsert`] keeps true of every edit: each agent
/// and each local name at most once, names valid, and (if `own_id` is
/// known) no entry for this agent itself. The problem names the entries
/// (counted from 1, in file order) and the fix.
fn check_trust_store(store: &TrustStore, own_id: Option<&AgentId>) -> Result<(), String> {
    // Where each ID and name was first seen: one pass, whatever the size.
    let mut ids: HashMap<&AgentId, usize> = HashMap::with_capacity(store.peers.len());
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(store.peers.len());
    for (index, entry) in store.peers.iter().enumerate() {
        let number = index + 1;
        if own_id == Some(&entry.id) {
            return Err(format!(
                "entry {number} is this agent's own ID {} (an agent cannot trust itself); \
                 remove it",
                entry.id
            ));
        }
        validate_name(&entry.name)
            .map_err(|error| format!("entry {number} (agent {}): {error}", entry.id))?;
        if let Some(first) = ids.insert(&entry.id, index) {
            return Err(format!(
                "agent ID {} appears twice (entries {} and {number}); remove one",
                entry.id,
                first + 1
            ));
        }
        if let Some(first) = names.insert(&entry.name, index) {
            return Err(format!(
                "the name `{}` is used twice (entries {} and {number}, agents {} and {}); \
                 rename or remove one",
                entry.name,
                first + 1,
                store.peers[first].id,
                entry.id
            ));
        }
    }
    Ok(())
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

    /// A `[[peer]]` table of `trust.toml`.
    fn peer_table(entry: &TrustEntry, allow: &str) -> String {
        format!(
            "[[peer]]\nid = \"{}\"\nname = \"{}\"\nallow = \"{allow}\"\n\n",
            entry.id, entry.name
        )
    }

    /// Writes `tables` as `trust.toml` and returns the refusal of loading it.
    fn refused(state: &StateDir, tables: &[String]) -> String {
        state.create().expect("dir");
        fs::write(state.trust_path(), tables.concat()).expect("write");
        let error = state.load_trust().expect_err("refused");
        assert!(matches!(error, StateError::BadTrustStore { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("trust.toml"), "{text}");
        text
    }

    #[test]
    fn trust_store_with_one_agent_twice_is_refused_and_left_alone() {
        let (_temp, state) = state();
        let bob = peer(1, "bob");
        let mut robert = bob.clone();
        robert.name = "robert".into();
        let text = refused(
            &state,
            &[peer_table(&bob, "tcp:22"), peer_table(&robert, "all")],
        );
        let expected = format!(
            "agent ID {} appears twice (entries 1 and 2); remove one",
            bob.id
        );
        assert!(text.contains(&expected), "{text}");
        // `trust remove` must not claim to have removed it.
        assert!(state.trust_remove("bob").is_err());
        assert!(
            fs::read_to_string(state.trust_path())
                .expect("read")
                .contains("all")
        );
    }

    #[test]
    fn trust_store_with_one_name_twice_is_refused() {
        let (_temp, state) = state();
        let text = refused(
            &state,
            &[
                peer_table(&peer(1, "bob"), "all"),
                peer_table(&peer(2, "carol"), "all"),
                peer_table(&peer(3, "bob"), "all"),
            ],
        );
        assert!(
            text.contains("the name `bob` is used twice (entries 1 and 3"),
            "{text}"
        );
    }

    #[test]
    fn trust_store_with_an_invalid_name_is_refused() {
        let (_temp, state) = state();
        let bad = peer(1, "Bob.example");
        let text = refused(&state, &[peer_table(&bad, "all")]);
        assert!(
            text.contains(&format!(
                "entry 1 (agent {}): bad name \"Bob.example\"",
                bad.id
            )),
            "{text}"
        );
    }

    #[test]
    fn trust_store_with_the_own_id_is_refused_where_it_is_known() {
        let (_temp, state) = state();
        let me = peer(0, "me");
        state.create().expect("dir");
        fs::write(state.trust_path(), peer_table(&me, "all")).expect("write");
        assert_eq!(state.load_trust().expect("own ID unknown").peers.len(), 1);
        let error = state.load_trust_of(&me.id).expect_err("own ID");
        assert!(
            error.to_string().contains("entry 1 is this agent's own ID"),
            "{error}"
        );
        let error = state
            .trust_update(
                &me.id,
                TrustUpdate {
                    id: peer(1, "bob").id,
                    name: "bob".into(),
                    endpoint: None,
                    allow: None,
                },
            )
            .expect_err("edit of a store holding the own ID");
        assert!(matches!(error, StateError::BadTrustStore { .. }), "{error}");
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
