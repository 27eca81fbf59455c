//! Least privilege: what the daemon refuses to run with, the user it
//! switches to once everything is created, the capabilities it keeps, and
//! who may change it through the control socket.
//!
//! What `agentnet up` needs privileges for, and when:
//!
//! | what | needs | when |
//! |---|---|---|
//! | TUN interface, its address, MTU and IPv6 knobs | `CAP_NET_ADMIN` | start |
//! | UDP socket (port ≥ 1024), probe sockets, metrics listener | nothing | start, any time |
//! | systemd-resolved link settings (`resolvectl dns/domain`) | root or `CAP_NET_ADMIN`/polkit | start |
//! | systemd-resolved cache flushes (`resolvectl flush-caches`) | the same | each trust change |
//! | hosts files (`/etc/hosts`, `/etc/netns/NAME/hosts`) | write access to the file | start, each trust change |
//! | state files, control socket, PID file | write access to the state directory | any time |
//! | hosts files of namespaces attached after the start | root (`/etc/netns`, `/proc/PID/root`) | `attach` |
//! | removing the TUN interface | nothing: it goes with its descriptor | stop |
//!
//! So after creating the TUN, the sockets and the host's name configuration,
//! a daemon started as root switches to an unprivileged user ([`PrivilegeDrop`]):
//! `--user NAME`, by default the user `agentnet` when it exists (otherwise it
//! stays root and logs why; a daemon that stays root still keeps no
//! capability but `CAP_NET_ADMIN`, bounding set included, with
//! `no_new_privs`, and takes back a state directory an earlier run gave
//! away). Before switching it hands the state directory to that user
//! (agentnet's files only, and only a directory that no one but root could
//! swap for a link) and opens the hosts files it keeps editing (they are
//! edited in place through the open descriptors), then keeps no capability at all
//! — except `CAP_NET_ADMIN` (effective, permitted and ambient, for
//! `resolvectl`) when the host's names go through systemd-resolved. Every
//! other capability leaves the bounding set, `no_new_privs` is set, and a
//! switch back to root is verified to fail. A daemon started unprivileged
//! with capabilities (systemd `AmbientCapabilities=`) trims them the same way.
//!
//! The control socket is mode 0660; its group is `agentnet` when that group
//! exists at the start (else the daemon's group; the user database is asked
//! once, see `user_database`), its owner whoever created it (root,
//! when the daemon switched users): the file mode decides who may connect.
//! On each connection the daemon reads the peer's credentials
//! (`SO_PEERCRED`, `SO_PEERGROUPS`): root, the daemon's own user and members
//! of the `agentnet` group may do everything (`ControlAccess::Full`);
//! anyone else who can connect (an operator may open the socket to everyone
//! with `chmod 666` for monitoring) gets only the commands that change
//! nothing: `hello`, `status`, `trust list`, `trust pending`, `ping`.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::user_database::{self, Answers, UserRecord};
use crate::control::Request;
use crate::state::pending::PENDING_FILE;
use crate::state::{
    CONFIG_FILE, IDENTITY_FILE, STATE_FILES, StateDir, TRUST_FILE, is_state_file_name,
};
use crate::sys::capabilities::{self, CAP_NET_ADMIN, CapabilitySets, bit};
use crate::sys::nofollow::{self, NoFollowError};

/// The user the daemon switches to when `--user` is not given (if it exists).
pub const DAEMON_USER: &str = "agentnet";
/// The group whose members may change the daemon through its control socket.
pub const CONTROL_GROUP: &str = "agentnet";
/// Files of the state directory that must never be writable by everyone.
const GUARDED_FILES: &[&str] = &[IDENTITY_FILE, CONFIG_FILE, TRUST_FILE, PENDING_FILE];

