//! Trust requests on the shell's side (DESIGN.md §4): the rules an approval
//! follows (the granted policy is never wider than the request; the local
//! name is the claimed one made a unique DNS label), and the pending file
//! that carries waiting requests across daemon restarts.
//!
//! `STATE_DIR/pending.toml` holds one `[[request]]` table per waiting
//! request, everything it carried plus where and when it arrived. Only the
//! daemon writes it (it holds the instance lock), atomically like every state
//! file; the requests in it were verified when they arrived. One `[[seen]]`
//! table per nonce of a request seen in the last minutes (waiting, approved
//! or denied) keeps the replay set across restarts, so a captured request
//! replayed after a restart is still a replay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use serde::{Deserialize, Serialize};

use crate::core::identity::AgentId;
use crate::core::policy::Policy;
use crate::core::trust::pending::{NONCE_LIFETIME, PENDING_TTL, PendingRequest, SeenNonce};
use crate::core::trust::request::TrustRequest;
use crate::core::trust::store::{
    DEFAULT_REQUESTED_TTL, MAX_NAME_LEN, TrustError, TrustStore, validate_name,
};
use crate::state::fleet::{endorsement_token, parse_endorsement_token};
use crate::state::{StateDir, StateError, sanitize_label};

/// File name of the saved pending requests.
pub const PENDING_FILE: &str = "pending.toml";
/// The comment at the top of the pending file.
const PENDING_FILE_HEADER: &str = "# agentnet: trust requests waiting for `agentnet trust approve` or `deny`.\n\
     # Written by the daemon; approve or deny with the CLI, not by editing.\n\n";
/// Prefix of the local name a requester gives its target by default.
const TARGET_NAME_PREFIX: &str = "peer-";
/// Characters of the target's ID in that default name.
const TARGET_NAME_ID_CHARS: usize = 8;

/// The `[trust_requests]` table of `config.toml`:
///
/// ```toml
/// [trust_requests]
/// requested_ttl_s = 604800   # how long an agent we asked may take to approve
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrustRequestsConfig {
    /// Seconds an agent this agent asked for trust stays in the store
    /// ("requested") without approving; then its entry is removed.
    #[serde(default = "default_requested_ttl_s")]
    pub requested_ttl_s: u64,
}

fn default_requested_ttl_s() -> u64 {
    DEFAULT_REQUESTED_TTL.as_secs()
}

impl Default for TrustRequestsConfig {
    fn default() -> Self {
        Self {
            requested_ttl_s: default_requested_ttl_s(),
        }
    }
}

impl TrustRequestsConfig {
    /// Reads `[trust_requests]` from the state directory's `config.toml`
    /// (the defaults if the file or the table is missing).
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        #[derive(Deserialize)]
        struct ConfigFile {
            #[serde(default)]
            trust_requests: TrustRequestsConfig,
        }
        Ok(state
            .load_config_tables::<ConfigFile>()?
            .map(|file| file.trust_requests)
            .unwrap_or_default())
    }

    /// How long a requested entry lives.
    pub fn requested_ttl(&self) -> Duration {
        Duration::from_secs(self.requested_ttl_s)
    }
}

/// Why an approval is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    /// `--allow` grants more than the requester asked for.
    #[error(
        "refusing to grant `{granted}`: the request asked for `{requested}`; \
         --allow may narrow a request, never widen it"
    )]
    WiderThanRequested {
        /// What the operator tried to grant.
        granted: Policy,
        /// What the requester asked for.
        requested: Policy,
    },
}

/// The policy an approval grants: what was requested, or `allow` if it is
/// within the request.
pub fn granted_policy(requested: &Policy, allow: Option<Policy>) -> Result<Policy, ApprovalError> {
    match allow {
        None => Ok(requested.clone()),
        Some(granted) if granted.is_within(requested) => Ok(granted),
        Some(granted) => Err(ApprovalError::WiderThanRequested {
            granted,
            requested: requested.clone(),
        }),
    }
}

