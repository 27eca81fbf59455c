//! Key files: `identity.key` (the agent's Ed25519 seed) and fleet keys of
//! the same format, 64 lowercase hex digits and a newline, mode 0600. The
//! secret only ever sits in zeroized buffers.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use rand::RngCore;
use zeroize::Zeroizing;

use super::atomic::{atomic_write, write_new};
use super::{IDENTITY_FILE, StateDir, StateError};
use crate::core::identity::{Identity, IdentityError};
use crate::sys::nofollow::{OpenFor, open_in_dir};

/// Length of a secret key.
const SECRET_LEN: usize = 32;
/// Longest key file read: a little more than the longest valid form.
pub(super) const KEY_FILE_READ_LIMIT: u64 = 256;

impl StateDir {
    /// Whether an identity key file exists.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Loads the identity, refusing a key file others may access.
    pub fn load_identity(&self) -> Result<Identity, StateError> {
        let path = self.identity_path();
        let mut file = match open_in_dir(self.root(), IDENTITY_FILE, OpenFor::Read) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => {
                return Err(StateError::NoIdentity {
                    dir: self.root().to_path_buf(),
                });
            }
            Err(e) => return Err(StateError::io("open", &path, io::Error::from(e))),
        };
        let metadata = file
            .metadata()
            .map_err(|e| StateError::io("inspect", &path, e))?;
        let mode = metadata.mode() & 0o7777;
        if mode & 0o077 != 0 {
            let kind = if mode & 0o044 != 0 {
                "readable"
            } else {
                "writable"
            };
            return Err(StateError::KeyFileTooOpen { path, mode, kind });
        }
        let mut contents = Zeroizing::new(Vec::with_capacity(65));
        (&mut file)
            .take(KEY_FILE_READ_LIMIT)
            .read_to_end(&mut contents)
            .map_err(|e| StateError::io("read", &path, e))?;
        let secret = decode_secret(&contents).map_err(|reason| StateError::BadKeyFile {
            path: path.clone(),
            reason,
        })?;
        Identity::from_secret_bytes(secret.as_slice()).map_err(|e: IdentityError| {
            StateError::BadKeyFile {
                path,
                reason: e.to_string(),
            }
        })
    }

    /// Creates a new random identity and writes its key file. Without
    /// `force`, refuses to replace an existing key file (atomically: two
    /// concurrent calls cannot both succeed).
    pub fn create_identity(&self, force: bool) -> Result<Identity, StateError> {
        self.create()?;
        let identity = random_identity().map_err(|reason| StateError::BadKeyFile {
            path: self.identity_path(),
            reason,
        })?;
        let text = encode_secret(&identity.secret_bytes());
        let path = self.identity_path();
        if force {
            atomic_write(&path, text.as_bytes(), 0o600)?;
        } else {
            write_new(&path, text.as_bytes(), 0o600)?;
        }
        Ok(identity)
    }

    /// Loads the identity, creating one first if there is none. Returns
    /// whether it was created.
    pub fn load_or_create_identity(&self) -> Result<(Identity, bool), StateError> {
        match self.load_identity() {
            Ok(identity) => Ok((identity, false)),
            Err(StateError::NoIdentity { .. }) => match self.create_identity(false) {
                Ok(identity) => Ok((identity, true)),
                // Someone else created it meanwhile: use theirs.
                Err(StateError::IdentityExists { .. }) => Ok((self.load_identity()?, false)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

/// A new identity from the operating system's random generator.
pub(super) fn random_identity() -> Result<Identity, String> {
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
    Identity::from_secret_bytes(secret.as_slice()).map_err(|e| e.to_string())
}

/// The key file's text: 64 lowercase hex digits and a newline, written
/// straight into a zeroized buffer (no copy of the key lingers).
pub(super) fn encode_secret(secret: &[u8; SECRET_LEN]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(2 * SECRET_LEN + 1));
    HEXLOWER.encode_append(secret, &mut text);
    text.push('\n');
    text
}

/// Decodes 64 hex digits (either case; surrounding whitespace ignored), or
/// `None`.
pub(super) fn decode_hex_secret(contents: &[u8]) -> Option<Zeroizing<[u8; SECRET_LEN]>> {
    let trimmed = contents.trim_ascii();
    if trimmed.len() != 2 * SECRET_LEN {
        return None;
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    HEXLOWER_PERMISSIVE
        .decode_mut(trimmed, secret.as_mut_slice())
        .ok()?;
    Some(secret)
}

/// Decodes an identity key file: 64 hex digits (surrounding whitespace
/// ignored) or exactly 32 raw bytes.
fn decode_secret(contents: &[u8]) -> Result<Zeroizing<[u8; SECRET_LEN]>, String> {
    if let Some(secret) = decode_hex_secret(contents) {
        return Ok(secret);
    }
    if contents.len() == SECRET_LEN {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(contents);
        return Ok(secret);
    }
    Err(format!(
        "expected 64 hex digits or 32 raw bytes, found {} bytes",
        contents.len()
    ))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::test_support::{mode_of, state};

    #[test]
    fn identity_round_trips_with_mode_0600_hex_file() {
        let (_temp, state) = state();
        let created = state.create_identity(false).expect("created");
        assert_eq!(mode_of(&state.identity_path()), 0o600);
        let text = fs::read_to_string(state.identity_path()).expect("read");
        assert_eq!(text.trim().len(), 64);
        let loaded = state.load_identity().expect("loaded");
        assert_eq!(loaded.agent_id(), created.agent_id());
    }

    #[test]
    fn raw_32_byte_key_file_is_accepted() {
        let (_temp, state) = state();
        state.create().expect("dir");
        atomic_write(&state.identity_path(), &[7u8; 32], 0o600).expect("written");
        let expected = Identity::from_secret_bytes(&[7u8; 32]).expect("key");
        assert_eq!(
            state.load_identity().expect("loaded").agent_id(),
            expected.agent_id()
        );
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let (_temp, state) = state();
        state.create_identity(false).expect("created");
        fs::set_permissions(state.identity_path(), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = state.load_identity().expect_err("must refuse");
        assert!(matches!(
            error,
            StateError::KeyFileTooOpen { mode: 0o644, .. }
        ));
        let message = error.to_string();
        assert!(
            message.contains("readable by others (mode 0644)"),
            "{message}"
        );
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn key_file_writable_by_group_is_refused() {
        let (_temp, state) = state();
        state.create_identity(false).expect("created");
        fs::set_permissions(state.identity_path(), fs::Permissions::from_mode(0o620))
            .expect("chmod");
        assert!(matches!(
            state.load_identity(),
            Err(StateError::KeyFileTooOpen {
                kind: "writable",
                ..
            })
        ));
    }

    #[test]
    fn garbage_key_file_is_refused_with_reason() {
        let (_temp, state) = state();
        state.create().expect("dir");
        atomic_write(&state.identity_path(), b"not a key\n", 0o600).expect("written");
        assert!(matches!(
            state.load_identity(),
            Err(StateError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn create_identity_refuses_to_overwrite_without_force() {
        let (_temp, state) = state();
        let first = state.create_identity(false).expect("created");
        assert!(matches!(
            state.create_identity(false),
            Err(StateError::IdentityExists { .. })
        ));
        assert_eq!(
            state.load_identity().expect("loaded").agent_id(),
            first.agent_id()
        );
        let second = state.create_identity(true).expect("forced");
        assert_ne!(second.agent_id(), first.agent_id());
        assert_eq!(mode_of(&state.identity_path()), 0o600);
    }

    #[test]
    fn missing_identity_says_how_to_create_one() {
        let (_temp, state) = state();
        let message = state.load_identity().expect_err("none").to_string();
        assert!(message.contains("agentnet init"), "{message}");
    }

    #[test]
    fn hex_key_file_may_be_uppercase_and_padded_but_not_short_or_foreign() {
        let (_temp, state) = state();
        state.create().expect("dir");
        let text = format!("  {}\n\n", "AB".repeat(32));
        atomic_write(&state.identity_path(), text.as_bytes(), 0o600).expect("written");
        let expected = Identity::from_secret_bytes(&[0xab; 32]).expect("key");
        assert_eq!(
            state.load_identity().expect("loaded").agent_id(),
            expected.agent_id()
        );
        for bad in [
            format!("{}\n", "a".repeat(62)),
            format!("{}g\n", "a".repeat(63)),
        ] {
            atomic_write(&state.identity_path(), bad.as_bytes(), 0o600).expect("written");
            assert!(matches!(
                state.load_identity(),
                Err(StateError::BadKeyFile { .. })
            ));
        }
    }
}
