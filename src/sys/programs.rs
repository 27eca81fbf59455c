//! The system programs the daemon and `attach` run (`ip`, `nft`,
//! `resolvectl`), found without trusting the caller's `PATH` as root.

use std::process::Command;

/// Where a root process looks for system programs: directories only root
/// may write. `sudo -E`, or a sudo without `secure_path`, would otherwise
/// let the caller's `PATH` choose what root runs.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for the system program `program`: as root it is looked up in
/// [`ROOT_PATH`] only (the child's `PATH`, which the lookup then uses),
/// otherwise in the caller's `PATH`.
pub fn system_program(program: &str) -> Command {
    let mut command = Command::new(program);
    if nix::unistd::geteuid().is_root() {
        command.env("PATH", ROOT_PATH);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_looks_only_in_root_owned_directories() {
        let command = system_program("ip");
        let path = command
            .get_envs()
            .find(|(name, _)| *name == "PATH")
            .and_then(|(_, value)| value);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(path, Some(std::ffi::OsStr::new(ROOT_PATH)));
            for directory in ROOT_PATH.split(':') {
                assert!(directory.starts_with('/'), "{directory} is absolute");
            }
        } else {
            assert_eq!(path, None, "the caller's PATH is kept");
        }
    }
}
