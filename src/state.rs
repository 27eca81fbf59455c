//! The state directory of one agent instance and every file in it.
//!
//! One directory addresses one instance (several agents on one host each have
//! their own). It is created with mode 0700 and holds:
//!
//! | file | contents |
//! |---|---|
//! | `identity.key` | the 32-byte Ed25519 secret seed as 64 lowercase hex digits and a newline, mode 0600. Loading also accepts the 32 raw bytes. A key file that group or others may read or write is refused. |
//! | `config.toml` | `name` (this agent's name, one DNS label) and `network` (the overlay network's name); the `[auto_approve]` table is read by [`crate::state::fleet`] |
//! | `trust.toml` | the trust store ([`TrustStore`]), edited under an exclusive `flock` on `trust.lock` and replaced atomically |
//! | `pending.toml` | trust requests waiting for approval, written by the daemon ([`crate::state::pending`]) |
//! | `served.json` | the local services `agentnet serve` publishes to peers ([`crate::state::served`]), edited under an exclusive `flock` on `served.lock` |
//! | `attachments.json` | namespaces given addresses of this node by `agentnet attach` ([`crate::attach`]), edited under an exclusive `flock` on `attachments.lock` |
//! | `agentnet.pid` | the daemon's PID; the daemon holds an exclusive `flock` on it while it runs |
//! | `agentnet.log` | the detached daemon's stdout and stderr |
//! | `agentnet.sock` | the daemon's control socket (default path) |
//!
//! After `up` the directory belongs to the daemon's user, so root never
//! follows a name in it: files are opened through [`StateDir::open_file`]
//! ([`crate::sys::nofollow`]: `O_NOFOLLOW`, regular file, one link, expected
//! owner), and replaced by creating a new temp file (`O_EXCL`) and renaming
//! it over the name (a planted link is replaced, not followed).
//!
//! Every file written here is replaced atomically: temp file in the same
//! directory, `fsync`, `rename`, `fsync` of the directory. A crash leaves the
//! old or the new contents, never a mix.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::core::address::DEFAULT_NETWORK_NAME;
use crate::core::identity::{AgentId, Identity, IdentityError};
use crate::core::trust::store::{MAX_NAME_LEN, TrustEntry, TrustError, TrustStore, validate_name};
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
/// Longest network name accepted.
pub const MAX_NETWORK_NAME_LEN: usize = 64;
/// Name used when the host name gives no usable DNS label.
const FALLBACK_AGENT_NAME: &str = "agent";
/// How long the daemon waits for the instance lock before declaring that
/// another instance holds it (a CLI probe holds it for microseconds).
const PID_LOCK_PATIENCE: Duration = Duration::from_secs(1);

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
    #[error("`{0}` is neither an agent ID nor the name of a trusted peer")]
    UnknownPeer(String),
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

/// The agent's own settings, `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// This agent's name (one DNS label), sent to peers in handshakes.
    pub name: String,
    /// The overlay network's name; agents in different networks never talk.
    #[serde(default = "default_network_name")]
    pub network: String,
    /// Rendezvous servers to register with, as `HOST:PORT=ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rendezvous: Vec<String>,
    /// Whether the agent has an IPv4 overlay address next to its IPv6 one
    /// (`ipv4 = false`: IPv6 only; `up --no-ipv4` does the same once).
    #[serde(default = "enabled", skip_serializing_if = "is_enabled")]
    pub ipv4: bool,
}

fn default_network_name() -> String {
    DEFAULT_NETWORK_NAME.to_string()
}

fn enabled() -> bool {
    true
}

fn is_enabled(value: &bool) -> bool {
    *value
}

impl AgentConfig {
    /// The configuration used when none was written: host name and default
    /// network.
    pub fn default_for_host() -> Self {
        Self {
            name: default_agent_name(),
            network: default_network_name(),
            rendezvous: Vec::new(),
            ipv4: true,
        }
    }
}

