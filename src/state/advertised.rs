//! `STATE_DIR/advertised.json`: the services `agentnet advertise` declares
//! (services the agent runs itself on its overlay addresses), kept across
//! restarts, and the whole set the agent advertises: these first, then
//! every `agentnet serve` entry whose port they do not name.
//!
//! Same conventions as `served.json`: written atomically under an
//! exclusive `flock` on `advertised.lock`, by the daemon while it runs and
//! by the CLI while it does not; read without following a link; content
//! that does not parse, breaks an entry's rules or names a `KIND:PORT`
//! twice is refused with the file's path in the error.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::lock::LockedFile;
use super::served::{ServeMode, ServedStore};
use super::{StateDir, StateError};
use crate::core::services::{MAX_SERVICES, Service, ServiceKind, fitting};

/// File name of the advertised services.
pub const ADVERTISED_FILE: &str = "advertised.json";
/// File name of the lock that serializes edits of [`ADVERTISED_FILE`].
const ADVERTISED_LOCK: &str = "advertised.lock";

/// Where an advertised service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceSource {
    /// `agentnet advertise`.
    Advertise,
    /// An `agentnet serve` entry.
    Serve,
}

/// One entry of the set and whether it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedStatus {
    /// The service.
    #[serde(flatten)]
    pub service: Service,
    /// Where it comes from.
    pub source: ServiceSource,
    /// False when it did not fit the advertisement (over 32 entries or
    /// its size bound): peers do not see it.
    pub advertised: bool,
}

/// What `advertised.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisedStore {
    /// The declared services, in the order they were added.
    #[serde(default)]
    pub advertised: Vec<Service>,
}

impl AdvertisedStore {
    /// The record in `state` (empty if there is none).
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state
            .read_json(ADVERTISED_FILE, Self::parse)?
            .unwrap_or_default())
    }

    /// Parses and checks the file's content.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let store: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if store.advertised.len() > MAX_SERVICES {
            return Err(format!(
                "{} services, at most {MAX_SERVICES} may be advertised",
                store.advertised.len()
            ));
        }
        let mut keys = BTreeSet::new();
        for service in &store.advertised {
            service.validate().map_err(|e| e.to_string())?;
            if !keys.insert(service.key()) {
                return Err(format!("{} is advertised twice", service.key()));
            }
        }
        Ok(store)
    }

    /// The index of the entry `kind:port`, if there is one.
    pub fn position(&self, kind: &ServiceKind, port: u16) -> Option<usize> {
        self.advertised
            .iter()
            .position(|service| service.kind == *kind && service.port == port)
    }

    /// Runs `edit` on the record under the exclusive lock and, if it
    /// succeeds and changed something, writes the result atomically.
    pub fn edit<T, E: From<StateError>>(
        state: &StateDir,
        edit: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        state.edit_locked(edit)
    }

    /// The whole set in priority order: the declared services, then each
    /// served port none of them names (`http` for an HTTP proxy, `tcp` for
    /// a splice, path `/` for HTTP), each marked with whether it fits the
    /// advertisement.
    pub fn with_served(&self, served: &ServedStore) -> Vec<AdvertisedStatus> {
        let mut all: Vec<(Service, ServiceSource)> = self
            .advertised
            .iter()
            .map(|service| (service.clone(), ServiceSource::Advertise))
            .collect();
        for spec in &served.served {
            if self.advertised.iter().any(|s| s.port == spec.port) {
                continue;
            }
            let (kind, path) = match spec.mode {
                ServeMode::Http => ("http", Some("/".to_string())),
                ServeMode::Tcp => ("tcp", None),
            };
            if let Ok(kind) = kind.parse()
                && let Ok(service) = Service::new(kind, spec.port, path, None)
            {
                all.push((service, ServiceSource::Serve));
            }
        }
        let services: Vec<Service> = all.iter().map(|(service, _)| service.clone()).collect();
        all.into_iter()
            .zip(fitting(&services))
            .map(|((service, source), advertised)| AdvertisedStatus {
                service,
                source,
                advertised,
            })
            .collect()
    }
}

