//! The one way a state file is edited: an exclusive `flock` on the file's
//! lock file, then read, modify, and write back atomically
//! ([`StateDir::edit_locked`]). Edits from any process (the CLI, the
//! daemon) serialize; none is lost. Readers need no lock: writers replace
//! files atomically.

use std::fs::File;

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
    /// missing, never through a link), waiting for other holders.
    fn lock_exclusive(&self, name: &str) -> Result<Flock<File>, StateError> {
        let file = self.open_file(name, OpenFor::ReadWrite(0o600))?;
        flock_retrying_eintr(file, FlockArg::LockExclusive).map_err(|source| StateError::Lock {
            path: self.root().join(name),
            source,
        })
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