/// Checks a network name: 1-64 printable characters, no whitespace.
pub fn validate_network_name(name: &str) -> Result<(), StateError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NETWORK_NAME_LEN
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(StateError::BadNetworkName(name.to_string()))
    }
}

/// This host's name turned into a DNS label (the first label, lowercased,
/// other characters replaced by `-`), or `agent` if nothing usable remains.
pub fn default_agent_name() -> String {
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    sanitize_label(&hostname)
}

/// Turns any text into a DNS label (see [`default_agent_name`]).
pub fn sanitize_label(text: &str) -> String {
    let first = text.trim().split('.').next().unwrap_or_default();
    let mapped: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    let label = mapped.trim_matches('-');
    if validate_name(label).is_ok() {
        label.to_string()
    } else {
        FALLBACK_AGENT_NAME.to_string()
    }
}

/// Whether a trust-store upsert added a new peer or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustChange {
    /// The peer was not in the store before.
    Added,
    /// The peer was in the store; its entry was replaced.
    Updated,
}

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
    pub fn open_file(&self, name: &str, how: OpenFor) -> Result<File, StateError> {
        open_in_dir(&self.root, name, how).map_err(|e| {
            let path = self.root.join(name);
            StateError::io("open", &path, io::Error::from(e))
        })
    }

    /// Reads the file `name` as text (not following a link), or `None` if
    /// there is none.
    pub fn read_file(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.root.join(name);
        let mut file = match open_in_dir(&self.root, name, OpenFor::Read) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(StateError::io("open", &path, io::Error::from(e))),
        };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| StateError::io("read", &path, e))?;
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

    /// Whether an identity key file exists.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Loads the identity, refusing a key file others may access.
    pub fn load_identity(&self) -> Result<Identity, StateError> {
        let path = self.identity_path();
        let mut file = match open_in_dir(&self.root, IDENTITY_FILE, OpenFor::Read) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => {
                return Err(StateError::NoIdentity {
                    dir: self.root.clone(),
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
        // Read at most a little more than the longest valid form.
        (&mut file)
            .take(256)
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
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
        let identity =
            Identity::from_secret_bytes(secret.as_slice()).map_err(|e| StateError::BadKeyFile {
                path: self.identity_path(),
                reason: e.to_string(),
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

    /// Reads `config.toml`, or `None` if there is none.
    pub fn load_config(&self) -> Result<Option<AgentConfig>, StateError> {
        let path = self.config_path();
        let Some(text) = self.read_file(CONFIG_FILE)? else {
            return Ok(None);
        };
        let config: AgentConfig = toml::from_str(&text).map_err(|source| StateError::BadToml {
            path: path.clone(),
            source,
        })?;
        validate_name(&config.name).map_err(|source| StateError::BadConfigName {
            path: path.clone(),
            source,
        })?;
        validate_network_name(&config.network)?;
        Ok(Some(config))
    }

    /// Reads `config.toml` as a `T` that picks the tables it wants (other
    /// keys are ignored); `None` when there is no `config.toml`.
    pub fn load_config_tables<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Option<T>, StateError> {
        let Some(text) = self.read_file(CONFIG_FILE)? else {
            return Ok(None);
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::BadToml {
                path: self.config_path(),
                source,
            })
    }

    /// Reads `config.toml`, or the host defaults if there is none.
    pub fn config_or_default(&self) -> Result<AgentConfig, StateError> {
        Ok(self
            .load_config()?
            .unwrap_or_else(AgentConfig::default_for_host))
    }

    /// Writes `config.toml` atomically.
    pub fn write_config(&self, config: &AgentConfig) -> Result<(), StateError> {
        validate_name(&config.name)?;
        validate_network_name(&config.network)?;
        self.create()?;
        let body = toml::to_string(config).map_err(|source| StateError::Serialize {
            what: "the configuration",
            source,
        })?;
        let text = format!(
            "# agentnet agent configuration.\n\
             # name: this agent's name, sent to peers (one DNS label).\n\
             # network: the overlay network; it determines the address prefix.\n\
             {body}"
        );
        atomic_write(&self.config_path(), text.as_bytes(), 0o600)
    }

    /// Reads the trust store (empty if there is no file). Needs no lock:
    /// writers replace the file atomically.
    pub fn load_trust(&self) -> Result<TrustStore, StateError> {
        let path = self.trust_path();
        let Some(text) = self.read_file(TRUST_FILE)? else {
            return Ok(TrustStore::default());
        };
        toml::from_str(&text).map_err(|source| StateError::BadToml { path, source })
    }

    /// Edits the trust store under the exclusive trust lock: reads it, runs
    /// `edit`, and if `edit` succeeds writes the result atomically. Concurrent
    /// edits from any process serialize; none is lost.
    pub fn edit_trust<T>(
        &self,
        edit: impl FnOnce(&mut TrustStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.create()?;
        let lock_path = self.trust_lock_path();
        let lock_file = self.open_file(TRUST_LOCK_FILE, OpenFor::ReadWrite(0o600))?;
        let _lock = lock_retrying_eintr(lock_file, FlockArg::LockExclusive).map_err(|source| {
            StateError::Lock {
                path: lock_path.clone(),
                source,
            }
        })?;
        let mut store = self.load_trust()?;
        let result = edit(&mut store)?;
        let text = toml::to_string(&store).map_err(|source| StateError::Serialize {
            what: "the trust store",
            source,
        })?;
        let text = format!(
            "# agentnet trust store: the agents this agent will talk to.\n\
             # Edit with `agentnet trust add/remove`; written atomically.\n\n{text}"
        );
        atomic_write(&self.trust_path(), text.as_bytes(), 0o600)?;
        Ok(result)
    }

    /// Adds or updates a trusted peer. An update keeps the original
    /// `added_unix`; a new entry with `added_unix == 0` gets the current time.
    pub fn trust_upsert(
        &self,
        own_id: &AgentId,
        mut entry: TrustEntry,
    ) -> Result<(TrustEntry, TrustChange), StateError> {
        self.edit_trust(|store| {
            let change = match store.get(&entry.id) {
                Some(existing) => {
                    entry.added_unix = existing.added_unix;
                    TrustChange::Updated
                }
                None => {
                    if entry.added_unix == 0 {
                        entry.added_unix = unix_now();
                    }
                    TrustChange::Added
                }
            };
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

    /// Takes the instance lock (exclusive `flock` on the PID file) and
    /// writes this process's PID into it. Fails with
    /// [`StateError::AlreadyRunning`] if another daemon holds it.
    pub fn lock_instance(&self) -> Result<InstanceLock, StateError> {
        self.create()?;
        let path = self.pid_path();
        let deadline = Instant::now() + PID_LOCK_PATIENCE;
        loop {
            let file = self.open_file(PID_FILE, OpenFor::ReadWrite(0o644))?;
            match lock_retrying_eintr(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut locked) => {
                    // A previous owner may have unlinked the file between our
                    // open and our lock: then we locked a dead inode; retry.
                    if !same_file(&locked, &path) {
                        continue;
                    }
                    locked
                        .set_len(0)
                        .and_then(|()| {
                            locked.write_all(format!("{}\n", std::process::id()).as_bytes())
                        })
                        .and_then(|()| locked.sync_all())
                        .map_err(|e| StateError::io("write", &path, e))?;
                    return Ok(InstanceLock { file: locked, path });
                }
                Err(Errno::EWOULDBLOCK) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(Errno::EWOULDBLOCK) => {
                    return Err(StateError::AlreadyRunning {
                        dir: self.root.clone(),
                        pid: self.read_pid().unwrap_or(0),
                    });
                }
                Err(source) => return Err(StateError::Lock { path, source }),
            }
        }
    }

    /// The PID of the daemon holding this state directory, if one runs
    /// (judged by the lock on the PID file, not by the file's presence).
    pub fn running_pid(&self) -> Option<u32> {
        let file = open_in_dir(&self.root, PID_FILE, OpenFor::Read).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Nobody holds it: a stale file from a crashed daemon.
            Ok(_unlocked_on_drop) => None,
            Err((_, Errno::EWOULDBLOCK)) => Some(self.read_pid().unwrap_or(0)),
            Err(_) => None,
        }
    }

    fn read_pid(&self) -> Option<u32> {
        self.read_file(PID_FILE).ok()??.trim().parse().ok()
    }
}

/// The running daemon's hold on its state directory. Dropping it releases
/// the lock; [`InstanceLock::release`] also removes the PID file.
#[derive(Debug)]
pub struct InstanceLock {
    file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Removes the PID file, then releases the lock.
    pub fn release(self) {
        // Unlink while still holding the lock, so no newcomer can lock the
        // inode we are about to abandon without noticing (see lock_instance).
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_retrying_eintr(file: File, arg: FlockArg) -> Result<Flock<File>, Errno> {
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(locked),
            Err((returned, Errno::EINTR)) => file = returned,
            Err((_, errno)) => return Err(errno),
        }
    }
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn encode_secret(secret: &[u8; 32]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(65));
    for byte in secret {
        text.push(hex_digit(byte >> 4));
        text.push(hex_digit(byte & 0x0f));
    }
    text.push('\n');
    text
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// Decodes a key file: 64 hex digits (surrounding whitespace ignored) or
/// exactly 32 raw bytes.
fn decode_secret(contents: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let trimmed = contents.trim_ascii();
    if trimmed.len() == 64 && trimmed.iter().all(u8::is_ascii_hexdigit) {
        let mut secret = Zeroizing::new(Vec::with_capacity(32));
        for pair in trimmed.chunks_exact(2) {
            let high = hex_value(pair[0]);
            let low = hex_value(pair[1]);
            secret.push(high << 4 | low);
        }
        return Ok(secret);
    }
    if contents.len() == 32 {
        return Ok(Zeroizing::new(contents.to_vec()));
    }
    Err(format!(
        "expected 64 hex digits or 32 raw bytes, found {} bytes",
        contents.len()
    ))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Replaces `path` atomically with `contents`: temp file with `mode` in the
/// same directory, `fsync`, `rename`, `fsync` of the directory.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    let temp = write_temp(path, contents, mode)?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(StateError::io("replace", path, e));
    }
    sync_parent(path)
}

/// Creates `path` with `contents` atomically, failing with
/// [`StateError::IdentityExists`] if it exists (the temp file is hard-linked
/// into place, which never replaces).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    let temp = write_temp(path, contents, mode)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StateError::IdentityExists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(StateError::io("create", path, e)),
    }
}

fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, StateError> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .and_then(|mut file| {
            // The umask may have narrowed the mode; never widened it. Set it
            // exactly so a 0600 file stays 0600 and a 0644 one is readable.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            follow_directory_owner(&file, dir)?;
            file.write_all(contents)?;
            file.sync_all()
        });
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return Err(StateError::NoSpace {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            Err(StateError::io("write", &temp, e))
        }
    }
}

/// A file root writes into a directory that belongs to another user (a
/// daemon that dropped its privileges, see `daemon::privilege`) is given to
/// that user, so the daemon can still replace it. That user owns the
/// directory and could replace the file anyway: nothing is given away.
fn follow_directory_owner(file: &File, dir: &Path) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let owner = fs::metadata(dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn sync_parent(path: &Path) -> Result<(), StateError> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Policy;
    use crate::core::trust::store::TrustState;
    use std::sync::Arc;

    fn state() -> (tempfile::TempDir, StateDir) {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::new(temp.path().join("state"));
        (temp, state)
    }

    fn peer(seed: u8, name: &str) -> TrustEntry {
        TrustEntry {
            id: Identity::from_secret_bytes(&[seed; 32])
                .expect("32 bytes")
                .agent_id(),
            name: name.to_string(),
            endpoint: None,
            allow: Policy::All,
            state: TrustState::Trusted,
            added_unix: 0,
            expires_unix: None,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_private() {
        let (_temp, state) = state();
        state.create().expect("created");
        assert_eq!(mode_of(state.root()), 0o700);
    }

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
    fn atomic_write_replaces_contents_and_leaves_no_temp_files() {
        let (_temp, state) = state();
        state.create().expect("dir");
        let path = state.root().join("file.toml");
        atomic_write(&path, b"one", 0o600).expect("first");
        atomic_write(&path, b"two", 0o640).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(mode_of(&path), 0o640);
        let names: Vec<_> = fs::read_dir(state.root())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.toml")]);
    }

    #[test]
    fn failed_edit_leaves_trust_store_untouched() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        state.trust_upsert(&me, peer(1, "bob")).expect("added");
        let before = fs::read(state.trust_path()).expect("read");
        let result: Result<(), _> = state.edit_trust(|store| {
            store.peers.clear();
            Err(StateError::BadNetworkName("abort".into()))
        });
        assert!(result.is_err());
        assert_eq!(fs::read(state.trust_path()).expect("read"), before);
    }

    #[test]
    fn trust_upsert_reports_added_then_updated_and_keeps_added_time() {
        let (_temp, state) = state();
        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        let (first, change) = state.trust_upsert(&me, peer(1, "bob")).expect("added");
        assert_eq!(change, TrustChange::Added);
        assert!(first.added_unix > 0);
        let mut renamed = peer(1, "robert");
        renamed.added_unix = 5;
        let (second, change) = state.trust_upsert(&me, renamed).expect("updated");
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
        state.trust_upsert(&me, bob.clone()).expect("bob");
        state.trust_upsert(&me, carol.clone()).expect("carol");
        assert_eq!(state.trust_remove("carol").expect("by name").id, carol.id);
        assert_eq!(
            state.trust_remove(&bob.id.to_string()).expect("by id").id,
            bob.id
        );
        assert!(state.trust_remove("bob").is_err());
        assert!(state.load_trust().expect("load").peers.is_empty());
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

    #[test]
    fn instance_lock_refuses_a_second_holder_and_cleans_up() {
        let (_temp, state) = state();
        assert_eq!(state.running_pid(), None);
        let lock = state.lock_instance().expect("first");
        assert_eq!(state.running_pid(), Some(std::process::id()));
        match state.lock_instance() {
            Err(StateError::AlreadyRunning { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        lock.release();
        assert!(!state.pid_path().exists());
        assert_eq!(state.running_pid(), None);
        state.lock_instance().expect("again").release();
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

    #[test]
    fn stale_pid_file_is_not_a_running_daemon() {
        let (_temp, state) = state();
        state.create().expect("dir");
        fs::write(state.pid_path(), "999999\n").expect("write");
        assert_eq!(state.running_pid(), None);
    }

    #[test]
    fn config_round_trips_and_defaults_network() {
        let (_temp, state) = state();
        assert_eq!(state.load_config().expect("none"), None);
        let config = AgentConfig {
            name: "alice".into(),
            network: "lab".into(),
            rendezvous: Vec::new(),
            ipv4: false,
        };
        state.write_config(&config).expect("written");
        assert_eq!(state.load_config().expect("read"), Some(config));
        fs::write(state.config_path(), "name = \"bob\"\n").expect("write");
        let config = state.load_config().expect("read").expect("some");
        assert_eq!(config.network, DEFAULT_NETWORK_NAME);
        assert!(config.ipv4, "IPv4 is on unless the file says otherwise");
    }

    #[test]
    fn host_names_become_dns_labels() {
        assert_eq!(sanitize_label("My_Host.example.com\n"), "my-host");
        assert_eq!(sanitize_label("--x--"), "x");
        assert_eq!(sanitize_label(""), "agent");
        assert_eq!(sanitize_label("___"), "agent");
        assert_eq!(sanitize_label(&"a".repeat(80)).len(), MAX_NAME_LEN);
    }
}
