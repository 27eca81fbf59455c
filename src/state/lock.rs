//! The one way a state file is edited: an exclusive `flock` on the file's
//! lock file, then read, modify, and write back atomically
//! ([`StateDir::edit_locked`]). Edits from any process (the CLI, the
//! daemon) serialize; none is lost. Readers need no lock: writers replace
//! files atomically.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{StateDir, StateError};
use crate::sys::nofollow::OpenFor;

/// A state file that is edited whole under its own lock.
pub trait LockedFile: Clone + PartialEq + Sized {
    /// The lock file (in the state directory) that serializes the edits.
    const LOCK_FILE: &'static str;
    /// Whether an edit that fails still writes back what it changed (when
    /// the record describes what the edit already did to the system).
    const KEEP_FAILED_EDITS: bool = false;

    /// Reads the file (its empty value if there is none).
    fn load(state: &StateDir) -> Result<Self, StateError>;

    /// Replaces the file atomically with `self`.
    fn save(&self, state: &StateDir) -> Result<(), StateError>;
}

impl StateDir {
    /// Edits the file `F` under its exclusive lock: reads it, runs `edit`,
    /// and writes the result back atomically if it changed and `edit`
    /// succeeded (or failed, for [`LockedFile::KEEP_FAILED_EDITS`]).
    pub fn edit_locked<F: LockedFile, T, E: From<StateError>>(
        &self,
        edit: impl FnOnce(&mut F) -> Result<T, E>,
    ) -> Result<T, E> {
        self.create()?;
        let _lock = self.lock_exclusive(F::LOCK_FILE)?;
        let mut record = F::load(self)?;
        let before = record.clone();
        let result = edit(&mut record);
        if record != before && (result.is_ok() || F::KEEP_FAILED_EDITS) {
            record.save(self)?;
        }
        result
    }

    /// Takes an exclusive `flock` on the lock file `name` (created if
    /// missing, never through a link), waiting for other holders. Root
    /// gives the lock file to the directory's owner ([`StateDir::open_file`]);
    /// a lock file the caller may not open because root made it with an
    /// earlier version is reported with the fix
    /// ([`StateError::ForeignLock`]): replacing it instead could break the
    /// lock of a process that holds the old file.
    fn lock_exclusive(&self, name: &str) -> Result<Flock<File>, StateError> {
        let file = self
            .open_file(name, OpenFor::ReadWrite(0o600))
            .map_err(|error| explain_foreign_lock(self.root().join(name), error))?;
        flock_retrying_eintr(file, FlockArg::LockExclusive).map_err(|source| StateError::Lock {
            path: self.root().join(name),
            source,
        })
    }
}

/// `error` from opening the lock file `path`, or
/// [`StateError::ForeignLock`] if the OS refused it because another user
/// owns the file.
fn explain_foreign_lock(path: PathBuf, error: StateError) -> StateError {
    let StateError::Io { source, .. } = &error else {
        return error;
    };
    // EACCES from the OS itself, not a refusal of `nofollow` (a link, a
    // stranger's file), which says what it is.
    if source.raw_os_error() != Some(libc::EACCES) {
        return error;
    }
    let me = nix::unistd::geteuid().as_raw();
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() && meta.uid() != me => StateError::ForeignLock {
            path,
            owner: meta.uid(),
            me,
        },
        _ => error,
    }
}

/// `flock` that tries again when a signal interrupts it.
pub(super) fn flock_retrying_eintr(file: File, arg: FlockArg) -> Result<Flock<File>, Errno> {
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(locked),
            Err((returned, Errno::EINTR)) => file = returned,
            Err((_, errno)) => return Err(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::core::identity::Identity;
    use crate::state::test_support::{peer, state};

    const NOBODY: u32 = 65534;

    fn owner(path: &std::path::Path) -> (u32, u32) {
        let meta = fs::symlink_metadata(path).expect("stat");
        (meta.uid(), meta.gid())
    }

    #[test]
    fn lock_files_root_takes_belong_to_the_directory_owner() {
        if !crate::sys::root_for_test("lock_files_root_takes_belong_to_the_directory_owner") {
            return;
        }
        let (_temp, state) = state();
        state.create().expect("dir");
        // What an earlier version left: a lock root made, root's, 0600.
        let old_lock = state.trust_lock_path();
        fs::write(&old_lock, "").expect("old lock");
        fs::set_permissions(&old_lock, fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(state.root(), Some(NOBODY), Some(NOBODY)).expect("chown");

        let me = Identity::from_secret_bytes(&[0; 32])
            .expect("key")
            .agent_id();
        state
            .edit_trust(|store| Ok(store.upsert(&me, peer(1, "bob"))?))
            .expect("edit");
        assert_eq!(owner(&old_lock), (NOBODY, NOBODY), "re-owned");
        assert_eq!(owner(&state.trust_path()), (NOBODY, NOBODY));
        drop(state.lock_exclusive("served.lock").expect("new lock"));
        assert_eq!(owner(&state.root().join("served.lock")), (NOBODY, NOBODY));

        // What a user who may not open such a file is told.
        let denied = StateError::io(
            "open",
            &old_lock,
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let error = explain_foreign_lock(old_lock.clone(), denied).to_string();
        assert!(
            error.contains("belongs to uid 65534") && error.contains("chown --reference="),
            "{error}"
        );
    }
}
