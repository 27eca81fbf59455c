//! The TOML and JSON files of the directory: read without following a link
//! ([`StateDir::read_file`]), replaced atomically ([`atomic_write`], mode
//! 0600).

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::atomic::atomic_write;
use super::{StateDir, StateError};

impl StateDir {
    /// Reads the TOML file `name`, or `None` if there is none.
    pub(crate) fn read_toml<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        let Some(text) = self.read_file(name)? else {
            return Ok(None);
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::BadToml {
                path: self.root().join(name),
                source,
            })
    }

    /// Replaces the TOML file `name` with `header` (comment lines) and
    /// `value` (`what` names it in an error).
    pub(crate) fn replace_toml<T: Serialize>(
        &self,
        name: &str,
        what: &'static str,
        header: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let body =
            toml::to_string(value).map_err(|source| StateError::Serialize { what, source })?;
        let text = format!("{header}{body}");
        atomic_write(&self.root().join(name), text.as_bytes(), 0o600)
    }

    /// Reads the JSON file `name` with `parse`, or `None` if there is none.
    /// A parse error names the file and the problem.
    pub(crate) fn read_json<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StateError> {
        let Some(text) = self.read_file(name)? else {
            return Ok(None);
        };
        parse(text.as_bytes()).map(Some).map_err(|problem| {
            StateError::io(
                "parse",
                &self.root().join(name),
                io::Error::new(io::ErrorKind::InvalidData, problem),
            )
        })
    }

    /// Replaces the JSON file `name` with `value`, pretty-printed, and a
    /// newline.
    pub(crate) fn replace_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let path = self.root().join(name);
        let mut text = serde_json::to_vec_pretty(value)
            .map_err(|e| StateError::io("encode", &path, io::Error::other(e)))?;
        text.push(b'\n');
        atomic_write(&path, &text, 0o600)
    }
}
