//! [`StateError`]: everything that can go wrong with the state directory.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::atomic::parent_dir;
use super::config::MAX_NETWORK_NAME_LEN;
use crate::core::trust::store::TrustError;

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system of the state directory is full (or the quota is
    /// used up); the file keeps its previous contents.
    #[error(
        "cannot save {}: no space left on the file system of {} ({source}); \
         its previous contents are unchanged — free some space and retry",
        path.display(),
        parent_dir(path).display()
    )]
    NoSpace {
        /// The file that was to be written.
        path: PathBuf,
        /// The OS error (ENOSPC or EDQUOT).
        #[source]
        source: io::Error,
    },
    /// The key file may be read or written by group or others.
    #[error(
        "{} is {kind} by others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "readable" or "writable".
        kind: &'static str,
    },
    /// The key file does not hold a key.
    #[error("{} does not hold an identity key: {reason}", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No identity has been created yet.
    #[error("no identity in {}: run `agentnet init` (or `agentnet up`) first", dir.display())]
    NoIdentity {
        /// The state directory.
        dir: PathBuf,
    },
    /// `init` would overwrite an existing identity.
    #[error(
        "{} already exists; use --force to replace it (this changes the agent's ID and address)",
        path.display()
    )]
    IdentityExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// A TOML file does not parse.
    #[error("cannot parse {}: {source}", path.display())]
    BadToml {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: toml::de::Error,
    },
    /// A value could not be written as TOML.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// What was being written.
        what: &'static str,
        /// The serializer's complaint.
        #[source]
        source: toml::ser::Error,
    },
    /// The agent name in the configuration is not a DNS label.
    #[error("bad agent name in {}: {source}", path.display())]
    BadConfigName {
        /// The configuration file.
        path: PathBuf,
        /// Why the name is refused.
        #[source]
        source: TrustError,
    },
    /// The network name is empty, too long or has control characters.
    #[error(
        "bad network name `{0}`: use 1-{MAX_NETWORK_NAME_LEN} printable characters without spaces"
    )]
    BadNetworkName(String),
    /// A trust-store edit was refused.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A command named a peer that is neither an agent ID nor a local name
    /// in the trust store.
    #[error("{0:?} is neither an agent ID nor the name of a trusted peer")]
    UnknownPeer(String),
    /// A state file is larger than any agentnet writes
    /// ([`super::MAX_STATE_FILE_BYTES`]); it was not read.
    #[error(
        "{} is {size} bytes, more than the {limit} bytes a state file may have; agentnet \
         never writes one this large: move it away and restore it from a backup",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least; it may still grow).
        size: u64,
        /// The most that is read.
        limit: u64,
    },
    /// `trust.toml` breaks a rule every edit keeps (unique agent IDs and
    /// names, valid names, not this agent itself); it was not used.
    #[error("{}: {problem}", path.display())]
    BadTrustStore {
        /// The trust store file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A lock file belongs to another user, who alone may open it (root
    /// created it with an earlier version while the daemon's user owns the
    /// directory).
    #[error(
        "cannot open {}: it belongs to uid {owner}, and this process (uid {me}) may not open \
         it; run `sudo chown --reference={} {}` (or any `sudo agentnet` command that edits \
         the state, which fixes it too)",
        path.display(),
        parent_dir(path).display(),
        path.display()
    )]
    ForeignLock {
        /// The lock file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective UID.
        me: u32,
    },
    /// Taking a file lock failed.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Another daemon holds this state directory.
    #[error(
        "agentnet is already running for {} (pid {pid}); stop it with `agentnet down`",
        dir.display()
    )]
    AlreadyRunning {
        /// The state directory.
        dir: PathBuf,
        /// The running daemon's PID (0 if unreadable).
        pid: u32,
    },
}

impl StateError {
    /// An I/O error while doing `action` to `path`.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        StateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
