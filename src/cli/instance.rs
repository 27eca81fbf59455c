//! The state directory and control socket every command works on.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use super::args::Cli;
use agentnet::control::{ControlClient, ControlError};
use agentnet::core::address::NetworkId;
use agentnet::state::{AgentConfig, StateDir};

/// The paths every command needs, made absolute.
pub(super) struct Instance {
    /// The state directory.
    pub(super) state: StateDir,
    /// The daemon's control socket.
    pub(super) socket: PathBuf,
}

impl Instance {
    /// The paths of `cli`, made absolute.
    pub(super) fn new(cli: &Cli) -> Result<Self> {
        let root = std::path::absolute(&cli.state_dir)
            .with_context(|| format!("bad state directory {}", cli.state_dir.display()))?;
        let state = StateDir::new(root);
        let socket = match &cli.socket {
            Some(socket) => std::path::absolute(socket)
                .with_context(|| format!("bad socket path {}", socket.display()))?,
            None => state.default_socket_path(),
        };
        Ok(Self { state, socket })
    }

    /// A connection to the daemon, or `None` if none runs. A daemon that
    /// holds the state directory but does not answer is an error: editing
    /// behind its back would go unnoticed.
    pub(super) fn daemon(&self) -> Result<Option<ControlClient>> {
        match ControlClient::connect(&self.socket) {
            Ok(client) => Ok(Some(client)),
            Err(ControlError::NotRunning { .. }) => match self.state.running_pid() {
                Some(pid) => Err(self.unresponsive(pid)),
                None => Ok(None),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// A connection to the daemon, or an error saying none runs.
    pub(super) fn require_daemon(&self) -> Result<ControlClient> {
        self.daemon()?.ok_or_else(|| self.not_running())
    }

    /// The error of a command that needs the daemon when none runs.
    pub(super) fn not_running(&self) -> anyhow::Error {
        anyhow!(
            "agentnet is not running for state dir {} (nothing answers on {}); start it with `agentnet up`",
            self.state.root().display(),
            self.socket.display()
        )
    }

    /// The error when daemon `pid` holds the state directory but does not
    /// answer.
    pub(super) fn unresponsive(&self, pid: u32) -> anyhow::Error {
        anyhow!(
            "agentnet (pid {pid}) holds state dir {} but does not answer on {}; \
             check --socket, or stop it with `kill {pid}`",
            self.state.root().display(),
            self.socket.display()
        )
    }

    /// The configuration (or the host defaults) and its network.
    pub(super) fn network(&self) -> Result<(AgentConfig, NetworkId)> {
        let config = self.state.config_or_default()?;
        let network = NetworkId::from_name(&config.network);
        Ok((config, network))
    }
}