/// The local name `id` gets on approval: `explicit` if given (it must be a
/// free DNS label), else the name it claims made a DNS label, with `-2`,
/// `-3`, ... appended when another peer has it.
pub fn approval_name(
    store: &TrustStore,
    id: &AgentId,
    explicit: Option<&str>,
    claimed: &str,
) -> Result<String, TrustError> {
    match explicit {
        Some(name) => {
            validate_name(name)?;
            match store.by_name(name) {
                Some(other) if other.id != *id => Err(TrustError::NameTaken {
                    name: name.to_string(),
                    other: other.id,
                }),
                _ => Ok(name.to_string()),
            }
        }
        None => Ok(unique_name(store, id, &sanitize_label(claimed))),
    }
}

/// The local name a requester gives its target when `--name` is not given:
/// `peer-` and the start of its ID, made unique.
pub fn default_target_name(store: &TrustStore, id: &AgentId) -> String {
    let text = id.to_string();
    let base = format!(
        "{TARGET_NAME_PREFIX}{}",
        &text[..TARGET_NAME_ID_CHARS.min(text.len())]
    );
    unique_name(store, id, &base)
}

/// `base` if no other peer has it, else `base-N` for the smallest free N
/// (shortening `base` to stay a DNS label).
fn unique_name(store: &TrustStore, id: &AgentId, base: &str) -> String {
    let free = |name: &str| store.by_name(name).is_none_or(|entry| entry.id == *id);
    if free(base) {
        return base.to_string();
    }
    (2u32..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = base.len().min(MAX_NAME_LEN - suffix.len());
            format!("{}{suffix}", base[..keep].trim_end_matches('-'))
        })
        .find(|name| free(name))
        .unwrap_or_else(|| base.to_string())
}

/// One waiting request as saved in the pending file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Who asks.
    pub requester: AgentId,
    /// The name it claims.
    pub name: String,
    /// Why it asks.
    pub justification: String,
    /// The ports it asks for.
    pub requested: Policy,
    /// Where the request came from.
    pub from: SocketAddr,
    /// Whether it came through a rendezvous (`from` is the rendezvous).
    #[serde(default)]
    pub via_relay: bool,
    /// The rendezvous' tag of the requester's address (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source_tag: u32,
    /// When it arrived (seconds since the Unix epoch).
    pub received_unix: u64,
    /// The requester's timestamp in the request.
    pub sent_unix: u64,
    /// The request's nonce, hex.
    pub nonce: String,
    /// Where the requester said it may be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<SocketAddr>,
    /// A fleet endorsement, as a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<String>,
}

impl PendingRecord {
    /// Saves a pending request; `now` and `unix_now` are the same moment on
    /// the monotonic and the wall clock.
    pub fn of(pending: &PendingRequest, now: Instant, unix_now: Duration) -> Self {
        let age = now.saturating_duration_since(pending.received);
        let request = &pending.request;
        Self {
            requester: request.requester,
            name: request.name.clone(),
            justification: request.justification.clone(),
            requested: request.requested.clone(),
            from: pending.from,
            via_relay: pending.via_relay,
            source_tag: pending.source_tag,
            received_unix: unix_now.saturating_sub(age).as_secs(),
            sent_unix: request.unix_time,
            nonce: encode_nonce(&request.nonce),
            candidates: request.candidates.clone(),
            endorsement: request.endorsement.as_ref().map(endorsement_token),
        }
    }

    /// The pending request again, addressed to `own`; `None` when it has
    /// expired or the record is damaged. A request older than this host's
    /// monotonic clock (saved before a reboot) restarts its age at `now`.
    pub fn restore(
        &self,
        own: AgentId,
        now: Instant,
        unix_now: Duration,
    ) -> Option<PendingRequest> {
        let age = unix_now.saturating_sub(Duration::from_secs(self.received_unix));
        if age >= PENDING_TTL {
            return None;
        }
        let nonce = decode_nonce(&self.nonce)?;
        let endorsement = match &self.endorsement {
            Some(token) => Some(parse_endorsement_token(token).ok()?),
            None => None,
        };
        Some(PendingRequest {
            request: TrustRequest {
                requester: self.requester,
                target: own,
                unix_time: self.sent_unix,
                nonce,
                name: self.name.clone(),
                justification: self.justification.clone(),
                requested: self.requested.clone(),
                candidates: self.candidates.clone(),
                endorsement,
            },
            from: self.from,
            via_relay: self.via_relay,
            source_tag: self.source_tag,
            received: now.checked_sub(age).unwrap_or(now),
        })
    }
}

