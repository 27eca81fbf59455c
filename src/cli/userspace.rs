//! The rootless options of `up` (`--userspace`, `--socks5`, `--forward`,
//! `--expose`): parsed here, handed to the daemon, passed on to the
//! detached child, and shown once the daemon is up.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command as Process;

use clap::Args;

use agentnet::control::{ControlClient, Request, Response};
use agentnet::userspace::UserspaceOptions;
use agentnet::userspace::spec::{ExposeSpec, ForwardSpec, RemoteBindRefused, check_local_binds};

/// `up`'s rootless mode.
#[derive(Debug, Clone, Args)]
pub(crate) struct UserspaceArgs {
    /// Rootless mode: no TUN, no root, no capabilities. An in-process
    /// TCP/IP stack (smoltcp) holds the agent address; programs reach peers
    /// through --socks5 and --forward, peers reach local services through
    /// --expose. Peers see an ordinary agent (same address, trust, policy).
    #[arg(long)]
    pub(crate) userspace: bool,
    /// A SOCKS5 proxy for local programs, with remote DNS for
    /// NAME.agent.internal (`curl --socks5-hostname`, ALL_PROXY=socks5h://);
    /// e.g. 127.0.0.1:1080 (port 0 picks one). Needs --userspace.
    #[arg(long, value_name = "ADDR:PORT", requires = "userspace")]
    pub(crate) socks5: Option<SocketAddr>,
    /// Forward a local port to a peer: [tcp:|udp:][BIND_ADDR:]LOCAL_PORT:PEER:PORT,
    /// PEER a trusted name, an [IPv6 overlay address] or a peer's IPv4 address
    /// (100.64.0.0/10); a name tries IPv4 first, then IPv6; BIND_ADDR defaults to
    /// 127.0.0.1 (repeatable; needs --userspace).
    #[arg(
        long = "forward",
        value_name = "[BIND:]LPORT:PEER:PORT",
        requires = "userspace"
    )]
    pub(crate) forwards: Vec<ForwardSpec>,
    /// Accept peers' connections (or UDP) to PORT of the agent address and
    /// hand them to a local service: [tcp:|udp:]PORT[:LOCAL_ADDR:LOCAL_PORT],
    /// default 127.0.0.1:PORT (repeatable; needs --userspace). Peers still
    /// need this agent's policy to allow the port.
    #[arg(
        long = "expose",
        value_name = "PORT[:ADDR:LPORT]",
        requires = "userspace"
    )]
    pub(crate) exposes: Vec<ExposeSpec>,
    /// Allow --socks5 and --forward to listen on an address other than
    /// loopback (anyone who reaches it reaches the overlay as this agent).
    #[arg(long, requires = "userspace")]
    pub(crate) allow_remote: bool,
}

impl UserspaceArgs {
    /// The daemon's options, in rootless mode.
    pub(crate) fn options(&self) -> Option<UserspaceOptions> {
        self.userspace.then(|| UserspaceOptions {
            socks5: self.socks5,
            forwards: self.forwards.clone(),
            exposes: self.exposes.clone(),
            served_sources: None,
        })
    }

    /// Refuses non-loopback `--socks5`/`--forward` listeners without
    /// `--allow-remote`.
    pub(crate) fn check(&self) -> Result<(), RemoteBindRefused> {
        check_local_binds(self.socks5, &self.forwards, self.allow_remote)
    }

    /// Passes the options on to the detached daemon.
    pub(crate) fn add_child_args(&self, command: &mut Process) {
        if !self.userspace {
            return;
        }
        command.arg("--userspace");
        if self.allow_remote {
            command.arg("--allow-remote");
        }
        if let Some(address) = self.socks5 {
            command.args(["--socks5", &address.to_string()]);
        }
        for spec in &self.forwards {
            command.args(["--forward", &spec.to_string()]);
        }
        for spec in &self.exposes {
            command.args(["--expose", &spec.to_string()]);
        }
    }
}

/// Prints what the userspace stack serves (with the ports the OS chose),
/// from the daemon's status.
pub(crate) fn say_listeners(socket: &Path) {
    let status = match ControlClient::call(socket, &Request::Status {}) {
        Ok(Response::Status(status)) => status,
        _ => return,
    };
    let userspace = &status["userspace"];
    if let Some(socks5) = userspace["socks5"].as_str() {
        say!("  socks5     {socks5}  (remote DNS: NAME.agent.internal)");
    }
    for (label, key) in [("forward", "forwards"), ("expose", "exposes")] {
        for spec in userspace[key].as_array().into_iter().flatten() {
            if let Some(spec) = spec.as_str() {
                say!("  {label:<10} {spec}");
            }
        }
    }
}