/// Why the daemon refuses to start, or could not drop its privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The state directory or one of its files is writable by every user.
    #[error(
        "{} is writable by every user (mode {mode:04o}): anyone could replace {what}; \
         agentnet refuses to run with it. Run `chmod {fix} {}`",
        path.display(),
        path.display()
    )]
    WorldWritable {
        /// The `chmod` mode that fixes it.
        fix: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What an attacker could replace through it.
        what: &'static str,
    },
    /// A directory that leads to the state directory may be written by
    /// someone other than root, who could swap the state directory for a
    /// link once the daemon's user owns it.
    #[error(
        "{} {problem}: whoever may write it could replace {} with a link once `{user}` owns \
         it, and root would then write where the link points; use a state directory whose \
         parents only root may write (the default is /var/lib/agentnet)",
        path.display(),
        state.display()
    )]
    UnsafeParent {
        /// The directory above the state directory.
        path: PathBuf,
        /// The state directory.
        state: PathBuf,
        /// The user the daemon switches to.
        user: String,
        /// Who may write it.
        problem: String,
    },
    /// The state directory holds a file agentnet did not make: its new
    /// owner could replace that file.
    #[error(
        "{} holds `{name}`, which is not agentnet's: `{user}` would own the directory and \
         could replace it; give agentnet a directory of its own (the default is \
         /var/lib/agentnet)",
        dir.display()
    )]
    ForeignFile {
        /// The state directory.
        dir: PathBuf,
        /// The file's name.
        name: String,
        /// The user the daemon switches to.
        user: String,
    },
    /// The state directory could not be inspected.
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `--user` names no user of this host.
    #[error(
        "unknown user `{0}` (--user): create it (`useradd --system --no-create-home \
         --shell /usr/sbin/nologin {0}`) or name another one"
    )]
    UnknownUser(String),
    /// The user database could not be read.
    #[error("cannot look up user `{user}`: {source}")]
    Lookup {
        /// The name looked up.
        user: String,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },
    /// `--user` asks for another user, but the daemon does not run as root.
    #[error(
        "cannot switch to user `{user}`: agentnet runs as uid {uid}, and only root can \
         switch users (start it as root, or as `{user}` itself)"
    )]
    NotRoot {
        /// The user asked for.
        user: String,
        /// The daemon's effective UID.
        uid: u32,
    },
    /// A step of the switch failed; the daemon stops rather than run with
    /// more privileges than it announced.
    #[error("cannot drop privileges to `{user}`: {step}: {source}")]
    Drop {
        /// The target user.
        user: String,
        /// What failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Refuses a state directory, or a key, config or trust file in it, that
/// every user may write: whoever can write there can become this agent or
/// trust anyone in its name. (A key file that group or others can even read
/// is refused when it is loaded.)
pub fn check_state_permissions(state: &StateDir) -> Result<(), PrivilegeError> {
    let inspect = |path: &Path| match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.permissions().mode() & 0o7777)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PrivilegeError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    };
    let root = state.root();
    if let Some(mode) = inspect(root)?
        && mode & 0o002 != 0
    {
        return Err(PrivilegeError::WorldWritable {
            fix: "o-w",
            path: root.to_path_buf(),
            mode,
            what: "the identity, the trust store or the control socket",
        });
    }
    for name in GUARDED_FILES {
        let path = root.join(name);
        if let Some(mode) = inspect(&path)?
            && mode & 0o002 != 0
        {
            let (what, fix) = if *name == IDENTITY_FILE {
                ("this agent's key", "600")
            } else {
                ("what this agent trusts", "o-w")
            };
            return Err(PrivilegeError::WorldWritable {
                fix,
                path,
                mode,
                what,
            });
        }
    }
    Ok(())
}

/// The unprivileged user the daemon becomes.
#[derive(Debug, Clone)]
struct TargetUser {
    name: String,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl From<UserRecord> for TargetUser {
    fn from(user: UserRecord) -> Self {
        Self {
            name: user.name,
            uid: Uid::from_raw(user.uid),
            gid: Gid::from_raw(user.gid),
            groups: user.groups.into_iter().map(Gid::from_raw).collect(),
        }
    }
}

/// The decision, taken before anything is created, about which user the
/// daemon runs as once it is set up. See the module docs.
#[derive(Debug, Clone)]
pub struct PrivilegeDrop {
    target: Option<TargetUser>,
    /// The [`CONTROL_GROUP`] group's ID, if the group existed at the start.
    control_gid: Option<Gid>,
}

impl PrivilegeDrop {
    /// Chooses the user for `--user` (`None`: the default rule). `root` or
    /// `0` keeps a root daemon root.
    pub fn choose(requested: Option<&str>) -> Result<Self, PrivilegeError> {
        let euid = nix::unistd::geteuid();
        // One question to the user database for the whole start (see
        // `user_database`): the user to become and the control group.
        let asked = requested.or(euid.is_root().then_some(DAEMON_USER));
        let answers = Answers::ask(asked, CONTROL_GROUP);
        let control_gid = answers.control_gid.map(Gid::from_raw);
        let found = |name: &str| {
            answers
                .user
                .clone()
                .map(|user| user.map(TargetUser::from))
                .map_err(|code| PrivilegeError::Lookup {
                    user: name.to_string(),
                    source: nix::errno::Errno::from_raw(code),
                })
        };
        let stay = Self {
            target: None,
            control_gid,
        };
        let Some(name) = requested else {
            if !euid.is_root() {
                return Ok(stay);
            }
            return match found(DAEMON_USER)? {
                Some(user) if !user.uid.is_root() => Ok(Self {
                    target: Some(user),
                    control_gid,
                }),
                _ => {
                    tracing::info!(
                        "no user `{DAEMON_USER}` on this host: the daemon keeps running as root \
                         (create the user, e.g. `useradd --system --no-create-home --shell \
                         /usr/sbin/nologin {DAEMON_USER}`, or pass --user NAME)"
                    );
                    Ok(stay)
                }
            };
        };
        let user = found(name)?.ok_or_else(|| PrivilegeError::UnknownUser(name.into()))?;
        if user.uid == euid {
            return Ok(stay);
        }
        if !euid.is_root() {
            return Err(PrivilegeError::NotRoot {
                user: name.to_string(),
                uid: euid.as_raw(),
            });
        }
        if user.uid.is_root() {
            tracing::info!("--user {name}: the daemon keeps running as root");
            return Ok(stay);
        }
        Ok(Self {
            target: Some(user),
            control_gid,
        })
    }

