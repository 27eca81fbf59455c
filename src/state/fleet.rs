//! Orchestrated fleets: a fleet signing key, the endorsements it gives its
//! agents, and the `[auto_approve]` rules of `config.toml` that approve
//! requests without an operator (DESIGN.md §4).
//!
//! A fleet key is an Ed25519 key like an agent's, kept in a file of the same
//! format as `identity.key` (64 hex digits, mode 0600) by whoever deploys the
//! fleet. Its public half (the *fleet ID*, written like an agent ID) goes into
//! the `fleet_keys` of the agents that should trust the fleet's members. An
//! endorsement is the fleet key's signature over one agent's ID, the
//! network, an expiry and a policy cap (the most auto-approval grants),
//! handed to that agent as a token and carried inside its sealed trust
//! requests:
//!
//! ```text
//! token = FLEET_ID "." EXPIRES_UNIX "." CAP "." base32(signature)
//!         (CAP a policy such as `all` or `tcp:8080,icmp`; base32 lowercase,
//!         no padding)
//! ```
//!
//! Auto-approval is off unless `config.toml` names agents or fleet keys:
//!
//! ```toml
//! [auto_approve]
//! agents = ["<agent id>"]        # these agents' requests are approved
//! fleet_keys = ["<fleet id>"]    # requests endorsed by these keys are approved
//! ```

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::core::address::NetworkId;
use crate::core::api::AutoApprove;
use crate::core::identity::{AgentId, Identity, base32};
use crate::core::policy::Policy;
use crate::core::trust::request::{Endorsement, EndorsementError};
use crate::state::key::{KEY_FILE_READ_LIMIT, decode_hex_secret, encode_secret, random_identity};
use crate::state::{StateDir, StateError};

/// Separates the fleet ID from the signature in an endorsement token.
const TOKEN_SEPARATOR: char = '.';

/// Errors with fleet keys and endorsement tokens.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The token is not `FLEET_ID.EXPIRES.CAP.SIGNATURE`.
    #[error(
        "not an endorsement token: expected FLEET_ID.EXPIRES.CAP.SIGNATURE from `agentnet fleet endorse`"
    )]
    BadToken,
    /// The token's signature is not over this agent's ID in this network,
    /// or its time ran out.
    #[error("the endorsement by fleet {fleet} does not hold for {agent} in this network: {reason}")]
    NotForThisAgent {
        /// The fleet key that signed it.
        fleet: AgentId,
        /// The agent that would carry it.
        agent: AgentId,
        /// Why not.
        reason: EndorsementError,
    },
    /// The key file exists and `--force` was not given.
    #[error("{} already exists; remove it first to create a new fleet key", path.display())]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
    /// Others may read or write the key file.
    #[error("{} is accessible by others (mode {mode:04o}); run `chmod 600 {}`", path.display(), path.display())]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path names a directory, a FIFO, a device…
    #[error(
        "{} is not a regular file; pass the key file made by `agentnet fleet keygen`",
        path.display()
    )]
    NotRegular {
        /// The path given as the key file.
        path: PathBuf,
    },
    /// The key file does not hold a key.
    #[error("{} does not hold a fleet key (64 hex digits)", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// Reading or writing the key file failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The text form of an endorsement, `FLEET_ID.EXPIRES.CAP.SIGNATURE`.
pub fn endorsement_token(endorsement: &Endorsement) -> String {
    format!(
        "{}{TOKEN_SEPARATOR}{}{TOKEN_SEPARATOR}{}{TOKEN_SEPARATOR}{}",
        endorsement.fleet_key,
        endorsement.expires_unix,
        endorsement.cap,
        base32().encode(&endorsement.signature)
    )
}

