//! `STATE_DIR/served.json`: the services `agentnet serve` publishes, kept
//! across restarts.
//!
//! Written atomically (temp file, `fsync`, `rename`) under an exclusive
//! `flock` on `served.lock`, by the daemon while it runs and by the CLI
//! while it does not; read without following a link (the directory belongs
//! to the daemon's user after `up`). Content that does not parse, or that
//! names a port twice, is refused with the file's path in the error.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{MAX_SERVED, ServeSpec};
use crate::sys::nofollow::OpenFor;
use crate::state::{StateDir, StateError, atomic_write};

/// File name of the served services.
pub const SERVED_FILE: &str = "served.json";
/// File name of the lock that serializes edits of [`SERVED_FILE`].
const SERVED_LOCK: &str = "served.lock";

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
        let Some(text) = state.read_file(SERVED_FILE)? else {
            return Ok(Self::default());
        };
        Self::parse(text.as_bytes()).map_err(|problem| {
            let path = state.root().join(SERVED_FILE);
            StateError::io(
                "parse",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, problem),
            )
        })
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
        state.create()?;
        let lock_file = state.open_file(SERVED_LOCK, OpenFor::ReadWrite(0o600))?;
        let _lock = lock(lock_file).map_err(|source| StateError::Io {
            action: "lock",
            path: state.root().join(SERVED_LOCK),
            source,
        })?;
        let mut record = Self::load(state)?;
        let before = record.clone();
        let result = edit(&mut record)?;
        if record != before {
            record.save(state)?;
        }
        Ok(result)
    }

    fn save(&self, state: &StateDir) -> Result<(), StateError> {
        let path = state.root().join(SERVED_FILE);
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| StateError::Io {
            action: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        atomic_write(&path, &text, 0o600)
    }
}

fn lock(mut file: File) -> io::Result<Flock<File>> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(locked) => return Ok(locked),
            Err((returned, nix::errno::Errno::EINTR)) => file = returned,
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::ServeMode;

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        (dir, state)
    }

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
}
