//! `agentnet.pid`: the daemon's PID, and its instance lock (an exclusive
//! `flock` on the same file, held while it runs). A stale file from a
//! crashed daemon is not a running daemon: the lock decides, not the file.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::lock::flock_retrying_eintr;
use super::{PID_FILE, StateDir, StateError};
use crate::sys::nofollow::{OpenFor, open_in_dir};

/// How long the daemon waits for the instance lock before declaring that
/// another instance holds it (a CLI probe holds it for microseconds).
const PID_LOCK_PATIENCE: Duration = Duration::from_secs(1);

impl StateDir {
    /// Takes the instance lock (exclusive `flock` on the PID file) and
    /// writes this process's PID into it. Fails with
    /// [`StateError::AlreadyRunning`] if another daemon holds it.
    pub fn lock_instance(&self) -> Result<InstanceLock, StateError> {
        self.create()?;
        let path = self.pid_path();
        let deadline = Instant::now() + PID_LOCK_PATIENCE;
        loop {
            let file = self.open_file(PID_FILE, OpenFor::ReadWrite(0o644))?;
            match flock_retrying_eintr(file, FlockArg::LockExclusiveNonblock) {
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
                        dir: self.root().to_path_buf(),
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
        let file = open_in_dir(self.root(), PID_FILE, OpenFor::Read).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::state;

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
    fn stale_pid_file_is_not_a_running_daemon() {
        let (_temp, state) = state();
        state.create().expect("dir");
        fs::write(state.pid_path(), "999999\n").expect("write");
        assert_eq!(state.running_pid(), None);
    }
}
