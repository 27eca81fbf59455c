//! Opening a file in a directory that another user may write — the state
//! directory, once `agentnet up` handed it to the daemon's user — without
//! letting that user aim root's opens at another file.
//!
//! The name is one path component opened with `O_NOFOLLOW` (a planted
//! symbolic link fails with `ELOOP`), `O_NONBLOCK` (a planted FIFO cannot
//! hang the opener) and `O_CLOEXEC`; what was opened must then be a regular
//! file with a single link (a hard link to `/etc/shadow` is refused), owned
//! by root, by the caller or by the directory's owner. The directory itself
//! is trusted: `up` hands it over only when no one but root may write any
//! directory above it (`agent::privilege::check_parents`).
//!
//! Handing such a file to another user ([`chown_no_follow`]) follows the
//! same rules: the name is opened with `O_PATH | O_NOFOLLOW`, checked, and
//! the opened file changed (`fchownat` with `AT_EMPTY_PATH`), so a name
//! swapped after the check changes nothing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// Reading an existing file.
    Read,
    /// Appending, created with the given mode if missing (a log).
    Append(u32),
    /// Reading and writing, created with the given mode if missing, never
    /// truncated by the open (lock and PID files).
    ReadWrite(u32),
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum NoFollowError {
    /// The name is a symbolic link (planted by whoever may write the
    /// directory); it was not followed.
    #[error("{} is a symbolic link; refusing to follow it", path.display())]
    SymbolicLink {
        /// The path.
        path: PathBuf,
    },
    /// The name is not a regular file (a FIFO, a device, a directory…).
    #[error("{} is not a regular file; refusing to use it", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The file has other hard links: it may be another file in disguise.
    #[error("{} has {links} hard links; refusing to use it", path.display())]
    HardLinked {
        /// The path.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// The file belongs to someone who is neither root, this process's
    /// user nor the directory's owner.
    #[error("{} belongs to uid {owner}, not to root or the directory's owner; refusing to use it", path.display())]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// The name is not a single path component.
    #[error("{name:?} is not a plain file name")]
    BadName {
        /// The name.
        name: String,
    },
    /// The OS refused the open or the `fstat`.
    #[error("cannot open {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl NoFollowError {
    /// Whether the file simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl From<NoFollowError> for io::Error {
    fn from(error: NoFollowError) -> Self {
        match error {
            NoFollowError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other),
        }
    }
}

/// Opens `dir/name` for `how` without following a link at `name`, and
/// checks what was opened (see the module docs).
pub fn open_in_dir(dir: &Path, name: &str, how: OpenFor) -> Result<File, NoFollowError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(NoFollowError::BadName { name: name.into() });
    }
    let path = dir.join(name);
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    match how {
        OpenFor::Read => {
            options.read(true);
        }
        OpenFor::Append(mode) => {
            options.append(true).create(true).mode(mode);
        }
        OpenFor::ReadWrite(mode) => {
            options
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode);
        }
    }
    let file = match options.open(&path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(NoFollowError::SymbolicLink { path });
        }
        // O_NOFOLLOW on a FIFO opened for writing without a reader: ENXIO.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(NoFollowError::NotRegular { path });
        }
        Err(source) => return Err(NoFollowError::Io { path, source }),
    };
    check_opened(&file, dir, path)?;
    Ok(file)
}

