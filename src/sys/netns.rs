//! Network namespaces as files: who is in which namespace, and which name
//! (`ip netns`) a namespace goes by.
//!
//! A network namespace is identified by the device and inode of its nsfs
//! file (`/proc/PID/ns/net`, or a bind mount of it such as
//! `/run/netns/NAME`): two paths name the same namespace exactly when both
//! numbers match. This is how `ip netns identify` works too.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `ip netns add` bind-mounts the namespaces it names.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// Where `ip netns exec NAME` looks for files it bind-mounts over `/etc`.
pub const NETNS_ETC_DIR: &str = "/etc/netns";

/// The identity of one network namespace (device and inode of its nsfs file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    /// Device number of the nsfs file.
    pub dev: u64,
    /// Inode number of the nsfs file.
    pub ino: u64,
}

impl NetnsId {
    /// The namespace a nsfs path (`/proc/PID/ns/net`, `/run/netns/NAME`) refers to.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        let meta = fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The namespace of the calling thread (`/proc/self` would name the
    /// main thread's, which differs after a `setns` on another thread).
    pub fn current() -> io::Result<Self> {
        Self::of_path(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace of process `pid`.
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        Self::of_path(&pid_netns_path(pid))
    }

    /// The namespace named `name` by `ip netns`.
    pub fn of_name(name: &str) -> io::Result<Self> {
        Self::of_path(&named_netns_path(name)?)
    }
}

/// `/proc/PID/ns/net`.
pub fn pid_netns_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// `/run/netns/NAME`, after checking that `name` is a plain file name.
pub fn named_netns_path(name: &str) -> io::Result<PathBuf> {
    if !is_plain_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad network namespace name `{name}`"),
        ));
    }
    Ok(Path::new(NAMED_NETNS_DIR).join(name))
}

/// Whether `name` can be one entry of a directory (no `/`, not `.`/`..`,
/// no NUL, not empty).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Whether this thread runs in the same network namespace as PID 1 (the
/// host's, or a container's own when PID 1 is the container's init). Where
/// PID 1's namespace cannot be read (a sandbox), a namespace with an
/// `ip netns` name counts as not the host's.
pub fn in_init_netns() -> bool {
    let Ok(own) = NetnsId::current() else {
        return true;
    };
    match NetnsId::of_pid(1) {
        Ok(init) => own == init,
        Err(_) => name_of(own).is_none(),
    }
}

/// The `ip netns` name of the namespace `id`, if it has one (the first in
/// name order when it has several).
pub fn name_of(id: NetnsId) -> Option<String> {
    let entries = fs::read_dir(NAMED_NETNS_DIR).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| is_plain_name(name))
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|name| NetnsId::of_name(name).is_ok_and(|other| other == id))
}

/// The `ip netns` name of this process's network namespace, unless it is
/// PID 1's namespace (a name given to the host's own namespace does not
/// make it a separate host).
pub fn current_named_netns() -> Option<String> {
    let own = NetnsId::current().ok()?;
    if NetnsId::of_pid(1).is_ok_and(|init| init == own) {
        return None;
    }
    name_of(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_in_its_own_namespace() {
        let own = NetnsId::current().expect("own namespace");
        let by_pid = NetnsId::of_pid(std::process::id()).expect("by pid");
        assert_eq!(own, by_pid);
        assert_eq!(
            NetnsId::of_path(Path::new("/proc/self/ns/net")).expect("self"),
            own
        );
    }

    #[test]
    fn namespace_names_must_be_plain_file_names() {
        assert!(is_plain_name("an-12-0-a"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
            assert!(named_netns_path(bad).is_err(), "{bad:?}");
        }
    }
}
