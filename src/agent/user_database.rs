//! What the host's user database (NSS: `/etc/passwd` and `/etc/group`,
//! systemd-userdb, LDAP…) says about the user the daemon becomes and the
//! group that may control it, asked once at start-up in a short-lived child
//! process.
//!
//! A lookup that falls through `files` makes glibc load the next module of
//! `nsswitch.conf` into the asking process (`libnss_systemd` on most
//! distributions, with libm and libcap behind it), and glibc never unloads
//! it: ~0.7 MiB of a daemon's resident set for two answers it needs once.
//! Asked in a forked child ([`crate::sys::calls::run_in_child`]), the daemon
//! keeps only the answers. A process that already has a second thread
//! cannot fork safely, so it asks in process, with the same answers.

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

/// The most a child's answers may take (a user in every one of 65,536
/// groups needs ~0.5 MB as JSON).
const ANSWERS_LIMIT: usize = 1 << 20;

/// A user of the host, as the database gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    /// The user's name.
    pub(crate) name: String,
    /// Its user ID.
    pub(crate) uid: u32,
    /// Its primary group.
    pub(crate) gid: u32,
    /// Every group it is a member of (`getgrouplist`), the primary one
    /// included.
    pub(crate) groups: Vec<u32>,
}

/// What the database says, in one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answers {
    /// The user asked about: `None` when it does not exist (or none was
    /// asked about); the `errno` of a lookup that failed.
    pub(crate) user: Result<Option<UserRecord>, i32>,
    /// The ID of the group that may control the daemon, if it exists.
    pub(crate) control_gid: Option<u32>,
}

impl Answers {
    /// Asks about `user` (a name or a numeric UID; `None`: no user) and the
    /// group `control_group`, in a child process when this process can fork.
    pub(crate) fn ask(user: Option<&str>, control_group: &str) -> Self {
        let in_child = crate::sys::calls::run_in_child(
            || serde_json::to_vec(&Self::ask_here(user, control_group)).unwrap_or_default(),
            ANSWERS_LIMIT,
        )
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(std::io::Error::other));
        match in_child {
            Ok(answers) => answers,
            Err(error) => {
                tracing::debug!(%error, "the user database is asked in process");
                Self::ask_here(user, control_group)
            }
        }
    }

    /// Asks in this process.
    pub(crate) fn ask_here(user: Option<&str>, control_group: &str) -> Self {
        Self {
            user: user.map_or(Ok(None), lookup_user).map_err(|e| e as i32),
            control_gid: Group::from_name(control_group)
                .ok()
                .flatten()
                .map(|group| group.gid.as_raw()),
        }
    }
}

/// The user named `name`, or with UID `name` when it is a number.
fn lookup_user(name: &str) -> Result<Option<UserRecord>, Errno> {
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
        Err(_) => User::from_name(name)?,
    };
    Ok(user.map(|user| {
        let groups = std::ffi::CString::new(user.name.clone())
            .ok()
            .and_then(|cname| nix::unistd::getgrouplist(&cname, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid]);
        UserRecord {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(Gid::as_raw).collect(),
        }
    }))
}

/// The groups the database gives `uid`, for a control client whose groups
/// the kernel cannot tell (`SO_PEERGROUPS` is Linux ≥ 4.13). Asked in
/// process: the daemon runs threads by then, and such kernels are rare.
pub(crate) fn configured_groups(uid: u32, gid: u32) -> Vec<u32> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|user| std::ffi::CString::new(user.name).ok())
        .and_then(|name| nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok())
        .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_by_uid_and_strangers_are_not() {
        let by_name = Answers::ask_here(Some("root"), "root")
            .user
            .expect("lookup");
        let by_uid = Answers::ask_here(Some("0"), "root").user.expect("lookup");
        let root = by_name.expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "{root:?}");
        assert_eq!(by_uid, Some(root));
        assert_eq!(
            Answers::ask_here(Some("no-such-user-agentnet-test"), "root").user,
            Ok(None)
        );
        assert_eq!(Answers::ask_here(None, "root").user, Ok(None));
        assert_eq!(Answers::ask_here(None, "root").control_gid, Some(0));
        assert_eq!(
            Answers::ask_here(None, "no-such-group-agentnet-test").control_gid,
            None
        );
    }

    #[test]
    fn answers_survive_the_trip_from_the_child() {
        // The test harness runs threads, so `ask` asks in process here; the
        // child's path is the same JSON, checked byte for byte.
        let answers = Answers::ask_here(Some("root"), "root");
        let bytes = serde_json::to_vec(&answers).expect("serialize");
        let back: Answers = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(back, answers);
        assert_eq!(Answers::ask(Some("root"), "root"), answers);
        let failed = Answers {
            user: Err(Errno::EIO as i32),
            control_gid: Some(7),
        };
        let back: Answers =
            serde_json::from_slice(&serde_json::to_vec(&failed).expect("serialize"))
                .expect("parse");
        assert_eq!(back, failed);
    }
}
