//! `agentnet mcp`: the network as tools for an AI agent, an MCP server on
//! stdio ([`agentnet::mcp`]) that an MCP host (Claude Desktop, an IDE, an
//! agent framework) starts as a child process.

use anyhow::{Context, Result};
use clap::Args;

use super::Instance;
use agentnet::mcp::{McpOptions, serve_stdio};

/// Long help of `mcp`.
pub(crate) const MCP_LONG_ABOUT: &str = "Serve this agent's network as MCP tools on stdin/stdout.\n\n\
    An MCP host starts `agentnet mcp` as a child process (the stdio transport) and its model \
    gets tools: whoami, peers (path, RTT, loss), ping, services (what trusted peers offer, \
    with URLs), request_trust (with a justification) and pending. With --allow-admin it also \
    gets approve, deny, revoke and advertise; without it those are not listed and a call is \
    refused with the reason.\n\n\
    Every tool is one request on the daemon's control socket (--socket, --state-dir): the \
    daemon must run (`sudo agentnet up`) and this user must be allowed to open the socket. \
    Text other agents wrote (claimed names, justifications, service names) is returned \
    escaped inside \"from_peer\" objects, marked as data. Logs go to stderr.\n\n\
    MCP host configuration, e.g.:\n  \
    {\"mcpServers\": {\"agentnet\": {\"command\": \"agentnet\", \"args\": [\"mcp\"]}}}";

/// Arguments of `mcp`.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// Also offer the tools that change trust and advertisements (approve, deny, revoke,
    /// advertise). Off by default: a model then can ask for trust but not grant it.
    #[arg(long)]
    pub(crate) allow_admin: bool,
}

/// `agentnet mcp`: serves until the host closes stdin.
pub(crate) fn mcp(context: &Instance, args: McpArgs) -> Result<()> {
    let options = McpOptions {
        socket: context.socket.clone(),
        allow_admin: args.allow_admin,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the MCP server's runtime")?;
    runtime
        .block_on(serve_stdio(options))
        .context("agentnet mcp")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn allow_admin_is_off_unless_asked_for() {
        let cli = Cli::try_parse_from(["agentnet", "mcp"]).expect("parses");
        assert!(matches!(cli.command, Command::Mcp(args) if !args.allow_admin));
        let cli = Cli::try_parse_from(["agentnet", "mcp", "--allow-admin"]).expect("parses");
        assert!(matches!(cli.command, Command::Mcp(args) if args.allow_admin));
    }
}