/// Gives `path` to `owner` and `group` (`None` keeps one) if it is a regular
/// file or a socket with a single link, without following a link at its
/// last component. A hard link is refused: it may be another file in
/// disguise (`/etc/shadow`, linked in by whoever may write the directory
/// where `fs.protected_hardlinks` is off), and giving that away would hand
/// over the other file. The directories above `path` are trusted.
pub fn chown_no_follow(
    path: &Path,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<(), NoFollowError> {
    let io_error = |source| NoFollowError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_PATH opens what the name is (a symbolic link itself, with
    // O_NOFOLLOW) without reading it: no FIFO can block, no device opens.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(NoFollowError::SymbolicLink {
            path: path.to_path_buf(),
        });
    }
    if !kind.is_file() && !kind.is_socket() {
        return Err(NoFollowError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.nlink() > 1 {
        return Err(NoFollowError::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    nix::unistd::fchownat(
        Some(file.as_raw_fd()),
        "",
        owner.map(nix::unistd::Uid::from_raw),
        group.map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|errno| io_error(io::Error::from(errno)))
}

fn check_opened(file: &File, dir: &Path, path: PathBuf) -> Result<(), NoFollowError> {
    let meta = file.metadata().map_err(|source| NoFollowError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(NoFollowError::NotRegular { path });
    }
    if meta.nlink() > 1 {
        return Err(NoFollowError::HardLinked {
            path,
            links: meta.nlink(),
        });
    }
    let owner = meta.uid();
    let me = nix::unistd::geteuid().as_raw();
    let dir_owner = fs::metadata(dir).map(|m| m.uid()).ok();
    if owner != 0 && owner != me && Some(owner) != dir_owner {
        return Err(NoFollowError::Owner { path, owner });
    }
    // Reads and writes of a regular file never block; clear the flag so
    // later users of the descriptor see an ordinary file.
    if let Ok(flags) = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn planted_symlinks_fifos_and_hard_links_are_refused_and_targets_untouched() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path().join("state");
        fs::create_dir(&dir).expect("dir");
        let canary = temp.path().join("canary");
        fs::write(&canary, "secret\n").expect("canary");
        std::os::unix::fs::symlink(&canary, dir.join("agentnet.pid")).expect("symlink");
        for how in [
            OpenFor::Read,
            OpenFor::Append(0o600),
            OpenFor::ReadWrite(0o644),
        ] {
            let error = open_in_dir(&dir, "agentnet.pid", how).expect_err("symlink");
            assert!(
                matches!(error, NoFollowError::SymbolicLink { .. }),
                "{how:?}: {error}"
            );
        }
        // A dangling link is not created through either.
        std::os::unix::fs::symlink(temp.path().join("new"), dir.join("trust.lock")).expect("ln");
        assert!(open_in_dir(&dir, "trust.lock", OpenFor::ReadWrite(0o600)).is_err());
        assert!(!temp.path().join("new").exists());

        fs::hard_link(&canary, dir.join("agentnet.log")).expect("hard link");
        let error = open_in_dir(&dir, "agentnet.log", OpenFor::Append(0o600)).expect_err("link");
        assert!(matches!(error, NoFollowError::HardLinked { .. }), "{error}");

        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");
        for how in [OpenFor::Read, OpenFor::Append(0o600)] {
            let error = open_in_dir(&dir, "fifo", how).expect_err("fifo");
            assert!(
                matches!(error, NoFollowError::NotRegular { .. }),
                "{how:?}: {error}"
            );
        }
        assert!(matches!(
            open_in_dir(&dir, "../canary", OpenFor::Read),
            Err(NoFollowError::BadName { .. })
        ));
        assert_eq!(fs::read_to_string(&canary).expect("canary"), "secret\n");
    }

    #[test]
    fn plain_files_are_created_and_reopened() {
        let temp = tempfile::tempdir().expect("temp");
        let mut log = open_in_dir(temp.path(), "x.log", OpenFor::Append(0o600)).expect("create");
        log.write_all(b"one\n").expect("write");
        let mut text = String::new();
        open_in_dir(temp.path(), "x.log", OpenFor::Read)
            .expect("reopen")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "one\n");
        let error = open_in_dir(temp.path(), "missing", OpenFor::Read).expect_err("missing");
        assert!(error.is_not_found(), "{error}");
    }

    #[test]
    fn chown_no_follow_gives_away_single_files_only() {
        if !crate::sys::root_for_test("chown_no_follow_gives_away_single_files_only") {
            return;
        }
        const NOBODY: u32 = 65534;
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path().join("state");
        fs::create_dir(&dir).expect("dir");
        let canary = temp.path().join("canary");
        fs::write(&canary, "secret\n").expect("canary");
        fs::write(dir.join("trust.toml"), "").expect("file");
        fs::hard_link(&canary, dir.join("agentnet.log")).expect("hard link");
        std::os::unix::fs::symlink(&canary, dir.join("trust.lock")).expect("symlink");
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join("agentnet.sock")).expect("socket");

        for name in ["trust.toml", "agentnet.sock"] {
            chown_no_follow(&dir.join(name), Some(NOBODY), Some(NOBODY)).expect(name);
            let meta = fs::symlink_metadata(dir.join(name)).expect("stat");
            assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{name}");
        }
        let error =
            chown_no_follow(&dir.join("agentnet.log"), Some(NOBODY), None).expect_err("hard link");
        assert!(
            matches!(error, NoFollowError::HardLinked { links: 2, .. }),
            "{error}"
        );
        let error =
            chown_no_follow(&dir.join("trust.lock"), Some(NOBODY), None).expect_err("symlink");
        assert!(
            matches!(error, NoFollowError::SymbolicLink { .. }),
            "{error}"
        );
        let error = chown_no_follow(&dir.join("fifo"), Some(NOBODY), None).expect_err("fifo");
        assert!(matches!(error, NoFollowError::NotRegular { .. }), "{error}");
        let link = fs::symlink_metadata(dir.join("trust.lock")).expect("stat");
        assert_eq!(link.uid(), 0, "the link itself is not changed either");
        assert_eq!(fs::metadata(&canary).expect("stat").uid(), 0);
        drop(listener);
    }
}
