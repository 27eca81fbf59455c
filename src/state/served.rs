//! `STATE_DIR/served.json`: the services `agentnet serve` publishes, kept
//! across restarts, and their spec ([`ServeSpec`]: overlay port, mode, local
//! target), which the `serve` module runs.
//!
//! Written atomically (temp file, `fsync`, `rename`) under an exclusive
//! `flock` on `served.lock`, by the daemon while it runs and by the CLI
//! while it does not; read without following a link (the directory belongs
//! to the daemon's user after `up`). Content that does not parse, or that
//! names a port twice, is refused with the file's path in the error.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::lock::LockedFile;
use super::{StateDir, StateError};

/// File name of the served services.
pub const SERVED_FILE: &str = "served.json";
/// File name of the lock that serializes edits of [`SERVED_FILE`].
const SERVED_LOCK: &str = "served.lock";
/// Most services one agent serves (bounds `served.json`).
pub const MAX_SERVED: usize = 256;

/// How a served port talks to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    /// A reverse proxy for HTTP/1.1 and h2c that adds the caller's identity.
    Http,
    /// Bytes spliced both ways.
    Tcp,
}

impl fmt::Display for ServeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServeMode::Http => "http",
            ServeMode::Tcp => "tcp",
        })
    }
}

/// One published service: overlay port, mode and local target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSpec {
    /// The port on the overlay addresses.
    pub port: u16,
    /// HTTP proxy or TCP splice.
    pub mode: ServeMode,
    /// Where connections go, e.g. `127.0.0.1:8000`.
    pub target: SocketAddr,
}

impl ServeSpec {
    /// A spec for `port`, the target defaulting to `127.0.0.1:PORT`.
    pub fn new(port: u16, mode: ServeMode, target: Option<&str>) -> Result<Self, ServeSpecError> {
        let target = match target {
            Some(text) => parse_target(text)?,
            None => SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let spec = Self { port, mode, target };
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses port 0 and targets no connection can go to.
    pub fn validate(&self) -> Result<(), ServeSpecError> {
        if self.port == 0 {
            return Err(ServeSpecError::BadPort);
        }
        check_target(self.target)
    }
}

/// Why a [`ServeSpec`] cannot be served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServeSpecError {
    /// Port 0 cannot be served.
    #[error("port 0 cannot be served; give a port from 1 to 65535")]
    BadPort,
    /// TARGET is not `HOST:PORT` with an IP address.
    #[error(
        "bad TARGET {0:?}: expected IPV4:PORT or [IPV6]:PORT, e.g. 127.0.0.1:8000 or [::1]:8000"
    )]
    BadTarget(String),
    /// TARGET is an address no connection can go to.
    #[error("bad TARGET {target}: {why}")]
    UnusableTarget {
        /// The target.
        target: SocketAddr,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Parses TARGET: `IPV4:PORT` or `[IPV6]:PORT`.
pub fn parse_target(text: &str) -> Result<SocketAddr, ServeSpecError> {
    let target = SocketAddr::from_str(text.trim())
        .map_err(|_| ServeSpecError::BadTarget(text.to_string()))?;
    check_target(target)?;
    Ok(target)
}

fn check_target(target: SocketAddr) -> Result<(), ServeSpecError> {
    let why = if target.port() == 0 {
        Some("port 0")
    } else if target.ip().is_unspecified() {
        Some("an unspecified address (0.0.0.0 or ::) is no place to connect to; use 127.0.0.1")
    } else if target.ip().is_multicast() {
        Some("a multicast address")
    } else {
        None
    };
    match why {
        Some(why) => Err(ServeSpecError::UnusableTarget { target, why }),
        None => Ok(()),
    }
}

/// What `served.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedStore {
    /// The published services, in the order they were added.
    #[serde(default)]
    pub served: Vec<ServeSpec>,
}

impl ServedStore {
    /// The record in `state` (empty if there is none). Bad content is an
    /// error that names the file and the problem.
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state
            .read_json(SERVED_FILE, Self::parse)?
            .unwrap_or_default())
    }

    /// Parses and checks the file's content.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let store: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        store.check()?;
        Ok(store)
    }

    /// Refuses duplicate ports, too many entries and bad targets.
    fn check(&self) -> Result<(), String> {
        if self.served.len() > MAX_SERVED {
            return Err(format!(
                "{} services, at most {MAX_SERVED} may be served",
                self.served.len()
            ));
        }
        let mut ports = BTreeSet::new();
        for spec in &self.served {
            spec.validate().map_err(|e| e.to_string())?;
            if !ports.insert(spec.port) {
                return Err(format!("port {} is served twice", spec.port));
            }
        }
        Ok(())
    }

    /// The entry for `port`, if it is served.
    pub fn get(&self, port: u16) -> Option<&ServeSpec> {
        self.served.iter().find(|spec| spec.port == port)
    }

    /// Runs `edit` on the record under the exclusive lock and, if it
    /// succeeds and changed something, writes the result atomically.
    pub fn edit<T, E: From<StateError>>(
        state: &StateDir,
        edit: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        state.edit_locked(edit)
    }
}

