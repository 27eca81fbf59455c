//! The state directory of one agent instance and every file in it.
//!
//! One directory addresses one instance (several agents on one host each have
//! their own). It is created with mode 0700 and holds:
//!
//! | file | contents |
//! |---|---|
//! | `identity.key` | ([`key`]) the 32-byte Ed25519 secret seed as 64 lowercase hex digits and a newline, mode 0600. Loading also accepts the 32 raw bytes. A key file that group or others may read or write is refused. |
//! | `config.toml` | `name` (this agent's name, one DNS label) and `network` (the overlay network's name) ([`config`]); the `[auto_approve]` table is read by [`fleet`] |
//! | `trust.toml` | the trust store ([`trust`]), edited under an exclusive `flock` on `trust.lock` and replaced atomically |
//! | `pending.toml` | trust requests waiting for approval, written by the daemon ([`crate::state::pending`]) |
//! | `served.json` | the local services `agentnet serve` publishes to peers ([`crate::state::served`]), edited under an exclusive `flock` on `served.lock` |
//! | `advertised.json` | the services `agentnet advertise` declares to trusted peers ([`crate::state::advertised`]), edited under an exclusive `flock` on `advertised.lock` |
//! | `services_generation.json` | the last generation of a services offer the daemon issued ([`crate::state::services_generation`]), written by the daemon only |
//! | `attachments.json` | namespaces given addresses of this node by `agentnet attach` ([`attachments`]), edited under an exclusive `flock` on `attachments.lock` |
//! | `agentnet.pid` | the daemon's PID; the daemon holds an exclusive `flock` on it while it runs ([`instance`]) |
//! | `agentnet.log` | the detached daemon's stdout and stderr (`agentnet.log.old` once it grew past 8 MiB) |
//! | `agentnet.sock` | the daemon's control socket (default path) |
//! | `rendezvous.pid`, `rendezvous.log` | the detached rendezvous server's PID and output |
//!
//! [`STATE_FILES`] lists these names: `up` hands those files to the daemon's
//! user and no other (the directory may hold someone else's files).
//!
//! After `up` the directory belongs to the daemon's user, so root never
//! follows a name in it: files are opened through [`StateDir::open_file`]
//! ([`crate::sys::nofollow`]: `O_NOFOLLOW`, regular file, one link, expected
//! owner), and replaced by creating a new temp file (`O_EXCL`) and renaming
//! it over the name (a planted link is replaced, not followed).
//!
//! Every file written here is replaced atomically ([`atomic`]: temp file in
//! the same directory, `fsync`, `rename`, `fsync` of the directory; a crash
//! leaves the old or the new contents, never a mix). Every file edited by
//! more than one process is edited through [`StateDir::edit_locked`]
//! ([`lock`]: exclusive `flock` on the file's lock file, read, modify,
//! write back). Errors are [`StateError`] ([`error`]).

#![forbid(unsafe_code)]

pub mod advertised;
pub mod atomic;
pub mod attachments;
pub mod config;
pub mod error;
pub mod fleet;
mod format;
pub mod instance;
pub mod key;
pub mod lock;
pub mod pending;
pub mod served;
pub mod services_generation;
pub mod trust;

