//! `STATE_DIR/services_generation.json`: the last generation of a
//! `Services` offer this agent issued (`{"last_issued": N}`), kept across
//! restarts so that a restarted agent's offers replace its earlier ones at
//! its peers even when its wall clock went back (peers ignore a lower
//! generation; see `core::peer::services`).
//!
//! Written by the daemon only (it holds the instance lock): at start it
//! reads the value and hands it to the node, and it replaces the file
//! atomically when the node issued a newer generation. Read without
//! following a link, like every file of the directory.
//!
//! A file that does not parse is an error naming the file and the problem
//! ([`ServicesGeneration::load`]); the daemon then logs it and starts from
//! 0, i.e. from the wall clock alone, as before this file existed, and the
//! next generation it issues overwrites the file. That is safe: at worst a
//! peer keeps the old list until the clock passes the lost value.

use serde::{Deserialize, Serialize};

use super::{StateDir, StateError};

/// File name of the last issued services generation.
pub const SERVICES_GENERATION_FILE: &str = "services_generation.json";

/// What `services_generation.json` holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesGeneration {
    /// The last generation issued (0: none).
    pub last_issued: u64,
}

impl ServicesGeneration {
    /// The record in `state` (0 if there is none). A file that does not
    /// parse is an error that names it.
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state
            .read_json(SERVICES_GENERATION_FILE, Self::parse)?
            .unwrap_or_default())
    }

    /// Parses the file's content.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Replaces the file atomically.
    pub fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.replace_json(SERVICES_GENERATION_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::atomic_write;
    use crate::state::test_support::{mode_of, state};

    #[test]
    fn generation_file_round_trips_and_starts_at_zero() {
        let (_dir, state) = state();
        state.create().expect("dir");
        assert_eq!(
            ServicesGeneration::load(&state).expect("no file"),
            ServicesGeneration::default()
        );
        let kept = ServicesGeneration {
            last_issued: 1_800_000_123_456,
        };
        kept.save(&state).expect("saved");
        assert_eq!(ServicesGeneration::load(&state).expect("loads"), kept);
        let path = state.root().join(SERVICES_GENERATION_FILE);
        assert_eq!(mode_of(&path), 0o600);
        let text = std::fs::read_to_string(&path).expect("text");
        assert!(text.contains("\"last_issued\": 1800000123456"), "{text}");
    }

    #[test]
    fn a_corrupt_generation_file_is_an_error_naming_the_file() {
        let (_dir, state) = state();
        state.create().expect("dir");
        for content in [
            "",
            "not json",
            r#"{"last_issued":-1}"#,
            r#"{"last_issued":"12"}"#,
            r#"{"last_issued":18446744073709551616}"#,
            r#"{"last_issued":1,"x":2}"#,
        ] {
            atomic_write(
                &state.root().join(SERVICES_GENERATION_FILE),
                content.as_bytes(),
                0o600,
            )
            .expect("written");
            let error = ServicesGeneration::load(&state)
                .expect_err(content)
                .to_string();
            assert!(error.contains(SERVICES_GENERATION_FILE), "{error}");
        }
    }

    #[test]
    fn a_link_planted_as_the_generation_file_is_not_followed() {
        let (temp, state) = state();
        state.create().expect("dir");
        let canary = temp.path().join("canary");
        std::fs::write(&canary, r#"{"last_issued":7}"#).expect("canary");
        std::os::unix::fs::symlink(&canary, state.root().join(SERVICES_GENERATION_FILE))
            .expect("symlink");
        assert!(ServicesGeneration::load(&state).is_err());
        ServicesGeneration { last_issued: 9 }
            .save(&state)
            .expect("replaces the link");
        assert_eq!(
            std::fs::read_to_string(&canary).expect("canary"),
            r#"{"last_issued":7}"#
        );
        assert_eq!(
            ServicesGeneration::load(&state).expect("loads").last_issued,
            9
        );
    }
}