impl LockedFile for ServedStore {
    const LOCK_FILE: &'static str = SERVED_LOCK;

    fn load(state: &StateDir) -> Result<Self, StateError> {
        ServedStore::load(state)
    }

    fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.replace_json(SERVED_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::atomic_write;
    use crate::state::test_support::state;

    #[test]
    fn served_file_round_trips_and_starts_empty() {
        let (_dir, state) = state();
        assert_eq!(
            ServedStore::load(&state).expect("empty"),
            ServedStore::default()
        );
        let spec = ServeSpec {
            port: 8000,
            mode: ServeMode::Http,
            target: "127.0.0.1:8000".parse().expect("addr"),
        };
        let tcp = ServeSpec {
            port: 9000,
            mode: ServeMode::Tcp,
            target: "[::1]:9001".parse().expect("addr"),
        };
        ServedStore::edit::<_, StateError>(&state, |store| {
            store.served.push(spec.clone());
            store.served.push(tcp.clone());
            Ok(())
        })
        .expect("saved");
        let back = ServedStore::load(&state).expect("loads");
        assert_eq!(back.served, vec![spec.clone(), tcp]);
        assert_eq!(back.get(8000), Some(&spec));
        let text = std::fs::read_to_string(state.root().join(SERVED_FILE)).expect("text");
        assert!(text.contains(r#""mode": "http""#), "{text}");
        assert!(text.contains(r#""target": "127.0.0.1:8000""#), "{text}");
    }

    #[test]
    fn bad_served_content_is_refused_with_the_reason() {
        let (_dir, state) = state();
        state.create().expect("dir");
        let cases: [(&str, &str); 6] = [
            ("not json", "expected"),
            (
                r#"{"served":[{"port":0,"mode":"http","target":"127.0.0.1:80"}]}"#,
                "port 0",
            ),
            (
                r#"{"served":[{"port":80,"mode":"ftp","target":"127.0.0.1:80"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"served":[{"port":80,"mode":"tcp","target":"0.0.0.0:80"}]}"#,
                "unspecified",
            ),
            (
                r#"{"served":[{"port":80,"mode":"tcp","target":"127.0.0.1:80"},{"port":80,"mode":"http","target":"127.0.0.1:81"}]}"#,
                "served twice",
            ),
            (r#"{"served":[],"extra":1}"#, "unknown field"),
        ];
        for (content, reason) in cases {
            atomic_write(&state.root().join(SERVED_FILE), content.as_bytes(), 0o600)
                .expect("written");
            let error = ServedStore::load(&state).expect_err(content).to_string();
            assert!(error.contains(SERVED_FILE), "{error}");
            assert!(error.contains(reason), "{content}: {error}");
        }
    }

    #[test]
    fn a_symbolic_link_in_place_of_the_file_is_not_followed() {
        let (dir, state) = state();
        state.create().expect("dir");
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, r#"{"served":[]}"#).expect("written");
        std::os::unix::fs::symlink(&elsewhere, state.root().join(SERVED_FILE)).expect("link");
        let error = ServedStore::load(&state).expect_err("refused").to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn target_defaults_to_loopback_on_the_same_port() {
        let spec = ServeSpec::new(8000, ServeMode::Http, None).expect("spec");
        assert_eq!(
            spec.target,
            "127.0.0.1:8000".parse::<SocketAddr>().expect("addr")
        );
        let spec = ServeSpec::new(8000, ServeMode::Tcp, Some("[::1]:9000")).expect("spec");
        assert_eq!(
            spec.target,
            "[::1]:9000".parse::<SocketAddr>().expect("addr")
        );
        let spec = ServeSpec::new(80, ServeMode::Tcp, Some("10.1.2.3:8080")).expect("spec");
        assert_eq!(spec.target.port(), 8080);
    }

    #[test]
    fn bad_targets_are_refused_with_the_expected_form() {
        for text in [
            "localhost:80",
            "127.0.0.1",
            "::1:80",
            "[::1]",
            "8080",
            "",
            "1.2.3.4:99999",
        ] {
            let error = parse_target(text).expect_err(text).to_string();
            assert!(
                error.contains("IPV4:PORT or [IPV6]:PORT"),
                "{text}: {error}"
            );
        }
        for (text, why) in [
            ("0.0.0.0:80", "unspecified"),
            ("[::]:80", "unspecified"),
            ("127.0.0.1:0", "port 0"),
            ("224.0.0.1:80", "multicast"),
        ] {
            let error = parse_target(text).expect_err(text).to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
        assert!(matches!(
            ServeSpec::new(0, ServeMode::Http, None),
            Err(ServeSpecError::BadPort)
        ));
    }

    #[test]
    fn specs_serialize_as_port_mode_and_target() {
        let spec = ServeSpec::new(8000, ServeMode::Http, None).expect("spec");
        assert_eq!(
            serde_json::to_string(&spec).expect("json"),
            r#"{"port":8000,"mode":"http","target":"127.0.0.1:8000"}"#
        );
    }
}