/// A nonce of the replay set as saved in the pending file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenNonceRecord {
    /// Who sent the request.
    pub requester: AgentId,
    /// Its nonce, hex.
    pub nonce: String,
    /// When it may be forgotten (seconds since the Unix epoch).
    pub expires_unix: u64,
}

impl SeenNonceRecord {
    /// Saves a nonce; `unix_now` is the wall clock now.
    pub fn of(seen: &SeenNonce, unix_now: Duration) -> Self {
        Self {
            requester: seen.requester,
            nonce: encode_nonce(&seen.nonce),
            expires_unix: unix_now.saturating_add(seen.remaining).as_secs() + 1,
        }
    }

    /// The nonce again; `None` when it has expired or the record is
    /// damaged. What remains is at most [`NONCE_LIFETIME`] (a clock set back
    /// cannot make it live longer).
    pub fn restore(&self, unix_now: Duration) -> Option<SeenNonce> {
        let remaining = Duration::from_secs(self.expires_unix).checked_sub(unix_now)?;
        if remaining.is_zero() {
            return None;
        }
        Some(SeenNonce {
            requester: self.requester,
            nonce: decode_nonce(&self.nonce)?,
            remaining: remaining.min(NONCE_LIFETIME),
        })
    }
}

fn is_zero(tag: &u32) -> bool {
    *tag == 0
}

fn encode_nonce(nonce: &[u8; 16]) -> String {
    HEXLOWER.encode(nonce)
}

fn decode_nonce(text: &str) -> Option<[u8; 16]> {
    let mut nonce = [0u8; 16];
    if text.len() != 2 * nonce.len() {
        return None;
    }
    HEXLOWER_PERMISSIVE
        .decode_mut(text.as_bytes(), &mut nonce)
        .ok()?;
    Some(nonce)
}

/// The pending file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFile {
    #[serde(default, rename = "request")]
    requests: Vec<PendingRecord>,
    #[serde(default, rename = "seen", skip_serializing_if = "Vec::is_empty")]
    seen: Vec<SeenNonceRecord>,
}

/// Where the pending file of `state` lives.
pub fn pending_path(state: &StateDir) -> PathBuf {
    state.root().join(PENDING_FILE)
}

/// Replaces the pending file atomically with `records` and the replay set
/// `seen`.
pub fn save_pending(
    state: &StateDir,
    records: Vec<PendingRecord>,
    seen: Vec<SeenNonceRecord>,
) -> Result<(), StateError> {
    let file = PendingFile {
        requests: records,
        seen,
    };
    state.create()?;
    state.replace_toml(
        PENDING_FILE,
        "the pending trust requests",
        PENDING_FILE_HEADER,
        &file,
    )
}

/// Reads the pending file (empty if there is none).
fn load_pending_file(state: &StateDir) -> Result<PendingFile, StateError> {
    // Not following a link, as every state file (the daemon user owns the
    // directory).
    Ok(state.read_toml(PENDING_FILE)?.unwrap_or_default())
}

/// Reads the waiting requests of the pending file (empty if there is none).
pub fn load_pending(state: &StateDir) -> Result<Vec<PendingRecord>, StateError> {
    Ok(load_pending_file(state)?.requests)
}

