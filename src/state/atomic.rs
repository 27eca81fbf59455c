//! Atomic replacement of a state file: temp file in the same directory,
//! `fsync`, `rename`, `fsync` of the directory. A crash leaves the old or the
//! new contents, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StateError;

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
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
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
        "{}{}-{:08x}",
        temp_prefix(&file_name),
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

/// How the name of a temporary file for `file_name` starts.
pub(super) fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.tmp-")
}

/// A file root writes into a directory that belongs to another user (a
/// daemon that dropped its privileges, see `agent::privilege`, or one that
/// systemd starts as that user) is given to that user, so the daemon can
/// still replace it, or open it (lock files, see
/// [`super::StateDir::open_file`]). That user owns the directory and could
/// replace the file anyway: nothing is given away. `file` must have been
/// opened without following a link, with one link (see
/// [`crate::sys::nofollow`]) or created here.
pub(super) fn follow_directory_owner(file: &File, dir: &Path) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let owner = fs::metadata(dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
}

/// The directory `path` is in (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
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
    use crate::state::test_support::{mode_of, state};

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
}