use std::fs::{DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::atomic::atomic_write;
use self::atomic::follow_directory_owner;
pub use self::config::{
    AgentConfig, MAX_NETWORK_NAME_LEN, default_agent_name, sanitize_label, validate_network_name,
};
pub use self::error::StateError;
pub use self::instance::InstanceLock;
pub use self::lock::LockedFile;
pub use self::trust::{TrustChange, resolve_peer};
use crate::sys::nofollow::{OpenFor, open_in_dir};

/// Where the state lives when neither `--state-dir` nor `AGENTNET_STATE_DIR`
/// says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentnet";
/// File name of the identity key.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the agent configuration.
pub const CONFIG_FILE: &str = "config.toml";
/// File name of the trust store.
pub const TRUST_FILE: &str = "trust.toml";
/// File name of the lock that serializes trust-store edits.
pub const TRUST_LOCK_FILE: &str = "trust.lock";
/// File name of the daemon's PID file (also its instance lock).
pub const PID_FILE: &str = "agentnet.pid";
/// File name of the detached daemon's log.
pub const LOG_FILE: &str = "agentnet.log";
/// File name of the control socket inside the state directory.
pub const SOCKET_FILE: &str = "agentnet.sock";
/// File name `up` moves a detached daemon's log to once it grew too large.
pub const OLD_LOG_FILE: &str = "agentnet.log.old";
/// File name of the detached rendezvous server's PID file.
pub const RENDEZVOUS_PID_FILE: &str = "rendezvous.pid";
/// File name of the detached rendezvous server's log.
pub const RENDEZVOUS_LOG_FILE: &str = "rendezvous.log";
/// Every name agentnet gives a file in the state directory: `up` hands
/// these to the daemon's user, and nothing else there (`--state-dir /etc`
/// must not give away `/etc/shadow`). A new state file belongs here, or a
/// daemon that switched users cannot open it.
pub const STATE_FILES: &[&str] = &[
    IDENTITY_FILE,
    CONFIG_FILE,
    TRUST_FILE,
    TRUST_LOCK_FILE,
    pending::PENDING_FILE,
    served::SERVED_FILE,
    <served::ServedStore as LockedFile>::LOCK_FILE,
    advertised::ADVERTISED_FILE,
    <advertised::AdvertisedStore as LockedFile>::LOCK_FILE,
    attachments::ATTACHMENTS_FILE,
    <attachments::Attachments as LockedFile>::LOCK_FILE,
    services_generation::SERVICES_GENERATION_FILE,
    PID_FILE,
    LOG_FILE,
    OLD_LOG_FILE,
    SOCKET_FILE,
    RENDEZVOUS_PID_FILE,
    RENDEZVOUS_LOG_FILE,
];
/// The largest state file read ([`StateDir::read_file`]), 16 MiB. The files
/// agentnet writes stay far below it (a trust store of 10 000 peers is
/// about 2 MiB); without a bound, the daemon's user, who owns the
/// directory, could make root's `up`, `trust list` or `detach` read a huge
/// sparse file into memory.
pub const MAX_STATE_FILE_BYTES: u64 = 16 << 20;
/// The state directory of one agent instance. See the module docs for its
/// layout.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (not created yet; see [`StateDir::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identity key file.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join(IDENTITY_FILE)
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// The trust store file.
    pub fn trust_path(&self) -> PathBuf {
        self.root.join(TRUST_FILE)
    }

    /// The lock file serializing trust-store edits.
    pub fn trust_lock_path(&self) -> PathBuf {
        self.root.join(TRUST_LOCK_FILE)
    }

    /// The daemon's PID file.
    pub fn pid_path(&self) -> PathBuf {
        self.root.join(PID_FILE)
    }

    /// The detached daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// The control socket path used when `--socket` is not given.
    pub fn default_socket_path(&self) -> PathBuf {
        self.root.join(SOCKET_FILE)
    }

    /// Opens the file `name` of the directory without following a link
    /// there (see [`crate::sys::nofollow`]): after `up` the directory belongs to
    /// the daemon's user, who must not be able to aim root's opens at
    /// another file.
    ///
    /// A file opened for writing (lock, PID and log files) by root in a
    /// directory of another user is given to that user, whether root just
    /// created it or an earlier version left it root's: the daemon, running
    /// as that user, must still be able to open it (a root-owned `trust.lock`
    /// made every edit of the daemon fail).
    pub fn open_file(&self, name: &str, how: OpenFor) -> Result<File, StateError> {
        let path = self.root.join(name);
        let file = open_in_dir(&self.root, name, how)
            .map_err(|e| StateError::io("open", &path, io::Error::from(e)))?;
        if how != OpenFor::Read {
            follow_directory_owner(&file, &self.root)
                .map_err(|e| StateError::io("give to the directory's owner", &path, e))?;
        }
        Ok(file)
    }

    /// Reads the file `name` as text (not following a link), or `None` if
    /// there is none. A file larger than [`MAX_STATE_FILE_BYTES`] is
    /// refused ([`StateError::TooLarge`]).
    pub fn read_file(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.root.join(name);
        let file = match open_in_dir(&self.root, name, OpenFor::Read) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(StateError::io("open", &path, io::Error::from(e))),
        };
        let size = file
            .metadata()
            .map_err(|e| StateError::io("inspect", &path, e))?
            .len();
        let too_large = |size| StateError::TooLarge {
            path: path.clone(),
            size,
            limit: MAX_STATE_FILE_BYTES,
        };
        if size > MAX_STATE_FILE_BYTES {
            return Err(too_large(size));
        }
        // The size may grow after the check: read one byte past the limit at
        // most, so a growing file is refused too instead of read whole.
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StateError::io("read", &path, e))?;
        if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            StateError::io("read", &path, io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        Ok(Some(text))
    }

    /// Creates the directory (and its parents) with mode 0700 if missing.
    pub fn create(&self) -> Result<(), StateError> {
        if self.root.is_dir() {
            return Ok(());
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| StateError::io("create directory", &self.root, e))
    }
}