/// Reads the saved replay set of the pending file (empty if there is none).
pub fn load_seen_nonces(state: &StateDir) -> Result<Vec<SeenNonceRecord>, StateError> {
    Ok(load_pending_file(state)?.seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::trust::request::Endorsement;
    use crate::core::trust::store::{TrustEntry, TrustState};

    fn id(seed: u8) -> AgentId {
        Identity::from_secret_bytes(&[seed; 32])
            .expect("key")
            .agent_id()
    }

    fn store_with(names: &[(u8, &str)]) -> TrustStore {
        let mut store = TrustStore::default();
        for (seed, name) in names {
            store
                .upsert(
                    &id(0),
                    TrustEntry {
                        id: id(*seed),
                        name: name.to_string(),
                        endpoint: None,
                        allow: Policy::All,
                        state: TrustState::Trusted,
                        added_unix: 0,
                        expires_unix: None,
                    },
                )
                .expect("upsert");
        }
        store
    }

    fn policy(text: &str) -> Policy {
        text.parse().expect("policy")
    }

    #[test]
    fn requested_ttl_defaults_to_a_week_and_is_read_from_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let default = TrustRequestsConfig::load(&state).expect("no file");
        assert_eq!(default.requested_ttl(), DEFAULT_REQUESTED_TTL);
        std::fs::write(
            state.config_path(),
            "name = \"a\"\n\n[trust_requests]\nrequested_ttl_s = 60\n",
        )
        .expect("write");
        let config = TrustRequestsConfig::load(&state).expect("parses");
        assert_eq!(config.requested_ttl(), Duration::from_secs(60));
        std::fs::write(
            state.config_path(),
            "[trust_requests]\nrequested_ttl_s = \"soon\"\n",
        )
        .expect("write");
        assert!(TrustRequestsConfig::load(&state).is_err());
    }

    #[test]
    fn granted_policy_defaults_to_the_request_and_never_widens_it() {
        let requested = policy("tcp:8000-8100,icmp");
        assert_eq!(granted_policy(&requested, None), Ok(requested.clone()));
        assert_eq!(
            granted_policy(&requested, Some(policy("tcp:8080"))),
            Ok(policy("tcp:8080"))
        );
        for wider in ["all", "tcp:22", "tcp:8000-8101", "udp:8080"] {
            assert!(
                granted_policy(&requested, Some(policy(wider))).is_err(),
                "{wider} granted"
            );
        }
        let message = granted_policy(&requested, Some(Policy::All))
            .expect_err("wider")
            .to_string();
        assert!(message.contains("never widen"), "{message}");
        assert_eq!(
            granted_policy(&Policy::All, Some(Policy::All)),
            Ok(Policy::All)
        );
    }

    #[test]
    fn approval_name_is_a_unique_label_from_the_claim() {
        let store = store_with(&[(1, "bob"), (2, "bob-2")]);
        assert_eq!(
            approval_name(&store, &id(9), None, "Carol's Agent").unwrap(),
            "carol-s-agent"
        );
        assert_eq!(approval_name(&store, &id(9), None, "bob").unwrap(), "bob-3");
        // Its own name is not taken from itself.
        assert_eq!(approval_name(&store, &id(1), None, "bob").unwrap(), "bob");
        assert_eq!(
            approval_name(&store, &id(9), None, "\u{1b}[31m").unwrap(),
            "31m"
        );
        assert_eq!(approval_name(&store, &id(9), None, "").unwrap(), "agent");
        let long = "x".repeat(63);
        let store = store_with(&[(1, &long)]);
        let name = approval_name(&store, &id(9), None, &long).unwrap();
        assert!(
            validate_name(&name).is_ok() && name.ends_with("-2"),
            "{name}"
        );
        assert!(matches!(
            approval_name(&store, &id(9), Some(&long), "x"),
            Err(TrustError::NameTaken { .. })
        ));
        assert!(approval_name(&store, &id(9), Some("Bad Name"), "x").is_err());
        assert_eq!(
            approval_name(&store, &id(9), Some("ok"), "x").unwrap(),
            "ok"
        );
    }

    #[test]
    fn default_target_name_uses_the_id() {
        let store = TrustStore::default();
        let name = default_target_name(&store, &id(3));
        assert_eq!(name, format!("peer-{}", &id(3).to_string()[..8]));
        assert!(validate_name(&name).is_ok());
    }

    fn pending(now: Instant) -> PendingRequest {
        PendingRequest {
            request: TrustRequest {
                requester: id(1),
                target: id(2),
                unix_time: 1_800_000_000,
                nonce: [0xab; 16],
                name: "alice".into(),
                justification: "line one\nline \"two\" \u{7}".into(),
                requested: policy("tcp:8080,icmp"),
                candidates: vec!["10.0.0.1:7400".parse().expect("addr")],
                endorsement: Some(Endorsement::sign(
                    &Identity::from_secret_bytes(&[5; 32]).expect("key"),
                    &id(1),
                    crate::core::address::NetworkId::from_name("agentnet"),
                    2_000_000_000,
                    "tcp:8080".parse().expect("policy"),
                )),
            },
            from: "10.0.0.1:7400".parse().expect("addr"),
            via_relay: true,
            source_tag: 0x00ab_cdef,
            received: now,
        }
    }

    #[test]
    fn pending_requests_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        assert!(load_pending(&state).expect("no file").is_empty());
        let start = Instant::now();
        let original = pending(start);
        let unix_start = Duration::from_secs(1_800_000_100);
        let later = start + Duration::from_secs(30);
        let record = PendingRecord::of(&original, later, unix_start + Duration::from_secs(30));
        assert_eq!(record.received_unix, 1_800_000_100);
        save_pending(&state, vec![record.clone()], Vec::new()).expect("saved");
        assert_eq!(load_pending(&state).expect("loaded"), vec![record.clone()]);

        // After a restart an hour later the age carries on.
        let restart = Instant::now();
        let restored = record
            .restore(id(2), restart, unix_start + Duration::from_secs(3600))
            .expect("restored");
        assert_eq!(restored.request, original.request);
        assert_eq!(restored.from, original.from);
        assert_eq!(restored.origin(), original.origin(), "relay and tag");
        let age = restart.saturating_duration_since(restored.received);
        assert!(age == Duration::from_secs(3600) || restored.received == restart);
        // Past the TTL it is gone.
        assert!(
            record
                .restore(id(2), restart, unix_start + PENDING_TTL)
                .is_none()
        );
        let mut damaged = record;
        damaged.nonce = "zz".into();
        assert!(damaged.restore(id(2), restart, unix_start).is_none());
    }

    #[test]
    fn approved_request_replayed_after_a_restart_is_still_a_replay() {
        use crate::core::rng::core_rng;
        use crate::core::trust::pending::{Admission, PendingRequests, RequestOrigin};
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        let mut rng = core_rng([1; 32]);
        let start = Instant::now();
        let unix_start = Duration::from_secs(1_800_000_000);
        let request = pending(start).request;
        let mut before = PendingRequests::default();
        assert_eq!(before.check(start, &request, &mut rng), Admission::Queued);
        let from = "10.0.0.1:7400".parse().expect("addr");
        before.insert(start, request.clone(), RequestOrigin::direct(from));
        // Approved: it leaves the queue; the daemon saves what is left.
        assert!(before.take(&request.requester).is_some());
        let seen: Vec<SeenNonceRecord> = before
            .seen_nonces(start)
            .map(|seen| SeenNonceRecord::of(&seen, unix_start))
            .collect();
        save_pending(&state, Vec::new(), seen).expect("saved");

        // Restart a minute later: the store is reloaded from the file.
        let restart = Instant::now();
        let unix_restart = unix_start + Duration::from_secs(60);
        assert!(load_pending(&state).expect("loaded").is_empty());
        let mut after = PendingRequests::default();
        for record in load_seen_nonces(&state).expect("loaded") {
            let seen = record.restore(unix_restart).expect("still live");
            after.restore_seen_nonce(restart, seen);
        }
        assert_eq!(
            after.check(restart, &request, &mut rng),
            Admission::Replayed
        );

        // Once the lifetime is over the record is not restored at all.
        let records = load_seen_nonces(&state).expect("loaded");
        assert!(
            records[0]
                .restore(unix_start + NONCE_LIFETIME + Duration::from_secs(2))
                .is_none()
        );
        let mut damaged = records[0].clone();
        damaged.nonce = "zz".into();
        assert!(damaged.restore(unix_restart).is_none());
    }
}