/// The services of a set that are sent to peers.
pub fn sent(set: &[AdvertisedStatus]) -> Vec<Service> {
    set.iter()
        .filter(|status| status.advertised)
        .map(|status| status.service.clone())
        .collect()
}

impl LockedFile for AdvertisedStore {
    const LOCK_FILE: &'static str = ADVERTISED_LOCK;

    fn load(state: &StateDir) -> Result<Self, StateError> {
        AdvertisedStore::load(state)
    }

    fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.replace_json(ADVERTISED_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::atomic_write;
    use crate::state::served::ServeSpec;
    use crate::state::test_support::state;

    fn service(text: &str, path: Option<&str>) -> Service {
        Service::parse(text, path.map(Into::into), None).expect(text)
    }

    #[test]
    fn advertised_file_round_trips_and_starts_empty() {
        let (_dir, state) = state();
        assert_eq!(
            AdvertisedStore::load(&state).expect("empty"),
            AdvertisedStore::default()
        );
        let mcp = service("mcp:8000", Some("/mcp"));
        AdvertisedStore::edit::<_, StateError>(&state, |store| {
            store.advertised.push(mcp.clone());
            Ok(())
        })
        .expect("saved");
        let back = AdvertisedStore::load(&state).expect("loads");
        assert_eq!(back.advertised, vec![mcp]);
        let kind: ServiceKind = "mcp".parse().expect("kind");
        assert_eq!(back.position(&kind, 8000), Some(0));
        assert_eq!(back.position(&kind, 8001), None);
    }

    #[test]
    fn bad_advertised_content_is_refused_with_the_reason() {
        let (_dir, state) = state();
        state.create().expect("dir");
        for (content, reason) in [
            ("not json", "expected"),
            (r#"{"advertised":[{"kind":"MCP","port":1}]}"#, "bad KIND"),
            (r#"{"advertised":[{"kind":"mcp","port":0}]}"#, "bad PORT"),
            (
                r#"{"advertised":[{"kind":"mcp","port":1,"path":"x"}]}"#,
                "bad path",
            ),
            (
                r#"{"advertised":[{"kind":"mcp","port":1},{"kind":"mcp","port":1}]}"#,
                "twice",
            ),
            (r#"{"advertised":[],"x":1}"#, "unknown field"),
        ] {
            atomic_write(
                &state.root().join(ADVERTISED_FILE),
                content.as_bytes(),
                0o600,
            )
            .expect("written");
            let error = AdvertisedStore::load(&state)
                .expect_err(content)
                .to_string();
            assert!(error.contains(ADVERTISED_FILE), "{error}");
            assert!(error.contains(reason), "{content}: {error}");
        }
    }

    #[test]
    fn served_ports_are_advertised_unless_a_declared_service_names_them() {
        let store = AdvertisedStore {
            advertised: vec![service("mcp:8000", Some("/mcp"))],
        };
        let served = ServedStore {
            served: vec![
                ServeSpec::new(8000, ServeMode::Http, None).expect("spec"),
                ServeSpec::new(8080, ServeMode::Http, None).expect("spec"),
                ServeSpec::new(5432, ServeMode::Tcp, None).expect("spec"),
            ],
        };
        let set = store.with_served(&served);
        let shown: Vec<(String, Option<&str>, ServiceSource)> = set
            .iter()
            .map(|s| (s.service.key(), s.service.path.as_deref(), s.source))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "mcp:8000".to_string(),
                    Some("/mcp"),
                    ServiceSource::Advertise
                ),
                ("http:8080".to_string(), Some("/"), ServiceSource::Serve),
                ("tcp:5432".to_string(), None, ServiceSource::Serve),
            ]
        );
        assert!(set.iter().all(|s| s.advertised));
        assert_eq!(sent(&set).len(), 3);
    }

    #[test]
    fn served_ports_beyond_the_bound_are_listed_but_not_sent() {
        let served = ServedStore {
            served: (1..=40)
                .map(|port| ServeSpec::new(port, ServeMode::Http, None).expect("spec"))
                .collect(),
        };
        let set = AdvertisedStore::default().with_served(&served);
        assert_eq!(set.len(), 40);
        assert_eq!(sent(&set).len(), MAX_SERVICES);
        assert!(!set[MAX_SERVICES].advertised);
    }
}
