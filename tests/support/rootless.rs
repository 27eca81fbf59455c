//! Drives an agent in rootless mode (`up --userspace`) as an unprivileged
//! user: every command, the daemon included, runs inside the lab host's
//! namespace through `setpriv` as `nobody`, with a state directory that
//! user owns. Nothing of it needs root: the namespace is only the lab's
//! stand-in for another machine.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::agent::{AGENT_PORT, Identity, agentnet_bin, parse_id_json, parse_status_json};
use super::lab::{Host, Lab};
use super::{Output, run, tail};

/// The unprivileged user.
pub const USER: &str = "nobody";
/// Its group.
pub const GROUP: &str = "nogroup";

/// Limit for one CLI call.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// An agent run by `nobody`: a state directory and a scratch directory
/// owned by that user (fresh tempdirs), in a lab host.
pub struct RootlessAgent<'l> {
    lab: &'l Lab,
    /// The host it runs on.
    pub host: Host,
    /// Its own name (`init --name`).
    pub name: String,
    /// Its UDP port.
    pub port: u16,
    state: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

/// A fresh directory owned by [`USER`] (mode 0700).
fn user_tempdir(prefix: &str) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let user = nix::unistd::User::from_name(USER)
        .map_err(|e| format!("user {USER}: {e}"))?
        .ok_or_else(|| format!("there is no user {USER}"))?;
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
        .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
    Ok(dir)
}

impl<'l> RootlessAgent<'l> {
    /// An agent for `host`, not initialised yet.
    pub fn new(lab: &'l Lab, host: &Host, name: &str) -> Result<Self, String> {
        Ok(Self {
            lab,
            host: host.clone(),
            name: name.to_string(),
            port: AGENT_PORT,
            state: user_tempdir("an-rootless-state-")?,
            scratch: user_tempdir("an-rootless-work-")?,
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A directory the unprivileged user may write (downloads, web roots).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// `setpriv … ARGS` as [`USER`], with a clean environment plus `env`.
    pub fn as_user(&self, env: &[(&str, &str)], args: &[&str]) -> Vec<String> {
        let mut full: Vec<String> = [
            "setpriv",
            "--reuid",
            USER,
            "--regid",
            GROUP,
            "--clear-groups",
            "--reset-env",
            "env",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        full.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        full.extend(args.iter().map(|s| s.to_string()));
        full
    }

    /// Runs `args` as [`USER`] inside the host's namespace.
    pub fn exec(&self, env: &[(&str, &str)], args: &[&str]) -> Result<Output, String> {
        let full = self.as_user(env, args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        run(
            self.lab.command(&self.host.ns, &full),
            super::lab::COMMAND_TIMEOUT,
        )
    }

    /// Starts `args` as [`USER`] in the background (stopped by the lab).
    pub fn spawn(&self, name: &str, args: &[&str]) -> Result<u32, String> {
        let full = self.as_user(&[], args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.lab.spawn(&self.host.ns, name, &full)
    }

    /// `agentnet --state-dir DIR ARGS...` as [`USER`].
    pub fn cli(&self, args: &[&str]) -> Result<Output, String> {
        let bin = agentnet_bin();
        let state = self.state_dir().to_string_lossy().into_owned();
        let mut full: Vec<&str> = vec![bin.to_str().expect("utf-8 path"), "--state-dir", &state];
        full.extend_from_slice(args);
        let full = self.as_user(&[], &full);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        run(self.lab.command(&self.host.ns, &full), CLI_TIMEOUT)
    }

    /// Like [`RootlessAgent::cli`], requiring exit status 0.
    pub fn cli_ok(&self, args: &[&str]) -> Result<Output, String> {
        self.cli(args)?
            .check()
            .map_err(|e| format!("{}: {e}\n{}", self.name, self.log_excerpt(30)))
    }

    /// `agentnet init --name NAME`.
    pub fn init(&self) -> Result<(), String> {
        self.cli_ok(&["init", "--name", &self.name]).map(drop)
    }

    /// `agentnet up --userspace --port PORT EXTRA...` (returns once the
    /// daemon answers); its output.
    pub fn up(&self, extra: &[&str]) -> Result<Output, String> {
        let port = self.port.to_string();
        let mut args = vec!["up", "--userspace", "--port", &port];
        args.extend_from_slice(extra);
        self.cli_ok(&args)
    }

    /// `agentnet down`.
    pub fn down(&self) -> Result<(), String> {
        self.cli_ok(&["down"]).map(drop)
    }

    /// `agentnet id --json`.
    pub fn id(&self) -> Result<Identity, String> {
        parse_id_json(&self.cli_ok(&["id", "--json"])?.stdout)
    }

    /// `agentnet status --json`.
    pub fn status(&self) -> Result<Value, String> {
        parse_status_json(&self.cli_ok(&["status", "--json"])?.stdout)
    }

    /// The daemon's PID, from `status`.
    pub fn pid(&self) -> Result<u32, String> {
        self.status()?["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| "`status --json` has no pid".to_string())
    }

    /// The daemon log (`STATE_DIR/agentnet.log`), empty if there is none.
    pub fn log(&self) -> String {
        let path = self.state_dir().join("agentnet.log");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the daemon log, headed by the agent's name.
    pub fn log_excerpt(&self, lines: usize) -> String {
        format!(
            "--- {} ({}, rootless) agentnet.log, last {lines} lines ---\n{}",
            self.name,
            self.host.ns,
            tail(&self.log(), lines)
        )
    }
}

impl Drop for RootlessAgent<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_excerpt(80));
        }
    }
}

/// `Uid:` and `CapEff:` of a process, from `/proc/PID/status`.
pub fn uid_and_capabilities(pid: u32) -> Option<(u32, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_string)
    };
    let uid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let caps = u64::from_str_radix(&field("CapEff:")?, 16).ok()?;
    Some((uid, caps))
}