/// Whether `name` is one of [`STATE_FILES`] or the temporary file an
/// atomic replacement of one writes before renaming it into place.
pub fn is_state_file_name(name: &str) -> bool {
    STATE_FILES.iter().any(|file| {
        name == *file
            || name
                .strip_prefix(&atomic::temp_prefix(file))
                .is_some_and(|rest| !rest.is_empty())
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the state tests share.

    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::StateDir;
    use crate::core::identity::Identity;
    use crate::core::policy::Policy;
    use crate::core::trust::store::TrustEntry;

    /// A state directory (not created yet) in a fresh temp directory.
    pub(crate) fn state() -> (tempfile::TempDir, StateDir) {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::new(temp.path().join("state"));
        (temp, state)
    }

    /// A trusted peer with the key of `seed`.
    pub(crate) fn peer(seed: u8, name: &str) -> TrustEntry {
        let id = Identity::from_secret_bytes(&[seed; 32])
            .expect("32 bytes")
            .agent_id();
        TrustEntry::trusted(id, name.to_string(), None, Policy::All, 0)
    }

    /// The permission bits of `path`.
    pub(crate) fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").mode() & 0o7777
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::test_support::{mode_of, state};
    use super::*;

    #[test]
    fn state_dir_is_created_private() {
        let (_temp, state) = state();
        state.create().expect("created");
        assert_eq!(mode_of(state.root()), 0o700);
    }

    #[test]
    fn state_files_larger_than_the_limit_are_refused_unread() {
        let (_temp, state) = state();
        state.create().expect("create");
        let path = state.root().join(CONFIG_FILE);
        let huge = fs::File::create(&path).expect("create");
        // Sparse: no disk space, but a read would take 16 MiB of memory.
        huge.set_len(MAX_STATE_FILE_BYTES + 1).expect("grow");
        let error = state.read_file(CONFIG_FILE).expect_err("too large");
        assert!(
            matches!(error, StateError::TooLarge { size, .. } if size == MAX_STATE_FILE_BYTES + 1),
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("config.toml") && text.contains(&(MAX_STATE_FILE_BYTES + 1).to_string()),
            "{text}"
        );
        assert!(state.load_config().is_err());
        huge.set_len(5).expect("shrink");
        assert_eq!(
            state.read_file(CONFIG_FILE).expect("small").as_deref(),
            Some("\0\0\0\0\0")
        );
    }

    #[test]
    fn links_planted_in_the_state_directory_are_not_followed() {
        let (temp, state) = state();
        state.create().expect("create");
        let canary = temp.path().join("canary");
        fs::write(&canary, "root's file\n").expect("canary");
        for name in [PID_FILE, TRUST_LOCK_FILE, TRUST_FILE, CONFIG_FILE, LOG_FILE] {
            std::os::unix::fs::symlink(&canary, state.root().join(name)).expect("symlink");
        }
        let error = state.lock_instance().expect_err("pid link refused");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert_eq!(state.running_pid(), None);
        let error = state
            .edit_trust(|_| Ok(()))
            .expect_err("trust.lock link refused");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(state.load_trust().is_err());
        assert!(state.load_config().is_err());
        assert!(state.open_file(LOG_FILE, OpenFor::Append(0o600)).is_err());
        assert_eq!(
            fs::read_to_string(&canary).expect("canary"),
            "root's file\n"
        );
    }

    /// Writes `F` and takes its lock, as the CLI and the daemon do.
    fn write_locked<F: LockedFile + Default>(state: &StateDir) {
        state
            .edit_locked::<F, (), StateError>(|_| Ok(()))
            .expect("lock");
        F::default().save(state).expect("save");
    }

    #[test]
    fn every_file_agentnet_writes_in_the_state_directory_is_a_state_file() {
        let (_temp, state) = state();
        state.load_or_create_identity().expect("identity");
        state
            .write_config(&AgentConfig::default_for_host())
            .expect("config");
        write_locked::<crate::core::trust::store::TrustStore>(&state);
        write_locked::<served::ServedStore>(&state);
        write_locked::<advertised::AdvertisedStore>(&state);
        write_locked::<attachments::Attachments>(&state);
        pending::save_pending(&state, Vec::new(), Vec::new()).expect("pending");
        services_generation::ServicesGeneration::default()
            .save(&state)
            .expect("generation");
        let _instance = state.lock_instance().expect("pid file");
        drop(
            state
                .open_file(LOG_FILE, OpenFor::Append(0o600))
                .expect("log"),
        );
        let mut names: Vec<String> = fs::read_dir(state.root())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        // Each writer above left its files: the check below checks them all.
        assert_eq!(names.len(), 14, "{names:?}");
        for name in &names {
            assert!(STATE_FILES.contains(&name.as_str()), "{name} is not listed");
        }
    }

    #[test]
    fn temporary_files_of_state_files_are_recognised_and_nothing_else() {
        assert!(is_state_file_name(TRUST_FILE));
        assert!(is_state_file_name(".trust.toml.tmp-42-0000abcd"));
        assert!(is_state_file_name(RENDEZVOUS_PID_FILE));
        for name in [
            "shadow",
            ".shadow.tmp-1-2",
            ".trust.toml.tmp-",
            "trust.toml.old",
            "",
        ] {
            assert!(!is_state_file_name(name), "{name}");
        }
    }
}