    /// The [`CONTROL_GROUP`] group's ID, if the group existed when the
    /// daemon started.
    pub(crate) fn control_gid(&self) -> Option<Gid> {
        self.control_gid
    }

    /// Whether the daemon will switch to another user.
    pub fn switches_user(&self) -> bool {
        self.target.is_some()
    }

    /// Drops the privileges: switches user (handing it the state directory
    /// and `socket` first), or, for a daemon that is not root, only trims
    /// its capabilities. `keep_net_admin`: keep `CAP_NET_ADMIN` (for
    /// `resolvectl`). Call it once the TUN, the sockets and the name
    /// configuration exist, while the process has a single thread.
    pub fn apply(
        self,
        state: &StateDir,
        socket: &Path,
        keep_net_admin: bool,
    ) -> Result<(), PrivilegeError> {
        let keep = if keep_net_admin {
            bit(CAP_NET_ADMIN)
        } else {
            0
        };
        let control_gid = self.control_gid;
        match self.target {
            Some(target) => switch_user(&target, state, socket, control_gid, keep),
            None if !nix::unistd::geteuid().is_root() => {
                trim_capabilities(keep);
                Ok(())
            }
            // Root without a user to become: still no capability beyond
            // CAP_NET_ADMIN (the TUN's knobs, `resolvectl`).
            None => stay_root_with(state, socket, control_gid, keep | bit(CAP_NET_ADMIN)),
        }
    }
}

fn switch_user(
    target: &TargetUser,
    state: &StateDir,
    socket: &Path,
    control_gid: Option<Gid>,
    keep: u64,
) -> Result<(), PrivilegeError> {
    let failed = |step: &'static str| {
        let user = target.name.clone();
        move |source: io::Error| PrivilegeError::Drop { user, step, source }
    };
    let errno = |errno: nix::errno::Errno| io::Error::from(errno);
    check_parents(state.root(), &target.name, 0)?;
    check_contents(state.root(), socket, target)?;
    hand_over_state(target, state, socket, control_gid)
        .map_err(failed("hand over the state directory"))?;
    let threads = crate::sys::calls::thread_count().unwrap_or(1);
    if threads > 1 {
        // set*id reach every thread (glibc), capset only this one: the
        // others end with no capability at all.
        tracing::debug!(threads, "other threads keep no capability after the switch");
    }
    nix::sys::prctl::set_keepcaps(true)
        .map_err(errno)
        .map_err(failed("keep capabilities across the switch"))?;
    shrink_bounding_set(keep).map_err(failed("shrink the bounding set"))?;
    nix::unistd::setgroups(&target.groups)
        .map_err(errno)
        .map_err(failed("set the groups"))?;
    nix::unistd::setresgid(target.gid, target.gid, target.gid)
        .map_err(errno)
        .map_err(failed("set the group ID"))?;
    nix::unistd::setresuid(target.uid, target.uid, target.uid)
        .map_err(errno)
        .map_err(failed("set the user ID"))?;
    capabilities::set(CapabilitySets {
        effective: keep,
        permitted: keep,
        inheritable: keep,
    })
    .map_err(failed("set the capabilities"))?;
    if keep & bit(CAP_NET_ADMIN) != 0 {
        capabilities::raise_ambient(CAP_NET_ADMIN)
            .map_err(failed("raise ambient CAP_NET_ADMIN"))?;
    }
    nix::sys::prctl::set_keepcaps(false)
        .map_err(errno)
        .map_err(failed("reset keep-capabilities"))?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(errno)
        .map_err(failed("set no_new_privs"))?;
    // The switch must be final: getting root back must fail.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(failed("verify")(io::Error::other(
            "the process could switch back to root",
        )));
    }
    let now = capabilities::current().map_err(failed("read the capabilities back"))?;
    if now.permitted != keep || now.effective != keep {
        return Err(failed("verify")(io::Error::other(format!(
            "permitted capabilities are {:#x}, expected {keep:#x}",
            now.permitted
        ))));
    }
    tracing::info!(
        user = %target.name,
        uid = target.uid.as_raw(),
        gid = target.gid.as_raw(),
        capabilities = describe(keep),
        "dropped privileges"
    );
    Ok(())
}