/// Reads an endorsement token (not yet checked against any agent).
pub fn parse_endorsement_token(text: &str) -> Result<Endorsement, FleetError> {
    let mut parts = text.trim().split(TOKEN_SEPARATOR);
    let (Some(fleet), Some(expires), Some(cap), Some(signature), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(FleetError::BadToken);
    };
    let fleet_key: AgentId = fleet.parse().map_err(|_| FleetError::BadToken)?;
    let expires_unix: u64 = expires.parse().map_err(|_| FleetError::BadToken)?;
    let cap: Policy = cap.parse().map_err(|_| FleetError::BadToken)?;
    let signature: [u8; 64] = base32()
        .decode(signature.to_ascii_lowercase().as_bytes())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(FleetError::BadToken)?;
    Ok(Endorsement {
        fleet_key,
        expires_unix,
        cap,
        signature,
    })
}

/// Reads a token and checks that it endorses `agent` in `network` at
/// `unix_now` (seconds since the Unix epoch).
pub fn endorsement_for(
    text: &str,
    agent: &AgentId,
    network: NetworkId,
    unix_now: u64,
) -> Result<Endorsement, FleetError> {
    let endorsement = parse_endorsement_token(text)?;
    endorsement
        .check(agent, network, unix_now)
        .map_err(|reason| FleetError::NotForThisAgent {
            fleet: endorsement.fleet_key,
            agent: *agent,
            reason,
        })?;
    Ok(endorsement)
}

/// Creates a new random fleet key at `path` (mode 0600); never replaces a
/// file.
pub fn create_fleet_key(path: &Path) -> Result<Identity, FleetError> {
    let key = random_identity().map_err(|_| FleetError::BadKeyFile {
        path: path.to_path_buf(),
    })?;
    let text = encode_secret(&key.secret_bytes());
    let io_error = |action, source| FleetError::from(StateError::io(action, path, source));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => FleetError::KeyExists {
                path: path.to_path_buf(),
            },
            _ => io_error("create", source),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error("write", source))?;
    Ok(key)
}

/// Loads a fleet key, refusing a file others may access and anything but a
/// regular file. The path is the operator's (a link there is followed), but
/// what it names is checked before its mode: a directory such as `/tmp`
/// would otherwise be reported as a key "accessible by others", and the
/// open does not wait (`O_NONBLOCK`) so a FIFO cannot hang the command.
pub fn load_fleet_key(path: &Path) -> Result<Identity, FleetError> {
    let io_error = |action, source| FleetError::from(StateError::io(action, path, source));
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| io_error("open", source))?;
    let metadata = file
        .metadata()
        .map_err(|source| io_error("inspect", source))?;
    if !metadata.is_file() {
        return Err(FleetError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FleetError::KeyFileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(65));
    (&mut file)
        .take(KEY_FILE_READ_LIMIT)
        .read_to_end(&mut contents)
        .map_err(|source| io_error("read", source))?;
    let bad = || FleetError::BadKeyFile {
        path: path.to_path_buf(),
    };
    let secret = decode_hex_secret(&contents).ok_or_else(bad)?;
    Identity::from_secret_bytes(secret.as_slice()).map_err(|_| bad())
}

/// The `[auto_approve]` table of `config.toml`. Empty (off) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoApproveConfig {
    /// Agents whose trust requests are approved as they arrive.
    #[serde(default)]
    pub agents: Vec<AgentId>,
    /// Fleet keys whose endorsement of a requester approves its request.
    #[serde(default)]
    pub fleet_keys: Vec<AgentId>,
}

/// The part of `config.toml` this module reads (the rest is
/// [`crate::state::AgentConfig`]'s).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auto_approve: AutoApproveConfig,
}

