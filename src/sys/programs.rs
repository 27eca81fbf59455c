//! The system programs the daemon and `attach` run (`ip`, `nft`,
//! `resolvectl`), found without trusting the caller's `PATH`.

use std::process::Command;

/// Where the daemon looks for system programs: directories only root may
/// write, NixOS's and Guix's system profiles among them. `sudo -E`, or a
/// sudo without `secure_path`, would otherwise let the caller's `PATH`
/// choose what runs as root, or later with the daemon's `CAP_NET_ADMIN`.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:\
/run/wrappers/bin:/run/current-system/sw/bin:/run/current-system/profile/sbin:\
/run/current-system/profile/bin";

/// A command for the system program `program`, looked up in
/// [`SYSTEM_PATH`] only (the child's `PATH`, which the lookup then uses),
/// whoever runs it: the daemon keeps `CAP_NET_ADMIN` past its switch to
/// an unprivileged user.
pub fn system_program(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("PATH", SYSTEM_PATH);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_programs_are_looked_up_in_system_directories_only() {
        let command = system_program("ip");
        let path = command
            .get_envs()
            .find(|(name, _)| *name == "PATH")
            .and_then(|(_, value)| value);
        assert_eq!(path, Some(std::ffi::OsStr::new(SYSTEM_PATH)));
        for directory in SYSTEM_PATH.split(':') {
            assert!(directory.starts_with('/'), "{directory} is absolute");
        }
    }
}