/// Removes every capability but `keep` from the bounding set, so nothing
/// this process runs can get it back. Without `CAP_SETPCAP` (a container
/// that lacks it) the set stays as it is: no_new_privs, set by the caller,
/// already keeps execve from granting anything.
fn shrink_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..=capabilities::last_cap() {
        if keep & bit(cap) != 0 {
            continue;
        }
        match capabilities::drop_bounding(cap) {
            Ok(()) => {}
            // EINVAL: a capability this kernel does not have.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                tracing::debug!("no CAP_SETPCAP: the bounding set stays as it is");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// For a root daemon with no user to switch to: takes the state directory
/// back from a user an earlier run handed it to (uid 0 without
/// `CAP_DAC_OVERRIDE` could not write in it otherwise), then keeps only
/// `keep` in every capability set, bounding set included, and sets
/// no_new_privs. A capability still held afterwards stops the start.
fn stay_root_with(
    state: &StateDir,
    socket: &Path,
    control_gid: Option<Gid>,
    keep: u64,
) -> Result<(), PrivilegeError> {
    let failed = |step: &'static str| {
        move |source: io::Error| PrivilegeError::Drop {
            user: "root".into(),
            step,
            source,
        }
    };
    let root = TargetUser {
        name: "root".into(),
        uid: Uid::from_raw(0),
        gid: Gid::from_raw(0),
        groups: Vec::new(),
    };
    if state.root().join(IDENTITY_FILE).is_file() {
        hand_over_state(&root, state, socket, control_gid)
            .map_err(failed("take the state directory back"))?;
    }
    shrink_bounding_set(keep).map_err(failed("shrink the bounding set"))?;
    capabilities::clear_ambient().map_err(failed("clear the ambient set"))?;
    capabilities::set(CapabilitySets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(failed("set the capabilities"))?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(io::Error::from)
        .map_err(failed("set no_new_privs"))?;
    let now = capabilities::current().map_err(failed("read the capabilities back"))?;
    if now.permitted & !keep != 0 || now.effective & !keep != 0 {
        return Err(failed("verify")(io::Error::other(format!(
            "permitted capabilities are {:#x}, expected at most {keep:#x}",
            now.permitted
        ))));
    }
    tracing::info!(
        capabilities = describe(now.permitted),
        "staying root with only the capabilities it needs"
    );
    Ok(())
}

/// Refuses a state directory that anyone but root could swap for a link
/// once `user` owns it: root's later opens there (`trust add`, `down`, the
/// next `up`) go by path, so every directory on the way, links resolved or
/// not, must be root's and writable by root only. Above the parent a
/// sticky directory (`/tmp`) will do, since others cannot rename root's
/// entry in it; the parent will hold the daemon user's entry. `root` is
/// root's UID (the test's own in tests).
fn check_parents(state: &Path, user: &str, root: u32) -> Result<(), PrivilegeError> {
    let inspect = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrivilegeError::Inspect { path, source }
    };
    let paths = [
        std::path::absolute(state).map_err(inspect(state))?,
        fs::canonicalize(state).map_err(inspect(state))?,
    ];
    for path in &paths {
        for (depth, dir) in path.ancestors().skip(1).enumerate() {
            let meta = fs::metadata(dir).map_err(inspect(dir))?;
            let mode = meta.mode() & 0o7777;
            let problem = if meta.uid() != 0 && meta.uid() != root {
                format!("belongs to uid {}", meta.uid())
            } else if mode & 0o022 != 0 && (depth == 0 || mode & 0o1000 == 0) {
                format!("may be written by its group or by everyone (mode {mode:04o})")
            } else {
                continue;
            };
            return Err(PrivilegeError::UnsafeParent {
                path: dir.to_path_buf(),
                state: state.to_path_buf(),
                user: user.to_string(),
                problem,
            });
        }
    }
    Ok(())
}

/// Refuses to give `target` a state directory that holds files agentnet
/// did not make (but the control socket): the owner of a directory may
/// rename and replace what is in it, so `--state-dir /etc` would give
/// `/etc/shadow` away. A directory that is the user's already is theirs.
fn check_contents(state: &Path, socket: &Path, target: &TargetUser) -> Result<(), PrivilegeError> {
    let inspect = |source| PrivilegeError::Inspect {
        path: state.to_path_buf(),
        source,
    };
    if fs::metadata(state).map_err(inspect)?.uid() == target.uid.as_raw() {
        return Ok(());
    }
    for entry in fs::read_dir(state).map_err(inspect)? {
        let path = entry.map_err(inspect)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !is_state_file_name(&name) && path != socket {
            return Err(PrivilegeError::ForeignFile {
                dir: state.to_path_buf(),
                name: name.into_owned(),
                user: target.name.clone(),
            });
        }
    }
    Ok(())
}

/// Gives the state directory and agentnet's files in it ([`STATE_FILES`])
/// to the target user, so the daemon can still write its state, and the
/// control socket to its group (`agentnet` if it exists). Only plain files
/// and sockets with a single link: symbolic links, subdirectories and hard
/// links (which may be `/etc/shadow` in disguise, planted by that user) are
/// left alone. A switch to another user checks the directory first
/// ([`check_parents`], [`check_contents`]).
fn hand_over_state(
    target: &TargetUser,
    state: &StateDir,
    socket: &Path,
    control_gid: Option<Gid>,
) -> io::Result<()> {
    let (uid, gid) = (Some(target.uid.as_raw()), Some(target.gid.as_raw()));
    let root = state.root();
    // A directory without a key is not a state directory: touch nothing.
    if !root.join(IDENTITY_FILE).is_file() {
        return Err(io::Error::other(format!(
            "{} holds no {IDENTITY_FILE}",
            root.display()
        )));
    }
    std::os::unix::fs::lchown(root, uid, gid)?;
    for name in STATE_FILES {
        let path = root.join(name);
        if path == socket {
            continue;
        }
        match nofollow::chown_no_follow(&path, uid, gid) {
            Ok(()) => {}
            Err(error) if error.is_not_found() => {}
            Err(NoFollowError::Io { source, .. }) => return Err(source),
            Err(error) => tracing::warn!(%error, "not handed to the daemon's user"),
        }
    }
    // The socket keeps its owner (root): root reaches it even without
    // CAP_DAC_OVERRIDE (a container's `kubectl exec`), the daemon through
    // the group.
    let socket_gid = control_gid.map_or(gid, |g| Some(g.as_raw()));
    nofollow::chown_no_follow(socket, None, socket_gid)?;
    Ok(())
}

/// For a daemon that is not root: lowers its capabilities to `keep`.
fn trim_capabilities(keep: u64) {
    let Ok(sets) = capabilities::current() else {
        return;
    };
    if sets.permitted & !keep == 0 {
        return;
    }
    let permitted = sets.permitted & keep;
    let trimmed = CapabilitySets {
        effective: sets.effective & permitted,
        permitted,
        inheritable: sets.inheritable & permitted,
    };
    if keep == 0 {
        let _ = capabilities::clear_ambient();
    }
    match capabilities::set(trimmed) {
        Ok(()) => tracing::info!(capabilities = describe(permitted), "dropped capabilities"),
        Err(error) => tracing::warn!(%error, "cannot drop capabilities"),
    }
    // Nothing it runs later may gain privileges through execve either.
    if let Err(errno) = nix::sys::prctl::set_no_new_privs() {
        tracing::debug!(%errno, "cannot set no_new_privs");
    }
}

fn describe(set: u64) -> &'static str {
    if set & bit(CAP_NET_ADMIN) != 0 {
        "cap_net_admin"
    } else if set == 0 {
        "none"
    } else {
        "some"
    }
}