impl AutoApproveConfig {
    /// Reads `[auto_approve]` from the state directory's `config.toml`
    /// (off if the file or the table is missing).
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state
            .load_config_tables::<ConfigFile>()?
            .map(|file| file.auto_approve)
            .unwrap_or_default())
    }

    /// Whether any rule is set.
    pub fn is_on(&self) -> bool {
        !self.agents.is_empty() || !self.fleet_keys.is_empty()
    }

    /// The rules as the core applies them.
    pub fn rules(&self) -> AutoApprove {
        AutoApprove {
            agents: self.agents.clone(),
            fleet_keys: self.fleet_keys.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn identity(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 32]).expect("key")
    }

    #[test]
    fn endorsement_token_round_trips_and_binds_agent_network_and_time() {
        let fleet = identity(5);
        let agent = identity(1).agent_id();
        let network = NetworkId::from_name("fleet-net");
        let cap: Policy = "tcp:8080,icmp".parse().expect("policy");
        let endorsement = Endorsement::sign(&fleet, &agent, network, 2_000, cap);
        let token = endorsement_token(&endorsement);
        assert!(
            token.starts_with(&format!("{}.2000.tcp:8080,icmp.", fleet.agent_id())),
            "{token}"
        );
        assert_eq!(
            parse_endorsement_token(&token).expect("parses"),
            endorsement
        );
        assert_eq!(
            endorsement_for(&token, &agent, network, 1_999).expect("valid"),
            endorsement
        );
        for (who, net, now) in [
            (identity(2).agent_id(), network, 1_999),
            (agent, NetworkId::from_name("agentnet"), 1_999),
            (agent, network, 2_000),
        ] {
            assert!(
                matches!(
                    endorsement_for(&token, &who, net, now),
                    Err(FleetError::NotForThisAgent { .. })
                ),
                "accepted for {who} at {now}"
            );
        }
        let widened = token.replace("tcp:8080,icmp", "all");
        assert!(endorsement_for(&widened, &agent, network, 1_999).is_err());
        for bad in [
            "",
            "x.y",
            &token[..token.len() - 3],
            &token.replacen('.', "", 1),
            &token.replace("2000", "soon"),
            &format!("{token}.extra"),
        ] {
            assert!(parse_endorsement_token(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fleet_key_file_is_private_and_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.key");
        let created = create_fleet_key(&path).expect("created");
        assert_eq!(fs::metadata(&path).expect("metadata").mode() & 0o777, 0o600);
        assert_eq!(
            load_fleet_key(&path).expect("loads").agent_id(),
            created.agent_id()
        );
        assert!(matches!(
            create_fleet_key(&path),
            Err(FleetError::KeyExists { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load_fleet_key(&path),
            Err(FleetError::KeyFileTooOpen { mode: 0o644, .. })
        ));
    }

    #[test]
    fn fleet_key_that_is_no_regular_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        fs::create_dir(&private).expect("dir");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        for path in [&private, &fifo] {
            let error = load_fleet_key(path).expect_err("not a key file");
            assert!(
                matches!(error, FleetError::NotRegular { .. }),
                "{}: {error}",
                path.display()
            );
            assert!(
                error.to_string().contains("is not a regular file"),
                "{error}"
            );
        }
    }

    #[test]
    fn auto_approve_is_off_by_default_and_read_from_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        assert!(!AutoApproveConfig::load(&state).expect("no file").is_on());
        fs::write(state.config_path(), "name = \"a\"\n").expect("write");
        assert!(!AutoApproveConfig::load(&state).expect("no table").is_on());
        let fleet = identity(5).agent_id();
        let agent = identity(6).agent_id();
        fs::write(
            state.config_path(),
            format!(
                "name = \"a\"\n\n[auto_approve]\nagents = [\"{agent}\"]\nfleet_keys = [\"{fleet}\"]\n"
            ),
        )
        .expect("write");
        let config = AutoApproveConfig::load(&state).expect("parses");
        assert!(config.is_on());
        assert_eq!(
            config.rules(),
            AutoApprove {
                agents: vec![agent],
                fleet_keys: vec![fleet]
            }
        );
        fs::write(state.config_path(), "[auto_approve]\nagents = [\"nope\"]\n").expect("write");
        assert!(AutoApproveConfig::load(&state).is_err());
    }
}
