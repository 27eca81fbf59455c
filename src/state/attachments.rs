//! `STATE_DIR/attachments.json`: the namespaces given addresses of this
//! node by `agentnet attach` ([`Attachments`]), edited under an exclusive
//! `flock` on `attachments.lock` and read by the daemon to keep names in
//! the attached namespaces up to date. The plumbing itself is
//! `crate::attach`'s.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lock::LockedFile;
use super::{StateDir, StateError};
use crate::sys::netns::{self, NetnsId};

/// The record of attachments in the state directory.
pub const ATTACHMENTS_FILE: &str = "attachments.json";
/// Serializes `attach` and `detach` (and the daemon's reads).
const ATTACHMENTS_LOCK: &str = "attachments.lock";

/// The namespace to attach: by `ip netns` name or by the PID of a process in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachTarget {
    /// A named namespace (`/run/netns/NAME`).
    Netns(String),
    /// The namespace of a process (a container's, by its PID).
    Pid(u32),
}

impl AttachTarget {
    /// The nsfs file of the namespace.
    pub fn netns_path(&self) -> io::Result<PathBuf> {
        match self {
            Self::Netns(name) => netns::named_netns_path(name),
            Self::Pid(pid) => Ok(netns::pid_netns_path(*pid)),
        }
    }
}

impl std::fmt::Display for AttachTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Netns(name) => write!(f, "netns {name}"),
            Self::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// One attached namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// How it was named.
    pub target: AttachTarget,
    /// The namespace's identity when it was attached (a PID can be reused;
    /// the namespace inode tells whether it is still the same one).
    pub netns: NetnsId,
    /// Its address in this node's prefix.
    pub address: Ipv6Addr,
    /// Its IPv4 address (in `attach::IPV4_BLOCK`, masqueraded into the
    /// overlay), if the agent had IPv4 on when it was attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address4: Option<Ipv4Addr>,
    /// The veth end in the daemon's namespace.
    pub host_interface: String,
    /// The veth end inside the attached namespace.
    pub interface: String,
}

/// What `attachments.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachments {
    /// The attached namespaces, in the order they were attached.
    #[serde(default)]
    pub attached: Vec<Attachment>,
    /// Whether `attach` turned IPv6 forwarding on (so the last `detach`
    /// turns it off again).
    #[serde(default)]
    pub enabled_forwarding: bool,
    /// Whether `attach` turned IPv4 forwarding on (likewise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled_forwarding4: bool,
    /// The daemon's TUN when the record was last changed: the forwarding
    /// filter (`attach::filter`) lets only it exchange packets with the
    /// attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun_interface: Option<String>,
}

impl Attachments {
    /// The record in `state`, empty if there is none.
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        // The daemon's user owns the directory: `read_file` never follows
        // a link there.
        let parse = |bytes: &[u8]| serde_json::from_slice(bytes).map_err(|e| e.to_string());
        Ok(state
            .read_json(ATTACHMENTS_FILE, parse)?
            .unwrap_or_default())
    }

    /// Runs `edit` on the record under an exclusive lock and saves the
    /// result (also when `edit` fails: what it already did to the system
    /// must stay recorded).
    pub fn edit<T, E: From<StateError>>(
        state: &StateDir,
        edit: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        state.edit_locked(edit)
    }

    /// The attachment of the namespace `id`, if any.
    pub fn find_netns(&self, id: NetnsId) -> Option<&Attachment> {
        self.attached.iter().find(|a| a.netns == id)
    }
}

impl LockedFile for Attachments {
    const LOCK_FILE: &'static str = ATTACHMENTS_LOCK;
    const KEEP_FAILED_EDITS: bool = true;

    fn load(state: &StateDir) -> Result<Self, StateError> {
        Attachments::load(state)
    }

    fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.replace_json(ATTACHMENTS_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_as_json() {
        let record = Attachments {
            attached: vec![Attachment {
                target: AttachTarget::Netns("web".into()),
                netns: NetnsId {
                    dev: 4,
                    ino: 4026532,
                },
                address: "fd12:3456:789a:bcde:f012::2".parse().expect("address"),
                address4: Some(Ipv4Addr::new(198, 19, 0, 2)),
                host_interface: "an12345678-2".into(),
                interface: "agentnet0".into(),
            }],
            enabled_forwarding: true,
            enabled_forwarding4: true,
            tun_interface: Some("agentnet0".into()),
        };
        let text = serde_json::to_string(&record).expect("json");
        assert!(text.contains(r#""target":{"netns":"web"}"#), "{text}");
        assert!(text.contains(r#""address4":"198.19.0.2""#), "{text}");
        let back: Attachments = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, record);
        // A record written before IPv4 reads as IPv6-only attachments.
        let old = text
            .replace(r#","address4":"198.19.0.2""#, "")
            .replace(r#","enabled_forwarding4":true"#, "");
        let back: Attachments = serde_json::from_str(&old).expect("parses");
        assert_eq!(back.attached[0].address4, None);
        assert!(!back.enabled_forwarding4);
    }
}