/// Makes the control socket's group `agentnet` (`control_gid`, if the
/// group exists), so that its members can connect (mode 0660). Best effort.
/// Not through a link: the socket's directory may be the daemon user's.
pub(crate) fn share_socket_with_group(socket: &Path, control_gid: Option<Gid>) {
    let Some(gid) = control_gid else {
        return;
    };
    if let Err(error) = nofollow::chown_no_follow(socket, None, Some(gid.as_raw())) {
        tracing::debug!(%error, "cannot give the control socket to group {CONTROL_GROUP}");
    }
}

/// The credentials of a control-socket client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCredentials {
    /// Its effective user ID.
    pub(crate) uid: u32,
    /// Its effective group ID.
    pub(crate) gid: u32,
    /// Its supplementary groups.
    pub(crate) groups: Vec<u32>,
}

/// What a control-socket client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlAccess {
    /// Root, the daemon's own user or a member of the `agentnet` group:
    /// every command.
    Full,
    /// Anyone else who could open the socket: commands that change nothing.
    ReadOnly {
        /// The client's user ID (for the refusal message).
        uid: u32,
    },
}

impl ControlAccess {
    /// The access of a client with `peer` credentials to a daemon running
    /// as `daemon_uid`, `control_gid` being the `agentnet` group's ID.
    pub(crate) fn decide(
        peer: &PeerCredentials,
        daemon_uid: u32,
        control_gid: Option<u32>,
    ) -> Self {
        let member = control_gid.is_some_and(|gid| peer.gid == gid || peer.groups.contains(&gid));
        if peer.uid == 0 || peer.uid == daemon_uid || member {
            ControlAccess::Full
        } else {
            ControlAccess::ReadOnly { uid: peer.uid }
        }
    }

    /// The access of the client at the other end of `stream`, `control_gid`
    /// being the `agentnet` group's ID. Credentials that cannot be read give
    /// read-only access (fail closed).
    pub(crate) fn of_stream(stream: &tokio::net::UnixStream, control_gid: Option<u32>) -> Self {
        let Ok(cred) = stream.peer_cred() else {
            return ControlAccess::ReadOnly { uid: u32::MAX };
        };
        let groups = capabilities::peer_groups(stream.as_fd())
            .unwrap_or_else(|_| user_database::configured_groups(cred.uid(), cred.gid()));
        let peer = PeerCredentials {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
        };
        Self::decide(&peer, nix::unistd::geteuid().as_raw(), control_gid)
    }

    /// Whether this client may make `request`; the error is the answer.
    pub(crate) fn check(self, request: &Request) -> Result<(), String> {
        match self {
            ControlAccess::Full => Ok(()),
            ControlAccess::ReadOnly { .. } if !changes_state(request) => Ok(()),
            ControlAccess::ReadOnly { uid } => {
                let command = serde_json::to_value(request)
                    .ok()
                    .and_then(|value| value["cmd"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "this command".to_string());
                Err(format!(
                    "permission denied: `{command}` changes this agent; it needs root, the \
                     daemon's user or membership in the `{CONTROL_GROUP}` group (you are uid \
                     {uid}). Read-only commands (status, trust list, trust pending, ping, serve --list, \
                     advertise --list, services) are \
                     allowed."
                ))
            }
        }
    }
}

/// Whether a request changes the agent (trust, attachments, running
/// state). Anything not known to be read-only counts as a change, so a
/// new command is privileged until someone decides otherwise.
pub(crate) fn changes_state(request: &Request) -> bool {
    !matches!(
        request,
        Request::Hello {}
            | Request::Status {}
            | Request::TrustList {}
            | Request::TrustPending {}
            | Request::Ping { .. }
            | Request::ServeList {}
            | Request::AdvertiseList {}
            | Request::Services {}
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::policy::Policy;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCredentials {
        PeerCredentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn trust_add() -> Request {
        Request::TrustAdd {
            id: Identity::from_secret_bytes(&[1; 32])
                .expect("key")
                .agent_id(),
            name: "bob".into(),
            endpoint: None,
            allow: Some(Policy::All),
        }
    }

    #[test]
    fn root_the_daemon_user_and_group_members_have_full_access() {
        let daemon = 990;
        let group = Some(991);
        assert_eq!(
            ControlAccess::decide(&peer(0, 0, &[]), daemon, group),
            ControlAccess::Full
        );
        assert_eq!(
            ControlAccess::decide(&peer(990, 5, &[]), daemon, group),
            ControlAccess::Full
        );
        assert_eq!(
            ControlAccess::decide(&peer(1000, 991, &[]), daemon, group),
            ControlAccess::Full
        );
        assert_eq!(
            ControlAccess::decide(&peer(1000, 1000, &[27, 991]), daemon, group),
            ControlAccess::Full
        );
    }

    #[test]
    fn other_users_are_read_only_and_without_the_group_nobody_is_a_member() {
        assert_eq!(
            ControlAccess::decide(&peer(1000, 1000, &[27]), 0, Some(991)),
            ControlAccess::ReadOnly { uid: 1000 }
        );
        assert_eq!(
            ControlAccess::decide(&peer(1000, 991, &[991]), 0, None),
            ControlAccess::ReadOnly { uid: 1000 }
        );
    }

    #[test]
    fn read_only_clients_may_read_but_not_change_trust() {
        let reader = ControlAccess::ReadOnly { uid: 65534 };
        for request in [
            Request::Hello {},
            Request::Status {},
            Request::TrustList {},
            Request::TrustPending {},
            Request::Ping {
                peer: "bob".into(),
                timeout_ms: None,
            },
            Request::AdvertiseList {},
            Request::Services {},
        ] {
            assert!(reader.check(&request).is_ok(), "{request:?}");
        }
        for request in [
            trust_add(),
            Request::TrustRemove { peer: "bob".into() },
            Request::Down {},
            Request::ReloadAttachments {},
            Request::AdvertiseAdd(
                crate::core::services::Service::parse("mcp:8000", None, None).expect("service"),
            ),
            Request::AdvertiseOff {
                kind: "mcp".parse().expect("kind"),
                port: 8000,
            },
        ] {
            let refusal = reader.check(&request).expect_err("refused");
            assert!(refusal.starts_with("permission denied"), "{refusal}");
            assert!(refusal.contains("uid 65534"), "{refusal}");
        }
        let message = reader.check(&trust_add()).expect_err("refused");
        assert!(message.contains("`trust_add`"), "{message}");
        assert!(ControlAccess::Full.check(&trust_add()).is_ok());
    }

    #[test]
    fn world_writable_state_dir_and_files_are_refused() {
        let temp = tempfile::tempdir().expect("temp");
        let state = StateDir::new(temp.path().join("state"));
        state.create().expect("create");
        check_state_permissions(&state).expect("0700 is fine");
        fs::set_permissions(state.root(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let message = check_state_permissions(&state)
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("writable by every user (mode 0777)"),
            "{message}"
        );
        assert!(message.contains("chmod o-w"), "{message}");
        fs::set_permissions(state.root(), fs::Permissions::from_mode(0o750)).expect("chmod");
        fs::write(state.trust_path(), "").expect("trust file");
        fs::set_permissions(state.trust_path(), fs::Permissions::from_mode(0o646)).expect("chmod");
        let message = check_state_permissions(&state)
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("trust.toml is writable by every user"),
            "{message}"
        );
        fs::set_permissions(state.trust_path(), fs::Permissions::from_mode(0o600)).expect("chmod");
        check_state_permissions(&state).expect("fixed");
    }

    #[test]
    fn a_missing_state_directory_is_not_refused() {
        let temp = tempfile::tempdir().expect("temp");
        let state = StateDir::new(temp.path().join("none"));
        check_state_permissions(&state).expect("nothing to check yet");
    }

    /// A private temp directory, or `None` (the test is skipped) where the
    /// temp directory's own parents fail [`check_parents`].
    fn private_temp(test: &str) -> Option<tempfile::TempDir> {
        let temp = tempfile::tempdir().expect("temp");
        let me = nix::unistd::geteuid().as_raw();
        let probe = temp.path().join("probe");
        fs::create_dir(&probe).expect("dir");
        if let Err(error) = check_parents(&probe, "nobody", me) {
            eprintln!("SKIPPED {test}: {error}");
            return None;
        }
        Some(temp)
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_state_directory_others_could_swap_for_a_link_is_not_handed_over() {
        let Some(temp) =
            private_temp("a_state_directory_others_could_swap_for_a_link_is_not_handed_over")
        else {
            return;
        };
        let me = nix::unistd::geteuid().as_raw();
        let base = temp.path();
        let refused = |state: &Path| match check_parents(state, "nobody", me) {
            Err(PrivilegeError::UnsafeParent { path, .. }) => path,
            other => panic!("{}: {other:?}", state.display()),
        };
        let state = base.join("state");
        fs::create_dir(&state).expect("dir");
        check_parents(&state, "nobody", me).expect("a private parent");
        for mode in [0o770, 0o757, 0o1777] {
            chmod(base, mode);
            assert_eq!(refused(&state), base, "{mode:o}");
        }
        chmod(base, 0o755);
        let missing = check_parents(&base.join("shared/state"), "nobody", me);
        assert!(matches!(missing, Err(PrivilegeError::Inspect { .. })));

        // Higher up, a sticky directory keeps others from renaming the
        // private directory in it; a plain writable one does not.
        let leaf = base.join("shared/private");
        fs::create_dir_all(leaf.join("state")).expect("dirs");
        chmod(&base.join("shared"), 0o1777);
        check_parents(&leaf.join("state"), "nobody", me).expect("sticky above the parent");
        chmod(&base.join("shared"), 0o777);
        let error = check_parents(&leaf.join("state"), "nobody", me).expect_err("writable");
        assert!(
            error.to_string().contains("everyone (mode 0777)")
                && error.to_string().contains("replace"),
            "{error}"
        );
        // A link to it is resolved: the directories behind it count too.
        std::os::unix::fs::symlink(&leaf, base.join("link")).expect("symlink");
        assert_eq!(refused(&base.join("link/state")), base.join("shared"));
        chmod(&base.join("shared"), 0o755);
        check_parents(&base.join("link/state"), "nobody", me).expect("safe again");

        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(base, Some(Uid::from_raw(65534)), None).expect("chown");
            let error = check_parents(&state, "nobody", 0).expect_err("not root's");
            assert!(
                error.to_string().contains("belongs to uid 65534"),
                "{error}"
            );
            nix::unistd::chown(base, Some(Uid::from_raw(0)), None).expect("chown back");
        }
    }

    #[test]
    fn a_state_directory_with_other_files_is_not_handed_over() {
        let temp = tempfile::tempdir().expect("temp");
        let state = temp.path().join("state");
        fs::create_dir(&state).expect("dir");
        for name in [
            IDENTITY_FILE,
            TRUST_FILE,
            ".trust.toml.tmp-7-0badcafe",
            "ctl.sock",
        ] {
            fs::write(state.join(name), "").expect("file");
        }
        let me = nix::unistd::geteuid().as_raw();
        let mut other = TargetUser {
            name: "alice".into(),
            uid: Uid::from_raw(me.wrapping_add(4242)),
            gid: Gid::from_raw(4242),
            groups: Vec::new(),
        };
        let socket = state.join("ctl.sock");
        check_contents(&state, &socket, &other).expect("agentnet's files only");
        fs::write(state.join("shadow"), "root:x:\n").expect("file");
        let error = check_contents(&state, &socket, &other).expect_err("foreign file");
        assert!(
            matches!(&error, PrivilegeError::ForeignFile { name, .. } if name == "shadow"),
            "{error}"
        );
        assert!(error.to_string().contains("`alice` would own"), "{error}");
        // Already the user's: whatever is in it, they could have put there.
        other.uid = Uid::from_raw(me);
        check_contents(&state, &socket, &other).expect("theirs already");
    }

    #[test]
    fn handing_over_gives_away_agentnets_files_only() {
        if !crate::sys::root_for_test("handing_over_gives_away_agentnets_files_only") {
            return;
        }
        const NOBODY: u32 = 65534;
        let temp = tempfile::tempdir().expect("temp");
        let state = StateDir::new(temp.path().join("state"));
        state.create().expect("dir");
        let root = state.root();
        for name in [
            IDENTITY_FILE,
            TRUST_FILE,
            crate::state::RENDEZVOUS_LOG_FILE,
            "shadow",
        ] {
            fs::write(root.join(name), "").expect("file");
        }
        let socket = root.join(crate::state::SOCKET_FILE);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
        let canary = temp.path().join("canary");
        fs::write(&canary, "").expect("canary");
        std::os::unix::fs::symlink(&canary, root.join("link.sock")).expect("symlink");
        let nobody = TargetUser {
            name: "nobody".into(),
            uid: Uid::from_raw(NOBODY),
            gid: Gid::from_raw(NOBODY),
            groups: Vec::new(),
        };
        hand_over_state(&nobody, &state, &socket, None).expect("handed over");
        let owner = |name: &str| {
            let meta = fs::symlink_metadata(root.join(name)).expect("stat");
            (meta.uid(), meta.gid())
        };
        assert_eq!(owner(""), (NOBODY, NOBODY));
        for name in [IDENTITY_FILE, TRUST_FILE, crate::state::RENDEZVOUS_LOG_FILE] {
            assert_eq!(owner(name), (NOBODY, NOBODY), "{name}");
        }
        assert_eq!(owner("shadow"), (0, 0), "not agentnet's");
        assert_eq!(owner(crate::state::SOCKET_FILE), (0, NOBODY));

        // In the same file system: a hard link, which lchown by path would
        // have followed.
        let hard_canary = root.join("hard-canary");
        fs::write(&hard_canary, "").expect("hard canary");
        fs::hard_link(&hard_canary, root.join("hard.sock")).expect("hard link");
        // The socket's group is not set through a link planted in its
        // place, symbolic or hard.
        share_socket_with_group(&root.join("link.sock"), Some(Gid::from_raw(NOBODY)));
        assert_eq!(fs::metadata(&canary).expect("stat").gid(), 0);
        share_socket_with_group(&root.join("hard.sock"), Some(Gid::from_raw(NOBODY)));
        assert_eq!(fs::metadata(&hard_canary).expect("stat").gid(), 0);
    }

    #[test]
    fn unknown_users_are_refused_by_name() {
        let error = PrivilegeDrop::choose(Some("no-such-user-agentnet-test")).expect_err("unknown");
        assert!(matches!(error, PrivilegeError::UnknownUser(_)), "{error}");
        assert!(error.to_string().contains("useradd"), "{error}");
    }

    #[test]
    fn the_own_user_needs_no_switch() {
        let me = nix::unistd::geteuid().as_raw().to_string();
        let choice = PrivilegeDrop::choose(Some(&me)).expect("own uid");
        assert!(!choice.switches_user());
    }
}
